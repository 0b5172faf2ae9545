package pgx_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
		o.Observer = func(ob sqlconflict.Observation) {
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
