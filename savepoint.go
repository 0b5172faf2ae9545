package sqlconflict

import (
	"context"
	"database/sql/driver"
	"strings"
)

// savepointName is the wrapper's one savepoint name. A fixed name keeps the
// statements constant (no allocation), and MySQL replaces a savepoint of the
// same name, so there a new savepoint costs exactly one round trip.
const savepointName = "sqlconflict_sp"

const (
	sqlSavepoint         = "SAVEPOINT " + savepointName
	sqlRelease           = "RELEASE SAVEPOINT " + savepointName
	sqlReleaseSavepoint  = sqlRelease + "; " + sqlSavepoint // PostgreSQL: one round trip
	sqlRollbackSavepoint = "ROLLBACK TO SAVEPOINT " + savepointName
)

// guard reports whether a statement in a transaction runs behind a savepoint.
func (ic *interceptor) guard(ctx context.Context, k stmtKind, query string) bool {
	if ic.cfg.Savepoints != SavepointsWrites || !isWrite(k, query) {
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

// savepoint sets the wrapper's savepoint before a guarded write. The previous
// one is released in the same round trip: on PostgreSQL, as a second
// statement of the simple query; on MySQL by the name's reuse.
func (ic *interceptor) savepoint(ctx context.Context) error {
	q := sqlSavepoint
	if !ic.tx.released {
		switch ic.cfg.Dialect {
		case DialectPostgres:
			q = sqlReleaseSavepoint
		case DialectMySQL:
		default: // unknown servers: release explicitly, in its own round trip
			if err := ic.exec(ctx, sqlRelease); err != nil {
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

// rollbackTo undoes the failed guarded statement. The savepoint survives it.
func (ic *interceptor) rollbackTo(ctx context.Context) error {
	return ic.exec(ctx, sqlRollbackSavepoint)
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

// beforeTxStmt runs before each statement inside a transaction.
func (ic *interceptor) beforeTxStmt(ctx context.Context, k stmtKind) error {
	if ic.tx.doomed != nil {
		switch {
		case k == stmtRollbackTo && ic.tx.recoverable:
			// The application undoes the failure with its own savepoint.
			ic.tx.released = true
			return nil
		case k == stmtRollback:
			return nil
		case k == stmtCommit:
			// A COMMIT sent as a statement must not commit what follows a
			// doom (MariaDB's new implicit transaction).
			err := ic.aborted()
			_ = ic.exec(ctx, "ROLLBACK")
			ic.endTx()
			return err
		}
		return ic.aborted()
	}
	if (k == stmtSavepoint || k == stmtRollbackTo) && !ic.tx.released {
		// The application's own savepoints would otherwise nest inside ours,
		// and our next RELEASE would release them too.
		if ic.cfg.Dialect != DialectMySQL {
			if err := ic.exec(ctx, sqlRelease); err != nil {
				ic.txFailed(ctx, err, Classify(err))
				return ic.wrap(err)
			}
		}
		ic.tx.released = true
	}
	return nil
}

// afterStmt tracks transaction control and session settings sent as plain
// statements.
func (ic *interceptor) afterStmt(k stmtKind, query string) {
	switch k {
	case stmtBegin:
		ic.beginTx(ic.nextTxIsolation())
		ic.noteBegin(query)
	case stmtCommit, stmtRollback:
		ic.endTx()
	case stmtRollbackTo:
		if ic.tx.doomed != nil && ic.tx.recoverable {
			ic.tx.doomed = nil
		}
	case stmtSet:
		ic.noteSet(query)
	case stmtSelect, stmtWith, stmtWrite:
		ic.noteStmt(k, query)
	}
}

// stmtKind is the little the wrapper needs to know about a statement.
type stmtKind uint8

const (
	stmtOther stmtKind = iota
	stmtSelect
	stmtWrite // INSERT, UPDATE, DELETE, MERGE, REPLACE, UPSERT
	stmtWith  // a CTE: a write if it contains one
	stmtSavepoint
	stmtRollbackTo
	stmtBegin
	stmtCommit
	stmtRollback
	stmtSet
)

// parseStmt reads the statement's first keywords. It never allocates.
func parseStmt(q string) stmtKind {
	w, rest := firstWord(q)
	switch {
	case strings.EqualFold(w, "SELECT"):
		return stmtSelect
	case strings.EqualFold(w, "INSERT"), strings.EqualFold(w, "UPDATE"), strings.EqualFold(w, "DELETE"),
		strings.EqualFold(w, "MERGE"), strings.EqualFold(w, "REPLACE"), strings.EqualFold(w, "UPSERT"):
		return stmtWrite
	case strings.EqualFold(w, "WITH"):
		return stmtWith
	case strings.EqualFold(w, "SAVEPOINT"), strings.EqualFold(w, "RELEASE"):
		return stmtSavepoint
	case strings.EqualFold(w, "ROLLBACK"):
		w, rest = firstWord(rest)
		if strings.EqualFold(w, "WORK") || strings.EqualFold(w, "TRANSACTION") {
			w, _ = firstWord(rest)
		}
		if strings.EqualFold(w, "TO") {
			return stmtRollbackTo
		}
		return stmtRollback
	case strings.EqualFold(w, "ABORT"):
		return stmtRollback
	case strings.EqualFold(w, "COMMIT"), strings.EqualFold(w, "END"):
		return stmtCommit
	case strings.EqualFold(w, "BEGIN"):
		return stmtBegin
	case strings.EqualFold(w, "START"):
		if w, _ = firstWord(rest); strings.EqualFold(w, "TRANSACTION") {
			return stmtBegin
		}
	case strings.EqualFold(w, "SET"), strings.EqualFold(w, "RESET"):
		return stmtSet
	}
	return stmtOther
}

// isWrite reports whether a statement takes row locks: DML, CTEs that
// contain DML, and locking reads.
func isWrite(k stmtKind, q string) bool {
	switch k {
	case stmtWrite:
		return true
	case stmtSelect:
		return isLockingRead(q)
	case stmtWith:
		return hasWord(q, "INSERT") || hasWord(q, "UPDATE") || hasWord(q, "DELETE") ||
			hasWord(q, "MERGE") || hasWord(q, "SHARE")
	}
	return false
}

// isLockingRead reports SELECT ... FOR UPDATE / FOR SHARE / FOR NO KEY UPDATE
// / FOR KEY SHARE / LOCK IN SHARE MODE. A word match can be fooled by a
// literal; the cost of that is one needless savepoint.
func isLockingRead(q string) bool {
	return hasWord(q, "UPDATE") || hasWord(q, "SHARE")
}

// firstWord skips blanks, comments and opening parentheses and returns the
// next run of letters and the text after it.
func firstWord(q string) (string, string) {
	for {
		var ok bool
		if q, ok = skipBlanks(q); !ok || q == "" {
			return "", ""
		}
		if q[0] != '(' {
			break
		}
		q = q[1:]
	}
	j := 0
	for j < len(q) && isLetter(q[j]) {
		j++
	}
	return q[:j], q[j:]
}

// skipBlanks returns s from its first byte that is neither blank nor inside
// a comment (--, # and /* */); false for an unterminated /* comment.
func skipBlanks(s string) (string, bool) {
	for len(s) > 0 {
		switch c := s[0]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			s = s[1:]
		case c == '#' || c == '-' && len(s) > 1 && s[1] == '-':
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return "", true
			}
			s = s[i:]
		case c == '/' && len(s) > 1 && s[1] == '*':
			end := strings.Index(s[2:], "*/")
			if end < 0 {
				return "", false
			}
			s = s[end+4:]
		default:
			return s, true
		}
	}
	return s, true
}

// isLetter reports identifier characters, so that words end where they do.
func isLetter(c byte) bool {
	return c|0x20 >= 'a' && c|0x20 <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '$'
}

// hasWord reports whether q contains w (upper case ASCII) as a whole word,
// ignoring case.
func hasWord(q, w string) bool {
	for i := 0; i+len(w) <= len(q); i++ {
		if (i > 0 && isLetter(q[i-1])) || q[i]|0x20 != w[0]|0x20 {
			continue
		}
		if strings.EqualFold(q[i:i+len(w)], w) && (i+len(w) == len(q) || !isLetter(q[i+len(w)])) {
			return true
		}
	}
	return false
}
