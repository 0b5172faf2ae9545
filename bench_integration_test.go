package sqlconflict

// Benchmarks against the real servers named by SQLCONFLICT_PG_DSN and
// SQLCONFLICT_MYSQL_DSN (see integration_test.go); without them they skip.
// Each compares the raw base driver with the wrapped one as sub-benchmarks
// of one invocation; docs/BENCHMARKS.md has the commands and the results.
//
// This file holds no Test functions: `go test` without -bench runs nothing
// from it.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchTableSeq numbers the benchmarks' tables. Benchmark names hold '=',
// which server.table would put into the table name.
var benchTableSeq atomic.Int64

// benchTable creates a fresh table with cols and drops it when b ends.
func benchTable(b *testing.B, db *sql.DB, cols string) string {
	b.Helper()
	name := fmt.Sprintf("tbench%s_%d", runID, benchTableSeq.Add(1))
	mustExec(b, db, "DROP TABLE IF EXISTS "+name)
	mustExec(b, db, "CREATE TABLE "+name+" ("+cols+")")
	b.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

// benchServerDB opens the base driver (drv=raw) and the wrapped one
// (drv=wrapped, default options: savepoints off) through sql.Open, as an
// application does.
func benchServerDB(b *testing.B, s server, wrapped bool) *sql.DB {
	b.Helper()
	if wrapped {
		return s.open(b)
	}
	return s.openRaw(b)
}

// BenchmarkServerOverhead: the happy-path cost of one statement, raw vs
// wrapped (savepoints off, the default), on loopback servers.
//
//   - op=exec: autocommit UPDATE of one row (includes the commit's log flush)
//   - op=exec-nomatch: autocommit UPDATE matching no row (no log flush: the
//     least server work an Exec can do, so the most sensitive to overhead)
//   - op=query: autocommit SELECT of one row by primary key, QueryRow+Scan
//   - op=tx: BEGIN; UPDATE; SELECT; COMMIT
func BenchmarkServerOverhead(b *testing.B) {
	ctx := context.Background()
	for _, s := range servers(b) {
		b.Run("db="+s.Name, func(b *testing.B) {
			for _, op := range []string{"exec", "exec-nomatch", "query", "tx"} {
				b.Run("op="+op, func(b *testing.B) {
					for _, wrapped := range []bool{false, true} {
						name := "drv=raw"
						if wrapped {
							name = "drv=wrapped"
						}
						b.Run(name, func(b *testing.B) {
							db := benchServerDB(b, s, wrapped)
							do := benchServerOp(b, s, db, op)
							b.ReportAllocs()
							b.ResetTimer()
							for range b.N {
								if err := do(ctx, db); err != nil {
									b.Fatal(err)
								}
							}
						})
					}
				})
			}
		})
	}
}

// BenchmarkServerPaired measures the same operations as
// BenchmarkServerOverhead, but pairs them: each iteration runs the operation
// once through the raw driver and once through the wrapped one (alternating
// which goes first), timing each. A loopback round trip on a shared 2-core
// machine varies by 10-50% from one second to the next, far more than the
// wrapper's cost; pairing exposes both drivers to the same conditions, so
// their ratio stays measurable. Metrics: raw-ns/op and wrapped-ns/op (the
// median of each) and wrapped/raw, the median of the pairs' ratios; medians,
// because one scheduling hiccup of a few milliseconds would otherwise
// outweigh thousands of pairs. The benchmark's own ns/op is the sum of both
// and means nothing by itself.
//
// ctx=deadline gives each operation a context with a deadline of its own,
// as a request handler's: lib/pq then watches it with a goroutine per call,
// and the wrapper arms its watchdog (sock.go); ctx=background does neither.
func BenchmarkServerPaired(b *testing.B) {
	for _, s := range servers(b) {
		b.Run("db="+s.Name, func(b *testing.B) {
			for _, op := range []string{"exec", "exec-nomatch", "query", "tx"} {
				for _, deadline := range []bool{false, true} {
					b.Run("op="+op+"/ctx="+map[bool]string{false: "background", true: "deadline"}[deadline], func(b *testing.B) {
						raw, wrapped := s.openRaw(b), s.open(b)
						itest.Pairs(b, raw, wrapped, deadline, benchServerOp(b, s, raw, op))
					})
				}
			}
		})
	}
}

// BenchmarkServerVerifyCommit is the price of conflict_verify_commit on
// PostgreSQL, paired against the raw driver: a transaction that writes pays
// one round trip for its id before COMMIT; one that only reads pays none.
func BenchmarkServerVerifyCommit(b *testing.B) {
	var pg []server
	for _, s := range servers(b) {
		if s.PG() {
			pg = append(pg, s)
		}
	}
	if len(pg) == 0 {
		b.Skip("conflict_verify_commit is PostgreSQL's")
	}
	s := pg[0]
	for _, op := range []string{"tx", "read-tx"} {
		for _, verify := range []bool{false, true} {
			b.Run(fmt.Sprintf("op=%s/verify=%v", op, verify), func(b *testing.B) {
				raw, wrapped := s.openRaw(b), s.open(b, fmt.Sprintf("conflict_verify_commit=%v", verify))
				f := benchServerOp(b, s, raw, "tx")
				if op == "read-tx" {
					f = func(ctx context.Context, db *sql.DB) error {
						t, err := db.BeginTx(ctx, nil)
						if err != nil {
							return err
						}
						defer t.Rollback()
						for range 2 {
							var v int64
							if err := t.QueryRowContext(ctx, "SELECT 1").Scan(&v); err != nil {
								return err
							}
						}
						return t.Commit()
					}
				}
				itest.Pairs(b, raw, wrapped, false, f)
			})
		}
	}
}

// BenchmarkServerReplay is the happy-path price of conflict_replay=on (the
// record of each statement, a checksum per row read), paired against the
// raw driver as conflict_replay=off is: a writing transaction (SELECT,
// UPDATE, COMMIT) and one that reads 20 rows.
func BenchmarkServerReplay(b *testing.B) {
	for _, s := range servers(b) {
		for _, op := range []string{"tx", "read20"} {
			for _, replay := range []string{"off", "on"} {
				b.Run(fmt.Sprintf("%s/op=%s/replay=%s", s.Name, op, replay), func(b *testing.B) {
					b.ReportAllocs()
					raw, wrapped := s.openRaw(b), s.open(b, "conflict_replay="+replay)
					f := benchServerOp(b, s, raw, "tx")
					if op == "read20" {
						tbl := benchTable(b, raw, "id INT PRIMARY KEY, v VARCHAR(40) NOT NULL")
						for i := 1; i <= 20; i++ {
							mustExec(b, raw, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, 'row %d of twenty, some text')", tbl, i, i))
						}
						f = func(ctx context.Context, db *sql.DB) error {
							t, err := db.BeginTx(ctx, nil)
							if err != nil {
								return err
							}
							defer t.Rollback()
							rows, err := t.QueryContext(ctx, "SELECT id, v FROM "+tbl+" ORDER BY id")
							if err != nil {
								return err
							}
							for rows.Next() {
								var id int64
								var v string
								if err := rows.Scan(&id, &v); err != nil {
									return err
								}
							}
							if err := rows.Close(); err != nil {
								return err
							}
							return t.Commit()
						}
					}
					itest.Pairs(b, raw, wrapped, false, f)
				})
			}
		}
	}
}

// benchServerOp creates a one-row table through db and returns the
// operation op (exec, exec-nomatch, query or tx) on it, to run through any
// *sql.DB open on the same server.
func benchServerOp(b *testing.B, s server, db *sql.DB, op string) func(context.Context, *sql.DB) error {
	b.Helper()
	tbl := benchTable(b, db, "id INT PRIMARY KEY, v INT NOT NULL")
	mustExec(b, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
	update := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
	sel := s.q("SELECT v FROM " + tbl + " WHERE id = $1")
	return func(ctx context.Context, db *sql.DB) error {
		switch op {
		case "exec":
			_, err := db.ExecContext(ctx, update, 1)
			return err
		case "exec-nomatch":
			_, err := db.ExecContext(ctx, update, -1)
			return err
		case "query":
			var v int64
			return db.QueryRowContext(ctx, sel, 1).Scan(&v)
		case "tx":
			return benchTx(ctx, db, update, sel)
		}
		b.Fatalf("unknown op %q", op)
		return nil
	}
}

// median returns the middle of v (which it sorts), or 0 for none.
func benchTx(ctx context.Context, db *sql.DB, update, sel string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, update, 1); err != nil {
		return err
	}
	var v int64
	if err := tx.QueryRowContext(ctx, sel, 1).Scan(&v); err != nil {
		return err
	}
	return tx.Commit()
}

// benchBaseConnector returns the base driver's own connector for s (lib/pq
// or go-sql-driver/mysql), so that a benchCountConnector can sit between it
// and the wrapper.
func benchBaseConnector(b *testing.B, s server) driver.Connector {
	b.Helper()
	form := DSNMySQL
	if s.PG() {
		form = DSNPostgresKV
		if isPostgresURL(s.DSN) {
			form = DSNPostgresURL
		}
	}
	_, dsn, err := SplitDSN(s.DSN, form, DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	db, err := sql.Open(s.Raw, dsn) // only to find the registered base driver
	if err != nil {
		b.Fatal(err)
	}
	drv := db.Driver()
	db.Close()
	if dc, ok := drv.(driver.DriverContext); ok {
		c, err := dc.OpenConnector(dsn)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	return dsnConnector{dsn: dsn, drv: drv}
}

// BenchmarkServerSavepoints: a transaction of benchWritesPerTx single-row
// UPDATEs, raw, wrapped with savepoints off, and wrapped with
// conflict_savepoints=writes. A benchCountConnector between the base
// connector and the wrapper counts what reaches the server: round-trips/tx
// (every statement, prepare, BEGIN and COMMIT) and wrapper-stmts/write (the
// wrapper's SAVEPOINT / RELEASE statements per guarded write; target 1).
// ns/op is per transaction: the throughput ratio is off / writes. With
// end=commit the transaction commits, and the commit's log flush is part of
// its time; with end=rollback it rolls back, which leaves only the
// statements' cost.
func BenchmarkServerSavepoints(b *testing.B) {
	ctx := context.Background()
	for _, s := range servers(b) {
		b.Run("db="+s.Name, func(b *testing.B) {
			for _, end := range []string{"commit", "rollback"} {
				b.Run("end="+end, func(b *testing.B) {
					for _, sp := range []string{"raw", "off", "writes"} {
						b.Run("sp="+sp, func(b *testing.B) {
							benchSavepoints(b, ctx, s, sp, end == "commit")
						})
					}
				})
			}
		})
	}
}

func benchSavepoints(b *testing.B, ctx context.Context, s server, sp string, commit bool) {
	n := &benchCounter{}
	var c driver.Connector = &benchCountConnector{base: benchBaseConnector(b, s), n: n}
	if sp != "raw" {
		opts := DefaultOptions()
		if sp == "writes" {
			opts.Savepoints = SavepointsWrites
		}
		var err error
		if c, err = NewConnector(c, opts); err != nil {
			b.Fatal(err)
		}
	}
	db := sql.OpenDB(c)
	defer db.Close()
	tbl := benchTable(b, db, "id INT PRIMARY KEY, v INT NOT NULL")
	for i := range benchWritesPerTx {
		mustExec(b, db, fmt.Sprintf("INSERT INTO %s (id, v) VALUES (%d, 0)", tbl, i))
	}
	update := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
	write := func(i int) (string, []any) { return update, []any{i} }
	// One transaction before counting, so that the connection is open and
	// a MySQL one has learned to prepare.
	benchGuardedTxEnd(b, ctx, db, commit, write)
	n.reset()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		benchGuardedTxEnd(b, ctx, db, commit, write)
	}
	n.report(b, b.N, benchWritesPerTx)
}

// The contention benchmark's shape: benchWorkers goroutines get-or-create
// keys from a shared counter of operations n = 0, 1, 2, ... Two key
// patterns:
//
//   - keys=fresh: operation n uses key (n/benchWorkers)*benchKeys +
//     n%benchKeys, so the 32 operations in flight race on 16 keys that do
//     not exist yet, two per key: one creates the row and the other must get
//     it. Every other operation is a creation, and every creation races.
//   - keys=hot: operation n uses key n%benchKeys, the same 16 keys all run
//     long: the first operations race to create them, then every operation
//     finds its row. The steady state of a hot get-or-create.
const (
	benchWorkers = 32
	benchKeys    = 16
)

// benchKey returns operation n's key for the pattern named keys.
func benchKey(keys string, n int64) int64 {
	if keys == "hot" {
		return n % benchKeys
	}
	return n/benchWorkers*benchKeys + n%benchKeys
}

// benchGetOrCreate returns key's row id, creating the row if needed, and
// how many times it had to start over.
type benchGetOrCreate func(ctx context.Context, s server, db *sql.DB, tbl string, key int64) (id int64, retries int, err error)

// benchOptimum is the hand-written single-statement upsert loop, in
// autocommit: INSERT ... ON CONFLICT DO NOTHING RETURNING (PostgreSQL) or
// INSERT IGNORE (MariaDB), then SELECT if the row was there already.
func benchOptimum(ctx context.Context, s server, db *sql.DB, tbl string, key int64) (int64, int, error) {
	for attempt := 0; attempt < 10; attempt++ {
		var id int64
		if s.PG() {
			err := db.QueryRowContext(ctx, "INSERT INTO "+tbl+" (k) VALUES ($1) ON CONFLICT (k) DO NOTHING RETURNING id", key).Scan(&id)
			if err == nil {
				return id, attempt, nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return 0, attempt, err
			}
		} else {
			res, err := db.ExecContext(ctx, "INSERT IGNORE INTO "+tbl+" (k) VALUES (?)", key)
			if err != nil {
				return 0, attempt, err
			}
			if n, err := res.RowsAffected(); err != nil {
				return 0, attempt, err
			} else if n == 1 {
				id, err = res.LastInsertId()
				return id, attempt, err
			}
		}
		err := db.QueryRowContext(ctx, s.q("SELECT id FROM "+tbl+" WHERE k = $1"), key).Scan(&id)
		if err == nil {
			return id, attempt, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, attempt, err
		}
		// The row went away between the two statements: start over.
	}
	return 0, 10, errors.New("benchOptimum: no row after 10 attempts")
}

// benchRunTx is get-or-create as an application writes it without upsert:
// SELECT, and INSERT if absent, in a transaction that TxRunner reruns on a
// unique violation (the rerun sees the winner's row).
func benchRunTx(ctx context.Context, s server, db *sql.DB, tbl string, key int64) (int64, int, error) {
	attempts := 0
	var id int64
	err := TxRunner{RetryUniqueViolation: true}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
		attempts++
		err := tx.QueryRowContext(ctx, s.q("SELECT id FROM "+tbl+" WHERE k = $1"), key).Scan(&id)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if s.PG() {
			return tx.QueryRowContext(ctx, "INSERT INTO "+tbl+" (k) VALUES ($1) RETURNING id", key).Scan(&id)
		}
		res, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (k) VALUES (?)", key)
		if err != nil {
			return err
		}
		id, err = res.LastInsertId()
		return err
	})
	return id, attempts - 1, err
}

// BenchmarkServerContention: the get-or-create storm (see benchWorkers and
// benchKey) through RunTx on the wrapped driver (impl=runtx, the subject),
// against the hand-written optimum on the raw driver (impl=optimum, the
// reference) in the same run. Two more rows separate the causes: impl=runtx-raw is the same
// RunTx code on the raw driver, impl=optimum-wrapped the optimum on the
// wrapped driver. Any failed operation, or two operations on one key that
// got different ids, fails the benchmark. Metrics: ops/s, failures (always
// 0 if reported), retries/op (RunTx reruns, or optimum loops) and
// round-trips/op (calls reaching the base connection, counted by a
// benchCountConnector under the wrapper: statements, prepares, BEGIN,
// COMMIT, ROLLBACK).
func BenchmarkServerContention(b *testing.B) {
	for _, s := range servers(b) {
		b.Run("db="+s.Name, func(b *testing.B) {
			for _, keys := range []string{"fresh", "hot"} {
				b.Run("keys="+keys, func(b *testing.B) {
					for _, impl := range []struct {
						name    string
						wrapped bool
						f       benchGetOrCreate
					}{
						{"optimum", false, benchOptimum},
						{"runtx", true, benchRunTx},
						{"runtx-raw", false, benchRunTx},
						{"optimum-wrapped", true, benchOptimum},
					} {
						b.Run("impl="+impl.name, func(b *testing.B) {
							benchContention(b, s, keys, impl.wrapped, impl.f)
						})
					}
				})
			}
		})
	}
}

// benchCountedDB opens s through a benchCountConnector, raw or wrapped with
// the default options (those of sql.Open with the wrapper's driver name).
func benchCountedDB(b *testing.B, s server, wrapped bool, n *benchCounter) *sql.DB {
	b.Helper()
	var c driver.Connector = &benchCountConnector{base: benchBaseConnector(b, s), n: n}
	if wrapped {
		var err error
		if c, err = NewConnector(c, DefaultOptions()); err != nil {
			b.Fatal(err)
		}
	}
	db := sql.OpenDB(c)
	b.Cleanup(func() { db.Close() })
	return db
}

func benchContention(b *testing.B, s server, keys string, wrapped bool, f benchGetOrCreate) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := &benchCounter{}
	db := benchCountedDB(b, s, wrapped, n)
	cols := "id SERIAL PRIMARY KEY, k BIGINT NOT NULL UNIQUE"
	if !s.PG() {
		cols = "id BIGINT AUTO_INCREMENT PRIMARY KEY, k BIGINT NOT NULL UNIQUE"
	}
	tbl := benchTable(b, db, cols)
	db.SetMaxOpenConns(benchWorkers)
	db.SetMaxIdleConns(benchWorkers)
	// Open every connection before the clock starts, and warm them up with
	// one operation each on keys the measured run does not use.
	var wg sync.WaitGroup
	warm := make(chan error, benchWorkers)
	for w := range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := f(ctx, s, db, tbl, -1-int64(w))
			warm <- err
		}()
	}
	wg.Wait()
	close(warm)
	for err := range warm {
		if err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}

	var (
		next     atomic.Int64
		retries  atomic.Int64
		failures atomic.Int64
		mu       sync.Mutex
		ids      = map[int64]int64{}
		firstErr error
	)
	fail := func(err error) {
		failures.Add(1)
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	n.reset()
	b.ResetTimer()
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1) - 1
				if n >= int64(b.N) {
					return
				}
				key := benchKey(keys, n)
				id, r, err := f(ctx, s, db, tbl, key)
				retries.Add(int64(r))
				if err != nil {
					fail(fmt.Errorf("key %d: %w", key, err))
					continue
				}
				mu.Lock()
				prev, seen := ids[key]
				if !seen {
					ids[key] = id
				}
				mu.Unlock()
				if seen && prev != id {
					fail(fmt.Errorf("key %d: ids %d and %d", key, prev, id))
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)/sec, "ops/s")
	}
	b.ReportMetric(float64(failures.Load()), "failures")
	b.ReportMetric(float64(retries.Load())/float64(b.N), "retries/op")
	b.ReportMetric(float64(n.roundTrips.Load())/float64(b.N), "round-trips/op")
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d of %d operations failed; first: %v", f, b.N, firstErr)
	}
}
