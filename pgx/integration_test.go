package pgx_test

// Integration tests of sqlconflict-pgx on the PostgreSQL server named by
// SQLCONFLICT_PG_DSN (unset: they skip; set but unreachable: they fail).
// The root module's integration tests run over lib/pq only; these keep what
// they used to check through pgx's stdlib as well: real errors classified
// and returned as *pgconn.PgError, the autocommit retry, the doomed
// transaction, savepoint mode, and database/sql's retry on a connection pgx
// knows is dead.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// open opens sqlconflict-pgx on the server with params appended to the DSN.
func open(t *testing.T, params ...string) (itest.Server, *sql.DB) {
	t.Helper()
	srv := pgServer(t)
	return srv, srv.Open(t, sqlconflictpgx.DriverName, params...)
}

// openWith opens sqlconflict-pgx through OpenDB with the options set leaves,
// for what a DSN cannot say (an Observer), on the DSN with params appended.
func openWith(t testing.TB, set func(*sqlconflict.Options), params ...string) *sql.DB {
	t.Helper()
	srv := pgServer(t)
	config, err := pgx.ParseConfig(srv.DSNWith(params...))
	if err != nil {
		t.Fatal(err)
	}
	opts := sqlconflict.DefaultOptions()
	set(&opts)
	db, err := sqlconflictpgx.OpenDB(*config, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	srv.Ping(t, db)
	return db
}

// table creates a fresh table named after the test and drops it afterwards.
func table(t testing.TB, db *sql.DB, suffix, cols string) string {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(t.Name()))
	if len(name) > 36 {
		name = name[len(name)-36:]
	}
	name = fmt.Sprintf("px%x_%s%s", os.Getpid()&0xffffff, strings.Trim(name, "_"), suffix)
	mustExec(t, db, "DROP TABLE IF EXISTS "+name)
	mustExec(t, db, "CREATE TABLE "+name+" ("+cols+")")
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

func mustExec(t testing.TB, db interface {
	Exec(string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func count(t testing.TB, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// checkPgError asserts that err is pgx's own *pgconn.PgError, unwrapped,
// with the SQLSTATE code, and classified as kind (and constraint, if given).
func checkPgError(t *testing.T, err error, code string, kind sqlconflict.Kind, constraint string) {
	t.Helper()
	pgErr, ok := err.(*pgconn.PgError)
	if !ok {
		t.Fatalf("error is %T (%v), want *pgconn.PgError unchanged", err, err)
	}
	if pgErr.Code != code {
		t.Errorf("SQLSTATE %s, want %s (%v)", pgErr.Code, code, err)
	}
	cl := sqlconflict.Classify(err)
	if cl.Kind != kind || cl.SQLState != code || cl.Dialect != sqlconflict.DialectPostgres {
		t.Errorf("Classify(%v) = %+v, want %v with SQLSTATE %s", err, cl, kind, code)
	}
	if constraint != "" && cl.Constraint != constraint {
		t.Errorf("Constraint = %q, want %q", cl.Constraint, constraint)
	}
}

// deadlock runs two transactions that lock rows 1 and 2 of tbl in opposite
// orders. The victim then does what careless code does: ignores the error,
// inserts (victim, 2) into logTbl and commits. It returns the victim's
// number and the errors of its deadlocked statement, its insert and its
// commit.
func deadlock(t *testing.T, db *sql.DB, tbl, logTbl string) (victim int, deadlockErr, afterErr, commitErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var txs [2]*sql.Tx
	for w := range txs {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		txs[w] = tx
		mustExec(t, tx, "SET LOCAL deadlock_timeout = '50ms'")
		mustExec(t, tx, "INSERT INTO "+logTbl+" (w, step) VALUES ($1, 1)", w)
		mustExec(t, tx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = $1", w+1)
	}
	type result struct{ deadlock, after, commit error }
	var results [2]result
	var wg sync.WaitGroup
	for w, tx := range txs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w == 1 {
				time.Sleep(100 * time.Millisecond) // let tx 0 wait first
			}
			r := &results[w]
			_, r.deadlock = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = $1", 2-w)
			_, r.after = tx.ExecContext(ctx, "INSERT INTO "+logTbl+" (w, step) VALUES ($1, 2)", w)
			r.commit = tx.Commit()
		}()
	}
	wg.Wait()
	switch {
	case results[0].deadlock != nil && results[1].deadlock != nil:
		t.Fatalf("both failed: %v / %v", results[0].deadlock, results[1].deadlock)
	case results[0].deadlock != nil:
		victim = 0
	case results[1].deadlock != nil:
		victim = 1
	default:
		t.Fatal("no deadlock happened")
	}
	if s := results[1-victim]; s.after != nil || s.commit != nil {
		t.Fatalf("survivor failed: %v / %v", s.after, s.commit)
	}
	r := results[victim]
	return victim, r.deadlock, r.after, r.commit
}

// TestIntegrationClassify: real server errors through sqlconflict-pgx are
// pgx's *pgconn.PgError, unwrapped, and classified.
func TestIntegrationClassify(t *testing.T) {
	t.Run("unique", func(t *testing.T) {
		_, db := open(t)
		tbl := table(t, db, "", "id INT PRIMARY KEY, title TEXT, CONSTRAINT px_uq_title UNIQUE (title)")
		mustExec(t, db, "INSERT INTO "+tbl+" (id, title) VALUES ($1, $2)", 1, "a")
		_, err := db.Exec("INSERT INTO "+tbl+" (id, title) VALUES ($1, $2)", 2, "a")
		checkPgError(t, err, "23505", sqlconflict.KindUniqueViolation, "px_uq_title")
		if cl := sqlconflict.Classify(err); cl.Scope != sqlconflict.ScopeStatement || cl.Table != tbl {
			t.Errorf("Classify: scope %v, table %q; want statement, %q", cl.Scope, cl.Table, tbl)
		}
		if !sqlconflict.IsUniqueViolation(err) || sqlconflict.IsRetryable(err) {
			t.Errorf("IsUniqueViolation/IsRetryable wrong for %v", err)
		}
	})
	t.Run("deadlock", func(t *testing.T) {
		_, db := open(t, "conflict_retries=0")
		tbl := table(t, db, "", "id INT PRIMARY KEY, v INT")
		logTbl := table(t, db, "_log", "w INT, step INT")
		mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
		_, err, _, _ := deadlock(t, db, tbl, logTbl)
		checkPgError(t, err, "40P01", sqlconflict.KindDeadlock, "")
		if !sqlconflict.IsRetryable(err) {
			t.Errorf("deadlock not retryable: %v", err)
		}
	})
	t.Run("lock-timeout", func(t *testing.T) {
		_, db := open(t, "conflict_retries=0")
		tbl := table(t, db, "", "id INT PRIMARY KEY, v INT")
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
		mustExec(t, waiter, "SET LOCAL lock_timeout = '100ms'")
		_, err = waiter.Exec("UPDATE " + tbl + " SET v = 2 WHERE id = 1")
		checkPgError(t, err, "55P03", sqlconflict.KindLockTimeout, "")
		if !sqlconflict.IsRetryable(err) {
			t.Errorf("lock timeout not retryable: %v", err)
		}
	})
}

// TestIntegrationDeadlockPairAutocommit: two autocommit statements that each
// lock two rows in opposite orders deadlock; the wrapper retries the victim,
// so neither fails, and each statement's effect lands exactly once.
func TestIntegrationDeadlockPairAutocommit(t *testing.T) {
	var retries atomic.Int64
	db := openWith(t, func(o *sqlconflict.Options) {
		o.Retries = 5
		o.Observer = func(_ context.Context, ob sqlconflict.Observation) {
			if ob.Event == sqlconflict.EventRetry {
				retries.Add(1)
			}
		}
	})
	tbl := table(t, db, "", "id INT PRIMARY KEY, v INT NOT NULL")
	logTbl := table(t, db, "_log", "w CHAR(1), id INT")
	mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
	// One statement each (a DO block would never be retried: it may
	// commit inside), locking the rows one at a time with a pause after
	// each.
	stmt := func(w string, first, second int) string {
		order := "ASC"
		if first > second {
			order = "DESC"
		}
		return fmt.Sprintf("INSERT INTO %s (w, id) SELECT '%s', id FROM (SELECT id FROM %s ORDER BY id %s FOR UPDATE) l WHERE pg_sleep(0.3) IS NOT NULL",
			logTbl, w, tbl, order)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, q := range []string{stmt("A", 1, 2), stmt("B", 2, 1)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = db.Exec(q)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("statement %d failed: %v", i, err)
		}
	}
	if retries.Load() == 0 {
		t.Error("no deadlock was retried: the test did not provoke one")
	}
	for _, w := range []string{"A", "B"} {
		if n := count(t, db, "SELECT COUNT(*) FROM "+logTbl+" WHERE w = $1", w); n != 2 {
			t.Errorf("statement %s applied %d rows, want exactly 2", w, n)
		}
	}
	t.Logf("%d retries", retries.Load())
}

// TestIntegrationDoomedTx: a transaction that failed (a deadlock, or a
// unique violation without savepoints: PostgreSQL has aborted it) and whose
// code carries on and commits. PostgreSQL refuses the later statement
// itself (25P02) and pgx's Commit returns its own ErrTxCommitRollback, as
// without the wrapper; nothing of the transaction is committed.
func TestIntegrationDoomedTx(t *testing.T) {
	check := func(t *testing.T, db *sql.DB, logTbl string, w int, afterErr, commitErr error) {
		t.Helper()
		// pgx prepares the statement and returns the server's answer in its
		// *pgconn.PrepareError.
		if pgErr := (*pgconn.PgError)(nil); !errors.As(afterErr, &pgErr) || pgErr.Code != "25P02" ||
			sqlconflict.Classify(afterErr).Kind != sqlconflict.KindTxAborted {
			t.Errorf("statement after the failure: %v, want the server's 25P02", afterErr)
		}
		if !errors.Is(commitErr, pgx.ErrTxCommitRollback) {
			t.Errorf("commit err %v, want pgx.ErrTxCommitRollback", commitErr)
		}
		if cl := sqlconflict.Classify(commitErr); cl.Kind != sqlconflict.KindTxAborted || cl.Scope != sqlconflict.ScopeTransaction {
			t.Errorf("commit error class %+v", cl)
		}
		if n := count(t, db, "SELECT COUNT(*) FROM "+logTbl+" WHERE w = $1", w); n != 0 {
			t.Errorf("%d rows of the failed transaction committed, want 0", n)
		}
	}
	t.Run("deadlock", func(t *testing.T) {
		_, db := open(t)
		tbl := table(t, db, "", "id INT PRIMARY KEY, v INT NOT NULL")
		logTbl := table(t, db, "_log", "w INT, step INT")
		mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
		victim, dlErr, afterErr, commitErr := deadlock(t, db, tbl, logTbl)
		if sqlconflict.Classify(dlErr).Kind != sqlconflict.KindDeadlock {
			t.Fatalf("want a deadlock, got %v", dlErr)
		}
		check(t, db, logTbl, victim, afterErr, commitErr)
		if n := count(t, db, "SELECT COUNT(*) FROM "+logTbl+" WHERE w = $1", 1-victim); n != 2 {
			t.Errorf("survivor rows = %d, want 2", n)
		}
	})
	t.Run("unique", func(t *testing.T) {
		_, db := open(t) // savepoints off, the default
		tbl := table(t, db, "", "id INT PRIMARY KEY")
		logTbl := table(t, db, "_log", "w INT, step INT")
		mustExec(t, db, "INSERT INTO "+tbl+" (id) VALUES (1)")
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		mustExec(t, tx, "INSERT INTO "+logTbl+" (w, step) VALUES ($1, 1)", 0)
		_, err = tx.Exec("INSERT INTO "+tbl+" (id) VALUES ($1)", 1)
		checkPgError(t, err, "23505", sqlconflict.KindUniqueViolation, "")
		_, afterErr := tx.Exec("INSERT INTO "+logTbl+" (w, step) VALUES ($1, 2)", 0)
		check(t, db, logTbl, 0, afterErr, tx.Commit())
	})
}

// TestIntegrationSavepointWrites: with conflict_savepoints=writes a unique
// violation in a transaction undoes only the failed INSERT, returned as the
// *pgconn.PgError; the transaction goes on, re-reads, writes more and
// commits. The writes after the first send the two-statement
// "RELEASE SAVEPOINT ...; SAVEPOINT ..." that pgx must run through its
// simple protocol, with and without arguments to the write itself.
func TestIntegrationSavepointWrites(t *testing.T) {
	_, db := open(t, "conflict_savepoints=writes", "conflict_retries=0")
	tbl := table(t, db, "", "id INT PRIMARY KEY, name TEXT")
	mustExec(t, db, "INSERT INTO "+tbl+" (id, name) VALUES ($1, $2)", 1, "winner")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	mustExec(t, tx, "INSERT INTO "+tbl+" (id, name) VALUES ($1, $2)", 2, "before")
	_, err = tx.Exec("INSERT INTO "+tbl+" (id, name) VALUES ($1, $2)", 1, "loser")
	checkPgError(t, err, "23505", sqlconflict.KindUniqueViolation, tbl+"_pkey")
	var name string
	if err := tx.QueryRow("SELECT name FROM "+tbl+" WHERE id = $1", 1).Scan(&name); err != nil || name != "winner" {
		t.Fatalf("re-read after the violation: %q, %v", name, err)
	}
	mustExec(t, tx, "INSERT INTO "+tbl+" (id, name) VALUES ($1, $2)", 3, "after")
	mustExec(t, tx, "INSERT INTO "+tbl+" (id, name) VALUES (4, 'no arguments')")
	mustExec(t, tx, "UPDATE "+tbl+" SET name = $1 WHERE id = $2", "updated", 2)
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); n != 4 {
		t.Errorf("rows = %d, want 4 (the first, and the three writes around the undone one)", n)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM "+tbl+" WHERE name = 'updated'"); n != 1 {
		t.Errorf("the UPDATE after the violation: %d rows, want 1", n)
	}
}

// TestIntegrationDeadConnRetried: pgx's side of database/sql's ErrBadConn
// contract through the wrapper. The server ends an idle pooled connection
// (pg_terminate_backend from another connection); when the pool hands it
// out again, pgx finds it dead before sending anything (its ResetSession
// pings a connection idle for over a second) and answers driver.ErrBadConn,
// and database/sql runs the statement on a fresh connection: no error
// reaches the caller, and a write lands once.
func TestIntegrationDeadConnRetried(t *testing.T) {
	srv, db := open(t)
	db.SetMaxOpenConns(1) // the statement must get the killed connection
	admin := srv.Open(t, "pgx")
	tbl := table(t, db, "", "id INT PRIMARY KEY")
	for i, op := range []string{"select", "insert"} {
		t.Run(op, func(t *testing.T) {
			var pid int
			if err := db.QueryRow("SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			var ok bool
			if err := admin.QueryRow("SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
				t.Fatalf("pg_terminate_backend(%d): %v, %v", pid, ok, err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for count(t, admin, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid) != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("backend %d still there", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(1100 * time.Millisecond) // past pgx's 1s idle threshold for the ping

			var err error
			if op == "select" {
				var newPid int
				err = db.QueryRow("SELECT pg_backend_pid()").Scan(&newPid)
				if err == nil && newPid == pid {
					t.Errorf("ran on the killed backend %d", pid)
				}
			} else {
				_, err = db.Exec("INSERT INTO "+tbl+" (id) VALUES ($1)", i)
				if n := count(t, db, "SELECT COUNT(*) FROM "+tbl+" WHERE id = $1", i); err == nil && n != 1 {
					t.Errorf("insert landed %d times, want 1", n)
				}
			}
			if err != nil {
				t.Fatalf("%s on the pool after its connection was killed: %T %v", op, err, err)
			}
		})
	}
}

// TestIntegrationCopyFromThroughRaw: pgx's own API (CopyFrom here) through
// sql.Conn.Raw and sqlconflict.BaseConn, as pgx documents it without the
// wrapper.
func TestIntegrationCopyFromThroughRaw(t *testing.T) {
	_, db := open(t)
	tbl := table(t, db, "", "id INT PRIMARY KEY, name TEXT")
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var copied int64
	err = conn.Raw(func(dc any) error {
		c, ok := sqlconflict.BaseConn(dc).(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("BaseConn gave %T, want *stdlib.Conn", sqlconflict.BaseConn(dc))
		}
		rows := [][]any{{1, "a"}, {2, "b"}, {3, "c"}}
		copied, err = c.Conn().CopyFrom(context.Background(), pgx.Identifier{tbl}, []string{"id", "name"}, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); copied != 3 || n != 3 {
		t.Errorf("copied %d, table holds %d; want 3 and 3", copied, n)
	}
}
