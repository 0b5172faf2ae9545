package sqlconflict

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// Verified transaction replay (replay.go) against the real servers:
// applications of plain BeginTx ... Commit, no RunTx, with
// conflict_replay=on, and the raw driver's failures logged beside.

// replayObs counts the replay events of a DB.
type replayObs struct {
	replayed, failed atomic.Int64
	other            atomic.Int64 // every other event
	mu               sync.Mutex
	reasons          map[string]int
}

func (o *replayObs) observe(_ context.Context, ob Observation) {
	switch ob.Event {
	case EventReplay:
		o.replayed.Add(1)
	case EventReplayFailed:
		o.failed.Add(1)
		o.mu.Lock()
		if o.reasons == nil {
			o.reasons = map[string]int{}
		}
		o.reasons[ob.Reason]++
		o.mu.Unlock()
	default:
		o.other.Add(1)
	}
}

func (o *replayObs) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprintf("replayed %d, not replayed %d %v, other events %d", o.replayed.Load(), o.failed.Load(), o.reasons, o.other.Load())
}

// openReplay opens the wrapped driver with conflict_replay=on (and params),
// its events counted.
func (s server) openReplay(t *testing.T, obs *replayObs, params ...string) *sql.DB {
	t.Helper()
	return s.openWith(t, func(o *Options) {
		if obs != nil {
			o.Observer = obs.observe
		}
	}, append([]string{"conflict_replay=on"}, params...)...)
}

// fastDeadlocks is the DSN parameter that makes PostgreSQL look for
// deadlocks after 20 ms instead of a second (lib/pq sends it as a session
// setting), so that a storm of them runs in seconds.
func (s server) fastDeadlocks() []string {
	if s.PG() {
		return []string{"deadlock_timeout=20ms"}
	}
	return nil
}

// plainTx runs fn in a plain transaction, as an application without a
// retry loop does, and returns the error of the first step that failed.
func plainTx(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// hammer runs workers goroutines of n transactions each and returns how
// many failed, with the first error of each kind.
func hammer(workers, n int, one func(w, i int) error) (failed int, kinds map[string]int) {
	var mu sync.Mutex
	kinds = map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if err := one(w, i); err != nil {
					mu.Lock()
					failed++
					kinds[errName(err)]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return failed, kinds
}

// TestIntegrationReplayOppositeOrder: two rows updated in opposite orders
// by 8 workers: deadlocks. Raw, most transactions fail (40P01, 1213);
// with replay, none, and the rows hold exactly the acknowledged updates.
func TestIntegrationReplayOppositeOrder(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t, s.fastDeadlocks()...)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
		obs := &replayObs{}
		for _, wrapped := range []bool{false, true} {
			mustExec(t, raw, "DELETE FROM "+tbl)
			mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
			db := raw
			if wrapped {
				db = s.openReplay(t, obs, s.fastDeadlocks()...)
			}
			db.SetMaxOpenConns(8)
			upd := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
			var acked atomic.Int64
			failed, kinds := hammer(8, 25, func(w, i int) error {
				a, b := 1, 2
				if (w+i)%2 == 1 {
					a, b = 2, 1
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err := plainTx(ctx, db, nil, func(tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, upd, a); err != nil {
						return err
					}
					time.Sleep(time.Millisecond) // hold the first lock while the other worker takes its own
					_, err := tx.ExecContext(ctx, upd, b)
					return err
				})
				if err == nil {
					acked.Add(1)
				}
				return err
			})
			v1, v2 := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"), count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 2")
			name := map[bool]string{false: "raw", true: "replay"}[wrapped]
			t.Logf("%s: failed %d / 200 %v; acknowledged %d, rows %d, %d", name, failed, kinds, acked.Load(), v1, v2)
			if int64(v1) != acked.Load() || int64(v2) != acked.Load() {
				t.Errorf("%s: rows %d, %d for %d acknowledged transactions", name, v1, v2, acked.Load())
			}
			if wrapped && failed != 0 {
				t.Errorf("replay: %d transactions failed", failed)
			}
		}
		t.Logf("events: %s", obs)
	})
}

// TestIntegrationReplayReadModifyWrite: the application reads v and writes
// v+1 itself (SELECT v, then UPDATE ... SET v = $1) under REPEATABLE READ
// or SERIALIZABLE. A replay whose SELECT sees another value must not go
// through: the final value equals the acknowledged count, and every
// failure is the server's own error. (InnoDB's REPEATABLE READ does not
// detect the lost update of a plain SELECT, raw or wrapped: there the read
// is a locking one, LOCK IN SHARE MODE, whose readers deadlock.)
func TestIntegrationReplayReadModifyWrite(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
		for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
			mustExec(t, raw, "DELETE FROM "+tbl)
			mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
			obs := &replayObs{}
			db := s.openReplay(t, obs)
			db.SetMaxOpenConns(8)
			var acked atomic.Int64
			failed, kinds := hammer(8, 25, func(w, i int) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err := plainTx(ctx, db, &sql.TxOptions{Isolation: level}, func(tx *sql.Tx) error {
					var v int
					read := "SELECT v FROM " + tbl + " WHERE id = 1"
					if !s.PG() && level == sql.LevelRepeatableRead {
						read += " LOCK IN SHARE MODE"
					}
					if err := tx.QueryRowContext(ctx, read).Scan(&v); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, s.q("UPDATE "+tbl+" SET v = $1 WHERE id = 1"), v+1)
					return err
				})
				if err == nil {
					acked.Add(1)
				} else if ok, _ := s.driverError(err); !ok {
					t.Errorf("a failure is not the driver's own error: %T %v", err, err)
				}
				return err
			})
			v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1")
			t.Logf("%v: failed %d / 200 %v; acknowledged %d, v = %d; %s", level, failed, kinds, acked.Load(), v, obs)
			if int64(v) != acked.Load() {
				t.Errorf("%v: v = %d for %d acknowledged increments: an update was lost", level, v, acked.Load())
			}
		}
	})
}

// TestIntegrationReplayIncrement: REPEATABLE READ and SERIALIZABLE, read one
// row, UPDATE ... SET v = v + 1 another: serialization failures raw; with
// replay none, the count exact.
func TestIntegrationReplayIncrement(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
		for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
			for _, wrapped := range []bool{false, true} {
				mustExec(t, raw, "DELETE FROM "+tbl)
				mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
				db, obs := raw, &replayObs{}
				if wrapped {
					db = s.openReplay(t, obs)
				}
				db.SetMaxOpenConns(8)
				var acked atomic.Int64
				failed, kinds := hammer(8, 25, func(w, i int) error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					err := plainTx(ctx, db, &sql.TxOptions{Isolation: level}, func(tx *sql.Tx) error {
						var v int
						if err := tx.QueryRowContext(ctx, "SELECT v FROM "+tbl+" WHERE id = 2").Scan(&v); err != nil {
							return err
						}
						_, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
						return err
					})
					if err == nil {
						acked.Add(1)
					}
					return err
				})
				v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1")
				name := map[bool]string{false: "raw", true: "replay"}[wrapped]
				t.Logf("%v %s: failed %d / 200 %v; acknowledged %d, v = %d; %s", level, name, failed, kinds, acked.Load(), v, obs)
				if int64(v) != acked.Load() {
					t.Errorf("%v %s: v = %d for %d acknowledged", level, name, v, acked.Load())
				}
				if wrapped && failed != 0 {
					t.Errorf("%v replay: %d failed", level, failed)
				}
			}
		}
	})
}

// TestIntegrationReplayNotVerified: what the application saw decides.
// A transaction that read NOW() (PostgreSQL: the transaction's start) or a
// value another transaction changed meanwhile gets the original error,
// the server's own, and its transaction stays as the conflict left it.
func TestIntegrationReplayNotVerified(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := replayTable(t, s, raw)
		obs := &replayObs{}
		db := s.openReplay(t, obs)
		for _, tc := range []struct {
			name string
			read string // what the victim reads first
			// change runs in the other session before its COMMIT, between
			// the victim's failure and its replay.
			change string
		}{
			{"a value changed meanwhile", "SELECT v FROM " + tbl + " WHERE id = 29", "UPDATE " + tbl + " SET v = v + 100 WHERE id = 29"},
			{"the clock", map[bool]string{true: "SELECT CAST(NOW() AS VARCHAR(64))", false: "SELECT CAST(NOW(6) AS CHAR)"}[s.PG()], ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				mustExec(t, raw, "UPDATE "+tbl+" SET v = 0")
				before := obs.failed.Load()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				var seen string
				victim, verr := deadlockVictim(t, ctx, ctx, s, raw, db, tbl, tc.change,
					func() (*sql.Tx, error) { return db.BeginTx(ctx, nil) },
					func(tx *sql.Tx) error { return tx.QueryRowContext(ctx, tc.read).Scan(&seen) })
				defer victim.Rollback()
				t.Logf("victim: %v; %s", verr, obs)
				if verr == nil {
					t.Fatalf("the victim's statement succeeded after a replay that read %q before", seen)
				}
				if ok, _ := s.driverError(verr); !ok {
					t.Errorf("the victim's error is not the driver's own: %T %v", verr, verr)
				}
				if k := Classify(verr).Kind; k != KindDeadlock {
					t.Errorf("the victim got %v (%v), want its deadlock", verr, k)
				}
				if obs.failed.Load() == before {
					t.Error("no EventReplayFailed")
				}
				// The transaction is as the deadlock left it: its
				// Commit commits nothing.
				cerr := victim.Commit()
				t.Logf("victim's Commit: %v", cerr)
				if cerr == nil && s.PG() {
					t.Error("Commit of the aborted transaction returned nil")
				}
				if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 1 {
					t.Errorf("row 1 is %d after the other session's one increment", v)
				}
			})
		}
	})
}

// beginWith begins a transaction on db, rolled back when t ends unless
// committed, and runs stmts in it, failing t if any fails.
func beginWith(t *testing.T, ctx context.Context, db *sql.DB, stmts ...string) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return tx
}

// deadlockVictim (no fastDeadlocks: PostgreSQL aborts the session whose
// deadlock check finds the cycle, the first to wait only if its check
// comes after the other closed the cycle) makes the victim transaction (on db, begun by begin) lose
// a deadlock against another session on raw: after prelude ran in it, the
// victim updates row 1 then row 2, the other session rows 3-19 (so that it
// is the heavier one, which InnoDB keeps), row 2, then row 1, then runs
// change if there is one, and commits.
// It returns the victim's error at its update of row 2, run with vctx, and
// the victim's transaction, still open.
func deadlockVictim(t *testing.T, ctx, vctx context.Context, s server, raw, db *sql.DB, tbl, change string,
	begin func() (*sql.Tx, error), prelude func(tx *sql.Tx) error) (*sql.Tx, error) {
	t.Helper()
	upd := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
	other := beginWith(t, ctx, raw, "UPDATE "+tbl+" SET v = v + 1 WHERE id >= 3 AND id < 20", "UPDATE "+tbl+" SET v = v + 1 WHERE id = 2")
	victim, err := begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Rollback() })
	if err := prelude(victim); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.ExecContext(ctx, upd, 1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := victim.ExecContext(vctx, upd, 2) // waits for the other session
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := other.ExecContext(ctx, upd, 1); err != nil {
		t.Fatalf("the server chose the other session as the deadlock's victim: %v", err)
	}
	if change != "" {
		if _, err := other.ExecContext(ctx, change); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	return victim, <-done
}

// replayTable makes the table deadlockVictim works on: rows 1..30 at 0.
func replayTable(t *testing.T, s server, raw *sql.DB) string {
	tbl := s.table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
	var vals []string
	for i := 1; i <= 30; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 0)", i))
	}
	mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES "+strings.Join(vals, ", "))
	return tbl
}

// TestIntegrationReplayBounds: what is never replayed gets the original
// deadlock, the server's own error, with an EventReplayFailed naming why:
// a transaction past conflict_replay_statements or conflict_replay_bytes,
// one in which the application used sql.Conn.Raw, one that called a
// function the wrapper does not know, one that set a session variable. And
// a control, the same transaction within the bounds, that is replayed.
func TestIntegrationReplayBounds(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := replayTable(t, s, raw)
		fn := tbl + "_f"
		if s.PG() {
			mustExec(t, raw, "CREATE OR REPLACE FUNCTION "+fn+"() RETURNS int LANGUAGE sql AS 'SELECT 1'")
			t.Cleanup(func() { raw.Exec("DROP FUNCTION IF EXISTS " + fn + "()") })
		} else {
			mustExec(t, raw, "CREATE OR REPLACE FUNCTION "+fn+"() RETURNS INT DETERMINISTIC RETURN 1")
			t.Cleanup(func() { raw.Exec("DROP FUNCTION IF EXISTS " + fn) })
		}
		setVar := map[bool]string{true: "SELECT set_config('application_name', 'x', false)", false: "SELECT @sqlconflict_x := 1"}[s.PG()]
		for _, tc := range []struct {
			name    string
			params  []string
			raw     bool // use sql.Conn.Raw inside the transaction
			prelude []string
			reason  string // "" : replayed
		}{
			{name: "within the bounds", params: []string{"conflict_replay_statements=5"}, prelude: []string{"SELECT 1", "SELECT 2"}},
			{name: "past the statements bound", params: []string{"conflict_replay_statements=2"}, prelude: []string{"SELECT 1", "SELECT 2"}, reason: "past conflict_replay_statements"},
			{name: "past the bytes bound", params: []string{"conflict_replay_bytes=40"}, prelude: []string{"SELECT 1 AS " + strings.Repeat("x", 40)}, reason: "past conflict_replay_statements"},
			{name: "sql.Conn.Raw", raw: true, reason: "sql.Conn.Raw"},
			{name: "a function the wrapper does not know", prelude: []string{"SELECT " + fn + "()"}, reason: "cannot be sent again"},
			{name: "a session setting", prelude: []string{setVar}, reason: "cannot be sent again"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				mustExec(t, raw, "UPDATE "+tbl+" SET v = 0")
				obs := &replayObs{}
				db := s.openReplay(t, obs, tc.params...)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				victim, err := deadlockVictim(t, ctx, ctx, s, raw, db, tbl, "",
					func() (*sql.Tx, error) { return conn.BeginTx(ctx, nil) },
					func(tx *sql.Tx) error {
						if tc.raw {
							if err := conn.Raw(func(dc any) error { _ = BaseConn(dc); return nil }); err != nil {
								return err
							}
						}
						for _, q := range tc.prelude {
							rows, err := tx.QueryContext(ctx, q)
							if err != nil {
								return err
							}
							for rows.Next() {
							}
							if err := rows.Close(); err != nil {
								return err
							}
						}
						return nil
					})
				defer victim.Rollback() // before conn.Close, which waits for it
				t.Logf("victim: %v; %s", err, obs)
				if tc.reason == "" {
					if err != nil {
						t.Fatalf("within the bounds the victim got %v", err)
					}
					if err := victim.Commit(); err != nil {
						t.Fatalf("Commit after the replay: %v", err)
					}
					if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 2 {
						t.Errorf("row 1 = %d, want 2 (the other session's increment and the victim's)", v)
					}
					return
				}
				if Classify(err).Kind != KindDeadlock {
					t.Fatalf("victim: %v, want its deadlock", err)
				}
				if ok, _ := s.driverError(err); !ok {
					t.Errorf("not the driver's own error: %T", err)
				}
				obs.mu.Lock()
				found := false
				for r := range obs.reasons {
					found = found || strings.Contains(r, tc.reason)
				}
				obs.mu.Unlock()
				if !found || obs.replayed.Load() != 0 {
					t.Errorf("events %s, want no replay and a reason with %q", obs, tc.reason)
				}
			})
		}
	})
}

// TestIntegrationReplayRowsPartlyRead: a locking read whose rows the
// application has begun to read fails at its next row with the deadlock
// (PostgreSQL reports it there). The replay re-reads the rows the
// application saw, checks them, and the application's *sql.Rows goes on
// from the same row: every row once, the later ones as the replay found
// them.
func TestIntegrationReplayRowsPartlyRead(t *testing.T) {
	s, _ := pgServer(t)
	raw := s.openRaw(t)
	tbl := replayTable(t, s, raw)
	obs := &replayObs{}
	db := s.openReplay(t, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other := beginWith(t, ctx, raw, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 3")
	victim := beginWith(t, ctx, db, "UPDATE "+tbl+" SET v = v + 10 WHERE id = 30")
	type row struct {
		id, v int
		pad   string
	}
	got := make(chan []row, 1)
	errc := make(chan error, 1)
	var firstAt atomic.Int64
	start := time.Now()
	go func() {
		// 20 kB a row: the server flushes rows 1 and 2 to the client
		// before it waits for row 3's lock.
		rows, err := victim.QueryContext(ctx, "SELECT id, v, repeat('x', 20000) FROM "+tbl+" WHERE id <= 3 ORDER BY id FOR UPDATE")
		if err != nil {
			errc <- err
			return
		}
		var rs []row
		for rows.Next() {
			var r row
			rows.Scan(&r.id, &r.v, &r.pad)
			r.pad = r.pad[:1]
			rs = append(rs, r)
			firstAt.CompareAndSwap(0, time.Now().UnixNano())
		}
		errc <- rows.Err()
		rows.Close()
		got <- rs
	}()
	time.Sleep(100 * time.Millisecond) // rows 1 and 2 sent, the scan waits on row 3
	if _, err := other.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 30"); err != nil {
		select {
		case verr := <-errc:
			t.Fatalf("the other session: %v; the victim: %v; %s", err, verr, obs)
		default:
		}
		t.Fatalf("the other session lost the deadlock: %v; %s", err, obs)
	}
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("the victim's rows: %v; %s", err, obs)
	}
	rs := <-got
	t.Logf("rows %v; %s", rs, obs)
	if want := []row{{1, 0, "x"}, {2, 0, "x"}, {3, 1, "x"}}; fmt.Sprint(rs) != fmt.Sprint(want) {
		t.Errorf("rows %v, want %v (row 3 as the other session committed it)", rs, want)
	}
	if obs.replayed.Load() == 0 {
		t.Error("no replay")
	}
	if err := victim.Commit(); err != nil {
		t.Fatal(err)
	}
	if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 30"); v != 11 {
		t.Errorf("row 30 = %d, want 11", v)
	}
	// The application had its first row before the deadlock (found after
	// deadlock_timeout, 1 s): the conflict came in the middle of its rows.
	if d := firstAt.Load() - start.UnixNano(); d <= 0 || time.Duration(d) > 500*time.Millisecond {
		t.Errorf("the first row came %v after the query began, want it before the deadlock", time.Duration(d))
	}
}

// TestIntegrationReplayContext: the caller's context bounds the replay. The
// replay's first statement waits on a lock that a third session took once
// the victim's first attempt released it, and keeps; the victim's context
// ends at 1.5 s: the victim gets its deadlock,
// the server's error, by then (plus the cancel grace), and its transaction
// stays aborted.
func TestIntegrationReplayContext(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := replayTable(t, s, raw)
		obs := &replayObs{}
		db := s.openReplay(t, obs)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// A third session takes row 25 once the victim has updated it,
		// so that the replay's first UPDATE waits.
		holder := beginWith(t, ctx, raw)
		// PostgreSQL finds the deadlock after deadlock_timeout (1 s).
		vctx, vcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer vcancel()
		end, _ := vctx.Deadline()
		held := make(chan error, 1)
		victim, err := deadlockVictim(t, ctx, vctx, s, raw, db, tbl, "",
			func() (*sql.Tx, error) { return db.BeginTx(ctx, nil) },
			func(tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, s.q("UPDATE "+tbl+" SET v = v + 1 WHERE id = 25")); err != nil {
					return err
				}
				go func() {
					_, err := holder.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 25") // waits for the victim
					held <- err
				}()
				return nil
			})
		late := time.Since(end)
		t.Logf("victim: %v, %v after its deadline; %s", err, late.Round(time.Millisecond), obs)
		if Classify(err).Kind != KindDeadlock {
			t.Errorf("victim: %v, want its deadlock", err)
		}
		if late > 2*DefaultOptions().CancelGrace+100*time.Millisecond {
			t.Errorf("the victim returned %v after its deadline", late)
		}
		if err := <-held; err != nil {
			t.Fatalf("holder: %v", err)
		}
		if victim.Commit() == nil && s.PG() {
			t.Error("the victim's Commit succeeded")
		}
		if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 1 {
			t.Errorf("row 1 = %d: the victim's work committed", v)
		}
	})
}

// TestIntegrationReplayOwnStatementsBounded: the caller's context bounds
// the statements a replay sends of its own, whatever the base driver's
// Rollback does with contexts (go-sql-driver/mysql's takes none). The
// victim's link goes through a proxy that stalls at the replay's ROLLBACK,
// or at its BEGIN: the victim gets its deadlock, the server's own error,
// within itest.MaxLate of its deadline (lib/pq: two cancel graces), and the
// connection is discarded (the next statement runs in another session).
func TestIntegrationReplayOwnStatementsBounded(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		target, dsnVia := s.viaProxy(t)
		begin := "BEGIN"
		if !s.PG() {
			begin = "START TRANSACTION"
		}
		// One table, named after the test: a subtest's name in it would be
		// on the wire, where the proxy looks for the statement to stall.
		tbl := replayTable(t, s, raw)
		for _, stallOn := range []string{"ROLLBACK", begin} {
			t.Run(stallOn, func(t *testing.T) {
				mustExec(t, raw, "UPDATE "+tbl+" SET v = 0")
				proxy := itest.NewProxy(t, target)
				obs := &replayObs{}
				via := s
				via.DSN = dsnVia(proxy.Addr())
				db := via.openReplay(t, obs)
				db.SetMaxOpenConns(1)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				vctx, vcancel := context.WithTimeout(ctx, 2500*time.Millisecond)
				defer vcancel()
				end, _ := vctx.Deadline()
				pid := s.backendID(t, db)
				// A call the deadline does not bound is let go 3 s late,
				// to fail rather than hang.
				defer time.AfterFunc(time.Until(end)+3*time.Second, proxy.Resume).Stop()
				victim, err := deadlockVictim(t, ctx, vctx, s, raw, db, tbl, "",
					func() (*sql.Tx, error) {
						tx, err := db.BeginTx(ctx, nil)
						proxy.StallOn(stallOn) // the replay's, not the application's
						return tx, err
					},
					func(*sql.Tx) error { return nil })
				late := time.Since(end)
				proxy.Resume()
				t.Logf("%s stalled: %v (%s), %v after the deadline; %s", stallOn, err, errName(err), late.Round(time.Millisecond), obs)
				if ok, _ := s.driverError(err); !ok || Classify(err).Kind != KindDeadlock {
					t.Errorf("victim: %v (%s), want its deadlock, the driver's error", err, errName(err))
				}
				// lib/pq sends a cancel request for a BEGIN whose context
				// ended; a server that answers it is alive and gets two
				// graces (sock.go).
				bound := itest.MaxLate
				if s.PG() {
					bound = 2*DefaultOptions().CancelGrace + itest.MaxLate
				}
				if late > bound {
					t.Errorf("the victim returned %v after its deadline, want within %v", late, bound)
				}
				if obs.replayed.Load() != 0 || obs.failed.Load() != 1 {
					t.Errorf("events: %s, want one failed replay", obs)
				}
				victim.Rollback()
				if s.backendID(t, db) == pid {
					t.Error("the connection whose replay was cut went back to the pool")
				}
				if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 1 {
					t.Errorf("row 1 = %d: the victim's work committed", v)
				}
			})
		}
	})
}

// TestIntegrationReplayAirflow: Airflow's rendered-fields write, a plain
// transaction that deletes a task's row and inserts it again, 24 workers
// racing on each of 10 keys in turn (a key not written yet: InnoDB's gap
// locks), each also logging its write. Raw, unique violations (PostgreSQL)
// and deadlocks (InnoDB's gap locks) fail most of them; with replay none,
// each key's row is there once, and the log holds exactly the acknowledged
// transactions.
//
// The race is met every run because the workers take each key in step:
// they begin its transaction together, and each inserts only once all of
// them have deleted. InnoDB's gap-lock deadlock needs two transactions
// that both deleted the missing key (a gap lock each; these do not
// conflict) before either inserts it. Left to themselves the workers drift
// apart (a loaded machine; database/sql keeping 2 idle connections, so
// that 22 workers dialed anew for each transaction): one that ran ahead
// wrote a key before any other deleted it, the later ones found the row,
// whose record lock queues them without a deadlock, and a run could meet
// no race at all (1-3 replays, or none, in runs on a loaded machine). No
// DELETE waits (the key is new; the previous key's transactions are over),
// so the step cannot hang; the replays run within a worker's INSERT, past
// it.
func TestIntegrationReplayAirflow(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t, s.fastDeadlocks()...)
		const workers, keys = 24, 10
		for _, wrapped := range []bool{false, true} {
			name := map[bool]string{false: "raw", true: "replay"}[wrapped]
			// A table of each run's own: InnoDB takes the gap locks that
			// deadlock only where no delete-marked row of an earlier run
			// is left for the keys.
			fields := s.table(t, raw, "_fields_"+name, "dag VARCHAR(32) NOT NULL, task VARCHAR(32) NOT NULL, v INT NOT NULL, PRIMARY KEY (dag, task)")
			logTbl := s.table(t, raw, "_log_"+name, "w INT NOT NULL, i INT NOT NULL, PRIMARY KEY (w, i)")
			db, obs := raw, &replayObs{}
			if wrapped {
				db = s.openReplay(t, obs, s.fastDeadlocks()...)
			}
			// Idle connections kept, or each key's step would wait for
			// 22 new sessions (the pool keeps 2), a PostgreSQL backend
			// started for each.
			db.SetMaxOpenConns(workers)
			db.SetMaxIdleConns(workers)
			step := newBarrier(workers) // two rounds a key: begun, deleted
			var acked atomic.Int64
			start := time.Now()
			failed, kinds := hammer(workers, keys, func(w, i int) error {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				step.wait() // all begin the key's transaction together
				deleted := false
				allDeleted := func() { // once a worker and key, whatever failed
					if !deleted {
						deleted = true
						step.wait()
					}
				}
				defer allDeleted()
				err := plainTx(ctx, db, nil, func(tx *sql.Tx) error {
					task := fmt.Sprint("t", i)
					_, err := tx.ExecContext(ctx, s.q("DELETE FROM "+fields+" WHERE dag = $1 AND task = $2"), "d", task)
					allDeleted()
					if err != nil {
						return err
					}
					time.Sleep(time.Millisecond) // the application renders the fields
					if _, err := tx.ExecContext(ctx, s.q("INSERT INTO "+fields+" (dag, task, v) VALUES ($1, $2, $3)"), "d", task, w*100+i); err != nil {
						return err
					}
					_, err = tx.ExecContext(ctx, s.q("INSERT INTO "+logTbl+" (w, i) VALUES ($1, $2)"), w, i)
					return err
				})
				if err == nil {
					acked.Add(1)
				}
				return err
			})
			rows := count(t, raw, "SELECT COUNT(*) FROM "+fields)
			logged := count(t, raw, "SELECT COUNT(*) FROM "+logTbl)
			t.Logf("%s: failed %d / %d %v; acknowledged %d, log rows %d, rows of the %d keys %d; %v; %s",
				name, failed, workers*keys, kinds, acked.Load(), logged, keys, rows, time.Since(start).Round(time.Millisecond), obs)
			if int64(logged) != acked.Load() || rows > keys || wrapped && rows != keys {
				t.Errorf("%s: %d log rows for %d acknowledged transactions, %d rows for the %d keys", name, logged, acked.Load(), rows, keys)
			}
			if !wrapped && failed == 0 {
				t.Error("raw: no transaction failed: the run met no race")
			}
			if wrapped && failed != 0 {
				t.Errorf("replay: %d failed", failed)
			}
			if wrapped && obs.replayed.Load() == 0 {
				t.Error("replay: no transaction was replayed: the run met no race")
			}
		}
	})
}

// TestIntegrationReplayKeepsAppSavepoint: on PostgreSQL a unique violation
// behind the application's own savepoint is the application's to handle
// (ROLLBACK TO SAVEPOINT, then read the winner's row), as in Django's
// get_or_create: no replay takes that transaction, and its savepoint, away.
func TestIntegrationReplayKeepsAppSavepoint(t *testing.T) {
	s, _ := pgServer(t)
	raw := s.openRaw(t)
	tbl := s.table(t, raw, "", "k VARCHAR(16) PRIMARY KEY, owner INT NOT NULL")
	obs := &replayObs{}
	db := s.openReplay(t, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	winner := beginWith(t, ctx, raw, "INSERT INTO "+tbl+" (k, owner) VALUES ('a', 1)")
	tx := beginWith(t, ctx, db)
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl+" WHERE k = 'a'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("count %d, %v", n, err)
	}
	if _, err := tx.ExecContext(ctx, "SAVEPOINT get_or_create"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (k, owner) VALUES ('a', 2)") // waits for the winner
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if err := winner.Commit(); err != nil {
		t.Fatal(err)
	}
	ierr := <-done
	if Classify(ierr).Kind != KindUniqueViolation {
		t.Fatalf("insert: %v, want the unique violation", ierr)
	}
	if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT get_or_create"); err != nil {
		t.Fatalf("the application's ROLLBACK TO its savepoint: %v; %s", err, obs)
	}
	var owner int
	if err := tx.QueryRowContext(ctx, "SELECT owner FROM "+tbl+" WHERE k = 'a'").Scan(&owner); err != nil || owner != 1 {
		t.Fatalf("the winner's row: owner %d, %v", owner, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if obs.replayed.Load() != 0 {
		t.Errorf("replayed: %s", obs)
	}
}

// TestIntegrationReplayBlindDuplicate: on PostgreSQL a plain transaction
// whose INSERT collides with a committed row, having read nothing that
// depends on it, gets the server's 23505 after uniqueAgain short replays
// (not after conflict_retry_timeout's worth of them), and its transaction
// is aborted as raw: the next statement gets 25P02.
func TestIntegrationReplayBlindDuplicate(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	tbl := s.table(t, raw, "", "id INT PRIMARY KEY")
	mustExec(t, raw, "INSERT INTO "+tbl+" (id) VALUES (1)")
	obs := &replayObs{}
	db := s.openReplay(t, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tx := beginWith(t, ctx, db, "INSERT INTO "+tbl+" (id) VALUES (2)")
	start := time.Now()
	_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (id) VALUES (1)")
	took := time.Since(start)
	_, after := tx.ExecContext(ctx, "SELECT 1")
	t.Logf("duplicate: %v after %v; next statement: %v; %s", err, took.Round(time.Millisecond), after, obs)
	if ok, _ := s.driverError(err); !ok || Classify(err).Kind != KindUniqueViolation {
		t.Errorf("INSERT: %v, want the server's unique violation", err)
	}
	if took > time.Second {
		t.Errorf("the duplicate came back after %v: replayed until the retry budget ran out", took)
	}
	if Classify(after).Code != "25P02" {
		t.Errorf("next statement: %v, want 25P02", after)
	}
	if obs.replayed.Load() != uniqueAgain {
		t.Errorf("%s, want %d replays", obs, uniqueAgain)
	}
	tx.Rollback()
	if n := count(t, raw, "SELECT COUNT(*) FROM "+tbl); n != 1 {
		t.Errorf("%d rows, want the committed one", n)
	}
}
