package itest

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// t0 is the histories' origin; at(ms) a time on their clock.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// w and r are a known write and read by client c over [call, ret] ms; uw is
// an unknown write called at call, ur an unknown read.
func w(c int, v int64, call, ret int) RegOp {
	return RegOp{Client: c, Write: true, Value: v, Call: at(call), Return: at(ret)}
}
func r(c int, v int64, call, ret int) RegOp {
	return RegOp{Client: c, Value: v, Call: at(call), Return: at(ret)}
}
func uw(c int, v int64, call int) RegOp {
	return RegOp{Client: c, Write: true, Value: v, Call: at(call), Unknown: true}
}
func ur(c int, v int64, call int) RegOp {
	return RegOp{Client: c, Value: v, Call: at(call), Unknown: true}
}

func TestCheckRegister(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []RegOp
		want LinResult
		why  string // a substring of the explanation
	}{
		{"empty", nil, Linearizable, ""},
		{"sequential", []RegOp{r(0, 0, 0, 1), w(0, 1, 2, 3), r(1, 1, 4, 5), w(1, 2, 6, 7), r(0, 2, 8, 9)}, Linearizable, ""},
		{"sequential, stale read", []RegOp{w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)}, Violation, "op 2 (client 1 read 1"},
		{"sequential, read of the initial value after a write", []RegOp{w(0, 1, 0, 1), r(1, 0, 2, 3)}, Violation, "the register holds 1"},
		{"concurrent writes, reads of either value during them", []RegOp{
			w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 1, 2, 3), r(3, 2, 2, 3), r(2, 2, 4, 5), r(3, 0, 1, 2),
		}, Linearizable, ""},
		{"concurrent writes, then reads of the winner", []RegOp{
			w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 1, 11, 12), r(3, 1, 11, 13),
		}, Linearizable, ""},
		{"concurrent writes, later reads disagree", []RegOp{
			w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 2, 11, 12), r(3, 1, 13, 14),
		}, Violation, "cannot"},
		{"a read overlapping a write reads the old value", []RegOp{w(0, 1, 0, 1), w(0, 2, 2, 10), r(1, 1, 3, 4), r(1, 2, 5, 6)}, Linearizable, ""},
		{"stale read after a completed later write", []RegOp{
			w(0, 1, 0, 2), w(1, 2, 1, 3), r(2, 2, 4, 5), w(0, 3, 6, 7), r(1, 2, 8, 9),
		}, Violation, "op 4 (client 1 read 2"},
		{"read of a value never written", []RegOp{w(0, 1, 0, 1), r(1, 7, 2, 3)}, Violation, "never written"},
		{"read of the initial value, nothing written", []RegOp{r(0, 0, 0, 1), r(1, 0, 0, 1)}, Linearizable, ""},
		{"read of a value before its write began", []RegOp{r(1, 1, 0, 1), w(0, 1, 2, 3)}, Violation, "began after the read returned"},
		{"read that returns during its write", []RegOp{w(0, 1, 0, 4), r(1, 1, 1, 2)}, Linearizable, ""},
		{"touching intervals overlap", []RegOp{w(0, 1, 0, 2), r(1, 1, 2, 2)}, Linearizable, ""},
		{"unknown write observed late", []RegOp{
			w(0, 1, 0, 1), uw(1, 2, 2), r(0, 1, 3, 4), w(0, 3, 5, 6), r(0, 3, 7, 8), r(2, 2, 50, 51), r(0, 2, 52, 53),
		}, Linearizable, ""},
		{"unknown write never observed", []RegOp{w(0, 1, 0, 1), uw(1, 2, 2), r(0, 1, 3, 4), r(0, 1, 50, 51)}, Linearizable, ""},
		{"unknown write observed, then an older value again", []RegOp{w(0, 1, 0, 1), uw(1, 2, 2), r(0, 2, 3, 4), r(0, 1, 5, 6)}, Violation, "cannot"},
		{"read of an unknown write's value before its call", []RegOp{w(0, 1, 0, 1), r(0, 2, 2, 3), uw(1, 2, 4)}, Violation, "began after the read returned"},
		{"unknown writes: only the last observed counts", []RegOp{uw(0, 1, 0), uw(1, 2, 0), uw(2, 3, 0), r(3, 2, 5, 6), r(3, 2, 7, 8)}, Linearizable, ""},
		{"unknown writes observed in an impossible order", []RegOp{uw(0, 1, 0), uw(1, 2, 0), r(3, 1, 5, 6), r(3, 2, 7, 8), r(3, 1, 9, 10)}, Violation, "cannot"},
		{"unknown read dropped", []RegOp{w(0, 1, 0, 1), ur(1, 99, 2), r(0, 1, 3, 4)}, Linearizable, ""},
		{"reads flip back to an older value", []RegOp{
			w(0, 1, 0, 20), w(1, 2, 0, 20), r(2, 1, 2, 3), r(2, 2, 4, 5), r(2, 1, 6, 7),
		}, Violation, "cannot"},
		{"reads flip back, across clients", []RegOp{
			w(0, 1, 0, 1), w(0, 2, 2, 20), r(1, 2, 3, 4), r(2, 1, 5, 6),
		}, Violation, "cannot"},
		{"a definite write must take effect before it returns", []RegOp{w(0, 1, 0, 1), r(1, 0, 2, 3)}, Violation, "cannot"},
		{"a value written twice, once of unknown outcome, read between", []RegOp{
			w(0, 1, 0, 1), uw(1, 2, 2), r(3, 2, 3, 4), w(2, 2, 10, 11), r(3, 2, 12, 13),
		}, Linearizable, ""},
		{"a value written twice, once of unknown outcome, then an older value", []RegOp{
			w(0, 1, 0, 1), uw(1, 2, 2), r(3, 2, 3, 4), r(3, 1, 5, 6), w(2, 2, 10, 11),
		}, Violation, "cannot"},
		{"not a history: return before call", []RegOp{w(0, 1, 5, 1)}, Undecided, "returned before its call"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := CheckRegister(0, tc.ops)
			t.Logf("%v: %s", got, why)
			if got != tc.want {
				t.Errorf("CheckRegister = %v (%s), want %v", got, why, tc.want)
			}
			if tc.why != "" && !strings.Contains(why, tc.why) {
				t.Errorf("explanation %q does not say %q", why, tc.why)
			}
		})
	}
}

// TestCheckRegisterBudget: a search that needs more than its budget says
// Undecided, at once, rather than searching on.
func TestCheckRegisterBudget(t *testing.T) {
	ops, _ := simulateRegister(rand.New(rand.NewPCG(3, 3)), 8, 4000, 0.1)
	got, why := LinBudget{States: 10, Time: time.Minute}.CheckRegister(0, ops)
	t.Logf("%v: %s", got, why)
	if got != Undecided || !strings.Contains(why, "budget") {
		t.Errorf("CheckRegister with 10 states = %v (%s), want %v", got, why, Undecided)
	}
}

// simulateRegister returns the history of an atomic register (initial 0)
// used by clients clients, n ops in all, each op taking effect at a random
// point of its interval; intervals of 1-100 µs and now and then of 2 ms,
// with random gaps, so that the clients' ops overlap at random. A share
// unknown of the writes is marked Unknown (half of them never took
// effect), and as many reads (given a value never written). It also
// returns the index of each op's effect in the register's order.
func simulateRegister(rng *rand.Rand, clients, n int, unknown float64) ([]RegOp, []int64) {
	type sim struct {
		op      RegOp
		point   int64
		applied bool
	}
	var all []sim
	next := int64(0)
	clock := make([]int64, clients)
	for i := range clock {
		clock[i] = rng.Int64N(10_000)
	}
	for i := range n {
		c := i % clients
		dur := 1_000 + rng.Int64N(100_000)
		if rng.IntN(100) == 0 {
			dur = 2_000_000
		}
		call := clock[c]
		s := sim{op: RegOp{Client: c, Write: rng.IntN(5) < 2, Call: t0.Add(time.Duration(call)), Return: t0.Add(time.Duration(call + dur))},
			point: call + rng.Int64N(dur+1), applied: true}
		if s.op.Write {
			next++
			s.op.Value = next
		}
		if rng.Float64() < unknown {
			s.op.Unknown = true
			s.applied = !s.op.Write || rng.IntN(2) == 0
		}
		clock[c] = call + dur + rng.Int64N(20_000)
		all = append(all, s)
	}
	byPoint := make([]int, len(all))
	for i := range byPoint {
		byPoint[i] = i
	}
	slices.SortFunc(byPoint, func(a, b int) int { return int(all[a].point - all[b].point) })
	v := int64(0)
	points := make([]int64, len(all))
	for k, i := range byPoint {
		points[i] = int64(k)
		switch s := &all[i]; {
		case s.op.Write && s.applied:
			v = s.op.Value
		case !s.op.Write && s.op.Unknown:
			s.op.Value = -1
		case !s.op.Write:
			s.op.Value = v
		}
	}
	ops := make([]RegOp, len(all))
	for i, s := range all {
		ops[i] = s.op
	}
	return ops, points
}

// TestCheckRegisterLarge: random linearizable histories of an atomic
// register, thousands of ops by 4 or 8 clients, some of unknown outcome,
// check linearizable well within the budget; the same with one read made
// stale is a violation, found as fast.
func TestCheckRegisterLarge(t *testing.T) {
	budget := LinBudget{States: 1 << 20, Time: 5 * time.Second}
	for _, tc := range []struct {
		clients, n int
		unknown    float64
		seeds      uint64
	}{{4, 3000, 0, 2}, {8, 3000, 0, 2}, {8, 5000, 0.05, 2}, {8, 5000, 0.2, 2}, {6, 20000, 0.1, 1}} {
		for seed := range tc.seeds {
			rng := rand.New(rand.NewPCG(seed, uint64(tc.clients)))
			ops, _ := simulateRegister(rng, tc.clients, tc.n, tc.unknown)
			start := time.Now()
			got, why := budget.CheckRegister(0, ops)
			el := time.Since(start)
			t.Logf("%d clients, %d ops, %.0f%% unknown, seed %d: %v in %v: %s", tc.clients, tc.n, tc.unknown*100, seed, got, el.Round(time.Millisecond), why)
			if got != Linearizable {
				t.Fatalf("a simulated atomic register's history: %v: %s", got, why)
			}

			bad, stale, ok := StaleRead(ops)
			if !ok {
				t.Fatal("no read to make stale")
			}
			start = time.Now()
			got, why = budget.CheckRegister(0, bad)
			t.Logf("  with op %d stale: %v in %v: %.300s", stale, got, time.Since(start).Round(time.Millisecond), why)
			if got != Violation {
				t.Fatalf("a stale read: %v: %s", got, why)
			}
		}
	}
}

// TestCheckRegisterBruteForce compares the checker with the definition on
// small random histories: some order of the ops (an unknown write included
// or not) that respects real time (a before b when a returned before b was
// called) in which each read returns the last write's value.
func TestCheckRegisterBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	counts := map[LinResult]int{}
	for iter := range 3000 {
		n := 2 + rng.IntN(6)
		var ops []RegOp
		next := int64(0)
		for i := range n {
			call := rng.IntN(12)
			o := RegOp{Client: i, Write: rng.IntN(2) == 0, Call: at(call), Return: at(call + rng.IntN(6))}
			if o.Write {
				next++
				o.Value = next
			}
			o.Unknown = rng.IntN(4) == 0
			ops = append(ops, o)
		}
		for i := range ops {
			if !ops[i].Write {
				ops[i].Value = rng.Int64N(next + 2) // 0 (initial) .. next+1 (never written)
			}
		}
		got, why := CheckRegister(0, ops)
		want := bruteLinearizable(ops)
		counts[got]++
		if (got == Linearizable) != want || got == Undecided {
			for _, o := range ops {
				t.Logf("  %+v", o)
			}
			t.Fatalf("history %d: CheckRegister = %v (%s), the definition says linearizable=%v", iter, got, why, want)
		}
	}
	t.Logf("3000 random histories of 2-7 ops: %v", counts)
	if counts[Linearizable] < 300 || counts[Violation] < 300 {
		t.Errorf("the random histories are too one-sided: %v", counts)
	}
}

func bruteLinearizable(ops []RegOp) bool {
	var use []int // ops that must or may be placed
	for i, o := range ops {
		if !(o.Unknown && !o.Write) {
			use = append(use, i)
		}
	}
	before := func(a, b int) bool { // a must precede b
		return !ops[a].Unknown && ops[a].Return.Before(ops[b].Call)
	}
	placed := make([]bool, len(ops))
	var try func(left int, v int64) bool
	try = func(left int, v int64) bool {
		if left == 0 {
			return true
		}
		for _, i := range use {
			if placed[i] {
				continue
			}
			ok := true
			for _, j := range use { // nothing unplaced must come first
				if j != i && !placed[j] && before(j, i) {
					ok = false
				}
			}
			o := ops[i]
			if !ok || !o.Write && o.Value != v {
				continue
			}
			nv := v
			if o.Write {
				nv = o.Value
			}
			placed[i] = true
			if try(left-1, nv) {
				placed[i] = false
				return true
			}
			placed[i] = false
		}
		// An unknown write may never take effect: drop one still unplaced
		// whose absence leaves the rest placeable.
		for _, i := range use {
			if !placed[i] && ops[i].Unknown {
				placed[i] = true
				ok := try(left-1, v)
				placed[i] = false
				if ok {
					return true
				}
			}
		}
		return false
	}
	return try(len(use), 0)
}
