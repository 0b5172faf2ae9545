package sqlconflict

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// Fault injection: a TCP proxy on 127.0.0.1 between the driver and a real
// server cuts connections at chosen points of a write workload, and the test
// checks that no write whose outcome was unknown ran twice. See
// docs/reliability.md for the figures of a run.

// cutMode is where the proxy cuts a connection.
type cutMode int

const (
	// cutOnSend drops the triggering chunk and cuts: the server never sees
	// the statement, but the client's write has succeeded.
	cutOnSend cutMode = iota
	// cutMidMessage forwards part of the triggering chunk and cuts: the
	// server sees a truncated message and runs nothing.
	cutMidMessage
	// cutOnReply forwards the chunk and cuts when the server starts to
	// answer: the server ran (and, in autocommit or for COMMIT, committed)
	// the statement, and the client never hears of it.
	cutOnReply
	// cutAtOffset cuts after a number of client->server bytes counted from
	// the moment the fault is armed: a random point of the operation.
	cutAtOffset
	// cutIdle cuts every connection the proxy holds, between statements:
	// the pool's connections are dead before the next statement is sent.
	cutIdle
	numCutModes
)

var cutModeNames = [...]string{"on-send", "mid-message", "on-reply", "at-offset", "idle"}

func (m cutMode) String() string { return cutModeNames[m] }

// fault is an armed cut. The first link whose client->server traffic
// triggers it claims it.
type fault struct {
	mode   cutMode
	match  []byte // cutOnSend, cutMidMessage, cutOnReply: a chunk containing this
	offset int    // cutAtOffset: bytes left before the cut
	reset  bool   // close the client side with RST instead of FIN
	fired  atomic.Bool
}

// faultProxy forwards 127.0.0.1:port to one server and cuts connections on
// command. It also counts how often each workload token crossed it towards
// the server, which reveals a statement sent twice whatever the layer that
// resent it.
type faultProxy struct {
	ln     net.Listener
	target string
	tokens *regexp.Regexp

	mu       sync.Mutex
	links    map[*proxyLink]struct{}
	armed    *fault
	closed   bool
	accepted int
	sent     map[string]int // token -> complete chunks carrying it forwarded to the server
	wg       sync.WaitGroup
}

// newFaultProxy starts a proxy to target, which must be a loopback address.
func newFaultProxy(t testing.TB, target string, tokens *regexp.Regexp) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &faultProxy{ln: ln, target: target, tokens: tokens,
		links: map[*proxyLink]struct{}{}, sent: map[string]int{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		l := &proxyLink{p: p, client: c, server: s}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.links[l] = struct{}{}
		p.accepted++
		p.wg.Add(2)
		p.mu.Unlock()
		go l.upstream()
		go l.downstream()
	}
}

// close stops the proxy and waits for its goroutines.
func (p *faultProxy) close() {
	p.mu.Lock()
	p.closed = true
	links := make([]*proxyLink, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	p.ln.Close()
	for _, l := range links {
		l.cut(false)
	}
	p.wg.Wait()
}

// arm sets the fault the next matching traffic fires.
func (p *faultProxy) arm(f *fault) {
	p.mu.Lock()
	p.armed = f
	p.mu.Unlock()
}

// disarm removes a fault that did not fire.
func (p *faultProxy) disarm() {
	p.mu.Lock()
	p.armed = nil
	p.mu.Unlock()
}

// cutAll cuts every open link (cutIdle) and reports how many it cut.
func (p *faultProxy) cutAll(reset bool) int {
	p.mu.Lock()
	links := make([]*proxyLink, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.cut(reset)
	}
	return len(links)
}

// claim returns the armed fault if chunk (after tail, the end of the link's
// previous chunk) triggers it, and where in chunk: the cut point for
// cutAtOffset.
func (p *faultProxy) claim(tail, chunk []byte) (*fault, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.armed
	if f == nil {
		return nil, 0
	}
	if f.mode == cutAtOffset {
		if f.offset >= len(chunk) {
			f.offset -= len(chunk)
			return nil, 0
		}
		p.armed = nil
		return f, f.offset
	}
	if bytes.Contains(chunk, f.match) || bytes.Contains(append(append([]byte(nil), tail...), chunk...), f.match) {
		p.armed = nil
		return f, 0
	}
	return nil, 0
}

// noteSent counts the tokens in a chunk forwarded whole to the server.
func (p *faultProxy) noteSent(chunk []byte) {
	if p.tokens == nil {
		return
	}
	ms := p.tokens.FindAll(chunk, -1)
	if len(ms) == 0 {
		return
	}
	p.mu.Lock()
	for _, m := range ms {
		p.sent[string(m)]++
	}
	p.mu.Unlock()
}

func (p *faultProxy) sentCount(token string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[token]
}

// proxyLink is one proxied connection.
type proxyLink struct {
	p              *faultProxy
	client, server net.Conn
	once           sync.Once

	mu    sync.Mutex
	reply *fault      // cutOnReply: cut at the server's first byte
	timer *time.Timer // cutOnReply: bounds the wait for that byte
}

// cut closes both sides, the client's with RST if reset.
func (l *proxyLink) cut(reset bool) {
	l.once.Do(func() {
		l.mu.Lock()
		if l.timer != nil {
			l.timer.Stop()
		}
		l.mu.Unlock()
		if tc, ok := l.client.(*net.TCPConn); ok && reset {
			tc.SetLinger(0)
		}
		l.client.Close()
		l.server.Close()
		l.p.mu.Lock()
		delete(l.p.links, l)
		l.p.mu.Unlock()
	})
}

func (l *proxyLink) upstream() {
	defer l.p.wg.Done()
	buf := make([]byte, 64<<10)
	var tail []byte
	for {
		n, err := l.client.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if f, at := l.p.claim(tail, chunk); f != nil {
				f.fired.Store(true)
				switch f.mode {
				case cutOnSend:
					l.cut(f.reset)
					return
				case cutMidMessage:
					l.server.Write(chunk[:len(chunk)/2])
					l.cut(f.reset)
					return
				case cutAtOffset:
					l.server.Write(chunk[:at])
					l.cut(f.reset)
					return
				case cutOnReply:
					l.mu.Lock()
					l.reply = f
					// Bound the wait for an answer that may never come.
					l.timer = time.AfterFunc(5*time.Second, func() { l.cut(f.reset) })
					l.mu.Unlock()
				}
			}
			if _, err := l.server.Write(chunk); err != nil {
				l.cut(false)
				return
			}
			l.p.noteSent(chunk)
			tail = append(tail[:0], chunk[max(0, n-64):]...)
		}
		if err != nil {
			l.cut(false)
			return
		}
	}
}

func (l *proxyLink) downstream() {
	defer l.p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := l.server.Read(buf)
		if n > 0 {
			l.mu.Lock()
			f := l.reply
			l.mu.Unlock()
			if f != nil {
				// The server has answered, so it ran the statement; the
				// client never hears the answer.
				l.cut(f.reset)
				return
			}
			if _, err := l.client.Write(buf[:n]); err != nil {
				l.cut(false)
				return
			}
		}
		if err != nil {
			l.cut(false)
			return
		}
	}
}

// viaProxy returns the server's address, which must be on loopback, and the
// DSN that reaches it through addr instead.
func (s server) viaProxy(t testing.TB) (target string, dsnVia func(addr string) string) {
	t.Helper()
	var host, port string
	if s.PG() {
		if !isPostgresURL(s.DSN) {
			t.Skipf("fault tests need %s as a postgres:// URL", itest.EnvPG)
		}
		u, err := url.Parse(s.DSN)
		if err != nil {
			t.Fatalf("%s: %v", itest.EnvPG, err)
		}
		host, port = u.Hostname(), u.Port()
		if port == "" {
			port = "5432"
		}
		dsnVia = func(addr string) string {
			v := *u
			v.Host = addr
			return v.String()
		}
	} else {
		cfg, err := mysql.ParseDSN(s.DSN)
		if err != nil {
			t.Fatalf("%s: %v", itest.EnvMySQL, err)
		}
		if cfg.Net != "tcp" {
			t.Skipf("fault tests need %s over tcp, not %s", itest.EnvMySQL, cfg.Net)
		}
		h, p, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			h, p = cfg.Addr, "3306"
		}
		host, port = h, p
		dsnVia = func(addr string) string {
			c := cfg.Clone()
			c.Addr = addr
			return c.FormatDSN()
		}
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		t.Fatalf("resolve %s: %v", host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			t.Skipf("fault tests only proxy to loopback servers; %s is %s", host, ip)
		}
	}
	return net.JoinHostPort(ips[0].String(), port), dsnVia
}

// openObservedDSN opens dsn with the wrapped driver of s and obs as
// Options.Observer.
func (s server) openObservedDSN(t testing.TB, dsn string, obs Observer) *sql.DB {
	t.Helper()
	reg, err := sql.Open(s.Driver, "")
	if err != nil {
		t.Fatal(err)
	}
	d := *reg.Driver().(*Driver)
	reg.Close()
	d.opts.Observer = obs
	c, err := d.OpenConnector(dsn)
	if err != nil {
		t.Fatalf("OpenConnector: %v", err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("%s server unreachable through %s: %v", s.Name, dsn, err)
	}
	return db
}

// lossCounter is an Observer that records the wrapper's retries, and those
// of an error whose outcome was unknown in particular.
type lossCounter struct {
	retries, lostRetries atomic.Int64
	mu                   sync.Mutex
	lost                 []Class
}

func (c *lossCounter) observe(_ context.Context, o Observation) {
	if o.Event != EventRetry {
		return
	}
	c.retries.Add(1)
	if o.Class.Kind == KindConnectionLost || o.Class.Scope == ScopeUnknownOutcome {
		c.lostRetries.Add(1)
		c.mu.Lock()
		c.lost = append(c.lost, o.Class)
		c.mu.Unlock()
	}
}

// faultOp is one write of the workload.
type faultOp int

const (
	opAutoLiteral   faultOp = iota // db.Exec, SQL text with the token (simple query protocol / COM_QUERY)
	opAutoArgs                     // db.Exec with the token as an argument (extended protocol / prepared)
	opAutoReturning                // db.QueryRow INSERT ... RETURNING (rows followed by the wrapper)
	opTx                           // BEGIN; INSERT; COMMIT with database/sql's Tx
	opRunTx                        // RunTx around the INSERT
	numFaultOps
)

var faultOpNames = [...]string{"autocommit", "autocommit-args", "autocommit-returning", "tx", "runtx"}

func (o faultOp) String() string { return faultOpNames[o] }

// faultOutcome is what the client learnt of one write.
type faultOutcome int

const (
	outAcked      faultOutcome = iota // no error: the row must be there once
	outUnknown                        // connection lost where the write may have run: 0 or 1 row
	outNotApplied                     // the transaction died before COMMIT: no row
)

// faultReport is the test's figures for one server.
type faultReport struct {
	seed                                  uint64
	ops, cuts, acked, unknown, notApplied int
	unknownApplied, rows, duplicates      int
	resent, resentAfterRun                int
	replayedAfterRun                      int // in a transaction replayed on a new connection
	wrapperRetries, wrapperRetriesOnLoss  int64
	runTxReruns                           int
	byMode                                [numCutModes]int
	errKinds                              map[string]int
	firstDup                              string
}

func (r faultReport) String() string {
	var modes []string
	for m, n := range r.byMode {
		modes = append(modes, fmt.Sprintf("%s %d", cutMode(m), n))
	}
	var kinds []string
	for k, n := range r.errKinds {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(kinds)
	return fmt.Sprintf("seed=%d ops=%d cuts=%d (%s) acked=%d unknown-outcome=%d (found applied %d) failed-before-commit=%d rows=%d duplicates=%d "+
		"resent=%d (after the server ran it: %d; in a transaction replayed on a new connection: %d) wrapper-retries=%d on-conn-loss=%d runtx-reruns-on-conn-loss=%d errors={%s}",
		r.seed, r.ops, r.cuts, strings.Join(modes, ", "), r.acked, r.unknown, r.unknownApplied, r.notApplied, r.rows, r.duplicates,
		r.resent, r.resentAfterRun, r.replayedAfterRun, r.wrapperRetries, r.wrapperRetriesOnLoss, r.runTxReruns, strings.Join(kinds, "; "))
}

// faultSeed is the workload's RNG seed: SQLCONFLICT_FAULT_SEED, or 1.
func faultSeed(t testing.TB) uint64 {
	if v := os.Getenv("SQLCONFLICT_FAULT_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SQLCONFLICT_FAULT_SEED: %v", err)
		}
		return n
	}
	return 1
}

const faultOps = 150

// TestIntegrationFaultConnectionCuts runs a write workload through the
// proxy with cuts before the statement is sent, mid-message, after the
// server ran it, at random offsets, during COMMIT and between statements,
// and checks that the table holds exactly the acknowledged writes plus
// possibly the unknown-outcome ones, and no duplicate.
func TestIntegrationFaultConnectionCuts(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		direct := s.open(t)
		target, dsnVia := s.viaProxy(t)
		cols := "id BIGSERIAL PRIMARY KEY, token VARCHAR(64) NOT NULL"
		if !s.PG() {
			cols = "id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL"
		}
		// No unique constraint on token: a write run twice shows as a
		// duplicate token instead of failing.
		tbl := s.table(t, direct, "", cols)

		seed := faultSeed(t)
		prefix := fmt.Sprintf("fz%s%x", runID, seed)
		tokRe := regexp.MustCompile(prefix + `n[0-9]{4}x`)
		proxy := newFaultProxy(t, target, tokRe)
		var obs lossCounter
		db := s.openObservedDSN(t, dsnVia(proxy.addr()), obs.observe)
		db.SetMaxOpenConns(4)

		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		rep := faultReport{seed: seed, ops: faultOps, errKinds: map[string]int{}}
		outcomes := map[string]faultOutcome{}
		details := map[string]string{} // token -> op, cut and error, for failure messages
		modes := map[string]cutMode{}
		inTxTok := map[string]bool{}
		var order []string
		deadline := time.Now().Add(90 * time.Second)

		for i := range faultOps {
			if time.Now().After(deadline) {
				t.Errorf("workload exceeded its time budget after %d ops", i)
				rep.ops = i
				break
			}
			tok := fmt.Sprintf("%sn%04dx", prefix, i)
			order = append(order, tok)
			op := faultOp(rng.IntN(int(numFaultOps)))
			inTx := op == opTx || op == opRunTx
			inTxTok[tok] = inTx

			// One operation in four runs without a fault.
			var f *fault
			if rng.IntN(4) != 0 {
				f = &fault{mode: cutMode(rng.IntN(int(numCutModes))), reset: rng.IntN(2) == 0, match: []byte(tok)}
				if inTx && rng.IntN(2) == 0 {
					f.match = []byte("COMMIT")
				}
				if f.mode == cutAtOffset {
					f.offset = rng.IntN(160)
				}
			}
			if f != nil && f.mode == cutIdle {
				f.fired.Store(proxy.cutAll(f.reset) > 0)
			} else if f != nil {
				proxy.arm(f)
			}

			start := time.Now()
			out, reruns, err := runFaultOp(s, db, tbl, op, tok, rng.IntN(2) == 0)
			if d := time.Since(start); d > time.Second {
				t.Logf("slow op %d %v (cut %s): %v, error %v", i, op, modeName(f), d.Round(time.Millisecond), err)
			}
			proxy.disarm()
			if f != nil && f.fired.Load() {
				rep.cuts++
				rep.byMode[f.mode]++
				modes[tok] = f.mode
			}
			rep.runTxReruns += reruns
			outcomes[tok] = out
			details[tok] = fmt.Sprintf("op %d %v, cut %s, error %v", i, op, modeName(f), err)
			switch out {
			case outAcked:
				rep.acked++
			case outUnknown:
				rep.unknown++
			case outNotApplied:
				rep.notApplied++
			}
			if err != nil {
				cl := Classify(err)
				rep.errKinds[fmt.Sprintf("%s %v/%v", errName(err), cl.Kind, cl.Scope)]++
				if cl.Kind != KindConnectionLost || cl.Scope != ScopeUnknownOutcome {
					t.Errorf("op %d %v (%s): error %v classified %v/%v, want %v/%v",
						i, op, modeName(f), err, cl.Kind, cl.Scope, KindConnectionLost, ScopeUnknownOutcome)
				}
			}
		}

		// What the table holds, read directly.
		var found map[string]int
		found, rep.rows = tokenRows(t, context.Background(), direct, tbl)

		for _, tok := range order {
			n := found[tok]
			if n > 1 {
				rep.duplicates += n - 1
				if rep.firstDup == "" {
					rep.firstDup = fmt.Sprintf("%s (%s) is there %d times", tok, details[tok], n)
				}
				t.Logf("duplicate: %s (%s) is there %d times, sent %d times", tok, details[tok], n, proxy.sentCount(tok))
			}
			if sent := proxy.sentCount(tok); sent > 1 {
				rep.resent++
				switch {
				case modes[tok] != cutOnReply:
				case inTxTok[tok]:
					// A transaction's write that the server ran, then lost
					// with the connection before COMMIT, sent again by a
					// replay on a new connection (move.go): the first
					// never committed, as the duplicates check shows.
					rep.replayedAfterRun++
				default:
					rep.resentAfterRun++
				}
			}
			switch outcomes[tok] {
			case outAcked:
				if n == 0 {
					t.Errorf("acknowledged write %s (%s) is missing", tok, details[tok])
				}
			case outUnknown:
				if n == 1 {
					rep.unknownApplied++
				}
			case outNotApplied:
				if n != 0 {
					t.Errorf("write %s whose transaction failed before COMMIT (%s) is there %d times", tok, details[tok], n)
				}
			}
			delete(found, tok)
		}
		for tok := range found {
			t.Errorf("unexpected token %s in the table", tok)
		}
		rep.wrapperRetries = obs.retries.Load()
		rep.wrapperRetriesOnLoss = obs.lostRetries.Load()

		t.Logf("fault report %s: %v", s.Name, rep)
		if rep.duplicates != 0 {
			t.Errorf("%d duplicate writes, e.g. %s", rep.duplicates, rep.firstDup)
		}
		if rep.wrapperRetriesOnLoss != 0 {
			t.Errorf("the wrapper retried %d statements after a lost connection: %v", rep.wrapperRetriesOnLoss, obs.lost)
		}
		// RunTx reruns a transaction whose connection broke before its
		// COMMIT was written (go-sql-driver/mysql answers ErrBadConn only
		// when it wrote nothing: a reset that arrives after the reply to
		// the last statement and before COMMIT), never one whose COMMIT
		// may have run: a rerun of that would show as a duplicate token.
		// The reruns are counted in the report, and checked by the
		// duplicates.
		if rep.resentAfterRun != 0 {
			t.Errorf("%d writes were sent again after the server had run them", rep.resentAfterRun)
		}
		if rep.cuts < faultOps/3 {
			t.Errorf("only %d cuts fired in %d ops: the proxy's triggers do not match the traffic", rep.cuts, faultOps)
		}
		for m, n := range rep.byMode {
			if n == 0 {
				t.Errorf("no %s cut fired", cutMode(m))
			}
		}
	})
}

func modeName(f *fault) string {
	if f == nil || !f.fired.Load() {
		return "none"
	}
	return f.mode.String()
}

// errName names an error for the report: the sentinel it matches, or its
// type and message.
func errName(err error) string {
	switch {
	case errors.Is(err, driver.ErrBadConn):
		return "driver.ErrBadConn"
	case errors.Is(err, mysql.ErrInvalidConn):
		return "mysql.ErrInvalidConn"
	case errors.Is(err, context.DeadlineExceeded):
		return "context.DeadlineExceeded"
	case errors.Is(err, context.Canceled):
		return "context.Canceled"
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return fmt.Sprintf("*net.OpError %s: %v", opErr.Op, opErr.Err)
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return "*pq.Error " + string(pqErr.Code)
	}
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		return fmt.Sprintf("*mysql.MySQLError %d", myErr.Number)
	}
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60] + "..."
	}
	return fmt.Sprintf("%T %q", err, msg)
}

// runFaultOp runs one write and says what the client knows of it. reruns
// counts RunTx attempts beyond the first that followed a lost connection.
func runFaultOp(s server, db *sql.DB, tbl string, op faultOp, tok string, useArg bool) (faultOutcome, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	literal := "INSERT INTO " + tbl + " (token) VALUES ('" + tok + "')"
	withArg := s.q("INSERT INTO " + tbl + " (token) VALUES ($1)")
	switch op {
	case opAutoLiteral:
		_, err := db.ExecContext(ctx, literal)
		return autoOutcome(err), 0, err
	case opAutoArgs:
		_, err := db.ExecContext(ctx, withArg, tok)
		return autoOutcome(err), 0, err
	case opAutoReturning:
		var id int64
		err := db.QueryRowContext(ctx, withArg+" RETURNING id", tok).Scan(&id)
		return autoOutcome(err), 0, err
	case opTx:
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return outNotApplied, 0, err
		}
		q, args := literal, []any(nil)
		if useArg {
			q, args = withArg, []any{tok}
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			tx.Rollback()
			return outNotApplied, 0, err
		}
		if err := tx.Commit(); err != nil {
			return outUnknown, 0, err
		}
		return outAcked, 0, nil
	case opRunTx:
		// The workload has no conflicts, so any attempt after the first
		// is a rerun after a lost connection.
		attempts, committing := 0, false
		err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			_, err := tx.ExecContext(ctx, withArg, tok)
			committing = err == nil
			return err
		})
		switch {
		case err == nil:
			return outAcked, max(0, attempts-1), nil
		case committing:
			return outUnknown, max(0, attempts-1), err
		default:
			return outNotApplied, max(0, attempts-1), err
		}
	}
	panic("unknown op")
}

func autoOutcome(err error) faultOutcome {
	if err == nil {
		return outAcked
	}
	return outUnknown
}

// tokenRows reads how many rows of tbl hold each token, and their total:
// what the fault and restart workloads check their acknowledged writes
// against.
func tokenRows(t *testing.T, ctx context.Context, db *sql.DB, tbl string) (map[string]int, int) {
	t.Helper()
	rows, err := db.QueryContext(ctx, "SELECT token, COUNT(*) FROM "+tbl+" GROUP BY token")
	if err != nil {
		t.Fatal(err)
	}
	found, total := map[string]int{}, 0
	for rows.Next() {
		var tok string
		var n int
		if err := rows.Scan(&tok, &n); err != nil {
			t.Fatal(err)
		}
		found[tok] = n
		total += n
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	return found, total
}
