package pgx_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// TestIntegrationReplayOppositeOrder: plain transactions (no RunTx) that
// update two rows in opposite orders, 8 workers × 25, through pgx's stdlib
// raw and through sqlconflict-pgx with conflict_replay=on: raw, most fail
// with 40P01; replayed, none, and the rows hold exactly the acknowledged
// updates.
func TestIntegrationReplayOppositeOrder(t *testing.T) {
	srv := pgServer(t)
	fast := "deadlock_timeout=20ms" // a session setting pgx sends at connect
	raw := srv.Open(t, "pgx", fast)
	tbl := table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
	upd := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"
	var replayed atomic.Int64
	for _, wrapped := range []bool{false, true} {
		mustExec(t, raw, "DELETE FROM "+tbl)
		mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
		db := raw
		if wrapped {
			db = openReplay(t, &replayed, fast)
		}
		db.SetMaxOpenConns(8)
		var acked, failed atomic.Int64
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 25 {
					a, b := 1, 2
					if (w+i)%2 == 1 {
						a, b = 2, 1
					}
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					err := func() error {
						tx, err := db.BeginTx(ctx, nil)
						if err != nil {
							return err
						}
						defer tx.Rollback()
						if _, err := tx.ExecContext(ctx, upd, a); err != nil {
							return err
						}
						time.Sleep(time.Millisecond)
						if _, err := tx.ExecContext(ctx, upd, b); err != nil {
							return err
						}
						return tx.Commit()
					}()
					cancel()
					if err != nil {
						failed.Add(1)
					} else {
						acked.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		v1, v2 := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"), count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 2")
		name := map[bool]string{false: "raw pgx", true: "sqlconflict-pgx, conflict_replay=on"}[wrapped]
		t.Logf("%s: failed %d / 200; acknowledged %d, rows %d, %d; replays %d", name, failed.Load(), acked.Load(), v1, v2, replayed.Load())
		if int64(v1) != acked.Load() || int64(v2) != acked.Load() {
			t.Errorf("%s: rows %d, %d for %d acknowledged", name, v1, v2, acked.Load())
		}
		if wrapped && failed.Load() != 0 {
			t.Errorf("%s: %d failed", name, failed.Load())
		}
	}
}

// openReplay opens sqlconflict-pgx with conflict_replay on and params,
// counting replays.
func openReplay(t testing.TB, replayed *atomic.Int64, params ...string) *sql.DB {
	t.Helper()
	return openWith(t, func(o *sqlconflict.Options) {
		o.Replay = sqlconflict.ReplayOn
		o.Observer = func(_ context.Context, ob sqlconflict.Observation) {
			if ob.Event == sqlconflict.EventReplay {
				replayed.Add(1)
			}
		}
	}, params...)
}

// BenchmarkReplayPaired is conflict_replay's happy-path price on pgx, off
// and on, each paired against raw pgx: BEGIN; UPDATE; SELECT; COMMIT.
func BenchmarkReplayPaired(b *testing.B) {
	srv := pgServer(b)
	for _, replay := range []string{"off", "on"} {
		b.Run("op=tx/replay="+replay, func(b *testing.B) {
			b.ReportAllocs()
			raw, wrapped := srv.Open(b, "pgx"), srv.Open(b, sqlconflictpgx.DriverName, "conflict_replay="+replay)
			tbl := table(b, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
			mustExec(b, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
			update := fmt.Sprintf("UPDATE %s SET v = v + 1 WHERE id = $1", tbl)
			sel := fmt.Sprintf("SELECT v FROM %s WHERE id = $1", tbl)
			itest.Pairs(b, raw, wrapped, false, func(ctx context.Context, db *sql.DB) error {
				return benchTx(ctx, db, update, sel)
			})
		})
	}
}

// TestIntegrationReplayOwnStatementsBounded: the caller's context bounds
// the replay's own ROLLBACK and BEGIN, although pgx's stdlib Rollback takes
// the context its BeginTx had (here one that never ends). The victim's link
// goes through a proxy that stalls at the replay's statement: the victim
// gets its 40P01, pgx's own *pgconn.PgError, within itest.MaxLate of its
// deadline, and its connection is not pooled again.
func TestIntegrationReplayOwnStatementsBounded(t *testing.T) {
	srv := pgServer(t)
	raw := srv.Open(t, "pgx")
	target, dsnVia := faultViaProxy(t, srv)
	// One table, named after the test: a subtest's name in it would be on
	// the wire, where the proxy looks for the statement to stall.
	tbl := table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
	for _, stallOn := range []string{"rollback", "begin"} {
		t.Run(stallOn, func(t *testing.T) {
			mustExec(t, raw, "DELETE FROM "+tbl)
			mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) SELECT i, 0 FROM generate_series(1, 30) i")
			upd := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"
			proxy := itest.NewProxy(t, target)
			config, err := pgx.ParseConfig(dsnVia(proxy.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			var replayed, failed atomic.Int64
			opts := sqlconflict.DefaultOptions()
			opts.Replay = sqlconflict.ReplayOn
			opts.Observer = func(_ context.Context, ob sqlconflict.Observation) {
				switch ob.Event {
				case sqlconflict.EventReplay:
					replayed.Add(1)
				case sqlconflict.EventReplayFailed:
					failed.Add(1)
					t.Logf("not replayed: %s", ob.Reason)
				}
			}
			db, err := sqlconflictpgx.OpenDB(*config, opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			// The other session, on raw, is the heavier one (rows 3-19),
			// which PostgreSQL's deadlock check leaves alone: the victim
			// waits first, and its check, 1 s later, finds the cycle.
			other, err := raw.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer other.Rollback()
			mustExec(t, other, "UPDATE "+tbl+" SET v = v + 1 WHERE id >= 3 AND id < 20")
			mustExec(t, other, upd, 2)
			pid := count(t, db, "SELECT pg_backend_pid()")
			victim, err := db.BeginTx(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer victim.Rollback()
			mustExec(t, victim, upd, 1)
			proxy.StallOn(stallOn) // the replay's, not the application's
			vctx, vcancel := context.WithTimeout(ctx, 2500*time.Millisecond)
			defer vcancel()
			end, _ := vctx.Deadline()
			defer time.AfterFunc(time.Until(end)+3*time.Second, proxy.Resume).Stop() // fail rather than hang
			done := make(chan error, 1)
			go func() {
				_, err := victim.ExecContext(vctx, upd, 2)
				done <- err
			}()
			time.Sleep(100 * time.Millisecond)
			if _, err := other.ExecContext(ctx, upd, 1); err != nil {
				t.Fatalf("the other session was the deadlock's victim: %v", err)
			}
			if err := other.Commit(); err != nil {
				t.Fatal(err)
			}
			err = <-done
			late := time.Since(end)
			proxy.Resume()
			t.Logf("%s stalled: %v, %v after the deadline; replayed %d, not replayed %d", stallOn, err, late.Round(time.Millisecond), replayed.Load(), failed.Load())
			checkPgError(t, err, "40P01", sqlconflict.KindDeadlock, "")
			if late > itest.MaxLate {
				t.Errorf("the victim returned %v after its deadline, want within %v", late, itest.MaxLate)
			}
			if replayed.Load() != 0 || failed.Load() != 1 {
				t.Errorf("replayed %d, not replayed %d, want one failed replay", replayed.Load(), failed.Load())
			}
			victim.Rollback()
			if count(t, db, "SELECT pg_backend_pid()") == pid {
				t.Error("the connection whose replay was cut went back to the pool")
			}
			if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 1 {
				t.Errorf("row 1 = %d: the victim's work committed", v)
			}
		})
	}
}

// TestIntegrationReplayLostConnection: a plain transaction through pgx
// whose connection is lost before its COMMIT (the proxy cuts every link)
// is replayed on a new connection and commits, each row updated once; raw
// pgx fails it, and commits nothing of it.
func TestIntegrationReplayLostConnection(t *testing.T) {
	srv := pgServer(t)
	raw := srv.Open(t, "pgx")
	target, dsnVia := faultViaProxy(t, srv)
	tbl := table(t, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
	upd := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"
	for _, wrapped := range []bool{false, true} {
		name := map[bool]string{false: "raw pgx", true: "sqlconflict-pgx, conflict_replay=on"}[wrapped]
		mustExec(t, raw, "DELETE FROM "+tbl)
		mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) SELECT i, 0 FROM generate_series(1, 3) i")
		proxy := itest.NewProxy(t, target)
		db := faultOpen(t, "pgx", dsnVia(proxy.Addr()))
		var replayed atomic.Int64
		if wrapped {
			config, err := pgx.ParseConfig(dsnVia(proxy.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			opts := sqlconflict.DefaultOptions()
			opts.Replay = sqlconflict.ReplayOn
			opts.Observer = func(_ context.Context, ob sqlconflict.Observation) {
				if ob.Event == sqlconflict.EventReplay {
					replayed.Add(1)
				}
			}
			if db, err = sqlconflictpgx.OpenDB(*config, opts); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
		}
		db.SetMaxOpenConns(1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := func() error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			mustExec(t, tx, upd, 1)
			var v int
			if err := tx.QueryRowContext(ctx, "SELECT v FROM "+tbl+" WHERE id = 2").Scan(&v); err != nil {
				t.Fatal(err)
			}
			proxy.CutAll()
			if _, err := tx.ExecContext(ctx, upd, 3); err != nil {
				return err
			}
			return tx.Commit()
		}()
		cancel()
		v1, v3 := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"), count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 3")
		t.Logf("%s: %v; rows 1, 3 = %d, %d; replays %d", name, err, v1, v3, replayed.Load())
		switch {
		case wrapped && (err != nil || v1 != 1 || v3 != 1 || replayed.Load() != 1):
			t.Errorf("%s: %v, rows %d, %d, replays %d; want committed once by one replay", name, err, v1, v3, replayed.Load())
		case !wrapped && (err == nil || v1 != 0 || v3 != 0):
			t.Errorf("%s: %v, rows %d, %d; want the loss, nothing committed", name, err, v1, v3)
		}
	}
}
