package sqlconflict

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// Register histories under connection cuts, checked for linearizability
// (internal/itest/linear.go): K registers, the rows of a table, read and
// written (autocommit UPDATE, or through RunTx) by N clients through a
// proxy that cuts every link every ~300 ms, stalls now and then, and now
// and then refuses new connections for a moment. Each op's interval is what
// its client saw, from the call to the return; an error Classify calls an
// unknown outcome makes the op's outcome unknown (a write that may take
// effect at any point after its call, or never; a read that tells
// nothing), any other error a definite failure, whose value must never be
// read. The wrapped driver runs twice, at its defaults and with
// conflict_wrap_errors and a short conflict_retry_timeout (connects given
// up: definite failures); the raw driver runs the same workload beside,
// each on a table and a proxy of its own, and is only logged.
// docs/reliability.md has a run's figures.

const (
	regKeys    = 4
	regClients = 6
	regRun     = 6 * time.Second
	regOpLimit = 3 * time.Second // each op's context
)

// regReport is one workload's figures and histories.
type regReport struct {
	name                            string // the workload's: driver and options
	ops, reads, writes, txWrites    int
	unknownReads, unknownWrites     int
	failedReads, failedWrites       int
	cuts, stalls, refusals          int
	unknownSeen                     int    // unknown writes a read saw: applied
	rowsWrong                       int    // a write acknowledged that matched no row (or more)
	failedSeen                      int    // reads (or the final value) of a definitely failed write
	firstFailedSeen, firstRowsWrong string // for failure messages
	errs                            map[string]int
	failed                          map[int64]bool // the values of the writes that failed definitely
	hist                            [regKeys][]itest.RegOp
	verdicts                        [regKeys]itest.LinResult
	whys                            [regKeys]string
	check                           time.Duration // CheckRegister's time, all keys
}

func (r *regReport) String() string {
	var kinds []string
	for k, n := range r.errs {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(kinds)
	var v []string
	for k := range regKeys {
		v = append(v, fmt.Sprintf("k%d %d ops %v", k, len(r.hist[k]), r.verdicts[k]))
	}
	return fmt.Sprintf("%s: ops=%d (reads %d, writes %d of which RunTx %d) unknown=%d (reads %d, writes %d, seen applied %d) failed=%d (reads %d, writes %d) "+
		"cuts=%d stalls=%d refusals=%d rows-wrong=%d failed-write-seen=%d check=%v [%s] errors={%s}",
		r.name, r.ops, r.reads, r.writes, r.txWrites, r.unknownReads+r.unknownWrites, r.unknownReads, r.unknownWrites, r.unknownSeen,
		r.failedReads+r.failedWrites, r.failedReads, r.failedWrites, r.cuts, r.stalls, r.refusals, r.rowsWrong, r.failedSeen,
		r.check.Round(time.Millisecond), strings.Join(v, ", "), strings.Join(kinds, "; "))
}

// TestIntegrationFaultRegisters: through the wrapped driver, every
// register's history is linearizable, no definitely failed write is ever
// read, and no acknowledged write matched other than one row. The raw
// driver's figures are logged beside (raw lib/pq's re-send after
// driver.ErrBadConn may break linearizability).
func TestIntegrationFaultRegisters(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		direct := s.openRaw(t)
		target, dsnVia := s.viaProxy(t)
		seed := faultSeed(t)
		type side struct {
			name, driver string
			params       []string
			wrapped      bool
			tbl          string
			proxy        *itest.Proxy
			db           *sql.DB
			rep          *regReport
		}
		sides := []*side{
			{name: s.Driver, driver: s.Driver, wrapped: true},
			// Connects given up quickly, as an unavailable server with
			// nothing sent: definite failures, whose values the checks
			// below must never find.
			{name: s.Driver + " (wrap_errors, retry_timeout=50ms)", driver: s.Driver, wrapped: true,
				params: []string{"conflict_wrap_errors=true", "conflict_retry_timeout=50ms"}},
			{name: s.Raw + " (raw)", driver: s.Raw},
		}
		for i, sd := range sides {
			sd.proxy = itest.NewProxy(t, target)
			sd.tbl = s.table(t, direct, fmt.Sprintf("_%d", i), "k INT PRIMARY KEY, v BIGINT NOT NULL")
			for k := range regKeys {
				mustExec(t, direct, s.q("INSERT INTO "+sd.tbl+" (k, v) VALUES ($1, 0)"), k)
			}
			db, err := sql.Open(sd.driver, itest.WithParams(dsnVia(sd.proxy.Addr()), sd.params...))
			if err != nil {
				t.Fatalf("open %s: %v", sd.name, err)
			}
			t.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(regClients)
			s.Ping(t, db)
			sd.db = db
		}
		var wg sync.WaitGroup
		for i, sd := range sides {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sd.rep = runRegisters(s, sd.name, sd.db, sd.proxy, sd.tbl, seed+uint64(i)<<32)
			}()
		}
		wg.Wait()

		// The final values, read directly once every client stopped, are
		// one more read of each register; a write of unknown outcome still
		// on its way may land after it, as its history allows.
		time.Sleep(100 * time.Millisecond)
		for _, sd := range sides {
			rep := sd.rep
			call := time.Now()
			rows, err := direct.Query("SELECT k, v FROM " + sd.tbl)
			if err != nil {
				t.Fatalf("final values: %v", err)
			}
			final := map[int]int64{}
			for rows.Next() {
				var k int
				var v int64
				if err := rows.Scan(&k, &v); err != nil {
					t.Fatal(err)
				}
				final[k] = v
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			rows.Close()
			ret := time.Now()
			for k := range regKeys {
				v, ok := final[k]
				if !ok {
					t.Fatalf("%s: row %d is gone", sd.tbl, k)
				}
				rep.hist[k] = append(rep.hist[k], itest.RegOp{Client: -1, Value: v, Call: call, Return: ret})
				if rep.failed[v] {
					rep.failedSeen++
					rep.firstFailedSeen = fmt.Sprintf("register %d's final value %d", k, v)
				}
			}
			for k := range regKeys {
				read := map[int64]bool{}
				for _, op := range rep.hist[k] {
					if !op.Write {
						read[op.Value] = true
					}
				}
				for _, op := range rep.hist[k] {
					if op.Write && op.Unknown && read[op.Value] {
						rep.unknownSeen++
					}
				}
			}
			start := time.Now()
			for k := range regKeys {
				rep.verdicts[k], rep.whys[k] = itest.CheckRegister(0, rep.hist[k])
			}
			rep.check = time.Since(start)

			wrapped := sd.wrapped
			t.Logf("registers %v", rep)
			for k := range regKeys {
				if rep.verdicts[k] == itest.Linearizable {
					continue
				}
				if wrapped {
					t.Errorf("%s register %d: %v: %s", sd.name, k, rep.verdicts[k], rep.whys[k])
				} else {
					t.Logf("%s register %d (the raw driver, not the wrapper): %v: %s", sd.name, k, rep.verdicts[k], rep.whys[k])
				}
			}
			if !wrapped {
				continue
			}
			// The same history with one read made stale must fail: the
			// recorded times are tight enough to catch one.
			if bad, i, ok := itest.StaleRead(rep.hist[0]); !ok {
				t.Errorf("%s: no read of register 0 to make stale", sd.name)
			} else if got, why := itest.CheckRegister(0, bad); got != itest.Violation {
				t.Errorf("%s: register 0 with op %d made stale: %v, want %v: %s", sd.name, i, got, itest.Violation, why)
			} else {
				t.Logf("%s: register 0 with op %d made stale: %v (%.200s...)", sd.name, i, got, why)
			}
			if rep.failedSeen != 0 {
				t.Errorf("%s: %d reads saw a write that failed definitely, e.g. %s", sd.name, rep.failedSeen, rep.firstFailedSeen)
			}
			if rep.rowsWrong != 0 {
				t.Errorf("%s: %d acknowledged writes matched other than one row, e.g. %s", sd.name, rep.rowsWrong, rep.firstRowsWrong)
			}
			if rep.cuts < 5 || rep.unknownReads+rep.unknownWrites == 0 || rep.ops < 50*regKeys {
				t.Errorf("%s: the faults did not bite: %d cuts, %d unknown outcomes in %d ops", sd.name, rep.cuts, rep.unknownReads+rep.unknownWrites, rep.ops)
			}
		}
	})
}

// runRegisters runs the workload through db, whose links cross proxy, for
// regRun, and returns its figures and each register's history (the
// final reads not yet added).
func runRegisters(s server, name string, db *sql.DB, proxy *itest.Proxy, tbl string, seed uint64) *regReport {
	rep := &regReport{name: name, errs: map[string]int{}}
	read := s.q("SELECT v FROM " + tbl + " WHERE k = $1")
	update := s.q("UPDATE " + tbl + " SET v = $1 WHERE k = $2")
	// regRun, or longer on a slow machine until the history has 50 ops a
	// register (what the check below asks of it), within three regRuns.
	stop := time.Now().Add(regRun)
	hardStop := time.Now().Add(3 * regRun)
	var total atomic.Int64
	running := func() bool {
		now := time.Now()
		return now.Before(stop) || total.Load() < 50*regKeys && now.Before(hardStop)
	}

	// The faults: every link cut every 250-350 ms; one time in three a
	// stall of 20-120 ms before it (every byte held, sockets open); one
	// time in four, after it, new connections accepted and closed at once
	// for 50-200 ms (a load balancer in front of a dead server).
	faultsDone := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(faultsDone)
		rng := rand.New(rand.NewPCG(seed, 0xfa))
		for {
			select {
			case <-quit:
				return
			case <-time.After(time.Duration(250+rng.IntN(100)) * time.Millisecond):
			}
			if rng.IntN(3) == 0 {
				proxy.Stall()
				time.Sleep(time.Duration(20+rng.IntN(100)) * time.Millisecond)
				proxy.Resume()
				rep.stalls++
			}
			proxy.CutAll()
			rep.cuts++
			if rng.IntN(4) == 0 {
				proxy.Refuse()
				time.Sleep(time.Duration(50+rng.IntN(150)) * time.Millisecond)
				proxy.Normal()
				rep.refusals++
			}
		}
	}()

	var next atomic.Int64 // the values written: unique, never the initial 0
	type client struct {
		hist             [regKeys][]itest.RegOp
		failed           map[int64]bool
		ops, reads       int
		writes, txWrites int
		unkR, unkW       int
		failR, failW     int
		rowsWrong        int
		firstRowsWrong   string
		errs             map[string]int
	}
	clients := make([]*client, regClients)
	var wg sync.WaitGroup
	for c := range clients {
		cl := &client{failed: map[int64]bool{}, errs: map[string]int{}}
		clients[c] = cl
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			noteErr := func(err error) bool { // reports an unknown outcome
				k := Classify(err)
				cl.errs[fmt.Sprintf("%s %v/%v", errName(err), k.Kind, k.Scope)]++
				return k.Scope == ScopeUnknownOutcome
			}
			for running() {
				k := rng.IntN(regKeys)
				ctx, cancel := context.WithTimeout(context.Background(), regOpLimit)
				op := itest.RegOp{Client: c}
				cl.ops++
				total.Add(1)
				switch kind := rng.IntN(10); {
				case kind < 5: // a read in autocommit
					cl.reads++
					op.Call = time.Now()
					err := db.QueryRowContext(ctx, read, k).Scan(&op.Value)
					op.Return = time.Now()
					if err != nil {
						if noteErr(err) {
							cl.unkR++
						} else {
							cl.failR++
						}
						cancel()
						continue // a read that failed tells nothing
					}
				default: // a write, in autocommit or through RunTx
					op.Write, op.Value = true, next.Add(1)
					cl.writes++
					var err error
					var affected int64
					op.Call = time.Now()
					if kind < 8 {
						var res sql.Result
						if res, err = db.ExecContext(ctx, update, op.Value, k); err == nil {
							affected, err = res.RowsAffected()
						}
					} else {
						cl.txWrites++
						err = TxRunner{MaxElapsed: regOpLimit}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
							res, err := tx.ExecContext(ctx, update, op.Value, k)
							if err == nil {
								affected, err = res.RowsAffected()
							}
							return err
						})
					}
					op.Return = time.Now()
					switch {
					case err != nil && noteErr(err):
						cl.unkW++
						op.Unknown = true
					case err != nil:
						cl.failW++
						cl.failed[op.Value] = true
						cancel()
						continue
					case affected != 1:
						cl.rowsWrong++
						if cl.firstRowsWrong == "" {
							cl.firstRowsWrong = fmt.Sprintf("client %d writing %d to register %d: %d rows", c, op.Value, k, affected)
						}
					}
				}
				cancel()
				cl.hist[k] = append(cl.hist[k], op)
			}
		}()
	}
	wg.Wait()
	close(quit)
	<-faultsDone
	proxy.Resume()
	proxy.Normal()

	rep.failed = map[int64]bool{}
	for _, cl := range clients {
		for v := range cl.failed {
			rep.failed[v] = true
		}
	}
	for _, cl := range clients {
		rep.ops += cl.ops
		rep.reads += cl.reads
		rep.writes += cl.writes
		rep.txWrites += cl.txWrites
		rep.unknownReads += cl.unkR
		rep.unknownWrites += cl.unkW
		rep.failedReads += cl.failR
		rep.failedWrites += cl.failW
		rep.rowsWrong += cl.rowsWrong
		if rep.firstRowsWrong == "" {
			rep.firstRowsWrong = cl.firstRowsWrong
		}
		for e, n := range cl.errs {
			rep.errs[e] += n
		}
		for k := range regKeys {
			for _, op := range cl.hist[k] {
				if !op.Write && rep.failed[op.Value] {
					rep.failedSeen++
					if rep.firstFailedSeen == "" {
						rep.firstFailedSeen = fmt.Sprintf("client %d read %d from register %d", op.Client, op.Value, k)
					}
				}
			}
			rep.hist[k] = append(rep.hist[k], cl.hist[k]...)
		}
	}
	return rep
}
