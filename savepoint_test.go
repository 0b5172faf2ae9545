package sqlconflict

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
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
	db, mock, _ := mockDBSP(t, opts)
	return db, mock
}

// mockDBSP is mockDB that also returns the connector's savepoint statements.
func mockDBSP(t *testing.T, opts Options) (*sql.DB, sqlmock.Sqlmock, spSQL) {
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
	return db, mock, c.(*connector).cfg.sp
}

// expectSchema expects the query of what the wrapper learns of the schema
// before its first retry on a connector (schema.go), answering that no
// table needs care.
func expectSchema(mock sqlmock.Sqlmock, d Dialect) {
	q := sqlSchemaPostgres
	if d == DialectMySQL {
		q = sqlSchemaMySQL
	}
	mock.ExpectQuery(exact(q)).WillReturnRows(sqlmock.NewRows([]string{"name", "kind", "text"}))
}

func fastOptions(d Dialect) Options {
	o := DefaultOptions()
	o.Dialect = d
	o.Backoff, o.MaxBackoff = time.Microsecond, time.Microsecond
	o.Savepoints = SavepointsWrites
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return o
}

func exact(q string) string { return q } // sqlmock.QueryMatcherEqual: statements as sent

func TestSavepointSequencePostgres(t *testing.T) {
	db, mock, sp := mockDBSP(t, fastOptions(DialectPostgres))
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	// The previous savepoint's RELEASE rides with the next SAVEPOINT.
	mock.ExpectExec(exact(sp.releaseSavepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (2)")).WillReturnError(errPGUnique)
	mock.ExpectExec(exact(sp.rollbackTo)).WillReturnResult(ok)
	// Plain reads cost nothing.
	mock.ExpectQuery(exact("SELECT x FROM t WHERE id = 2")).WillReturnRows(sqlmock.NewRows([]string{"x"}).AddRow(1))
	// A lock timeout is rolled back to the savepoint and retried behind it.
	mock.ExpectExec(exact(sp.releaseSavepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(errPGLock)
	mock.ExpectExec(exact(sp.rollbackTo)).WillReturnResult(ok)
	expectSchema(mock, DialectPostgres) // before the first retry: the tables' triggers (schema.go)
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
	db, mock, sp := mockDBSP(t, fastOptions(DialectMySQL))
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	// MySQL replaces a savepoint of the same name: no RELEASE needed.
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnError(errMyUnique)
	mock.ExpectExec(exact(sp.rollbackTo)).WillReturnResult(ok)
	// A deadlock discards every savepoint on InnoDB: no ROLLBACK TO, and the
	// transaction is doomed.
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
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
	db, mock, sp := mockDBSP(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
	mock.ExpectExec(exact(sp.releaseSavepoint)).WillReturnResult(ok)
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

// TestPostgresServerAnswers: PostgreSQL refuses the rest of an aborted
// transaction itself, so the wrapper adds no guard there: each statement
// reaches the server and gets its answer (25P02), the application's own
// ROLLBACK TO SAVEPOINT recovers the transaction whatever the error was
// (22012 here: a code the wrapper does not classify), and Commit returns
// lib/pq's own ErrInFailedTransaction.
func TestPostgresServerAnswers(t *testing.T) {
	opts := fastOptions(DialectPostgres)
	opts.Savepoints = SavepointsOff
	db, mock := mockDB(t, opts)
	ok := sqlmock.NewResult(0, 1)
	errAborted := &pq.Error{Code: "25P02", Message: "current transaction is aborted"}
	errDivZero := &pq.Error{Code: "22012", Message: "division by zero"}
	mock.ExpectBegin()
	mock.ExpectExec(exact("SAVEPOINT mine")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (1/0)")).WillReturnError(errDivZero)
	mock.ExpectExec(exact("SELECT 1")).WillReturnError(errAborted)
	mock.ExpectExec(exact("ROLLBACK TO SAVEPOINT mine")).WillReturnResult(ok)
	mock.ExpectExec(exact("INSERT INTO t VALUES (2)")).WillReturnError(errPGSerial)
	mock.ExpectCommit().WillReturnError(pq.ErrInFailedTransaction)

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "SAVEPOINT mine")
	if _, err := tx.Exec("INSERT INTO t VALUES (1/0)"); err != errDivZero {
		t.Fatalf("got %v", err)
	}
	if _, err := tx.Exec("SELECT 1"); err != errAborted {
		t.Fatalf("statement in aborted tx: %v, want the server's 25P02", err)
	}
	mustExec(t, tx, "ROLLBACK TO SAVEPOINT mine")
	if _, err := tx.Exec("INSERT INTO t VALUES (2)"); err != errPGSerial {
		t.Fatalf("got %v", err)
	}
	if err := tx.Commit(); err != pq.ErrInFailedTransaction {
		t.Fatalf("Commit after serialization failure: %v, want lib/pq's ErrInFailedTransaction", err)
	}
}

// TestSavepointDeadlockNotRetried: a deadlock or serialization failure
// behind the wrapper's savepoint is not retried there: rolling back to the
// savepoint keeps the locks taken before it, so the cycle would form again.
// On PostgreSQL the transaction is left aborted for a whole-transaction
// rerun, and the next statement gets the server's answer without a
// savepoint of the wrapper's in front.
func TestSavepointDeadlockNotRetried(t *testing.T) {
	for _, e := range []error{errPGDeadlock, errPGSerial} {
		t.Run(Classify(e).Kind.String(), func(t *testing.T) { savepointDeadlock(t, e) })
	}
}

func savepointDeadlock(t *testing.T, e error) {
	o := fastOptions(DialectPostgres)
	o.Replay = ReplayOff // the guard alone; a replay would end the conflict (replay_unit_test.go)
	db, mock, sp := mockDBSP(t, o)
	ok := sqlmock.NewResult(0, 1)
	errAborted := &pq.Error{Code: "25P02", Message: "current transaction is aborted"}
	mock.ExpectBegin()
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(e)
	mock.ExpectExec(exact("UPDATE t SET x = 2")).WillReturnError(errAborted)
	mock.ExpectRollback()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE t SET x = 1"); err != e {
		t.Fatalf("got %v, want %v", err, e)
	}
	if _, err := tx.Exec("UPDATE t SET x = 2"); err != errAborted {
		t.Fatalf("got %v, want the server's 25P02", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
}

// TestSavepointLockTimeoutRetries: a lock timeout behind the savepoint is
// retried conflict_retries times, each retry a new subtransaction counted
// against the budget, then returned with the transaction still usable.
func TestSavepointLockTimeoutRetries(t *testing.T) {
	opts := fastOptions(DialectMySQL)
	opts.Retries = 2
	db, mock, sp := mockDBSP(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectBegin()
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(errMyLock)
	// The first lock wait timeout in a transaction asks, once per
	// connection, whether the server rolls back the whole transaction then.
	mock.ExpectQuery(exact(sqlSessionMySQL)).WillReturnRows(sqlmock.NewRows([]string{"Variable_name", "Value"}).
		AddRow("autocommit", "ON").AddRow("in_transaction", "1").AddRow("innodb_rollback_on_timeout", "OFF"))
	mock.ExpectExec(exact(sp.rollbackTo)).WillReturnResult(ok)
	expectSchema(mock, DialectMySQL)
	for range 2 {
		mock.ExpectExec(exact("UPDATE t SET x = 1")).WillReturnError(errMyLock)
		mock.ExpectExec(exact(sp.rollbackTo)).WillReturnResult(ok)
	}
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
	mock.ExpectExec(exact("UPDATE t SET x = 2")).WillReturnResult(ok)
	mock.ExpectCommit()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE t SET x = 1"); err != errMyLock {
		t.Fatalf("got %v", err)
	}
	mustExec(t, tx, "UPDATE t SET x = 2")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestSavepointNamePerConnector: the wrapper's savepoint name carries a
// random part, so an application's savepoint cannot collide with it.
func TestSavepointNamePerConnector(t *testing.T) {
	a, b := newSavepointSQL(), newSavepointSQL()
	if a.name == b.name || !strings.HasPrefix(a.name, "sqlconflict_sp_") || len(a.name) != len("sqlconflict_sp_")+12 {
		t.Fatalf("names %q and %q", a.name, b.name)
	}
	if a.releaseSavepoint != "RELEASE SAVEPOINT "+a.name+"; SAVEPOINT "+a.name {
		t.Fatalf("releaseSavepoint %q", a.releaseSavepoint)
	}
}

// TestDoomedManualCommit: a COMMIT sent as a statement after a deadlock rolls
// back instead.
func TestDoomedManualCommit(t *testing.T) {
	opts := fastOptions(DialectMySQL)
	db, mock, sp := mockDBSP(t, opts)
	ok := sqlmock.NewResult(0, 1)
	mock.ExpectExec(exact("START TRANSACTION")).WillReturnResult(ok)
	mock.ExpectExec(exact(sp.savepoint)).WillReturnResult(ok)
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
