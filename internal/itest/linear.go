package itest

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// A linearizability checker for the history of one read/write register, so
// that a fault workload's histories are checked in the repository instead
// of by hand with porcupine. The algorithm is Wing & Gong's search with
// Lowe's just-in-time linearization and memoization of the (set of ops
// linearized, register value) states already explored, as porcupine's
// checkSingle does: walk the call/return events in time order; at a call,
// try to linearize that op now (a read only if it returns the register's
// value); at a return whose op is not linearized yet, undo the last choice.
// Every state seen is remembered, so that no subtree is explored twice.

// RegOp is one operation on the register, as its client saw it.
type RegOp struct {
	Client int  // for explanations only
	Write  bool // a write of Value; else a read that returned Value
	// Value is what a write wrote, unique among the writes (and not the
	// initial value), or what a read returned.
	Value        int64
	Call, Return time.Time
	// Unknown marks an op whose outcome the client does not know (the
	// connection was lost): an unknown write may have taken effect at any
	// point after Call, or never; an unknown read is dropped. Return is
	// ignored. Definite failures do not belong in the history: their values
	// must never be read, which the caller checks.
	Unknown bool
}

// LinResult is CheckRegister's verdict.
type LinResult int

const (
	Linearizable LinResult = iota
	Violation              // not linearizable
	Undecided              // the budget ran out first: a test must fail
)

func (r LinResult) String() string {
	switch r {
	case Linearizable:
		return "linearizable"
	case Violation:
		return "NOT linearizable"
	case Undecided:
		return "undecided"
	}
	return fmt.Sprintf("LinResult(%d)", int(r))
}

// LinBudget bounds a check: past either bound it returns Undecided instead
// of searching on.
type LinBudget struct {
	States int           // distinct states memoized; 0: DefaultLinBudget's
	Time   time.Duration // 0: DefaultLinBudget's
}

// DefaultLinBudget is CheckRegister's. A history of 3,000-5,000 ops by 4-8
// concurrent clients takes 5,000-50,000 states and 3-35 ms without -race
// when linearizable, 4-80 ms with a stale read (TestCheckRegisterLarge); the
// bound is for pathological histories (many long ops overlapping), which
// would otherwise search for ever.
var DefaultLinBudget = LinBudget{States: 1 << 20, Time: 10 * time.Second}

// CheckRegister checks that ops, the history of one register whose value
// was initial before any of them, is linearizable, within DefaultLinBudget.
// The string explains the verdict briefly: for a violation, the op that
// cannot be placed after the longest linearizable prefix and the value the
// register holds there.
func CheckRegister(initial int64, ops []RegOp) (LinResult, string) {
	return DefaultLinBudget.CheckRegister(initial, ops)
}

// linOp is an op of the history as the search sees it: times in
// nanoseconds since the history's first call, ret math.MaxInt64 for a write
// that may take effect until the end.
type linOp struct {
	src       int // index in the caller's ops
	write     bool
	value     int64
	call, ret int64
}

// linNode is a call or return event in the doubly linked list the search
// lifts linearized ops out of.
type linNode struct {
	op         int // index in the search's ops
	call       bool
	match      *linNode // a call's return
	prev, next *linNode
}

// linState is a memoized state: the register's value and the set of
// linearized ops, stored from its first word that is not all ones (lo) to
// its last non-zero word.
type linState struct {
	value int64
	lo    int
	words []uint64
}

// CheckRegister is the package's CheckRegister within b.
func (b LinBudget) CheckRegister(initial int64, ops []RegOp) (LinResult, string) {
	start := time.Now()
	if b.States <= 0 {
		b.States = DefaultLinBudget.States
	}
	if b.Time <= 0 {
		b.Time = DefaultLinBudget.Time
	}
	if len(ops) == 0 {
		return Linearizable, "empty history"
	}
	base := ops[0].Call
	for _, o := range ops {
		if o.Call.Before(base) {
			base = o.Call
		}
	}
	ns := func(t time.Time) int64 { return int64(t.Sub(base)) }
	at := func(t int64) string {
		if t == math.MaxInt64 {
			return "end"
		}
		return fmt.Sprintf("+%.6fs", time.Duration(t).Seconds())
	}
	describe := func(i int) string {
		o := ops[i]
		kind, ret := "read", at(ns(o.Return))
		if o.Write {
			kind = "write"
		}
		if o.Unknown {
			kind, ret = "unknown-outcome "+kind, "?"
		}
		return fmt.Sprintf("op %d (client %d %s %d [%s, %s])", i, o.Client, kind, o.Value, at(ns(o.Call)), ret)
	}

	// Writes by value, and the earliest return of a read of each value.
	writers := map[int64][]int{}
	firstRead := map[int64]int64{}
	for i, o := range ops {
		if !o.Unknown && o.Return.Before(o.Call) {
			return Undecided, describe(i) + " returned before its call: not a history"
		}
		switch {
		case o.Write:
			writers[o.Value] = append(writers[o.Value], i)
		case !o.Unknown:
			if r, ok := firstRead[o.Value]; !ok || ns(o.Return) < r {
				firstRead[o.Value] = ns(o.Return)
			}
		}
	}
	// The violations a glance finds, explained better than by the search:
	// a read of a value never written, or of one written only later.
	for i, o := range ops {
		if o.Write || o.Unknown || o.Value == initial {
			continue
		}
		ws := writers[o.Value]
		if len(ws) == 0 {
			return Violation, fmt.Sprintf("%s returned a value never written (initial %d)", describe(i), initial)
		}
		if !slices.ContainsFunc(ws, func(w int) bool { return !ops[w].Call.After(o.Return) }) {
			return Violation, fmt.Sprintf("%s returned the value of %s, which began after the read returned", describe(i), describe(ws[0]))
		}
	}

	// The search's ops. An unknown write no read saw is left out: if the
	// history without it is linearizable, it is with the write last (or
	// never), and no read follows it anyway. An unknown write whose unique
	// value was read took effect before that read returned: that bounds
	// it. Other unknown writes may take effect until the end.
	var lin []linOp
	dropped, bounded := 0, 0
	for i, o := range ops {
		op := linOp{src: i, write: o.Write, value: o.Value, call: ns(o.Call), ret: ns(o.Return)}
		if o.Unknown {
			if !o.Write {
				continue
			}
			r, read := firstRead[o.Value]
			switch {
			case !read:
				dropped++
				continue
			case len(writers[o.Value]) == 1 && o.Value != initial:
				op.ret = max(r, op.call)
				bounded++
			default:
				op.ret = math.MaxInt64
			}
		}
		lin = append(lin, op)
	}
	n := len(lin)
	summary := func() string {
		return fmt.Sprintf("%d ops (%d searched, %d unknown writes bounded by their first read, %d unknown writes unseen and dropped)",
			len(ops), n, bounded, dropped)
	}
	if n == 0 {
		return Linearizable, summary()
	}

	// The events in time order, a call before a return at the same time
	// (ops that touch overlap: the lenient reading).
	nodes := make([]linNode, 2*n)
	order := make([]*linNode, 0, 2*n)
	for i := range lin {
		c, r := &nodes[2*i], &nodes[2*i+1]
		*c = linNode{op: i, call: true, match: r}
		*r = linNode{op: i}
		order = append(order, c, r)
	}
	timeOf := func(e *linNode) int64 {
		if e.call {
			return lin[e.op].call
		}
		return lin[e.op].ret
	}
	slices.SortStableFunc(order, func(a, b *linNode) int {
		ta, tb := timeOf(a), timeOf(b)
		switch {
		case ta != tb:
			if ta < tb {
				return -1
			}
			return 1
		case a.call != b.call:
			if a.call {
				return -1
			}
			return 1
		}
		return a.op - b.op
	})
	head := &linNode{op: -1}
	prev := head
	for _, e := range order {
		prev.next, e.prev = e, prev
		prev = e
	}
	lift := func(c *linNode) {
		c.prev.next, c.next.prev = c.next, c.prev
		r := c.match
		r.prev.next = r.next
		if r.next != nil {
			r.next.prev = r.prev
		}
	}
	unlift := func(c *linNode) {
		r := c.match
		r.prev.next = r
		if r.next != nil {
			r.next.prev = r
		}
		c.prev.next, c.next.prev = c, c
	}

	// Zobrist hashing of the linearized set, mixed with the value.
	zob := make([]uint64, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range zob {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		zob[i] = z ^ (z >> 31)
	}
	mix := func(h uint64, v int64) uint64 {
		z := uint64(v) * 0xff51afd7ed558ccd
		return h ^ (z ^ z>>33)
	}
	bits := make([]uint64, (n+63)/64)
	cache := map[uint64][]linState{}
	states := 0
	// seen reports whether (bits, value) was explored, and records it if not.
	seen := func(h uint64, value int64) bool {
		lo, hi := 0, len(bits)-1
		for lo < len(bits) && bits[lo] == math.MaxUint64 {
			lo++
		}
		for hi >= lo && bits[hi] == 0 {
			hi--
		}
		words := bits[lo : hi+1]
		key := mix(h, value)
		for _, s := range cache[key] {
			if s.value == value && s.lo == lo && slices.Equal(s.words, words) {
				return true
			}
		}
		cache[key] = append(cache[key], linState{value: value, lo: lo, words: slices.Clone(words)})
		states++
		return false
	}

	type frame struct {
		op    int
		value int64 // the register's value before op
	}
	var stack []frame
	value, hash := initial, uint64(0)
	// The deepest point of the search, for the explanation.
	bestDepth, bestOp, bestValue := -1, -1, int64(0)
	var bestPrefix []int
	steps := 0
	entry := head.next
	for head.next != nil {
		if steps++; steps&1023 == 0 {
			if el := time.Since(start); el > b.Time || states > b.States {
				return Undecided, fmt.Sprintf("budget (%d states, %v) exhausted after %d states, %v, %d steps; %s",
					b.States, b.Time, states, el.Round(time.Millisecond), steps, summary())
			}
		}
		if entry.call {
			o := lin[entry.op]
			if o.write || o.value == value {
				next := value
				if o.write {
					next = o.value
				}
				i := entry.op
				bits[i/64] |= 1 << (i % 64)
				if !seen(hash^zob[i], next) {
					stack = append(stack, frame{i, value})
					value, hash = next, hash^zob[i]
					lift(entry)
					entry = head.next
					continue
				}
				bits[i/64] &^= 1 << (i % 64)
			}
			entry = entry.next
			continue
		}
		// A return whose op is not linearized: undo the last choice.
		if len(stack) > bestDepth {
			bestDepth, bestOp, bestValue = len(stack), entry.op, value
			bestPrefix = bestPrefix[:0]
			for _, f := range stack[max(0, len(stack)-3):] {
				bestPrefix = append(bestPrefix, f.op)
			}
		}
		if len(stack) == 0 {
			break
		}
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		value, hash = f.value, hash^zob[f.op]
		bits[f.op/64] &^= 1 << (f.op % 64)
		c := &nodes[2*f.op]
		unlift(c)
		entry = c.next
	}
	el := time.Since(start).Round(time.Microsecond)
	if head.next == nil {
		return Linearizable, fmt.Sprintf("%s, %d states, %v", summary(), states, el)
	}

	holder := fmt.Sprintf("the initial value %d", bestValue)
	if ws := writers[bestValue]; bestValue != initial && len(ws) > 0 {
		holder = fmt.Sprintf("%d, written by %s", bestValue, describe(ws[0]))
	}
	var last []string
	for _, i := range bestPrefix {
		last = append(last, describe(lin[i].src))
	}
	blocked := describe(lin[bestOp].src)
	if o := lin[bestOp]; !o.write {
		if ws := writers[o.value]; o.value != initial && len(ws) > 0 {
			blocked += fmt.Sprintf(" (its value written by %s)", describe(ws[0]))
		}
	}
	return Violation, fmt.Sprintf("at most %d of %d ops linearize before %s must take effect, "+
		"and it cannot: the register holds %s (last linearized: %v); %s, %d states, %v",
		bestDepth, n, blocked, holder, last, summary(), states, el)
}

// StaleRead returns a copy of ops in which one known read, from the middle
// of the history on, returns the value of a known write that completed
// before another known write completed before the read began: a stale read,
// which a check must reject if the writes' values are unique. It is how a
// test shows that its histories, with their real times, would catch one.
// i is the read changed; ok is false if the history has no such read.
func StaleRead(ops []RegOp) (_ []RegOp, i int, ok bool) {
	out := slices.Clone(ops)
	known := func(o RegOp) bool { return o.Write && !o.Unknown }
	for i := len(out) / 2; i < len(out); i++ {
		rd := out[i]
		if rd.Write || rd.Unknown {
			continue
		}
		newer := -1
		for j, o := range out {
			if known(o) && o.Return.Before(rd.Call) && (newer < 0 || o.Call.After(out[newer].Call)) {
				newer = j
			}
		}
		if newer < 0 {
			continue
		}
		for _, o := range out {
			if known(o) && o.Return.Before(out[newer].Call) {
				out[i].Value = o.Value
				return out, i, true
			}
		}
	}
	return nil, -1, false
}
