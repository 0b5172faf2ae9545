package sqlconflict

import (
	"context"
	"crypto/rand"
	"database/sql/driver"
	"encoding/hex"
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
		}
	}
	if err := ic.exec(ctx, q); err != nil {
		return err
	}
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
	ic.event(EventSavepointRollback, cl, attempt)
	ic.onConflict(ctx, cl)
	return true
}

// exec runs one of the wrapper's own statements on the base connection.
// It uses the caller's context without its cancellation: abandoning a
// ROLLBACK TO half way would leave the transaction in an unknown state.
func (ic *interceptor) exec(ctx context.Context, q string) error {
	ctx = context.WithoutCancel(ctx)
	if e, ok := ic.conn.(driver.ExecerContext); ok {
		_, err := e.ExecContext(ctx, q, nil)
		if err != driver.ErrSkip {
			return err
		}
	}
	st, err := ic.conn.Prepare(q)
	if err != nil {
		return err
	}
	defer st.Close()
	_, err = st.Exec(nil) //nolint:staticcheck // fallback for base conns without ExecerContext
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
		case stmtRollback:
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
// statements that succeeded.
func (ic *interceptor) afterStmt(k stmtKind, query string) {
	switch k {
	case stmtBegin:
		ic.beginTx(beginIsolation(query))
	case stmtCommit, stmtRollback:
		chains, said := chain(query)
		ic.endTx(chains || !said && ic.sess.chains)
	case stmtRollbackTo:
		// The application undid a failure with its own savepoint.
		ic.tx.failed = false
	case stmtSet:
		ic.noteSet(query)
	case stmtSelect, stmtWith:
		ic.tx.iso.read = true
	}
}
