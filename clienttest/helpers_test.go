package clienttest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// target is one wrapped driver on one integration server.
type target struct{ itest.Server }

// eachTarget runs f as a subtest per configured target, skipping the test
// if there is none.
func eachTarget(t *testing.T, f func(t *testing.T, tg target)) {
	pgx := itest.Server{Name: "pgx", Driver: sqlconflictpgx.DriverName, Raw: "pgx", Env: itest.EnvPG, IsDriverError: itest.As[*pgconn.PgError]}
	d := itest.Drivers{Postgres: sqlconflict.DriverPostgres, MySQL: sqlconflict.DriverMySQL, Others: []itest.Server{pgx}}
	for _, s := range itest.Servers(t, d) {
		t.Run(s.Name, func(t *testing.T) { f(t, target{s}) })
	}
}

// open opens the wrapped driver and fails the test if the server does not
// answer.
func (tg target) open(t *testing.T, params ...string) *sql.DB {
	t.Helper()
	return tg.Open(t, tg.Driver, params...)
}

// tagTable creates a fresh get-or-create table, id and unique name, named
// after the test, and drops it afterwards. Its unique constraint is
// returned too.
func (tg target) tagTable(t *testing.T, db *sql.DB) (table, constraint string) {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(t.Name()))
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	table = fmt.Sprintf("ct%x_%s", os.Getpid()&0xffffff, strings.Trim(name, "_"))
	constraint = table + "_name_key"
	cols := "id BIGSERIAL PRIMARY KEY, name VARCHAR(64) NOT NULL, CONSTRAINT " + constraint + " UNIQUE (name)"
	if !tg.PG() {
		constraint = "uq_name"
		cols = "id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, CONSTRAINT " + constraint + " UNIQUE (name)"
	}
	exec(t, db, "DROP TABLE IF EXISTS "+table)
	exec(t, db, "CREATE TABLE "+table+" ("+cols+")")
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + table) })
	return table, constraint
}

func exec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// rows counts a table's rows.
func rows(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkUnique asserts that err, as a client returned it, is still the
// classified unique violation of constraint, holding the driver's error.
func (tg target) checkUnique(t *testing.T, err error, constraint string) {
	t.Helper()
	if err == nil {
		t.Fatal("want a unique violation, got nil")
	}
	if !sqlconflict.IsUniqueViolation(err) {
		t.Errorf("IsUniqueViolation(%T %v) = false", err, err)
	}
	if cl := sqlconflict.Classify(err); cl.Constraint != constraint {
		t.Errorf("Classify(%v).Constraint = %q, want %q", err, cl.Constraint, constraint)
	}
	if !tg.AsDriverError(err) {
		t.Errorf("errors.As to the driver's error type failed for %T %v", err, err)
	}
}

// Get-or-create races: raceWorkers goroutines run raceOps rounds; in each
// round they get-or-create raceKeys fresh hot keys, raceWorkers/raceKeys
// goroutines per key.
const (
	raceWorkers = 16
	raceOps     = 10
	raceKeys    = 4
)

// runner is the TxRunner of the races: get-or-create written as
// select-then-insert reruns its transaction on a unique violation, which the
// rerun then reads.
var runner = sqlconflict.TxRunner{RetryUniqueViolation: true} // and the defaults

// race runs getOrCreate for every worker and round, each call in its own
// transaction through RunTx (runner), and checks that none failed, that
// every key was created once, and that every caller of a key got the same
// id. It logs the transaction reruns the race caused.
func race(t *testing.T, db *sql.DB, table string, getOrCreate func(ctx context.Context, tx *sql.Tx, key string) (int64, error)) {
	t.Helper()
	warm(t, db)
	var (
		attempts atomic.Int64
		mu       sync.Mutex
		errs     []error
		ids      = map[string]map[int64]bool{}
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	for w := range raceWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range raceOps {
				key := fmt.Sprintf("r%d_k%d", i, w%raceKeys)
				var id int64
				err := runner.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
					attempts.Add(1)
					var err error
					id, err = getOrCreate(ctx, tx, key)
					return err
				})
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("worker %d round %d: %w", w, i, err))
				} else {
					if ids[key] == nil {
						ids[key] = map[int64]bool{}
					}
					ids[key][id] = true
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("%d operations, %d transaction reruns", raceWorkers*raceOps, attempts.Load()-raceWorkers*raceOps)
	for i, err := range errs {
		if i == 5 {
			t.Errorf("... %d failed operations in all", len(errs))
			break
		}
		t.Error(err)
	}
	if n := rows(t, db, table); n != raceOps*raceKeys {
		t.Errorf("rows = %d, want %d", n, raceOps*raceKeys)
	}
	for key, set := range ids {
		if len(set) != 1 {
			t.Errorf("key %s: callers got ids %v, want one", key, set)
		}
	}
}

// warm opens a connection per worker ahead of the race, so that the workers
// collide instead of queueing for connections.
func warm(t *testing.T, db *sql.DB) {
	t.Helper()
	db.SetMaxIdleConns(raceWorkers + 2)
	conns := make([]*sql.Conn, raceWorkers)
	for i := range conns {
		c, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	for _, c := range conns {
		c.Close()
	}
}
