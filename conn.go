package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ngrok/sqlmw"
)

// mwConn is what sqlmw's connection wrapper implements, whatever the base
// connection implements: it forwards each call, or falls back as
// database/sql would.
type mwConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
	driver.NamedValueChecker
}

// conn is the connection database/sql gets: sqlmw's wrapper with the
// connection's interceptor, plus the base connection for [BaseConn].
type conn struct {
	mwConn
	ic *interceptor
}

// Unwrap returns the base driver's connection. Together with [BaseConn] it is
// the unwrapping protocol for code that needs the base driver's own API
// inside [database/sql.Conn.Raw].
func (c *conn) Unwrap() driver.Conn {
	// What is sent on the base connection is not recorded: the
	// transaction cannot be replayed, nor the session repeated.
	c.ic.rp.refuse("the base connection was used (sql.Conn.Raw)")
	c.ic.sess.touched = true
	return c.ic.conn
}

// Close implements [driver.Conn]. A connection that moved (move.go) closes
// the base connection it moved to, too.
func (c *conn) Close() error {
	err := c.mwConn.Close()
	if c.ic.moved != nil {
		c.ic.moved.close()
		_ = c.ic.conn.Close()
	}
	return err
}

// ExecContext implements [driver.ExecerContext]. It runs the statement as
// sqlmw would but returns the base driver's result itself rather than sqlmw's
// wrapper, so that inside Raw a result can still be asserted to the base
// driver's type (go-sql-driver/mysql's mysql.Result, say).
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.ic.conn.(driver.ExecerContext)
	if !ok {
		return c.mwConn.ExecContext(ctx, query, args)
	}
	return c.ic.ConnExecContext(ctx, e, query, args)
}

// IsValid implements [driver.Validator]: database/sql asks it before
// putting a connection back in the pool.
func (c *conn) IsValid() bool {
	return !c.ic.sess.discard && c.mwConn.IsValid()
}

// ResetSession implements [driver.SessionResetter]: database/sql calls it
// before reusing a pooled connection. A connection the server closed while
// it sat in the pool (a restart, an idle timeout) is refused here, before
// anything is sent on it, so that database/sql takes another: the statement
// then runs once, where it would otherwise fail with an unknown outcome.
func (c *conn) ResetSession(ctx context.Context) error {
	if c.ic.peer != nil && peerGone(c.ic.peer) {
		return driver.ErrBadConn
	}
	if err := c.ic.resetSession(ctx); err != nil {
		return err
	}
	return c.mwConn.ResetSession(ctx)
}

// Ping implements [driver.Pinger], bounded by ctx like every call.
//
// A ping that failed after ctx ended matches ctx's error too: the drivers
// answer driver.ErrBadConn there (pgx), which says nothing of the deadline.
func (c *conn) Ping(ctx context.Context) error {
	w := c.ic.sock.watch(ctx)
	err := c.ic.settle(w, c.mwConn.Ping(ctx))
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
	}
	return err
}

// settle disarms a call's watchdog (sock.go) and returns the call's error,
// or an unknown outcome if the watchdog had to cut the call.
func (ic *interceptor) settle(w *watchdog, err error) error {
	if w.done(err) {
		return ic.cutErr(w, err)
	}
	return err
}

// BaseConn returns the base driver's connection behind driverConn, the value
// [database/sql.Conn.Raw] passes to its function: for a connection of this
// package's drivers, the lib/pq, go-sql-driver/mysql or pgx connection it
// wraps; for any other value that has an Unwrap() driver.Conn method, what
// that returns, repeatedly; otherwise driverConn itself (nil if it is not a
// driver.Conn). So code written this way works with or without the wrapper:
//
//	err := conn.Raw(func(dc any) error {
//		pgxConn := sqlconflict.BaseConn(dc).(*stdlib.Conn).Conn()
//		_, err := pgxConn.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"a"}, src)
//		return err
//	})
//
// Statements sent on the base connection bypass the wrapper: no retries, no
// guard. Do not leave the connection in a transaction the wrapper did not see.
func BaseConn(driverConn any) driver.Conn {
	for {
		u, ok := driverConn.(interface{ Unwrap() driver.Conn })
		if !ok {
			c, _ := driverConn.(driver.Conn)
			return c
		}
		driverConn = u.Unwrap()
	}
}

// interceptor is one connection's sqlmw interceptor, and its fields are that
// connection's state. database/sql hands a driver connection to one goroutine
// at a time and serialises every call on it under the connection's lock, so
// the fields need no lock of their own.
type interceptor struct {
	sqlmw.NullInterceptor
	cfg   *config
	conn  driver.Conn      // the base connection, for the wrapper's own statements
	valid driver.Validator // the base connection's, if it has one
	sock  *sock            // its socket, when the wrapper dialed it (sock.go); else nil
	peer  net.Conn         // its network connection, for the liveness check (sock.sock's, or Options.NetConn's); else nil
	txDog *watchdog        // bounds the transaction begun by BeginTx by its context
	roGen uint64           // the read-only pacer's generation when the connection opened (readonly.go)

	tx   txState
	sess sessState
	// skipsArgs: the base conn answered ErrSkip to a statement with arguments
	// (go-sql-driver/mysql without interpolateParams), so database/sql will
	// prepare it instead and guarding the direct call would waste a savepoint.
	skipsArgs bool
	// rows holds the state of the connection's open query (rows.go), so that
	// following it allocates nothing; a second query opened while the first
	// is still open gets a state of its own.
	rows rowsState
	// rp records the transaction for a replay (replay.go).
	rp replayLog
	// redial opens another base connection from the connector, for a
	// replay after this one was lost; moved is set once one did (move.go).
	redial func(context.Context) (driver.Conn, *sock, error)
	moved  *movedConn
}

// txState is what the wrapper knows about the connection's transaction.
type txState struct {
	// active: a transaction is open, begun by BeginTx, a BEGIN or START
	// TRANSACTION statement, a chained COMMIT or ROLLBACK, or found open by
	// asking the server. With autocommit off (sessState) every statement is
	// in a transaction too: see inTx.
	active bool
	// doomed is the unrecovered error that ended the transaction on a server
	// that does not guard it itself (not PostgreSQL); see doom.
	doomed error
	// unended: the server refused to end the doomed transaction (unended).
	unended bool
	// failed: PostgreSQL has aborted the transaction (an error no savepoint
	// undid); the server refuses the rest, so the wrapper sets no savepoint.
	failed     bool
	savepoints int  // savepoints taken, for the budget
	released   bool // false while our last savepoint is still open
	// pendingSP: the savepoint was set for a statement that the base
	// connection then declined with ErrSkip; database/sql prepares and runs
	// the same statement next, which reuses it.
	pendingSP string
	warned    bool // the budget warning was logged
	wrote     bool // a statement that may write ran (conflict_verify_commit)
	iso       txIso
	// fromText: the transaction was opened by a text of several statements
	// ("BEGIN; INSERT ..."), which the application may not know it left
	// open; resetSession does not hand it to the next user.
	fromText bool
	// unsure: a text of several statements (or a compound statement) may
	// have begun or ended a transaction in a way the wrapper could not
	// follow. Until the state is known again (asked of a MySQL server, or
	// a transaction boundary the driver saw), no savepoint is set, and the
	// connection is not handed to the next user on a guess (resetSession).
	unsure bool
}

// connect sets up a new connection's interceptor. It sends nothing: the
// happy path costs no round trip of the wrapper's own.
func (ic *interceptor) connect(c driver.Conn, s *sock) {
	ic.conn, ic.sock, ic.peer = c, s, nil
	if s != nil {
		ic.peer = s.Conn
	} else if ic.cfg.NetConn != nil {
		ic.peer = ic.cfg.NetConn(c)
	}
	ic.valid, _ = c.(driver.Validator)
	ic.sess = sessState{autocommit: ic.cfg.autocommit}
	ic.roGen = ic.cfg.ro.born()
}

// inTx reports whether a statement now runs inside a transaction that the
// wrapper knows of.
func (ic *interceptor) inTx() bool {
	return ic.tx.active || ic.sess.autocommit == autocommitOff
}

func (ic *interceptor) beginTx(iso txIso) {
	ic.tx = txState{active: true, released: true, iso: iso}
}

// endTx records the end of the transaction, committed or rolled back, by
// the driver's Tx or by a statement, successful or not: a COMMIT that fails
// has rolled back. With chain (AND CHAIN, or MySQL's completion_type=CHAIN)
// a new transaction begins at once at the same isolation level.
func (ic *interceptor) endTx(chain bool) {
	iso := ic.tx.iso.explicit()
	ic.tx = txState{}
	if chain {
		ic.beginTx(iso)
	}
}

// resetSession runs before database/sql reuses a pooled connection. A
// transaction begun by a plain BEGIN and left open survives on the server, so
// its state does too, except that a doomed one makes the connection unusable:
// the next user would otherwise inherit either refusals or a server-side
// transaction that an error already rolled back. driver.ErrBadConn makes
// database/sql close the connection, which ends that transaction for real.
func (ic *interceptor) resetSession(ctx context.Context) error {
	if ic.tx.doomed != nil || ic.sess.discard {
		return driver.ErrBadConn
	}
	if ic.tx.unsure && (!ic.resolve(ctx) || ic.tx.active) || ic.tx.active && ic.tx.fromText {
		// A transaction may be open, or one a string of statements left
		// open is: the next user's writes would join it, and commit with
		// someone else's COMMIT. Closing the connection rolls it back.
		return driver.ErrBadConn
	}
	if !ic.inTx() {
		ic.tx = txState{}
	}
	ic.rows = rowsState{}
	return nil
}

// guards reports whether the wrapper must refuse statements after an error
// that ended the transaction. PostgreSQL refuses them itself (25P02, and
// lib/pq's ErrInFailedTransaction at Commit), and its answers are the ones
// the application expects; MySQL, MariaDB and SQLite would run them, outside
// the transaction that is gone.
func (ic *interceptor) guards() bool { return ic.cfg.Dialect != DialectPostgres }

// doom records that err ended the transaction on the server. Later statements
// and Commit fail without reaching it: MySQL 8 would run them in autocommit and
// MariaDB in a fresh transaction, committing half a unit of work.
func (ic *interceptor) doom(ctx context.Context, err error, cl Class) {
	if ic.tx.doomed != nil {
		return
	}
	ic.tx.active = true // a transaction the server saw, even if the wrapper had not
	ic.tx.doomed = err
	ic.event(ctx, Observation{Event: EventTxDoomed, Class: cl})
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
	if r, ok := ctx.Value(runObsKey{}).(*runObs); ok {
		r.obs, r.log = ic.cfg.Observer, ic.cfg.logger() // for RunTx's reruns
	}
	w := ic.sock.watch(ctx)
	tx, err := current(ic, conn).BeginTx(ctx, opts)
	if err = ic.settle(w, err); err != nil {
		// A standby refuses lib/pq's BEGIN READ WRITE: the next attempt
		// must find the primary on a new connection.
		ic.noteServer(Classify(err))
		return ctx, nil, ic.wrap(err)
	}
	ic.beginTx(txIsolation(opts))
	if ic.cfg.Replay == ReplayOn {
		ic.rp.start(ctx, opts, tx)
	}
	// database/sql rolls the transaction back when ctx ends, with a call
	// that takes no context: the watchdog bounds it, and Commit, too.
	ic.txDog = ic.sock.watch(ctx)
	return ctx, tx, nil
}

// txEnded disarms the transaction's watchdog after Commit or Rollback
// returned err, and returns err, or an unknown outcome if the watchdog cut
// the call.
func (ic *interceptor) txEnded(err error) error {
	w := ic.txDog
	ic.txDog = nil
	return ic.settle(w, err)
}

// TxCommit implements sqlmw.Interceptor. A doomed transaction is rolled back
// and its cause returned: committing it would persist only its second half.
func (ic *interceptor) TxCommit(ctx context.Context, tx driver.Tx) error {
	defer ic.rp.reset()
	tx = ic.baseTx(tx)
	doomed := ic.tx.doomed
	var id txIdentity
	verify := false
	if doomed == nil {
		id, verify = ic.learnIdentity(ctx)
	}
	ic.endTx(ic.sess.chains)
	if doomed != nil {
		_ = ic.txEnded(tx.Rollback()) // the cause is what the caller needs to see
		return &TxAbortedError{Cause: doomed}
	}
	if err := ic.txEnded(tx.Commit()); err != nil {
		err = ic.notSent(err, true)
		if ic.rp.on {
			var replayed bool
			if err, replayed = ic.replayCommit(ctx, err); err == nil {
				return nil
			}
			verify = verify && !replayed
		}
		if verify && Classify(err).Scope == ScopeUnknownOutcome {
			if err = ic.settleCommit(ctx, id, err); err == nil {
				return nil
			}
		}
		ic.commitFailed(ctx, err)
		return ic.wrap(err)
	}
	return nil
}

// TxRollback implements sqlmw.Interceptor.
func (ic *interceptor) TxRollback(ctx context.Context, tx driver.Tx) error {
	defer ic.rp.reset()
	tx = ic.baseTx(tx)
	ic.endTx(ic.sess.chains)
	err := ic.txEnded(tx.Rollback())
	if err != nil && ic.guards() && Classify(err).Dialect != DialectUnknown {
		// The server refused the ROLLBACK (a Galera node that stopped
		// serving): the transaction may still be open on this connection.
		ic.unended(err)
	}
	return err
}

// commitFailed ends on the server a transaction whose COMMIT failed. On
// PostgreSQL a failed COMMIT always ends it. MySQL may leave it open (a
// Galera node that stops serving answers 1047 and keeps it), and the next
// user of the pooled connection would write into it: the wrapper sends
// ROLLBACK, which does nothing where the COMMIT had in fact ended the
// transaction, and discards the connection if even that fails.
func (ic *interceptor) commitFailed(ctx context.Context, err error) {
	ic.noteServer(Classify(err))
	if ic.guards() && ic.exec(ctx, "ROLLBACK") != nil {
		ic.unended(err)
	}
}

// unended records a transaction that failed but may still be open on the
// server because it refused to roll it back: it stays doomed, so that
// nothing written next on the connection joins it and is lost with it, until
// a ROLLBACK gets through (beforeTxStmt tries again) or the connection is
// discarded.
func (ic *interceptor) unended(err error) {
	ic.tx = txState{active: true, doomed: err, unended: true}
	ic.sess.discard = true
}

// noteServer marks the connection to be discarded when it returns to the
// pool after the server said it would not serve it (KindUnavailable) or
// would not take writes (KindReadOnly): the next attempt connects anew, to
// a node that serves, or to wherever the primary now is.
func (ic *interceptor) noteServer(cl Class) {
	switch {
	case cl.Kind == KindReadOnly:
		if !ic.sess.discard && ic.cfg.ro.discard(ic.roGen, time.Now()) {
			ic.sess.discard = true
		}
	case cl.Kind == KindUnavailable && cl.Dialect != DialectUnknown:
		ic.sess.discard = true
	}
}

// ConnPrepareContext implements sqlmw.Interceptor.
func (ic *interceptor) ConnPrepareContext(ctx context.Context, conn driver.ConnPrepareContext, query string) (context.Context, driver.Stmt, error) {
	if ic.tx.doomed != nil {
		if k := parseStmt(query); k != stmtRollback && k != stmtCommit {
			return ctx, nil, ic.aborted()
		}
	}
	w := ic.sock.watch(ctx)
	conn = current(ic, conn)
	st, err := conn.PrepareContext(ctx, query)
	if err = ic.settle(w, err); err != nil {
		if ic.rp.on {
			// A Galera node aborts a transaction whose rows a replicated
			// one took, and says so at the next statement: this PREPARE.
			if st, err = ic.replayPrepare(ctx, conn, query, err); err == nil {
				return ctx, st, nil
			}
		}
		ic.stmtFailed(ctx, err, Classify(err))
		return ctx, nil, ic.wrap(err)
	}
	return ctx, st, nil
}

// ConnExecContext implements sqlmw.Interceptor.
func (ic *interceptor) ConnExecContext(ctx context.Context, conn driver.ExecerContext, query string, args []driver.NamedValue) (driver.Result, error) {
	if len(args) > 0 && ic.skipsArgs {
		return nil, driver.ErrSkip
	}
	c := call{query: query, hasArgs: len(args) > 0}
	w := ic.sock.watch(ctx)
	c.args = args
	res, err := run(ic, ctx, &c, func(ctx context.Context) (driver.Result, error) {
		return current(ic, conn).ExecContext(ctx, query, args)
	})
	if c.rec > 0 {
		res = ic.rp.result(res, c.rec)
	}
	return res, ic.settle(w, err)
}

// StmtExecContext implements sqlmw.Interceptor.
func (ic *interceptor) StmtExecContext(ctx context.Context, stmt driver.StmtExecContext, query string, args []driver.NamedValue) (driver.Result, error) {
	c := call{query: query, args: args, prepared: true}
	w := ic.sock.watch(ctx)
	res, err := run(ic, ctx, &c, func(ctx context.Context) (driver.Result, error) {
		if ic.moved != nil {
			return ic.movedExec(ctx, stmt, query, args)
		}
		return stmt.ExecContext(ctx, args)
	})
	if c.rec > 0 {
		res = ic.rp.result(res, c.rec)
	}
	return res, ic.settle(w, err)
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
