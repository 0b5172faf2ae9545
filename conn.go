package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/ngrok/sqlmw"
)

// interceptor is one connection's sqlmw interceptor, and its fields are that
// connection's state. database/sql hands a driver connection to one goroutine
// at a time and serialises every call on it under the connection's lock, so
// the fields need no lock of their own.
type interceptor struct {
	sqlmw.NullInterceptor
	cfg   *config
	conn  driver.Conn      // the base connection, for the wrapper's own statements
	valid driver.Validator // the base connection's, if it has one

	tx txState
	// skipsArgs: the base conn answered ErrSkip to a statement with arguments
	// (go-sql-driver/mysql without interpolateParams), so database/sql will
	// prepare it instead and guarding the direct call would waste a savepoint.
	skipsArgs bool
	iso       isoState
}

// txState is what the wrapper knows about the connection's transaction.
type txState struct {
	active bool
	doomed error // the unrecovered error that ended the transaction on the server
	// recoverable: the doom came from a statement-scoped PostgreSQL error, which
	// the application's own ROLLBACK TO SAVEPOINT can still undo.
	recoverable bool
	savepoints  int  // savepoints taken, for the budget
	released    bool // false while our last savepoint is still open (PostgreSQL)
	warned      bool // the budget warning was logged
	iso         txIso
}

// init runs once per new connection.
func (ic *interceptor) init(ctx context.Context, c driver.Conn) error {
	ic.conn = c
	ic.valid, _ = c.(driver.Validator)
	return ic.initIsolation(ctx)
}

func (ic *interceptor) beginTx(iso txIso) {
	ic.tx = txState{active: true, released: true, iso: iso}
}

func (ic *interceptor) endTx() {
	ic.tx = txState{}
	ic.iso.next = isoUnset
}

// doom records that err ended the transaction on the server. Later statements
// and Commit fail without reaching it: MySQL 8 would run them in autocommit and
// MariaDB in a fresh transaction, committing half a unit of work.
func (ic *interceptor) doom(err error, cl Class) {
	if ic.tx.doomed != nil {
		return
	}
	ic.tx.doomed = err
	ic.tx.recoverable = cl.Scope == ScopeStatement && cl.Dialect == DialectPostgres
	ic.event(EventTxDoomed, cl, 0)
}

// dooms reports whether an unguarded error ends the transaction: on
// PostgreSQL every server error aborts it; elsewhere only errors whose scope is
// the whole transaction, or whose outcome is unknown.
func (ic *interceptor) dooms(cl Class) bool {
	return cl.Scope == ScopeTransaction || cl.Scope == ScopeUnknownOutcome || cl.Dialect == DialectPostgres
}

func (ic *interceptor) aborted() error {
	return &TxAbortedError{Cause: ic.tx.doomed}
}

func (ic *interceptor) wrap(err error) error {
	if ic.cfg.WrapErrors {
		return wrapError(err)
	}
	return err
}

// ConnBeginTx implements sqlmw.Interceptor.
func (ic *interceptor) ConnBeginTx(ctx context.Context, conn driver.ConnBeginTx, opts driver.TxOptions) (context.Context, driver.Tx, error) {
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		return ctx, nil, ic.wrap(err)
	}
	ic.beginTx(ic.txIsolation(opts))
	return ctx, tx, nil
}

// TxCommit implements sqlmw.Interceptor. A doomed transaction is rolled back
// and its cause returned: committing it would persist only its second half.
func (ic *interceptor) TxCommit(ctx context.Context, tx driver.Tx) error {
	doomed := ic.tx.doomed
	ic.endTx()
	if doomed != nil {
		_ = tx.Rollback() // the cause is what the caller needs to see
		return &TxAbortedError{Cause: doomed}
	}
	if err := tx.Commit(); err != nil {
		return ic.wrap(err)
	}
	return nil
}

// TxRollback implements sqlmw.Interceptor.
func (ic *interceptor) TxRollback(ctx context.Context, tx driver.Tx) error {
	ic.endTx()
	return tx.Rollback()
}

// ConnPrepareContext implements sqlmw.Interceptor.
func (ic *interceptor) ConnPrepareContext(ctx context.Context, conn driver.ConnPrepareContext, query string) (context.Context, driver.Stmt, error) {
	if ic.tx.doomed != nil {
		return ctx, nil, ic.aborted()
	}
	st, err := conn.PrepareContext(ctx, query)
	if err != nil {
		if cl := Classify(err); ic.tx.active && ic.dooms(cl) {
			ic.doom(err, cl)
		}
		return ctx, nil, ic.wrap(err)
	}
	return ctx, st, nil
}

// ConnExecContext implements sqlmw.Interceptor.
func (ic *interceptor) ConnExecContext(ctx context.Context, conn driver.ExecerContext, query string, args []driver.NamedValue) (driver.Result, error) {
	if len(args) > 0 && ic.skipsArgs {
		return nil, driver.ErrSkip
	}
	var info stmtInfo
	return run(ic, ctx, query, len(args) > 0, func(ctx context.Context) (driver.Result, error) {
		return conn.ExecContext(ctx, query, args)
	}, &info)
}

// StmtExecContext implements sqlmw.Interceptor.
func (ic *interceptor) StmtExecContext(ctx context.Context, stmt driver.StmtExecContext, query string, args []driver.NamedValue) (driver.Result, error) {
	var info stmtInfo
	return run(ic, ctx, query, false, func(ctx context.Context) (driver.Result, error) {
		return stmt.ExecContext(ctx, args)
	}, &info)
}

// ConnQueryContext implements sqlmw.Interceptor.
func (ic *interceptor) ConnQueryContext(ctx context.Context, conn driver.QueryerContext, query string, args []driver.NamedValue) (context.Context, driver.Rows, error) {
	if len(args) > 0 && ic.skipsArgs {
		return ctx, nil, driver.ErrSkip
	}
	return query1(ic, ctx, queryCall{conn: conn, query: query, args: args}, len(args) > 0)
}

// StmtQueryContext implements sqlmw.Interceptor.
func (ic *interceptor) StmtQueryContext(ctx context.Context, stmt driver.StmtQueryContext, query string, args []driver.NamedValue) (context.Context, driver.Rows, error) {
	return query1(ic, ctx, queryCall{stmt: stmt, query: query, args: args}, false)
}

// noteSkip remembers a base connection that declines statements with
// arguments, so the next ones skip straight to database/sql's prepare path.
func (ic *interceptor) noteSkip(err error, hasArgs bool) bool {
	if errors.Is(err, driver.ErrSkip) {
		if hasArgs {
			ic.skipsArgs = true
		}
		return true
	}
	return false
}
