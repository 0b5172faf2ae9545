package sqlconflict

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

var (
	errPGUnique   = &pq.Error{Code: "23505", Constraint: "t_pkey", Message: "duplicate key"}
	errPGLock     = &pq.Error{Code: "55P03", Message: "lock timeout"}
	errPGDeadlock = &pq.Error{Code: "40P01", Message: "deadlock detected"}
	errPGSerial   = &pq.Error{Code: "40001", Message: "could not serialize access"}
	errMyDeadlock = &mysql.MySQLError{Number: 1213, SQLState: [5]byte{'4', '0', '0', '0', '1'}, Message: "Deadlock found when trying to get lock"}
	errMyLock     = &mysql.MySQLError{Number: 1205, SQLState: [5]byte{'H', 'Y', '0', '0', '0'}, Message: "Lock wait timeout exceeded"}
	errMyUnique   = &mysql.MySQLError{Number: 1062, SQLState: [5]byte{'2', '3', '0', '0', '0'}, Message: "Duplicate entry '1' for key 'PRIMARY'"}
)

// mockDB opens a wrapped go-sqlmock connection with exact statement matching
// and one connection, so expectations are a single sequence.
func mockDB(t *testing.T, opts Options) (*sql.DB, sqlmock.Sqlmock) {
	t.Helper()
	dsn := "mock_" + t.Name()
	raw, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	c, err := NewConnector(dsnConnector{dsn: dsn, drv: raw.Driver()}, opts)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() {
		db.Close()
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Error(err)
		}
	})
	return db, mock
}

func fastOptions(d Dialect) Options {
	o := DefaultOptions()
	o.Dialect = d
	o.Backoff, o.MaxBackoff = time.Microsecond, time.Microsecond
	o.Savepoints = SavepointsWrites
	o.Logger = slog.New(slog.DiscardHandler)
	return o
}

func exact(q string) string { return q } // sqlmock.QueryMatcherEqual: statements as sent

func TestSavepointSequencePostgres(t *testing.T) {
	db, mock := mockDB(t, fastOptions(DialectPostgres))
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	// The previous savepoint's RELEASE rides with the next SAVEPOINT.
	mock.ExpectExec(exact("RELEASE SAVEPOINT sqlconflict_sp; SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (2)")).WillReturnError(errPGUnique)
	mock.ExpectExec(exact("ROLLBACK TO SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	// Plain reads cost nothing.
	mock.ExpectQuery(exact("SELECT x FROM t WHERE id = 2")).WillReturnRows(sqlmock.NewRows([]string{"x"}).AddRow(1))
	// A lock timeout is rolled back to the savepoint and retried behind it.
	mock.ExpectExec(exact("RELEASE SAVEPOINT sqlconflict_sp; SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(errPGLock)
	mock.ExpectExec(exact("ROLLBACK TO SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnResult(ok)
	mock.ExpectCommit()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t VALUES (1)")
	_, err = tx.Exec("INSERT INTO t VALUES (2)")
	if pqErr, ok := err.(*pq.Error); !ok || pqErr.Code != "23505" {
		t.Fatalf("want the *pq.Error unchanged, got %T %v", err, err)
	}
	var x int
	if err := tx.QueryRow("SELECT x FROM t WHERE id = 2").Scan(&x); err != nil {
		t.Fatalf("re-read after the rolled-back violation: %v", err)
	}
	mustExec(t, tx, "UPDATE t SET x = 1")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestSavepointSequenceMySQL(t *testing.T) {
	db, mock := mockDB(t, fastOptions(DialectMySQL))
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	// MySQL replaces a savepoint of the same name: no RELEASE needed.
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnError(errMyUnique)
	mock.ExpectExec(exact("ROLLBACK TO SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	// A deadlock discards every savepoint on InnoDB: no ROLLBACK TO, and the
	// transaction is doomed.
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("DELETE FROM t")).WillReturnError(errMyDeadlock)
	mock.ExpectRollback()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t VALUES (1)")
	if _, err := tx.Exec("INSERT INTO t VALUES (1)"); !IsUniqueViolation(err) {
		t.Fatalf("want unique violation, got %v", err)
	}
	if _, err := tx.Exec("DELETE FROM t"); err != errMyDeadlock {
		t.Fatalf("want the deadlock error itself, got %T %v", err, err)
	}
	_, err = tx.Exec("INSERT INTO t VALUES (3)")
	if !errors.Is(err, ErrTxAborted) || !errors.Is(err, errMyDeadlock) {
		t.Fatalf("statement after deadlock: want ErrTxAborted wrapping the deadlock, got %v", err)
	}
	err = tx.Commit()
	var myErr *mysql.MySQLError
	if !errors.Is(err, ErrTxAborted) || !errors.As(err, &myErr) || myErr.Number != 1213 {
		t.Fatalf("Commit of doomed tx: %v", err)
	}
}

func TestSavepointBudget(t *testing.T) {
	var logs bytes.Buffer
	opts := fastOptions(DialectPostgres)
	opts.SavepointBudget = 2
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	db, mock := mockDB(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	mock.ExpectExec(exact("RELEASE SAVEPOINT sqlconflict_sp; SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (2)")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (3)")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (4)")).WillReturnResult(ok)
	mock.ExpectCommit()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (4)"} {
		mustExec(t, tx, q)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "savepoint budget spent"); n != 1 {
		t.Errorf("budget warnings: %d, want 1; log:\n%s", n, logs.String())
	}
}

// TestDoomedPostgres: an unguarded error dooms the transaction; the
// application's own ROLLBACK TO SAVEPOINT recovers it, as on the server.
func TestDoomedPostgres(t *testing.T) {
	opts := fastOptions(DialectPostgres)
	opts.Savepoints = SavepointsOff
	db, mock := mockDB(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact("SAVEPOINT mine")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnError(errPGUnique)
	mock.ExpectExec(exact("ROLLBACK TO SAVEPOINT mine")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (2)")).WillReturnError(errPGSerial)
	mock.ExpectRollback()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "SAVEPOINT mine")
	if _, err := tx.Exec("INSERT INTO t VALUES (1)"); err != errPGUnique {
		t.Fatalf("got %v", err)
	}
	if _, err := tx.Exec("SELECT 1"); !errors.Is(err, ErrTxAborted) {
		t.Fatalf("statement in aborted tx: %v", err)
	}
	mustExec(t, tx, "ROLLBACK TO SAVEPOINT mine")
	if _, err := tx.Exec("INSERT INTO t VALUES (2)"); err != errPGSerial {
		t.Fatalf("got %v", err)
	}
	err = tx.Commit()
	if !errors.Is(err, ErrTxAborted) || !IsRetryable(err) {
		t.Fatalf("Commit after serialization failure: %v (retryable %v)", err, IsRetryable(err))
	}
}

// TestDoomedManualCommit: a COMMIT sent as a statement after a deadlock rolls
// back instead.
func TestDoomedManualCommit(t *testing.T) {
	opts := fastOptions(DialectMySQL)
	db, mock := mockDB(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectExec(exact("START TRANSACTION")).WillReturnResult(ok)
	mock.ExpectExec(exact("SAVEPOINT sqlconflict_sp")).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(errMyDeadlock)
	mock.ExpectExec(exact("ROLLBACK")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok) // autocommit again afterwards

	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExecConn(t, conn, "START TRANSACTION")
	if _, err := conn.ExecContext(ctx, "UPDATE t SET x = 1"); err != errMyDeadlock {
		t.Fatalf("got %v", err)
	}
	if _, err := conn.ExecContext(ctx, "INSERT INTO t VALUES (9)"); !errors.Is(err, ErrTxAborted) {
		t.Fatalf("statement after deadlock in manual tx: %v", err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); !errors.Is(err, ErrTxAborted) {
		t.Fatalf("COMMIT of doomed manual tx: %v", err)
	}
	mustExecConn(t, conn, "INSERT INTO t VALUES (1)")
}

func mustExecConn(t *testing.T, c *sql.Conn, q string) {
	t.Helper()
	if _, err := c.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func TestParseStmt(t *testing.T) {
	for _, tc := range []struct {
		q     string
		kind  stmtKind
		write bool
	}{
		{"SELECT 1", stmtSelect, false},
		{"  /* c */ select * from t for update", stmtSelect, true},
		{"SELECT * FROM t FOR NO KEY UPDATE", stmtSelect, true},
		{"SELECT * FROM t LOCK IN SHARE MODE", stmtSelect, true},
		{"select updated_at, shared from t", stmtSelect, false},
		{"-- x\nINSERT INTO t VALUES (1)", stmtWrite, true},
		{"(SELECT 1)", stmtSelect, false},
		{"update t set x=1", stmtWrite, true},
		{"Delete from t", stmtWrite, true},
		{"REPLACE INTO t VALUES (1)", stmtWrite, true},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING", stmtWrite, true},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", stmtWith, true},
		{"WITH x AS (SELECT 1) SELECT * FROM x", stmtWith, false},
		{"SAVEPOINT a", stmtSavepoint, false},
		{"RELEASE SAVEPOINT a", stmtSavepoint, false},
		{"ROLLBACK TO SAVEPOINT a", stmtRollbackTo, false},
		{"rollback work to a", stmtRollbackTo, false},
		{"ROLLBACK", stmtRollback, false},
		{"ABORT", stmtRollback, false},
		{"COMMIT", stmtCommit, false},
		{"END", stmtCommit, false},
		{"BEGIN", stmtBegin, false},
		{"START TRANSACTION WITH CONSISTENT SNAPSHOT", stmtBegin, false},
		{"START SLAVE", stmtOther, false},
		{"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", stmtSet, false},
		{"CREATE TABLE t (x int)", stmtOther, false},
		{"", stmtOther, false},
		{"/* unterminated", stmtOther, false},
	} {
		k := parseStmt(tc.q)
		if k != tc.kind || isWrite(k, tc.q) != tc.write {
			t.Errorf("parseStmt(%q) = %v write=%v, want %v write=%v", tc.q, k, isWrite(k, tc.q), tc.kind, tc.write)
		}
	}
}
