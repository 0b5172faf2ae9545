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
