package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// The races and faults on a three-node MariaDB Galera cluster (.ci/galera,
// named by SQLCONFLICT_GALERA_DSNS), at the default options, with one
// *sql.DB per node. On Galera a conflict between nodes is found at
// certification, when the transaction commits: the loser gets 1213 at
// COMMIT, or at its next statement if a replicated write set aborted it
// first (a brute-force abort).

// galera is the cluster as the tests see it.
type galera struct {
	s     server    // node 1, for table and q
	dbs   []*sql.DB // the wrapped driver, one per node
	raw   []*sql.DB // the raw driver, for SET GLOBAL and status
	check []*sql.DB // the raw driver with wsrep_sync_wait=1: reads that see every write committed anywhere before them
	// serverLost is how many events a fault made the cluster itself lose,
	// as .ci/galera restart reports them (lost_events=N): writesets a node
	// killed with -9 had committed and acknowledged that no other node
	// received. galeraFault lets that many acknowledged writes of the
	// phase "killed" be missing, and no more.
	serverLost int
}

// openGalera opens the cluster, skipping the test if SQLCONFLICT_GALERA_DSNS
// is unset and failing it if a node does not answer or the cluster is not
// whole.
func openGalera(t *testing.T) *galera {
	t.Helper()
	g := &galera{
		s:     server{itest.GaleraServer(t, 0, DriverMySQL, "mysql")},
		dbs:   itest.OpenGalera(t, DriverMySQL),
		raw:   itest.OpenGalera(t, "mysql"),
		check: itest.OpenGalera(t, "mysql", "wsrep_sync_wait=1"),
	}
	if len(g.dbs) != 3 {
		t.Fatalf("%s names %d nodes, want 3", itest.EnvGalera, len(g.dbs))
	}
	g.waitHealthy(t, 60*time.Second)
	return g
}

// openObserved opens the wrapped driver on every node with obs as
// Options.Observer and otherwise the defaults.
func (g *galera) openObserved(t *testing.T, obs Observer) []*sql.DB {
	t.Helper()
	dbs := make([]*sql.DB, len(g.dbs))
	for i := range dbs {
		s := server{itest.GaleraServer(t, i, DriverMySQL, "mysql")}
		dbs[i] = s.openObservedDSN(t, s.DSN, obs)
	}
	return dbs
}

// status reads a wsrep status variable of node i ("" if it cannot).
func (g *galera) status(ctx context.Context, i int, name string) string {
	var n, v string
	if err := g.raw[i].QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE '"+name+"'").Scan(&n, &v); err != nil {
		return ""
	}
	return v
}

// healthy reports whether every node is Synced in a primary component of 3,
// and describes the cluster.
func (g *galera) healthy(ctx context.Context) (bool, string) {
	ok := true
	var desc []string
	for i := range g.raw {
		state, size, prim := g.status(ctx, i, "wsrep_local_state_comment"), g.status(ctx, i, "wsrep_cluster_size"), g.status(ctx, i, "wsrep_cluster_status")
		if state != "Synced" || size != "3" || prim != "Primary" {
			ok = false
		}
		desc = append(desc, fmt.Sprintf("node%d=%s/%s/%s", i+1, state, size, prim))
	}
	return ok, strings.Join(desc, " ")
}

// waitHealthy fails t unless the cluster is whole within d.
func (g *galera) waitHealthy(t testing.TB, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		ok, desc := g.healthy(ctx)
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Galera cluster not whole after %v: %s", d, desc)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// table creates a table (on node 1 unless on says otherwise) and waits until
// every node has it.
func (g *galera) table(t *testing.T, on int, suffix, cols string) string {
	t.Helper()
	tbl := g.s.table(t, g.dbs[on], suffix, cols)
	for _, c := range g.check {
		count(t, c, "SELECT COUNT(*) FROM "+tbl)
	}
	return tbl
}

// setGlobal runs SET GLOBAL on node i through the raw driver and registers
// the reset on t's cleanup, so that a failing test does not leave the node
// changed.
func (g *galera) setGlobal(t *testing.T, i int, assignment, reset string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := g.raw[i].ExecContext(ctx, "SET GLOBAL "+reset); err != nil {
			t.Errorf("node %d: SET GLOBAL %s: %v", i+1, reset, err)
		}
	})
	if _, err := g.raw[i].Exec("SET GLOBAL " + assignment); err != nil {
		t.Fatalf("node %d: SET GLOBAL %s: %v", i+1, assignment, err)
	}
}

// galeraStorm runs f(worker, op) on workers goroutines, ops times each.
func galeraStorm(workers, ops int, f func(w, i int) error) []error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				if err := f(w, i); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("worker %d (node %d) op %d: %w", w, w%3+1, i, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

// barrier lets n goroutines wait for each other, round after round.
type barrier struct {
	mu      sync.Mutex
	cond    *sync.Cond
	n, here int
	round   int
}

func newBarrier(n int) *barrier {
	b := &barrier{n: n}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// wait returns once all n goroutines have called it for this round.
func (b *barrier) wait() {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.round
	if b.here++; b.here == b.n {
		b.here = 0
		b.round++
		b.cond.Broadcast()
		return
	}
	for r == b.round {
		b.cond.Wait()
	}
}

// errTally counts errors by a description of their code and class.
type errTally struct {
	mu sync.Mutex
	m  map[string]int
}

func (e *errTally) add(prefix string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[prefix+describeGaleraErr(err)]++
}

func (e *errTally) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, k := range e.m {
		n += k
	}
	return n
}

func (e *errTally) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) == 0 {
		return "none"
	}
	var out []string
	for k, n := range e.m {
		out = append(out, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// dupEntry matches the row value in a 1062 message, left out of the tallies.
var dupEntry = regexp.MustCompile(`Duplicate entry '.*'`)

// describeGaleraErr names an error by its code, message and Classify result.
func describeGaleraErr(err error) string {
	cl := Classify(err)
	what := errName(err)
	if me := (*mysql.MySQLError)(nil); errors.As(err, &me) {
		what = fmt.Sprintf("%d (%s) %q", me.Number, string(me.SQLState[:]), dupEntry.ReplaceAllString(me.Message, "Duplicate entry '…'"))
	} else if errors.Is(err, ErrTxAborted) {
		what = "ErrTxAborted: " + err.Error()
	}
	var re *RetryError
	if errors.As(err, &re) {
		what = fmt.Sprintf("RetryError after %d attempts: %s", re.Attempts, what)
	}
	return fmt.Sprintf("%s -> %v/%v retryable=%v", what, cl.Kind, cl.Scope, cl.Retryable)
}

// reportFailures logs the failed operations and fails t if there is any.
func reportFailures(t *testing.T, what string, total int, errs []error) {
	t.Helper()
	var tally errTally
	for _, err := range errs {
		tally.add("", errors.Unwrap(err)) // drop the worker/op prefix
	}
	if len(errs) == 0 {
		t.Logf("%s: 0 failed of %d", what, total)
	} else {
		t.Errorf("%s: %d of %d operations failed (want 0): %s; first: %v", what, len(errs), total, tally.String(), errs[0])
	}
}

// (a) The cluster is whole, and a row written through node 1 is read on
// node 3.
func TestIntegrationGaleraSmoke(t *testing.T) {
	g := openGalera(t)
	for i, db := range g.dbs {
		var name, size string
		if err := db.QueryRow("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'").Scan(&name, &size); err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
		if size != "3" {
			t.Errorf("node %d: wsrep_cluster_size = %s, want 3", i+1, size)
		}
	}
	tbl := g.table(t, 0, "", "id INT PRIMARY KEY, v VARCHAR(32) NOT NULL")
	mustExec(t, g.dbs[0], "INSERT INTO "+tbl+" (id, v) VALUES (1, 'from node 1')")
	// Through the wrapper on node 3: replication is asynchronous after
	// certification, so the row may take a moment to be applied there.
	deadline := time.Now().Add(10 * time.Second)
	var v string
	for {
		err := g.dbs[2].QueryRow("SELECT v FROM " + tbl + " WHERE id = 1").Scan(&v)
		if err == nil {
			break
		}
		if !errors.Is(err, sql.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("node 3 read: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v != "from node 1" {
		t.Errorf("node 3 read %q", v)
	}
	// With wsrep_sync_wait the read waits for the write: no polling.
	if n := count(t, g.check[2], "SELECT COUNT(*) FROM "+tbl+" WHERE id = 1"); n != 1 {
		t.Errorf("node 3 with wsrep_sync_wait: %d rows, want 1", n)
	}
}

// (b) Transactional increments of three hot rows, from workers spread over
// the nodes, each in RunTx at its defaults: no failure, no lost update.
func TestIntegrationGaleraTxIncrements(t *testing.T) {
	g := openGalera(t)
	for _, c := range []struct{ workers, ops int }{{12, 25}, {24, 15}} {
		t.Run(fmt.Sprintf("%dworkers", c.workers), func(t *testing.T) {
			tbl := g.table(t, 0, "", "id INT PRIMARY KEY, n INT NOT NULL")
			mustExec(t, g.dbs[0], "INSERT INTO "+tbl+" (id, n) VALUES (1, 0), (2, 0), (3, 0)")
			count(t, g.check[1], "SELECT COUNT(*) FROM "+tbl)
			count(t, g.check[2], "SELECT COUNT(*) FROM "+tbl)
			var acked [4]atomic.Int64
			var attempts atomic.Int64
			var stmtErrs errTally
			start := time.Now()
			errs := galeraStorm(c.workers, c.ops, func(w, i int) error {
				id := 1 + (w+i)%3
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				err := RunTx(ctx, g.dbs[w%3], nil, func(ctx context.Context, tx *sql.Tx) error {
					attempts.Add(1)
					var n int
					if err := tx.QueryRowContext(ctx, "SELECT n FROM "+tbl+" WHERE id = ?", id).Scan(&n); err != nil {
						stmtErrs.add("select: ", err)
						return err
					}
					if _, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET n = n + 1 WHERE id = ?", id); err != nil {
						stmtErrs.add("update: ", err)
						return err
					}
					return nil
				})
				if err == nil {
					acked[id].Add(1)
				}
				return err
			})
			total := c.workers * c.ops
			// Each failed attempt failed inside the function or at COMMIT.
			atCommit := attempts.Load() - int64(total) + int64(len(errs)) - int64(stmtErrs.total())
			t.Logf("%d workers × %d RunTx increments in %v: %d attempts (%d reruns); %d attempts failed at COMMIT, and inside the function: %s",
				c.workers, c.ops, time.Since(start).Round(time.Millisecond), attempts.Load(), attempts.Load()-int64(total), atCommit, stmtErrs.String())
			reportFailures(t, "RunTx increments", total, errs)
			for id := 1; id <= 3; id++ {
				n := count(t, g.check[(id+1)%3], "SELECT n FROM "+tbl+" WHERE id = ?", id)
				if int64(n) != acked[id].Load() {
					t.Errorf("row %d: n = %d, acknowledged increments %d", id, n, acked[id].Load())
				}
			}
		})
	}
}

// (c) Get-or-create on hot keys with a unique constraint, racing across the
// nodes: no failure, no duplicate, and every caller of a key gets its id.
func TestIntegrationGaleraGetOrCreate(t *testing.T) {
	g := openGalera(t)
	tbl := g.table(t, 0, "", "id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(64) NOT NULL, owner INT NOT NULL, CONSTRAINT uq_k UNIQUE (k)")
	// Each round, every key has three callers, one per node, and the
	// workers start each round together.
	const workers, rounds, keys = 12, 40, 4
	round := newBarrier(workers)
	var mu sync.Mutex
	got := map[string][]int64{}
	var attempts, created atomic.Int64
	var stmtErrs errTally
	runner := TxRunner{RetryUniqueViolation: true}
	start := time.Now()
	errs := galeraStorm(workers, rounds, func(w, i int) error {
		round.wait()
		key := fmt.Sprintf("r%02d-k%d", i, (w+i)%keys)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var id int64
		err := runner.Run(ctx, g.dbs[w%3], nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts.Add(1)
			err := tx.QueryRowContext(ctx, "SELECT id FROM "+tbl+" WHERE k = ?", key).Scan(&id)
			if !errors.Is(err, sql.ErrNoRows) {
				if err != nil {
					stmtErrs.add("select: ", err)
				}
				return err
			}
			res, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (k, owner) VALUES (?, ?)", key, w)
			if err != nil {
				stmtErrs.add("insert: ", err)
				return err
			}
			OnCommit(ctx, func() { created.Add(1) })
			id, err = res.LastInsertId()
			return err
		})
		if err == nil {
			mu.Lock()
			got[key] = append(got[key], id)
			mu.Unlock()
		}
		return err
	})
	total := workers * rounds
	t.Logf("%d workers × %d get-or-create in %v: %d attempts (%d reruns), %d creations committed; errors inside the function: %s",
		workers, rounds, time.Since(start).Round(time.Millisecond), attempts.Load(), attempts.Load()-int64(total), created.Load(), stmtErrs.String())
	reportFailures(t, "get-or-create", total, errs)

	rows, err := g.check[1].Query("SELECT k, COUNT(*), MIN(id) FROM " + tbl + " GROUP BY k")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	inTable := map[string]int64{}
	for rows.Next() {
		var k string
		var n int
		var id int64
		if err := rows.Scan(&k, &n, &id); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("key %s: %d rows", k, n)
		}
		inTable[k] = id
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(inTable) != rounds*keys {
		t.Errorf("%d keys in the table, want %d", len(inTable), rounds*keys)
	}
	if created.Load() != int64(len(inTable)) {
		t.Errorf("%d creations committed, %d rows", created.Load(), len(inTable))
	}
	for k, ids := range got {
		for _, id := range ids {
			if id != inTable[k] {
				t.Errorf("key %s: a caller got id %d, the row's id is %d (callers got %v)", k, id, inTable[k], ids)
				break
			}
		}
	}
}

// (d) Autocommit increments of three hot rows from workers spread over the
// nodes, at the default conflict_retries: no failure, exact counts.
func TestIntegrationGaleraAutocommitIncrements(t *testing.T) {
	g := openGalera(t)
	var retries, maxAttempt atomic.Int64
	var retried errTally
	dbs := g.openObserved(t, func(_ context.Context, o Observation) {
		if o.Event == EventRetry {
			retries.Add(1)
			for m := maxAttempt.Load(); int64(o.Attempt) > m && !maxAttempt.CompareAndSwap(m, int64(o.Attempt)); m = maxAttempt.Load() {
			}
			retried.mu.Lock()
			if retried.m == nil {
				retried.m = map[string]int{}
			}
			retried.m[fmt.Sprintf("%v %s", o.Class.Kind, o.Class.Code)]++
			retried.mu.Unlock()
		}
	})
	for _, c := range []struct{ workers, ops int }{{12, 200}, {24, 150}} {
		t.Run(fmt.Sprintf("%dworkers", c.workers), func(t *testing.T) {
			retries.Store(0)
			maxAttempt.Store(0)
			retried.mu.Lock()
			retried.m = nil
			retried.mu.Unlock()
			tbl := g.table(t, 0, "", "id INT PRIMARY KEY, n INT NOT NULL")
			mustExec(t, g.dbs[0], "INSERT INTO "+tbl+" (id, n) VALUES (1, 0), (2, 0), (3, 0)")
			count(t, g.check[1], "SELECT COUNT(*) FROM "+tbl)
			count(t, g.check[2], "SELECT COUNT(*) FROM "+tbl)
			var acked [4]atomic.Int64
			start := time.Now()
			r := runStorm(c.workers, c.ops, func(w, i int) error {
				id := 1 + (w+i)%3
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				_, err := dbs[w%3].ExecContext(ctx, "UPDATE "+tbl+" SET n = n + 1 WHERE id = ?", id)
				if err == nil {
					acked[id].Add(1)
				}
				return err
			})
			errs := r.errs
			total := c.workers * c.ops
			t.Logf("%d workers × %d autocommit increments in %v: %v; wrapper retries %d, at most %d attempts for one statement (%s)",
				c.workers, c.ops, time.Since(start).Round(time.Millisecond), r, retries.Load(), maxAttempt.Load(), retried.String())
			reportFailures(t, "autocommit increments", total, errs)
			sum := 0
			for id := 1; id <= 3; id++ {
				n := count(t, g.check[(id+1)%3], "SELECT n FROM "+tbl+" WHERE id = ?", id)
				sum += n
				if int64(n) != acked[id].Load() {
					t.Errorf("row %d: n = %d, acknowledged increments %d", id, n, acked[id].Load())
				}
			}
			if sum != total {
				t.Errorf("counters sum to %d, want %d", sum, total)
			}
		})
	}
}

// galeraWrite is one write of a fault workload and what the client learnt
// of it.
type galeraWrite struct {
	tok   string
	op    faultOp
	out   faultOutcome
	stage string // where it failed: connect, begin, exec, commit
	err   error
	phase string        // the workload's phase when it returned
	took  time.Duration // from the call to its return
}

// galeraWriteOp runs one write of tok into tbl through db.
func galeraWriteOp(db *sql.DB, tbl string, op faultOp, tok string) galeraWrite {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	wr := galeraWrite{tok: tok, op: op}
	literal := "INSERT INTO " + tbl + " (token) VALUES ('" + tok + "')"
	withArg := "INSERT INTO " + tbl + " (token) VALUES (?)"
	fail := func(out faultOutcome, stage string, err error) galeraWrite {
		wr.out, wr.stage, wr.err = out, stage, err
		if isConnectErr(err) {
			wr.stage = "connect"
		}
		return wr
	}
	switch op {
	case opAutoLiteral, opAutoArgs:
		var err error
		if op == opAutoLiteral {
			_, err = db.ExecContext(ctx, literal)
		} else {
			_, err = db.ExecContext(ctx, withArg, tok)
		}
		if err != nil {
			return fail(outUnknown, "exec", err)
		}
	case opAutoReturning:
		var id int64
		if err := db.QueryRowContext(ctx, withArg+" RETURNING id", tok).Scan(&id); err != nil {
			return fail(outUnknown, "exec", err)
		}
	case opTx:
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fail(outNotApplied, "begin", err)
		}
		if _, err := tx.ExecContext(ctx, withArg, tok); err != nil {
			tx.Rollback()
			return fail(outNotApplied, "exec", err)
		}
		if err := tx.Commit(); err != nil {
			return fail(outUnknown, "commit", err)
		}
	case opRunTx:
		began, reachedCommit, committing := false, false, false
		err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			began = true
			_, err := tx.ExecContext(ctx, withArg, tok)
			committing = err == nil
			reachedCommit = reachedCommit || committing
			return err
		})
		switch {
		case err == nil:
		case !began:
			return fail(outNotApplied, "begin", err)
		case committing:
			return fail(outUnknown, "commit", err)
		case reachedCommit:
			// An earlier attempt failed at COMMIT and RunTx ran it again.
			return fail(outUnknown, "exec (after a failed commit)", err)
		default:
			return fail(outNotApplied, "exec", err)
		}
	}
	wr.out = outAcked
	return wr
}

// isConnectErr reports a failure to connect: nothing was sent.
func isConnectErr(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// galeraFault runs a write workload through node target (0-based) while
// fault injects and heals a fault, then checks on another node that every
// acknowledged write is there exactly once (less at most g.serverLost of the
// phase "killed", which Galera itself lost), no write is there twice, and no
// write whose error Classify calls retryable took effect. fault calls
// phase to label the writes that return after it.
func galeraFault(t *testing.T, g *galera, target int, fault func(phase func(string))) {
	t.Helper()
	healthy := (target + 1) % 3
	tbl := g.table(t, healthy, "", "id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL")
	var retries atomic.Int64
	db := g.openObserved(t, func(_ context.Context, o Observation) {
		if o.Event == EventRetry {
			retries.Add(1)
		}
	})[target]

	const workers = 3
	prefix := fmt.Sprintf("g%s", runID)
	var phaseMu sync.Mutex
	phase := "before"
	setPhase := func(p string) {
		phaseMu.Lock()
		phase = p
		phaseMu.Unlock()
		t.Logf("phase: %s", p)
	}
	getPhase := func() string {
		phaseMu.Lock()
		defer phaseMu.Unlock()
		return phase
	}
	var mu sync.Mutex
	var writes []galeraWrite
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				tok := fmt.Sprintf("%sw%dn%05dx", prefix, w, n)
				start := time.Now()
				wr := galeraWriteOp(db, tbl, faultOp((w+i)%int(numFaultOps)), tok)
				wr.phase, wr.took = getPhase(), time.Since(start)
				mu.Lock()
				writes = append(writes, wr)
				mu.Unlock()
				if wr.err != nil {
					time.Sleep(50 * time.Millisecond) // no hot loop on a node that is down
				}
			}
		}()
	}
	// Stop the workers however this function ends (a t.Fatal in fault
	// included), before the deferred and cleanup code closes their pool.
	var once sync.Once
	stopWorkers := func() { once.Do(func() { close(stop); wg.Wait() }) }
	defer stopWorkers()
	start := time.Now()
	time.Sleep(time.Second)
	fault(setPhase)
	setPhase("after")
	time.Sleep(1500 * time.Millisecond)
	stopWorkers()
	t.Logf("workload: %d writes in %v", len(writes), time.Since(start).Round(time.Millisecond))
	g.waitHealthy(t, 60*time.Second)

	found, total := tokenRows(t, context.Background(), g.check[healthy], tbl)
	// Every node holds the same rows, the faulty one included.
	for i, c := range g.check {
		other, n := tokenRows(t, context.Background(), c, tbl)
		diff := 0
		for tok, k := range other {
			if found[tok] != k {
				diff++
			}
		}
		if n != total || diff != 0 {
			t.Errorf("node %d holds %d rows (%d tokens differ), node %d holds %d", i+1, n, diff, healthy+1, total)
		}
	}
	type tallyKey struct{ phase, op, stage, desc string }
	type tallyVal struct{ n, applied int }
	tally := map[tallyKey]*tallyVal{}
	acked, ackedAfter, failed, slow, excused := 0, 0, 0, 0, 0
	ackedIn := map[string]int{}
	for _, wr := range writes {
		n := found[wr.tok]
		delete(found, wr.tok)
		if wr.took > time.Second {
			slow++ // it waited the fault out: retried by the wrapper or RunTx
		}
		if n > 1 {
			t.Errorf("write %s (%v, %v) is there %d times", wr.tok, wr.op, wr.err, n)
		}
		if wr.err == nil {
			acked++
			ackedIn[wr.phase]++
			if wr.phase == "after" {
				ackedAfter++
			}
			switch {
			case n == 0 && wr.phase == "killed" && excused < g.serverLost:
				// Committed on the killed node only: Galera's loss, which
				// the node reported when it rejoined.
				excused++
				t.Logf("acknowledged write %s (%v, phase %s) is missing: one of the %d event(s) the killed node committed and the cluster never received", wr.tok, wr.op, wr.phase, g.serverLost)
			case n != 1:
				t.Errorf("acknowledged write %s (%v, phase %s) is there %d times, want 1", wr.tok, wr.op, wr.phase, n)
			}
			continue
		}
		failed++
		k := tallyKey{wr.phase, wr.op.String(), wr.stage, describeGaleraErr(wr.err)}
		v := tally[k]
		if v == nil {
			v = &tallyVal{}
			tally[k] = v
		}
		v.n++
		if n > 0 {
			v.applied++
		}
		cl := Classify(wr.err)
		switch {
		case wr.out == outNotApplied && n != 0:
			t.Errorf("write %s failed before COMMIT (%s: %v) yet is there %d times", wr.tok, wr.stage, wr.err, n)
		case cl.Retryable && n != 0:
			t.Errorf("write %s failed with an error Classify calls retryable (%s: %v) yet took effect: a retry would duplicate it", wr.tok, wr.stage, wr.err)
		}
	}
	for tok, n := range found {
		t.Errorf("unexpected token %s in the table (%d rows)", tok, n)
	}
	var lines []string
	for k, v := range tally {
		lines = append(lines, fmt.Sprintf("  phase %-10s %-20s at %-7s %4d× %s (found applied: %d)", k.phase, k.op, k.stage, v.n, k.desc, v.applied))
	}
	sort.Strings(lines)
	var byPhase []string
	for p, n := range ackedIn {
		byPhase = append(byPhase, fmt.Sprintf("%s %d", p, n))
	}
	sort.Strings(byPhase)
	t.Logf("%d writes: %d acknowledged (by phase: %s), %d failed, %d statement retries, %d took over a second; %d rows in the table\nerrors:\n%s",
		len(writes), acked, strings.Join(byPhase, ", "), failed, retries.Load(), slow, total, strings.Join(lines, "\n"))
	if failed == 0 && retries.Load() == 0 && slow == 0 {
		t.Errorf("no write failed, was retried or waited: the fault did not reach the workload")
	}
	if ackedAfter == 0 {
		t.Errorf("no write succeeded after the fault healed: the pool did not recover")
	}
}

// (e1) kill -9 of the node the workload writes through, then restart.
func TestIntegrationGaleraFaultKill(t *testing.T) {
	g := openGalera(t)
	const target = 2 // node 3
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			itest.GaleraRestart(t, target+1)
		}
	})
	galeraFault(t, g, target, func(phase func(string)) {
		phase("killed")
		t.Log(itest.GaleraKill(t, target+1))
		time.Sleep(time.Second)
		phase("restarting")
		out := itest.GaleraRestart(t, target+1)
		t.Log(out)
		restarted = true
		g.serverLost = lostEvents(t, out)
	})
}

// lostEvents reads lost_events=N from the output of .ci/galera restart: 0
// when the node rejoined without losing anything.
func lostEvents(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`lost_events=([0-9]+)`).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatalf("lost_events in %q: %v", m[0], err)
	}
	return n
}

// (e2) wsrep_reject_queries=ALL on the node the workload writes through,
// for a while, then NONE.
func TestIntegrationGaleraFaultRejectQueries(t *testing.T) {
	g := openGalera(t)
	const target = 1 // node 2
	galeraFault(t, g, target, func(phase func(string)) {
		phase("rejecting")
		g.setGlobal(t, target, "wsrep_reject_queries=ALL", "wsrep_reject_queries=NONE")
		time.Sleep(2 * time.Second)
		mustExec(t, g.raw[target], "SET GLOBAL wsrep_reject_queries=NONE")
	})
	for _, wrapped := range []bool{false, true} {
		rejectedCommitProbe(t, g, target, wrapped)
	}
}

// rejectedCommitProbe measures, without requiring anything, what a COMMIT
// rejected with 1047 leaves behind: MariaDB keeps the transaction open, and
// database/sql returns the connection to the pool, where the next
// statements join that transaction (a later BEGIN commits it implicitly; a
// close rolls it back, acknowledged writes included).
func rejectedCommitProbe(t *testing.T, g *galera, target int, wrapped bool) {
	t.Helper()
	db := itest.OpenGalera(t, "mysql")[target]
	name := "raw"
	if wrapped {
		db, name = g.dbs[target], "wrapped"
	}
	tbl := g.table(t, (target+1)%3, "_probe_"+name, "id INT PRIMARY KEY")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (id) VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	g.setGlobal(t, target, "wsrep_reject_queries=ALL", "wsrep_reject_queries=NONE")
	commitErr := tx.Commit()
	mustExec(t, g.raw[target], "SET GLOBAL wsrep_reject_queries=NONE")
	var inTx int
	inTxErr := conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTx)
	_, laterErr := conn.ExecContext(ctx, "INSERT INTO "+tbl+" (id) VALUES (2)")
	conn.Close() // back to the pool, still in the transaction if the server kept it
	rows := count(t, g.check[(target+1)%3], "SELECT COUNT(*) FROM "+tbl)
	t.Logf("%s: COMMIT during wsrep_reject_queries=ALL: %s; then @@in_transaction = %d (%v); a later autocommit INSERT on the connection: %v; rows committed now: %d",
		name, errOrOK(commitErr), inTx, inTxErr, errOrOK(laterErr), rows)
	// The raw driver leaves the refused transaction open, and the later
	// acknowledged INSERT joins it and is lost. The wrapper rolls the
	// refused transaction back (at the next statement, once the node
	// serves again), so the INSERT runs in autocommit.
	if wrapped && (Classify(commitErr).Kind != KindUnavailable || inTx != 0 || laterErr != nil || rows != 1) {
		t.Errorf("wrapped: COMMIT %v, @@in_transaction %d, later INSERT %v, %d rows; want 1047, 0, nil, 1", commitErr, inTx, laterErr, rows)
	}
}

// (e3) The node the workload writes through is cut off from the others
// (gmcast.isolate=1) for a few seconds, then rejoins.
func TestIntegrationGaleraFaultIsolate(t *testing.T) {
	g := openGalera(t)
	const target = 0 // node 1
	galeraFault(t, g, target, func(phase func(string)) {
		phase("isolated")
		g.setGlobal(t, target, "wsrep_provider_options='gmcast.isolate=1'", "wsrep_provider_options='gmcast.isolate=0'")
		// Until the others evict it (evs.suspect_timeout, 5s) the node
		// still believes itself in the primary component.
		deadline := time.Now().Add(20 * time.Second)
		for g.status(context.Background(), target, "wsrep_cluster_status") == "Primary" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("node %d: %s after %v", target+1, g.status(context.Background(), target, "wsrep_cluster_status"), time.Since(deadline.Add(-20*time.Second)).Round(100*time.Millisecond))
		time.Sleep(2 * time.Second)
		phase("rejoining")
		mustExec(t, g.raw[target], "SET GLOBAL wsrep_provider_options='gmcast.isolate=0'")
		g.waitHealthy(t, 60*time.Second)
	})
}

// (f) The half commit: wsrep_max_ws_rows makes an INSERT fail with 1180 and
// rolls the whole transaction back, after which the raw driver's next
// INSERT runs in autocommit and COMMIT succeeds, committing half the unit
// of work. Through the wrapper, Commit must fail and nothing be committed.
func TestIntegrationGaleraHalfCommit(t *testing.T) {
	g := openGalera(t)
	const node = 1 // node 2
	g.setGlobal(t, node, "wsrep_max_ws_rows=3", "wsrep_max_ws_rows=0")
	rawDB := itest.OpenGalera(t, "mysql")[node]
	for _, wrapped := range []bool{false, true} {
		name := map[bool]string{true: "wrapped", false: "raw"}[wrapped]
		t.Run(name, func(t *testing.T) {
			db := rawDB
			if wrapped {
				db = g.dbs[node]
			}
			tbl := g.table(t, node, "", "id INT PRIMARY KEY")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			_, insErr := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (id) VALUES (1), (2), (3), (4)")
			if me := (*mysql.MySQLError)(nil); !errors.As(insErr, &me) || me.Number != 1180 {
				t.Fatalf("4-row INSERT: %v, want error 1180 (wsrep_max_ws_rows exceeded)", insErr)
			}
			t.Logf("4-row INSERT: %s", describeGaleraErr(insErr))
			var inTx int
			if err := tx.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTx); err != nil {
				t.Logf("SELECT @@in_transaction: %s", describeGaleraErr(err))
				if !wrapped {
					t.Errorf("SELECT @@in_transaction: %v", err)
				}
			} else {
				t.Logf("@@in_transaction after the 1180: %d", inTx)
				if inTx != 0 {
					t.Errorf("@@in_transaction = %d after the 1180, expected 0 (the server rolled the transaction back)", inTx)
				}
			}
			_, laterErr := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (id) VALUES (5)")
			commitErr := tx.Commit()
			rows := count(t, g.check[(node+1)%3], "SELECT COUNT(*) FROM "+tbl)
			later := count(t, g.check[(node+1)%3], "SELECT COUNT(*) FROM "+tbl+" WHERE id = 5")
			t.Logf("%s: later INSERT: %v; Commit: %v; rows committed: %d (the later row: %d)",
				name, errOrOK(laterErr), errOrOK(commitErr), rows, later)
			if wrapped {
				if commitErr == nil {
					t.Errorf("wrapped: Commit succeeded after the transaction was rolled back by the 1180")
				}
				if rows != 0 {
					t.Errorf("wrapped: %d rows committed (later row: %d), want 0: half a transaction was committed", rows, later)
				}
			} else if laterErr != nil || commitErr != nil || later != 1 {
				// Documents the trap: the raw driver commits half the work.
				t.Errorf("raw: later INSERT %v, Commit %v, later row committed %d times; expected the half commit (nil, nil, 1)", laterErr, commitErr, later)
			}
		})
	}
}

func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return describeGaleraErr(err)
}

// TestIntegrationGaleraReadOnlyNode: a node set read-only (as a demoted
// primary is) refuses an application's writes with 1290, which is
// KindReadOnly; the wrapper does not reuse the connection, and the write
// goes through on another node. (root is exempt from read_only: the test
// writes as an ordinary user.)
func TestIntegrationGaleraReadOnlyNode(t *testing.T) {
	g := openGalera(t)
	const target = 2 // node 3
	tbl := g.table(t, 0, "", "n INT")
	mustExec(t, g.raw[0], "CREATE USER IF NOT EXISTS sqlconflict_app@'%' IDENTIFIED BY 'app'")
	mustExec(t, g.raw[0], "GRANT ALL ON test.* TO sqlconflict_app@'%'")
	open := func(node int) *sql.DB {
		cfg, err := mysql.ParseDSN(itest.GaleraServer(t, node, DriverMySQL, "mysql").DSN)
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Passwd = "sqlconflict_app", "app"
		db, err := sql.Open(DriverMySQL, cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	g.setGlobal(t, target, "read_only = ON", "read_only = OFF")
	db := open(target)
	db.SetMaxOpenConns(1)
	var before, after int64
	if err := db.QueryRow("SELECT CONNECTION_ID()").Scan(&before); err != nil {
		t.Fatal(err)
	}
	_, err := db.Exec("INSERT INTO " + tbl + " (n) VALUES (1)")
	me := (*mysql.MySQLError)(nil)
	if cl := Classify(err); !errors.As(err, &me) || me.Number != 1290 || cl.Kind != KindReadOnly || !cl.Retryable {
		t.Fatalf("write on a read-only node: %v classified %+v, want 1290 read only, retryable (on a new connection)", err, cl)
	}
	t.Logf("read-only node: %s", describeGaleraErr(err))
	if err := db.QueryRow("SELECT CONNECTION_ID()").Scan(&after); err != nil || after == before {
		t.Errorf("after the refusal: session %d (%v), the refused connection was %d: want a new one", after, err, before)
	}
	if _, err := open(0).Exec("INSERT INTO " + tbl + " (n) VALUES (1)"); err != nil {
		t.Fatalf("write on node 1: %v", err)
	}
}

// TestIntegrationGaleraReplayIncrements: multi-master increments in plain
// transactions (two rows each, no RunTx), 12 workers spread over the three
// nodes: certification failures at COMMIT, or brute-force aborts at the
// next statement (a PREPARE included). With conflict_replay=on none fails
// and each row holds exactly its acknowledged increments; the raw driver's
// failures are logged beside.
func TestIntegrationGaleraReplayIncrements(t *testing.T) {
	g := openGalera(t)
	for _, wrapped := range []bool{false, true} {
		name := map[bool]string{false: "raw", true: "replay"}[wrapped]
		tbl := g.table(t, 0, "_"+name, "id INT PRIMARY KEY, n INT NOT NULL")
		mustExec(t, g.raw[0], "INSERT INTO "+tbl+" (id, n) VALUES (1, 0), (2, 0), (3, 0)")
		count(t, g.check[1], "SELECT COUNT(*) FROM "+tbl)
		count(t, g.check[2], "SELECT COUNT(*) FROM "+tbl)
		dbs := g.raw
		obs := &replayObs{}
		if wrapped {
			dbs = make([]*sql.DB, 3)
			for i := range dbs {
				s := server{itest.GaleraServer(t, i, DriverMySQL, "mysql")}
				dbs[i] = s.openReplay(t, obs)
			}
		}
		var acked [4]atomic.Int64
		errs := galeraStorm(12, 20, func(w, i int) error {
			a, b := 1+(w+i)%3, 1+(w+i+1)%3
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			err := plainTx(ctx, dbs[w%3], nil, func(tx *sql.Tx) error {
				for _, id := range []int{a, b} {
					if _, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET n = n + 1 WHERE id = ?", id); err != nil {
						return err
					}
				}
				return nil
			})
			if err == nil {
				acked[a].Add(1)
				acked[b].Add(1)
			}
			return err
		})
		kinds := map[string]int{}
		for _, err := range errs {
			kinds[describeGaleraErr(err)]++
		}
		t.Logf("%s: failed %d / 240 %v; %s", name, len(errs), kinds, obs)
		if wrapped {
			reportFailures(t, "replayed plain transactions", 240, errs)
		}
		for id := 1; id <= 3; id++ {
			n := count(t, g.check[(id+1)%3], "SELECT n FROM "+tbl+" WHERE id = ?", id)
			if int64(n) != acked[id].Load() {
				t.Errorf("%s: row %d: n = %d, acknowledged increments %d", name, id, n, acked[id].Load())
			}
		}
	}
}
