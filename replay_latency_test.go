package sqlconflict

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// What verified transaction replay costs where it works and where it sits
// (issue 19): the latency of a replayed transaction against the same work
// rerun by RunTx in the same storm, and the memory an open transaction
// holds for its record. docs/BENCHMARKS.md ("Verified transaction replay:
// latency in storms and memory per open transaction") keeps the figures.

// latencyModes are the three ways a storm's transactions run, in the same
// run: the application's own BeginTx ... Commit on the raw driver (for
// reference: its failures are counted), the same through the wrapper with
// conflict_replay=on (the wrapper replays), and the same work inside
// TxRunner{RetryUniqueViolation: true} with conflict_replay=off (the
// closure reruns).
var latencyModes = []string{"raw", "replay", "runtx"}

// latencyTx is what one transaction of a storm measured.
type latencyTx struct {
	d time.Duration // BeginTx to Commit returned (or the failure); RunTx: the whole call
	// conflicted: the transaction met a conflict: replayed (or a replay
	// that did not verify), rerun by RunTx, or on the raw driver failed.
	conflicted bool
	err        error
}

// latencyObs counts one worker's replay events (each worker has a DB of
// its own, so the events are its transactions'). attempt is the highest
// replay number seen since the worker last reset it: the replays its
// transaction began, those that met a conflict of their own and were begun
// again included (the events count only those that verified or gave up).
type latencyObs struct{ replays, failed, other, attempt atomic.Int64 }

func (o *latencyObs) observe(_ context.Context, ob Observation) {
	switch ob.Event {
	case EventReplay:
		o.replays.Add(1)
	case EventReplayFailed:
		o.failed.Add(1)
	default:
		o.other.Add(1)
		return
	}
	if a := int64(ob.Attempt); a > o.attempt.Load() {
		o.attempt.Store(a)
	}
}

// latencyWorkload is one storm. prepare makes the mode's tables through
// raw and returns the transaction's body, run by worker w as its i-th
// transaction, and the check of the end state against the number of
// acknowledged transactions.
type latencyWorkload struct {
	name         string
	workers, ops int
	prepare      func(t *testing.T, s server, raw *sql.DB, mode string) (body func(ctx context.Context, tx *sql.Tx, w, i int) error, check func(t *testing.T, acked int64))
}

// latencyWorkloads are replay_test.go's opposite-order pair and Airflow
// storms.
var latencyWorkloads = []latencyWorkload{
	{
		// Two rows updated in opposite orders, the first lock held 1 ms:
		// deadlocks.
		name: "opposite-order pair", workers: 8, ops: 50,
		prepare: func(t *testing.T, s server, raw *sql.DB, mode string) (func(context.Context, *sql.Tx, int, int) error, func(*testing.T, int64)) {
			tbl := s.table(t, raw, "_"+mode, "id INT PRIMARY KEY, v INT NOT NULL")
			mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
			upd := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
			body := func(ctx context.Context, tx *sql.Tx, w, i int) error {
				a, b := 1, 2
				if (w+i)%2 == 1 {
					a, b = 2, 1
				}
				if _, err := tx.ExecContext(ctx, upd, a); err != nil {
					return err
				}
				time.Sleep(time.Millisecond) // the application's own work, holding the first lock
				_, err := tx.ExecContext(ctx, upd, b)
				return err
			}
			check := func(t *testing.T, acked int64) {
				v1, v2 := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"), count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 2")
				if int64(v1) != acked || int64(v2) != acked {
					t.Errorf("%s: rows %d, %d for %d acknowledged transactions", mode, v1, v2, acked)
				}
			}
			return body, check
		},
	},
	{
		// Airflow's rendered-fields write: delete a task's row and insert
		// it again, 24 workers on each of 10 keys in turn, each logging
		// its write. A table of each mode's own (InnoDB's gap locks
		// deadlock only where no delete-marked row of an earlier run is
		// left for the keys).
		name: "Airflow delete-then-insert", workers: 24, ops: 10,
		prepare: func(t *testing.T, s server, raw *sql.DB, mode string) (func(context.Context, *sql.Tx, int, int) error, func(*testing.T, int64)) {
			fields := s.table(t, raw, "_f_"+mode, "dag VARCHAR(32) NOT NULL, task VARCHAR(32) NOT NULL, v INT NOT NULL, PRIMARY KEY (dag, task)")
			logTbl := s.table(t, raw, "_l_"+mode, "w INT NOT NULL, i INT NOT NULL, PRIMARY KEY (w, i)")
			del := s.q("DELETE FROM " + fields + " WHERE dag = $1 AND task = $2")
			ins := s.q("INSERT INTO " + fields + " (dag, task, v) VALUES ($1, $2, $3)")
			logIns := s.q("INSERT INTO " + logTbl + " (w, i) VALUES ($1, $2)")
			body := func(ctx context.Context, tx *sql.Tx, w, i int) error {
				task := fmt.Sprint("t", i)
				if _, err := tx.ExecContext(ctx, del, "d", task); err != nil {
					return err
				}
				time.Sleep(time.Millisecond) // the application renders the fields
				if _, err := tx.ExecContext(ctx, ins, "d", task, w*100+i); err != nil {
					return err
				}
				_, err := tx.ExecContext(ctx, logIns, w, i)
				return err
			}
			check := func(t *testing.T, acked int64) {
				rows := count(t, raw, "SELECT COUNT(*) FROM "+fields)
				logged := count(t, raw, "SELECT COUNT(*) FROM "+logTbl)
				if int64(logged) != acked || rows > 10 || mode != "raw" && rows != 10 {
					t.Errorf("%s: %d log rows for %d acknowledged transactions, %d rows for the 10 keys", mode, logged, acked, rows)
				}
			}
			return body, check
		},
	},
}

// latencyDBs opens one pool of one connection per worker for mode, so that
// a worker's Observer sees only its own transactions' events; fastDeadlocks
// on all of them. The wrapped pools share what their connections learn of
// the schema (schema.go), as one application's connections do: a replay's
// first check of the tables is then paid once per schemaTTL, not once per
// worker.
func latencyDBs(t *testing.T, s server, mode string, workers int) ([]*sql.DB, []*latencyObs) {
	t.Helper()
	params := s.fastDeadlocks()
	var d Driver
	if mode != "raw" {
		db, err := sql.Open(s.Driver, s.DSN) // only to find the registered driver
		if err != nil {
			t.Fatal(err)
		}
		d = *db.Driver().(*Driver)
		db.Close()
		params = append(params, map[string]string{"replay": "conflict_replay=on", "runtx": "conflict_replay=off"}[mode])
	}
	dbs := make([]*sql.DB, workers)
	obs := make([]*latencyObs, workers)
	var schema *schemaFacts
	for w := range workers {
		obs[w] = &latencyObs{}
		var db *sql.DB
		if mode == "raw" {
			var err error
			if db, err = sql.Open(s.Raw, s.DSNWith(params...)); err != nil {
				t.Fatal(err)
			}
		} else {
			dw := d
			dw.opts.Observer = obs[w].observe
			c, err := dw.OpenConnector(s.DSNWith(params...))
			if err != nil {
				t.Fatal(err)
			}
			wc, ok := c.(*connector)
			if !ok {
				t.Fatalf("OpenConnector returned a %T", c)
			}
			if schema == nil {
				schema = wc.cfg.schema
			}
			wc.cfg.schema = schema
			db = sql.OpenDB(c)
		}
		t.Cleanup(func() { db.Close() })
		db.SetMaxOpenConns(1)
		s.Ping(t, db) // opens the connection before the clock starts; fails t if the server does not answer
		dbs[w] = db
	}
	return dbs, obs
}

// latencyResult is one mode's storm.
type latencyResult struct {
	mode   string
	txs    []latencyTx
	redo   int64          // replays begun, or RunTx reruns
	events int64          // replay: EventReplay
	failed int64          // replay: EventReplayFailed
	other  int64          // other events of the wrapper
	kinds  map[string]int // the failures, by error
}

// runLatencyMode runs the storm wl in mode and checks its end state.
func runLatencyMode(t *testing.T, s server, raw *sql.DB, wl latencyWorkload, mode string) latencyResult {
	body, check := wl.prepare(t, s, raw, mode)
	dbs, obs := latencyDBs(t, s, mode, wl.workers)
	runner := TxRunner{RetryUniqueViolation: true}
	r := latencyResult{mode: mode, kinds: map[string]int{}}
	var mu sync.Mutex
	var acked, redo atomic.Int64
	var wg sync.WaitGroup
	for w := range wl.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, o := dbs[w], obs[w]
			for i := range wl.ops {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				before := o.replays.Load() + o.failed.Load()
				o.attempt.Store(0)
				attempts := 0
				var err error
				start := time.Now()
				if mode == "runtx" {
					err = runner.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
						attempts++
						return body(ctx, tx, w, i)
					})
				} else {
					err = plainTx(ctx, db, nil, func(tx *sql.Tx) error { return body(ctx, tx, w, i) })
				}
				d := time.Since(start)
				cancel()
				lt := latencyTx{d: d, err: err}
				switch mode {
				case "raw":
					lt.conflicted = err != nil
				case "replay":
					lt.conflicted = o.replays.Load()+o.failed.Load() > before
					redo.Add(o.attempt.Load())
				case "runtx":
					lt.conflicted = attempts > 1
					redo.Add(int64(max(0, attempts-1)))
				}
				if err == nil {
					acked.Add(1)
				}
				mu.Lock()
				r.txs = append(r.txs, lt)
				if err != nil {
					r.kinds[errName(err)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.redo = redo.Load()
	for _, o := range obs {
		r.events += o.replays.Load()
		r.failed += o.failed.Load()
		r.other += o.other.Load()
	}
	for _, db := range dbs {
		db.Close() // the next mode's connections take their place
	}
	check(t, acked.Load())
	return r
}

// latencyStats are the percentiles of a set of latencies.
type latencyStats struct {
	n             int
	p50, p99, max time.Duration
}

// latencyOf returns the nearest-rank p50 and p99 and the maximum of the
// transactions keep selects.
func latencyOf(txs []latencyTx, keep func(latencyTx) bool) latencyStats {
	var d []time.Duration
	for _, x := range txs {
		if keep(x) {
			d = append(d, x.d)
		}
	}
	if len(d) == 0 {
		return latencyStats{}
	}
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		return d[max(0, int(math.Ceil(p/100*float64(len(d))))-1)]
	}
	return latencyStats{n: len(d), p50: rank(50), p99: rank(99), max: d[len(d)-1]}
}

func (st latencyStats) String() string {
	if st.n == 0 {
		return "-"
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	return ms(st.p50) + " / " + ms(st.p99) + " / " + ms(st.max)
}

func (r latencyResult) failures() int {
	n := 0
	for _, x := range r.txs {
		if x.err != nil {
			n++
		}
	}
	return n
}

// TestIntegrationReplayLatency: the opposite-order pair (8 workers × 50)
// and the Airflow delete-then-insert (24 workers × 10 keys) storms, run in
// turn raw (plain BeginTx ... Commit), with conflict_replay=on (the same
// code, the wrapper replays) and in TxRunner{RetryUniqueViolation: true}
// with conflict_replay=off (the closure reruns). It logs each mode's
// per-transaction latency, p50 / p99 / max in ms, of all its transactions
// and of those that met a conflict (replayed, rerun, or raw failed), and
// asserts only what must hold: no failure with replay nor with RunTx, and
// the rows as the acknowledged transactions made them. Timing is
// reported, never asserted.
func TestIntegrationReplayLatency(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t, s.fastDeadlocks()...)
		for _, wl := range latencyWorkloads {
			t.Run(wl.name, func(t *testing.T) {
				var rs []latencyResult
				for _, mode := range latencyModes {
					r := runLatencyMode(t, s, raw, wl, mode)
					rs = append(rs, r)
					if mode != "raw" && r.failures() != 0 {
						t.Errorf("%s: %d of %d transactions failed: %v", mode, r.failures(), len(r.txs), r.kinds)
					}
				}
				var b strings.Builder
				fmt.Fprintf(&b, "%s, %s, %d workers × %d (ms: p50 / p99 / max)\n", s.Name, wl.name, wl.workers, wl.ops)
				fmt.Fprintf(&b, "%-7s %5s %7s %11s %5s  %-24s %-24s %s\n", "mode", "txs", "failed", "conflicted", "redo", "all", "conflicted", "failures")
				for _, r := range rs {
					all := latencyOf(r.txs, func(latencyTx) bool { return true })
					conf := latencyOf(r.txs, func(x latencyTx) bool { return x.conflicted })
					fails := "-"
					if len(r.kinds) > 0 {
						fails = fmt.Sprint(r.kinds)
					}
					if r.mode != "raw" {
						fails += fmt.Sprintf(" (events: %d replayed, %d not replayed, %d other)", r.events, r.failed, r.other)
					}
					fmt.Fprintf(&b, "%-7s %5d %7d %11d %5d  %-24s %-24s %s\n", r.mode, len(r.txs), r.failures(), conf.n, r.redo, all, conf, fails)
				}
				t.Log("\n" + b.String())
			})
		}
	})
}

// heapLive returns the live heap, after two collections.
func heapLive() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// memTxs is the number of transactions BenchmarkReplayMemory holds open at
// once, each on a connection of its own: PostgreSQL's default
// max_connections is 100, which other tests on the same server share.
const memTxs = 32

// BenchmarkReplayMemory: the heap an open transaction holds, memTxs of
// them at once, each having run stmts statements: UPDATEs of its own row
// (two arguments) alternating with SELECTs of three rows (two arguments),
// read to their end. drv=raw is the base driver, drv=off and drv=on the
// wrapper with conflict_replay off and on. Every connection has run one
// transaction of the same shape before (as a pooled connection has), so
// the figures are the steady state. Metrics:
//
//   - B/opentx: the live heap while the transactions are open, less the
//     same connections' idle (median over the iterations), per transaction;
//   - B/stmt: B/opentx / stmts;
//   - B/idleconn: what an idle connection holds after that one
//     transaction, against a fresh one (the record's array, which the
//     wrapper keeps for the next transaction up to 64 entries).
//
// ns/op means nothing. Run with -benchtime=Nx.
func BenchmarkReplayMemory(b *testing.B) {
	for _, s := range servers(b) {
		for _, k := range []int{1, 10, 100} {
			for _, drv := range []string{"raw", "off", "on"} {
				b.Run(fmt.Sprintf("db=%s/stmts=%d/drv=%s", s.Name, k, drv), func(b *testing.B) {
					benchReplayMemory(b, s, k, drv)
				})
			}
		}
	}
}

func benchReplayMemory(b *testing.B, s server, k int, drv string) {
	ctx := context.Background()
	var db *sql.DB
	if drv == "raw" {
		db = s.openRaw(b)
	} else {
		db = s.open(b, "conflict_replay="+drv)
	}
	db.SetMaxOpenConns(memTxs)
	db.SetMaxIdleConns(memTxs)
	tbl := benchTable(b, db, "id INT PRIMARY KEY, v INT NOT NULL, s VARCHAR(32) NOT NULL")
	var vals []string
	for i := 1; i <= memTxs+2; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 0, 'row %d')", i, i))
	}
	mustExec(b, db, "INSERT INTO "+tbl+" (id, v, s) VALUES "+strings.Join(vals, ", "))
	upd := s.q("UPDATE " + tbl + " SET v = v + $1 WHERE id = $2")
	sel := s.q("SELECT id, v, s FROM " + tbl + " WHERE id >= $1 AND id <= $2 ORDER BY id")

	// memTxs connections, opened at once (a PostgreSQL backend takes tens
	// of milliseconds to start on a loaded machine).
	conns := make([]*sql.Conn, memTxs)
	errs := make([]error, memTxs)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = db.Conn(ctx)
		}()
	}
	wg.Wait()
	defer func() { // before benchTable's DROP, which needs a connection
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for _, err := range errs {
		if err != nil {
			b.Fatalf("opening %d connections: %v", memTxs, err)
		}
	}
	// open begins a transaction on every connection at once and runs the
	// k statements in each.
	open := func() []*sql.Tx {
		txs := make([]*sql.Tx, memTxs)
		errs := make([]error, memTxs)
		var wg sync.WaitGroup
		for c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tx, err := conns[c].BeginTx(ctx, nil)
				if err != nil {
					errs[c] = err
					return
				}
				txs[c] = tx
				id := c + 1
				for j := range k {
					if j%2 == 0 {
						if _, err := tx.ExecContext(ctx, upd, 1, id); err != nil {
							errs[c] = err
							return
						}
						continue
					}
					rows, err := tx.QueryContext(ctx, sel, id, id+2)
					if err != nil {
						errs[c] = err
						return
					}
					n := 0
					for rows.Next() {
						var rid, v int
						var str string
						if err := rows.Scan(&rid, &v, &str); err != nil {
							errs[c] = err
							return
						}
						n++
					}
					if err := rows.Close(); err != nil || n != 3 {
						errs[c] = fmt.Errorf("rows: %d, %v", n, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		return txs
	}
	end := func(txs []*sql.Tx) {
		for _, tx := range txs {
			if err := tx.Rollback(); err != nil {
				b.Fatal(err)
			}
		}
	}
	fresh := heapLive()
	end(open()) // the steady state: every connection has run one such transaction
	idle := heapLive()
	var held []float64
	b.ResetTimer()
	for range b.N {
		base := heapLive()
		txs := open()
		live := heapLive()
		held = append(held, (float64(live)-float64(base))/memTxs)
		end(txs)
	}
	h := itest.Median(held)
	b.ReportMetric(h, "B/opentx")
	b.ReportMetric(h/float64(k), "B/stmt")
	b.ReportMetric((float64(idle)-float64(fresh))/memTxs, "B/idleconn")
}
