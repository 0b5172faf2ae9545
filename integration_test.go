package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// server is one integration target (see itest for the environment that
// names them).
type server struct{ itest.Server }

// driverError reports whether err is the base driver's own error type,
// unwrapped, and names that type.
func (s server) driverError(err error) (bool, string) {
	if s.PG() {
		_, ok := err.(*pq.Error)
		return ok, "*pq.Error"
	}
	_, ok := err.(*mysql.MySQLError)
	return ok, "*mysql.MySQLError"
}

// q rewrites $n placeholders for MySQL, so one query text serves both.
func (s server) q(query string) string {
	if s.PG() {
		return query
	}
	for n := 9; n >= 1; n-- {
		query = strings.ReplaceAll(query, fmt.Sprintf("$%d", n), "?")
	}
	return query
}

// servers returns the configured integration servers, skipping the test if
// none is: PostgreSQL through lib/pq, and MySQL/MariaDB. (pgx/ has
// integration tests of its own through pgx's stdlib.)
func servers(t testing.TB) []server {
	t.Helper()
	var out []server
	for _, s := range itest.Servers(t, itest.Drivers{Postgres: DriverPostgres, MySQL: DriverMySQL}) {
		out = append(out, server{s})
	}
	return out
}

// pgServer returns the PostgreSQL server, for a test of PostgreSQL's
// behaviour; false (and a skip) when only MySQL is configured.
func pgServer(t *testing.T) (server, bool) {
	return serverWhere(t, true)
}

// mysqlServer is pgServer for MySQL/MariaDB.
func mysqlServer(t *testing.T) (server, bool) {
	return serverWhere(t, false)
}

func serverWhere(t *testing.T, pg bool) (server, bool) {
	t.Helper()
	for _, s := range servers(t) {
		if s.PG() == pg {
			return s, true
		}
	}
	t.Skipf("this test needs %s", map[bool]string{true: itest.EnvPG, false: itest.EnvMySQL}[pg])
	return server{}, false
}

// eachServer runs f as a subtest per configured server.
func eachServer(t *testing.T, f func(t *testing.T, s server)) {
	for _, s := range servers(t) {
		t.Run(s.Name, func(t *testing.T) { f(t, s) })
	}
}

// open opens the wrapped driver with extra DSN params and fails the test if
// the server does not answer.
func (s server) open(t testing.TB, params ...string) *sql.DB {
	t.Helper()
	return s.Open(t, s.Driver, params...)
}

// openRaw opens the base driver directly.
func (s server) openRaw(t testing.TB, params ...string) *sql.DB {
	t.Helper()
	return s.Open(t, s.Raw, params...)
}

// runID keeps the tables of concurrent test processes apart.
var runID = fmt.Sprintf("%x", os.Getpid()&0xffffff)

// table creates a fresh table named after the test and drops it afterwards.
// cols is the column list, in the server's syntax.
func (s server) table(t testing.TB, db *sql.DB, suffix, cols string) string {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(t.Name()))
	if len(name) > 36 {
		name = name[len(name)-36:]
	}
	name = "t" + runID + "_" + strings.Trim(name, "_") + suffix
	mustExec(t, db, "DROP TABLE IF EXISTS "+name)
	mustExec(t, db, "CREATE TABLE "+name+" ("+cols+")")
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

func mustExec(t testing.TB, db interface {
	Exec(string, ...any) (sql.Result, error)
}, q string, args ...any) sql.Result {
	t.Helper()
	res, err := db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return res
}

func count(t testing.TB, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// checkClass asserts the classification of err and that it is the base
// driver's own error type, unwrapped.
func checkClass(t *testing.T, s server, err error, kind Kind, scope Scope, constraint string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a %v error, got nil", kind)
	}
	cl := Classify(err)
	if cl.Kind != kind || cl.Scope != scope {
		t.Errorf("Classify(%v) = %v/%v, want %v/%v", err, cl.Kind, cl.Scope, kind, scope)
	}
	if constraint != "" && cl.Constraint != constraint {
		t.Errorf("Constraint = %q, want %q (err %v)", cl.Constraint, constraint, err)
	}
	if ok, want := s.driverError(err); !ok {
		t.Errorf("error is %T, want %s unchanged", err, want)
	}
}

func TestIntegrationClassifyConstraints(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t)
		parent := s.table(t, db, "_p", "id INT PRIMARY KEY, title VARCHAR(50), n INT NOT NULL, CONSTRAINT uq_title UNIQUE (title), CONSTRAINT chk_n CHECK (n >= 0)")
		child := s.table(t, db, "_c", "id INT PRIMARY KEY, pid INT, CONSTRAINT fk_child_parent FOREIGN KEY (pid) REFERENCES "+parent+"(id)")
		mustExec(t, db, s.q("INSERT INTO "+parent+" (id, title, n) VALUES ($1, $2, $3)"), 1, "a", 1)

		_, err := db.Exec(s.q("INSERT INTO "+parent+" (id, title, n) VALUES ($1, $2, $3)"), 2, "a", 1)
		checkClass(t, s, err, KindUniqueViolation, ScopeStatement, "uq_title")
		if !IsUniqueViolation(err) || IsRetryable(err) {
			t.Errorf("IsUniqueViolation/IsRetryable wrong for %v", err)
		}

		_, err = db.Exec(s.q("INSERT INTO "+child+" (id, pid) VALUES ($1, $2)"), 1, 99)
		checkClass(t, s, err, KindForeignKeyViolation, ScopeStatement, "fk_child_parent")

		_, err = db.Exec(s.q("INSERT INTO "+parent+" (id, title, n) VALUES ($1, $2, $3)"), 3, "c", -1)
		checkClass(t, s, err, KindCheckViolation, ScopeStatement, "chk_n")

		_, err = db.Exec(s.q("INSERT INTO "+parent+" (id, title, n) VALUES ($1, $2, $3)"), 4, "d", nil)
		checkClass(t, s, err, KindNotNullViolation, ScopeStatement, "")
	})
}

func TestIntegrationClassifyDeadlock(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t, "conflict_retries=0")
		tbl := s.table(t, db, "", "id INT PRIMARY KEY, v INT")
		mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
		err := provokeDeadlock(t, s, db, tbl)
		scope := ScopeTransaction
		if s.PG() {
			scope = ScopeStatement // PostgreSQL aborts the transaction; a savepoint would recover it
		}
		checkClass(t, s, err, KindDeadlock, scope, "")
		if !IsRetryable(err) {
			t.Errorf("deadlock not retryable: %v", err)
		}
	})
}

// provokeDeadlock runs two transactions that lock rows 1 and 2 in opposite
// orders and returns the victim's error. The victim's transaction is rolled
// back, the survivor's committed.
func provokeDeadlock(t *testing.T, s server, db *sql.DB, tbl string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var txs [2]*sql.Tx
	for i := range txs {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		txs[i] = tx
		if s.PG() {
			mustExec(t, tx, "SET LOCAL deadlock_timeout = '50ms'")
		}
		mustExec(t, tx, s.q("UPDATE "+tbl+" SET v = v + 1 WHERE id = $1"), i+1)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, tx := range txs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 1 {
				time.Sleep(100 * time.Millisecond) // let tx 0 wait first
			}
			_, errs[i] = tx.ExecContext(ctx, s.q("UPDATE "+tbl+" SET v = v + 1 WHERE id = $1"), 2-i)
			if errs[i] != nil {
				tx.Rollback()
			} else if err := tx.Commit(); err != nil {
				errs[i] = fmt.Errorf("survivor commit: %w", err)
			}
		}()
	}
	wg.Wait()
	switch {
	case errs[0] != nil && errs[1] != nil:
		t.Fatalf("both failed: %v / %v", errs[0], errs[1])
	case errs[0] != nil:
		return errs[0]
	case errs[1] != nil:
		return errs[1]
	}
	t.Fatal("no deadlock happened")
	return nil
}

func TestIntegrationClassifyLockTimeout(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t, "conflict_retries=0")
		tbl := s.table(t, db, "", "id INT PRIMARY KEY, v INT")
		mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
		holder, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Rollback()
		mustExec(t, holder, "UPDATE "+tbl+" SET v = 1 WHERE id = 1")

		waiter, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer waiter.Rollback()
		if s.PG() {
			mustExec(t, waiter, "SET LOCAL lock_timeout = '100ms'")
		} else {
			mustExec(t, waiter, "SET SESSION innodb_lock_wait_timeout = 1")
		}
		_, err = waiter.Exec("UPDATE " + tbl + " SET v = 2 WHERE id = 1")
		checkClass(t, s, err, KindLockTimeout, ScopeStatement, "")
		if !IsRetryable(err) {
			t.Errorf("lock timeout not retryable: %v", err)
		}
	})
}

// TestIntegrationWrapErrors: with conflict_wrap_errors=true the error is an
// *Error that matches the sentinel and still unwraps to the driver's error.
func TestIntegrationWrapErrors(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t, "conflict_wrap_errors=true")
		tbl := s.table(t, db, "", "id INT PRIMARY KEY")
		mustExec(t, db, "INSERT INTO "+tbl+" (id) VALUES (1)")
		_, err := db.Exec("INSERT INTO " + tbl + " (id) VALUES (1)")
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrUniqueViolation) {
			t.Fatalf("err %T %v: want *Error matching ErrUniqueViolation", err, err)
		}
		if !s.AsDriverError(err) {
			t.Errorf("errors.As to the driver's error type failed for %T", err)
		}
	})
}

// TestIntegrationSavepointUniqueReread: with conflict_savepoints=writes a
// unique violation inside a transaction undoes only the failed INSERT, so
// the re-read that get-or-create does next, and further writes, run in the
// same transaction. The writes after the first send PostgreSQL the
// two-statement "RELEASE SAVEPOINT ...; SAVEPOINT ..." (which pgx must run
// through its simple protocol: pgx/'s TestIntegrationSavepointWrites).
func TestIntegrationSavepointUniqueReread(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t, "conflict_savepoints=writes", "conflict_retries=0")
		tbl := s.table(t, db, "", "id INT PRIMARY KEY, name VARCHAR(20)")
		mustExec(t, db, s.q("INSERT INTO "+tbl+" (id, name) VALUES ($1, $2)"), 1, "winner")
		ins := s.q("INSERT INTO " + tbl + " (id, name) VALUES ($1, $2)")

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		mustExec(t, tx, ins, 2, "before")
		_, err = tx.Exec(ins, 1, "loser")
		checkClass(t, s, err, KindUniqueViolation, ScopeStatement, "")
		var name string
		if err := tx.QueryRow(s.q("SELECT name FROM "+tbl+" WHERE id = $1"), 1).Scan(&name); err != nil || name != "winner" {
			t.Fatalf("re-read after the violation: %q, %v", name, err)
		}
		mustExec(t, tx, ins, 3, "after")
		if err := tx.Commit(); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); n != 3 {
			t.Errorf("rows = %d, want 3 (the first, and both writes around the undone one)", n)
		}
	})
}
