package sqlconflict

import (
	"context"
	"crypto/rand"
	"database/sql/driver"
	"encoding/hex"
	"strings"
)

// spSQL is the wrapper's savepoint statements. The name is the same for a
// connector's connections, so the statements are built once and cost no
// allocation; MySQL replaces a savepoint of the same name, so there a new
// savepoint costs exactly one round trip. A random part keeps it from
// colliding with an application's savepoint, which MySQL would replace just
// as silently.
type spSQL struct {
	name, savepoint, release, releaseSavepoint, rollbackTo string
}

func newSavepointSQL() spSQL {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	name := "sqlconflict_sp_" + hex.EncodeToString(b[:])
	return spSQL{
		name:             name,
		savepoint:        "SAVEPOINT " + name,
		release:          "RELEASE SAVEPOINT " + name,
		releaseSavepoint: "RELEASE SAVEPOINT " + name + "; SAVEPOINT " + name, // PostgreSQL: one round trip
		rollbackTo:       "ROLLBACK TO SAVEPOINT " + name,
	}
}

// guard reports whether a statement in a transaction runs behind a
// savepoint: writes (DML, CTEs that write, locking reads) with
// conflict_savepoints=writes, within the budget, in a transaction that is
// still usable.
func (ic *interceptor) guard(ctx context.Context, c *call) bool {
	if ic.cfg.Savepoints != SavepointsWrites || ic.tx.failed || !ic.isWrite(c) {
		return false
	}
	if ic.tx.unsure && (!ic.resolve(ctx) || !ic.inTx()) {
		// A savepoint outside a transaction is an error (PostgreSQL's
		// 25P01), and one inside a transaction the wrapper cannot follow
		// guards nothing it can account for.
		return false
	}
	if ic.tx.savepoints >= ic.cfg.SavepointBudget {
		if !ic.tx.warned {
			ic.tx.warned = true
			ic.cfg.logger().WarnContext(ctx, "sqlconflict: savepoint budget spent; further writes in this transaction run unguarded",
				"budget", ic.cfg.SavepointBudget)
		}
		return false
	}
	return true
}

// isWrite reports whether a statement takes row locks. DML says so in its
// first word; a SELECT or WITH is read whole, which only savepoint mode pays.
func (ic *interceptor) isWrite(c *call) bool {
	switch c.kind {
	case stmtWrite:
		return true
	case stmtSelect, stmtWith:
		s := lexStmt(c.query, ic.cfg.Dialect)
		return s.locking || s.writes && c.kind == stmtWith
	}
	return false
}

// savepoint sets the wrapper's savepoint before a guarded write. The previous
// one is released in the same round trip: on PostgreSQL, as a second
// statement of the simple query; on MySQL by the name's reuse.
func (ic *interceptor) savepoint(ctx context.Context, c *call) error {
	if ic.tx.pendingSP != "" {
		pending := ic.tx.pendingSP == c.query
		ic.tx.pendingSP = ""
		if pending {
			// Set for this very statement, which the base connection
			// declined with ErrSkip; database/sql now runs it prepared.
			return nil
		}
	}
	q := ic.cfg.sp.savepoint
	if !ic.tx.released {
		switch ic.cfg.Dialect {
		case DialectPostgres:
			q = ic.cfg.sp.releaseSavepoint
		case DialectMySQL:
		default: // unknown servers: release explicitly, in its own round trip
			if err := ic.exec(ctx, ic.cfg.sp.release); err != nil {
				return err
			}
			ic.rp.own(ic.cfg.sp.release)
		}
	}
	if err := ic.exec(ctx, q); err != nil {
		return err
	}
	ic.rp.own(q)
	ic.tx.savepoints++
	ic.tx.released = false
	return nil
}

// undo rolls a failed guarded statement back to its savepoint, which
// survives it, and reports whether that worked. If it did not, the
// transaction is in an unknown state and is treated as ended by err.
func (ic *interceptor) undo(ctx context.Context, err error, cl Class, attempt int) bool {
	ic.noteServer(cl)
	if rerr := ic.exec(ctx, ic.cfg.sp.rollbackTo); rerr != nil {
		ic.txFailed(ctx, err, Class{Kind: cl.Kind, Scope: ScopeTransaction, Dialect: cl.Dialect, Code: cl.Code})
		return false
	}
	ic.rp.own(ic.cfg.sp.rollbackTo)
	ic.event(ctx, Observation{Event: EventSavepointRollback, Class: cl, Attempt: attempt})
	ic.onConflict(ctx, cl)
	return true
}

// exec runs one of the wrapper's own statements on the base connection,
// bounded as its caller is (ownCtx).
func (ic *interceptor) exec(ctx context.Context, q string) error {
	ctx, cancel := ic.ownCtx(ctx)
	defer cancel()
	err := driver.ErrSkip
	if e, ok := ic.conn.(driver.ExecerContext); ok {
		_, err = e.ExecContext(ctx, q, nil)
	}
	if err == driver.ErrSkip {
		var st driver.Stmt
		if st, err = ic.conn.Prepare(q); err == nil {
			//lint:ignore SA1019 fallback for base conns without ExecerContext
			_, err = st.Exec(nil)
			st.Close()
		}
	}
	return ic.ownFailed(err)
}

// ownCtx returns the context of one of the wrapper's own statements: the
// caller's, which bounds them as it bounds the caller's own. A cleanup that
// must run after the caller's context ended (ROLLBACK TO after a canceled
// statement, ROLLBACK after a failed COMMIT) gets conflict_cancel_grace of
// its own, as long as the base driver's own cancellation gets.
func (ic *interceptor) ownCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() == nil {
		return ctx, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), ic.cfg.CancelGrace)
}

// ownFailed returns err, the result of one of the wrapper's own
// statements. One that failed without the server's answer (the context
// ended, the connection broke) leaves the session in a state the wrapper
// cannot know: the connection is discarded when it returns to the pool.
func (ic *interceptor) ownFailed(err error) error {
	if err != nil && Classify(err).Dialect == DialectUnknown {
		ic.sess.discard = true
	}
	return err
}

// beforeTxStmt runs before each statement inside a transaction: the doomed
// transaction's guard, and the savepoint.
func (ic *interceptor) beforeTxStmt(ctx context.Context, c *call) error {
	if ic.tx.unended && ic.exec(ctx, "ROLLBACK") == nil {
		// The transaction whose COMMIT or ROLLBACK failed is over at last;
		// the statement runs in autocommit, as the application expects.
		ic.endTx(false)
		if !ic.inTx() {
			return nil
		}
	}
	if ic.tx.doomed != nil {
		switch c.kind {
		case stmtRollback, stmtXA:
			// The way out; an XA branch ends with XA END and XA ROLLBACK,
			// which the server answers for itself.
			return nil
		case stmtCommit:
			// A COMMIT sent as a statement must not commit what follows a
			// doom (MariaDB's new implicit transaction).
			err := ic.aborted()
			_ = ic.exec(ctx, "ROLLBACK")
			chains, said := chain(c.query)
			ic.endTx(chains || !said && ic.sess.chains)
			return err
		}
		return ic.aborted()
	}
	if (c.kind == stmtSavepoint || c.kind == stmtRollbackTo) && !ic.tx.released {
		// The application's own savepoints would otherwise nest inside ours,
		// and our next RELEASE would release them too. In an aborted
		// PostgreSQL transaction nothing but ROLLBACK TO runs, and rolling
		// back to the application's savepoint, which is older than ours,
		// destroys ours.
		if ic.cfg.Dialect != DialectMySQL && !ic.tx.failed {
			if err := ic.exec(ctx, ic.cfg.sp.release); err != nil {
				ic.txFailed(ctx, err, Classify(err))
				return ic.wrap(err)
			}
			ic.rp.own(ic.cfg.sp.release)
		}
		ic.tx.released = true
	}
	if c.guarded = ic.guard(ctx, c); c.guarded {
		if err := ic.savepoint(ctx, c); err != nil {
			ic.txFailed(ctx, err, Classify(err))
			return ic.wrap(err)
		}
	}
	return nil
}

// afterStmt tracks transaction control and session settings sent as plain
// statements that succeeded. What a text says of the session counts only
// when it is one statement: "BEGIN; UPDATE ...; COMMIT" leaves no
// transaction open, and MariaDB's BEGIN NOT ATOMIC ... END begins none.
func (ic *interceptor) afterStmt(c *call) {
	if ic.multi(c) {
		ic.afterMulti(c.query, true)
		return
	}
	ic.afterOne(c.kind, c.query)
}

func (ic *interceptor) afterOne(k stmtKind, query string) {
	switch k {
	case stmtBegin:
		ic.beginTx(beginIsolation(query))
	case stmtCommit, stmtRollback:
		chains, said := chain(query)
		ic.endTx(chains || !said && ic.sess.chains)
	case stmtPrepareTx:
		ic.endTx(false)
	case stmtXA:
		switch xa(query) {
		case xaStart:
			ic.beginTx(txIso{})
		case xaEnd:
			ic.endTx(false)
		}
	case stmtRollbackTo:
		// The application undid a failure with its own savepoint.
		ic.tx.failed = false
	case stmtSet:
		ic.noteSet(query)
	case stmtSelect, stmtWith:
		ic.tx.iso.read = true
	}
}

// multi reports a text of several statements. Several need a ';' between
// them, so a text without one costs a single byte scan.
func (ic *interceptor) multi(c *call) bool {
	if c.several == 0 {
		c.several = 1
		if strings.IndexByte(c.query, ';') >= 0 && !lexStmt(c.query, ic.cfg.Dialect).single {
			c.several = 2
		}
	}
	return c.several == 2
}

// afterMulti follows a text of several statements through its statements,
// when it ran whole (ok) and the lexer is sure where each ends. PostgreSQL
// runs such a text as one implicit transaction unless it holds transaction
// control, which is followed here; a statement that is none of these
// changes nothing there. On MySQL any other statement may end or begin a
// transaction (DDL commits implicitly, a compound statement or CALL may
// do anything), and a failed text stopped part way: the wrapper is unsure
// until it asks.
func (ic *interceptor) afterMulti(q string, ok bool) {
	stmts, understood := splitStmts(q, ic.cfg.Dialect)
	if !ok || !understood {
		ic.tx.unsure = true
		return
	}
	for _, s := range stmts {
		switch k := parseStmt(s); k {
		case stmtBegin, stmtCommit, stmtRollback, stmtPrepareTx, stmtXA, stmtSet:
			ic.afterOne(k, s)
			ic.tx.fromText = ic.tx.active
		case stmtSelect, stmtWrite, stmtWith, stmtSavepoint, stmtRollbackTo:
		default:
			if ic.cfg.Dialect != DialectPostgres {
				ic.tx.unsure = true
			}
		}
	}
}

// resolve makes the wrapper sure again of the session's transaction, if it
// can: a MySQL server says whether one is open. It reports whether the
// wrapper is sure now.
func (ic *interceptor) resolve(ctx context.Context) bool {
	if !ic.tx.unsure {
		return true
	}
	if ic.cfg.Dialect != DialectMySQL {
		return false
	}
	st, err := ic.askSession(ctx)
	if err != nil {
		return false
	}
	ic.learn(st)
	return !ic.tx.unsure
}
