package sqlconflict

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Contention storms at the default options: every operation must end in
// success. Each logs its latencies (docs/BENCHMARKS.md keeps the figures).

// stormResult is what a storm measured.
type stormResult struct {
	errs []error
	lat  []time.Duration // one per operation, sorted
}

// runStorm runs op from workers goroutines, ops times each, and measures
// each call.
func runStorm(workers, ops int, op func(w, i int) error) stormResult {
	var mu sync.Mutex
	var r stormResult
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				start := time.Now()
				err := op(w, i)
				d := time.Since(start)
				mu.Lock()
				r.lat = append(r.lat, d)
				if err != nil {
					r.errs = append(r.errs, fmt.Errorf("worker %d op %d: %w", w, i, err))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(r.lat)
	return r
}

// pct returns the p-th percentile latency.
func (r stormResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p/100*float64(len(r.lat))))]
}

func (r stormResult) String() string {
	return fmt.Sprintf("%d ops, %d failed, p50 %v, p99 %v, max %v", len(r.lat), len(r.errs),
		r.pct(50).Round(100*time.Microsecond), r.pct(99).Round(100*time.Microsecond), r.pct(100).Round(100*time.Microsecond))
}

// TestIntegrationStormAirflow: Airflow's rendered-fields write, in one
// transaction: delete the row of a key, insert the new one. 24 workers on
// one key, and 8 workers per key on 2 keys, through
// TxRunner{RetryUniqueViolation: true} at its defaults: no operation may
// fail, and each key ends with exactly one row.
func TestIntegrationStormAirflow(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t)
		for _, tc := range []struct {
			name               string
			workers, ops, keys int
		}{
			{"24 workers on one key", 24, 40, 1},
			{"8 workers per key on 2 keys", 16, 50, 2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tbl := s.table(t, db, "", "dag VARCHAR(32), task VARCHAR(32), fields VARCHAR(64), PRIMARY KEY (dag, task)")
				var attempts atomic.Int64
				runner := TxRunner{RetryUniqueViolation: true}
				r := runStorm(tc.workers, tc.ops, func(w, i int) error {
					task := fmt.Sprintf("task%d", w%tc.keys)
					return runner.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
						attempts.Add(1)
						if _, err := tx.ExecContext(ctx, s.q("DELETE FROM "+tbl+" WHERE dag = $1 AND task = $2"), "dag", task); err != nil {
							return err
						}
						_, err := tx.ExecContext(ctx, s.q("INSERT INTO "+tbl+" (dag, task, fields) VALUES ($1, $2, $3)"), "dag", task, fmt.Sprintf("w%d-%d", w, i))
						return err
					})
				})
				t.Logf("%s %s: %v; %d attempts", s.Name, tc.name, r, attempts.Load())
				noFailures(t, r.errs)
				if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); n != tc.keys {
					t.Errorf("%d rows, want %d", n, tc.keys)
				}
			})
		}
	})
}

// djangoGetOrCreate is Django's get_or_create written by hand, as Django
// runs it: read; on no row, insert inside a savepoint; on a duplicate, roll
// back to the savepoint and read again (reread, if not empty). It returns
// the key's id.
func djangoGetOrCreate(ctx context.Context, s server, tx *sql.Tx, tbl, key, reread string) (int64, error) {
	var id int64
	sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")
	err := tx.QueryRowContext(ctx, sel, key).Scan(&id)
	if err != sql.ErrNoRows {
		return id, err
	}
	if _, err := tx.ExecContext(ctx, "SAVEPOINT goc"); err != nil {
		return 0, err
	}
	ins := "INSERT INTO " + tbl + " (k) VALUES (?)"
	if s.PG() {
		ins = "INSERT INTO " + tbl + " (k) VALUES ($1) RETURNING id"
		err = tx.QueryRowContext(ctx, ins, key).Scan(&id)
	} else {
		var res sql.Result
		if res, err = tx.ExecContext(ctx, ins, key); err == nil {
			id, err = res.LastInsertId()
		}
	}
	if !IsUniqueViolation(err) {
		return id, err
	}
	if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT goc"); err != nil {
		return 0, err
	}
	if reread == "" {
		reread = sel
	}
	err = tx.QueryRowContext(ctx, s.q(reread), key).Scan(&id)
	return id, err
}

// TestIntegrationStormDjangoGetOrCreate: 16 workers get-or-create hot keys
// at REPEATABLE READ (MariaDB's default; PostgreSQL's when asked), Django's
// way:
//
//   - at the defaults (conflict_blind_reread=fix), in the application's own
//     transaction on MySQL/MariaDB: every re-read after a duplicate finds
//     the winner's row; on PostgreSQL no read in the transaction can, the
//     re-read fails with ErrBlindReread, and RunTx reruns the transaction;
//   - with conflict_blind_reread=error, in TxRunner{RetryUniqueViolation:
//     true}: ErrBlindReread is rerun like a serialization failure;
//   - with conflict_blind_reread=warn and a locking re-read (MySQL): the
//     re-read sees the row and nothing is logged.
//
// No caller fails; each key has one row and every caller of a key gets its
// id. With conflict_blind_reread=warn and a plain re-read, the re-reads
// come back empty (logged for comparison).
func TestIntegrationStormDjangoGetOrCreate(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		type mode struct {
			name     string
			params   []string
			runTx    bool   // in TxRunner{RetryUniqueViolation: true}
			reread   string // the re-read; "" for the first read's
			strict   bool   // no failure allowed
			warnings int    // -1: not checked
		}
		modes := []mode{
			{name: "fix (default)", runTx: s.PG(), strict: true, warnings: 0},
			{name: "error in TxRunner", params: []string{"conflict_blind_reread=error"}, runTx: true, strict: true, warnings: 0},
			{name: "warn", params: []string{"conflict_blind_reread=warn"}, warnings: -1},
		}
		if !s.PG() {
			modes = append(modes, mode{name: "warn, locking re-read", params: []string{"conflict_blind_reread=warn"},
				reread: "SELECT id FROM %s WHERE k = ? LOCK IN SHARE MODE", strict: true, warnings: 0})
		}
		for _, m := range modes {
			t.Run(m.name, func(t *testing.T) {
				db, logs := s.openLogged(t, m.params...)
				cols := "id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(32) NOT NULL UNIQUE"
				if s.PG() {
					cols = "id BIGSERIAL PRIMARY KEY, k VARCHAR(32) NOT NULL UNIQUE"
				}
				tbl := s.table(t, db, "", cols)
				reread := m.reread
				if reread != "" {
					reread = fmt.Sprintf(reread, tbl)
				}
				const workers, rounds, keys = 16, 10, 4
				var mu sync.Mutex
				got := map[string]map[int64]int{}
				var reruns atomic.Int64
				opts := &sql.TxOptions{Isolation: sql.LevelRepeatableRead}
				runner := TxRunner{RetryUniqueViolation: true}
				r := runStorm(workers, rounds, func(w, i int) error {
					key := fmt.Sprintf("r%dk%d", i, w%keys)
					var id int64
					op := func(ctx context.Context, tx *sql.Tx) error {
						var err error
						id, err = djangoGetOrCreate(ctx, s, tx, tbl, key, reread)
						return err
					}
					var err error
					if m.runTx {
						attempts := 0
						err = runner.Run(context.Background(), db, opts, func(ctx context.Context, tx *sql.Tx) error { attempts++; return op(ctx, tx) })
						reruns.Add(int64(attempts - 1))
					} else {
						// The application's own transaction.
						var tx *sql.Tx
						if tx, err = db.BeginTx(context.Background(), opts); err == nil {
							if err = op(context.Background(), tx); err == nil {
								err = tx.Commit()
							} else {
								tx.Rollback()
							}
						}
					}
					if err == nil {
						mu.Lock()
						if got[key] == nil {
							got[key] = map[int64]int{}
						}
						got[key][id]++
						mu.Unlock()
					}
					return err
				})
				w := logs.warnings()
				t.Logf("%s %s: %v; RunTx reruns %d; %d warnings", s.Name, m.name, r, reruns.Load(), len(w))
				if !m.strict {
					return // for comparison only
				}
				noFailures(t, r.errs)
				if m.warnings >= 0 && len(w) != m.warnings {
					t.Errorf("%d warnings, want %d: %+v", len(w), m.warnings, w)
				}
				if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); n != rounds*keys {
					t.Errorf("%d rows, want %d", n, rounds*keys)
				}
				for key, ids := range got {
					if len(ids) != 1 {
						t.Errorf("key %s: callers got ids %v, want one", key, ids)
					}
				}
			})
		}
	})
}
