package sqlconflict_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"time"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict"
)

// mockConnector gives the examples a scripted base connection instead of a
// server.
type mockConnector struct {
	dsn string
	drv driver.Driver
}

func (c mockConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c mockConnector) Driver() driver.Driver                        { return c.drv }

func newMock(name string) (driver.Connector, sqlmock.Sqlmock) {
	raw, mock, err := sqlmock.NewWithDSN(name, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
	if err != nil {
		panic(err)
	}
	return mockConnector{dsn: name, drv: raw.Driver()}, mock
}

// A deadlock in autocommit is retried; the Observer sees it.
func ExampleNewConnector() {
	raw, mock, err := sqlmock.NewWithDSN("example_newconnector") // expectations are regular expressions
	if err != nil {
		panic(err)
	}
	base := mockConnector{dsn: "example_newconnector", drv: raw.Driver()}
	update := "UPDATE accounts SET balance = balance - 10 WHERE id = 1"
	mock.ExpectExec(regexp.QuoteMeta(update)).
		WillReturnError(&pq.Error{Code: "40P01", Message: "deadlock detected"})
	// Before its first retry the wrapper reads, once per connector, which
	// tables have triggers, rules or views whose functions a retry would
	// call again: none here.
	mock.ExpectQuery("FROM pg_catalog.pg_class").WillReturnRows(sqlmock.NewRows([]string{"name", "kind", "text"}))
	mock.ExpectExec(regexp.QuoteMeta(update)).WillReturnResult(sqlmock.NewResult(0, 1))

	opts := sqlconflict.DefaultOptions()
	opts.Dialect = sqlconflict.DialectPostgres
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Observer = func(_ context.Context, o sqlconflict.Observation) {
		fmt.Printf("%s after %s (attempt %d)\n", o.Event, o.Class.Kind, o.Attempt)
	}
	connector, err := sqlconflict.NewConnector(base, opts)
	if err != nil {
		panic(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()

	_, err = db.Exec(update)
	fmt.Println("err:", err)
	// Output:
	// retry after deadlock (attempt 2)
	// err: <nil>
}

// RunTx around a transaction whose COMMIT fails with a serialization
// failure: the wrapper replays the transaction first (conflict_replay, on
// by default), so fn runs once; RunTx reruns fn only when a replay cannot
// verify what fn saw. The OnCommit hook runs once, after the commit that
// succeeded.
func ExampleRunTx() {
	base, mock := newMock("example_runtx")
	for _, fail := range []bool{true, false} {
		mock.ExpectBegin()
		mock.ExpectExec("INSERT INTO orders (id) VALUES ($1)").WithArgs(42).WillReturnResult(sqlmock.NewResult(0, 1))
		if fail {
			mock.ExpectCommit().WillReturnError(&pq.Error{Code: "40001", Message: "could not serialize access"})
		} else {
			mock.ExpectCommit()
		}
	}
	connector, _ := sqlconflict.NewConnector(base, sqlconflict.DefaultOptions())
	db := sql.OpenDB(connector)
	defer db.Close()

	attempts := 0
	err := sqlconflict.TxRunner{Backoff: time.Millisecond}.Run(context.Background(), db, nil,
		func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id) VALUES ($1)", 42); err != nil {
				return err
			}
			sqlconflict.OnCommit(ctx, func() { fmt.Println("order 42 committed: queue its e-mail") })
			return nil
		})
	fmt.Println("attempts:", attempts, "err:", err)
	// Output:
	// order 42 committed: queue its e-mail
	// attempts: 1 err: <nil>
}

// After a deadlock MySQL has rolled the transaction back, but would run the
// next statement outside it and let Commit commit that half. The wrapper
// keeps the next statement from reaching the server, and Commit rolls back
// and says why. (PostgreSQL refuses the rest of an aborted transaction
// itself; there the wrapper lets the server and lib/pq answer.)
func ExampleTxAbortedError_doomed() {
	base, mock := newMock("example_doomed")
	mock.ExpectBegin()
	mock.ExpectExec("UPDATE stock SET n = n - 1 WHERE id = 7").
		WillReturnError(&mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"})
	mock.ExpectRollback()
	opts := sqlconflict.DefaultOptions()
	opts.Dialect = sqlconflict.DialectMySQL
	connector, _ := sqlconflict.NewConnector(base, opts)
	db := sql.OpenDB(connector)
	defer db.Close()

	tx, _ := db.Begin()
	_, err := tx.Exec("UPDATE stock SET n = n - 1 WHERE id = 7")
	fmt.Println(sqlconflict.Classify(err).Kind)
	_, err = tx.Exec("INSERT INTO audit VALUES ('sold')") // careless: ignores the error
	fmt.Println(err)
	err = tx.Commit()
	fmt.Println("commit retryable:", sqlconflict.IsRetryable(err))
	// Output:
	// deadlock
	// sqlconflict: transaction aborted by an earlier error: Error 1213: Deadlock found when trying to get lock; try restarting transaction
	// commit retryable: true
}

// Inside sql.Conn.Raw the driver connection is the wrapper's; BaseConn
// hands out the base driver's own, for its own API (pgx's CopyFrom,
// go-sql-driver/mysql's multi-statement results). Here the base driver is
// go-sqlmock.
func ExampleBaseConn() {
	base, _ := newMock("example_baseconn")
	connector, _ := sqlconflict.NewConnector(base, sqlconflict.DefaultOptions())
	db := sql.OpenDB(connector)
	defer db.Close()

	conn, _ := db.Conn(context.Background())
	defer conn.Close()
	_ = conn.Raw(func(dc any) error {
		fmt.Printf("Raw gives %T; BaseConn gives %T\n", dc, sqlconflict.BaseConn(dc))
		return nil
	})
	// Output:
	// Raw gives *sqlconflict.conn; BaseConn gives *sqlmock.sqlmock
}

// An Observer sees the wrapper's own retries and replays and RunTx's reruns
// of the whole transaction, with the caller's context (its span, say). Here
// the application's function reads a row and decides from it, so a COMMIT
// that failed with a serialization failure cannot be replayed past the
// changed read: RunTx reruns the function, and the Observer hears of it.
func ExampleObserver() {
	base, mock := newMock("example_observer")
	for _, version := range []int{1, 2} {
		mock.ExpectBegin()
		mock.ExpectQuery("SELECT version FROM docs WHERE id = $1").WithArgs(7).
			WillReturnRows(sqlmock.NewRows([]string{"version"}).AddRow(version))
		mock.ExpectExec("UPDATE docs SET version = $1 WHERE id = $2").WithArgs(version+1, 7).
			WillReturnResult(sqlmock.NewResult(0, 1))
		if version == 1 {
			mock.ExpectCommit().WillReturnError(&pq.Error{Code: "40001", Message: "could not serialize access"})
			// The replay begins again and reads version 2: it does not
			// verify, and is rolled back.
			mock.ExpectBegin()
			mock.ExpectQuery("SELECT version FROM docs WHERE id = $1").WithArgs(7).
				WillReturnRows(sqlmock.NewRows([]string{"version"}).AddRow(2))
			mock.ExpectRollback()
		} else {
			mock.ExpectCommit()
		}
	}
	opts := sqlconflict.DefaultOptions()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Observer = func(ctx context.Context, o sqlconflict.Observation) {
		fmt.Printf("%s %s attempt %d (request %v)\n", o.Event, o.Class.Kind.Name(), o.Attempt, ctx.Value(requestID{}))
	}
	connector, _ := sqlconflict.NewConnector(base, opts)
	db := sql.OpenDB(connector)
	defer db.Close()

	ctx := context.WithValue(context.Background(), requestID{}, "r-1")
	err := sqlconflict.TxRunner{Backoff: time.Millisecond}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "SELECT version FROM docs WHERE id = $1", 7).Scan(&v); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE docs SET version = $1 WHERE id = $2", v+1, 7)
		return err
	})
	fmt.Println("err:", err)
	// Output:
	// replay_failed serialization_failure attempt 1 (request r-1)
	// rerun serialization_failure attempt 2 (request r-1)
	// err: <nil>
}

type requestID struct{}
