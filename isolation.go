package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// The blind re-read (docs/isolation.md). Under REPEATABLE READ a transaction
// reads from a snapshot fixed before the statement that failed with a unique
// violation, so re-reading the key after the conflict does not see the row
// that caused it. After a unique violation in a transaction the wrapper
// follows the transaction's next read; if it returns no rows, it learns the
// transaction's isolation level (from what the application said, else by
// asking the server, there and then) and, where the level made the read
// blind, warns, fails the read with ErrBlindReread, or (conflict_blind_reread
// =fix on MySQL and MariaDB) runs it again as a locking read, which reads
// the latest committed row, and hands the caller that.
//
// Nothing of this runs on the happy path: no query at connect, none per
// statement; the bookkeeping is a few assignments.

// isoLevel is a transaction isolation level as the wrapper tracks it.
type isoLevel uint8

const (
	isoUnset isoLevel = iota // not said: ask the server when it matters
	isoReadUncommitted
	isoReadCommitted
	isoRepeatableRead
	isoSerializable
	isoOther // a level the wrapper does not model (SNAPSHOT, say)
)

// String returns the level in SQL's spelling, as the warnings show it.
func (l isoLevel) String() string {
	switch l {
	case isoReadUncommitted:
		return "READ UNCOMMITTED"
	case isoReadCommitted:
		return "READ COMMITTED"
	case isoRepeatableRead:
		return "REPEATABLE READ"
	case isoSerializable:
		return "SERIALIZABLE"
	}
	return "unknown"
}

// txIso is the isolation bookkeeping of the current transaction. It lives in
// txState, so the end of the transaction clears it.
type txIso struct {
	level isoLevel // as the application said (TxOptions, BEGIN ... ISOLATION LEVEL), or as the server answered
	// read: a SELECT or WITH ran in the transaction, or it began WITH
	// CONSISTENT SNAPSHOT. InnoDB fixes the read view at the first
	// consistent read: before one, a re-read takes a fresh view and is not
	// blind.
	read     bool
	check    bool  // the next read is checked for a blind re-read
	conflict Class // the unique violation that armed check
	warned   bool  // the blind re-read warning was logged in this transaction
}

// explicit returns what a chained transaction keeps: the level.
func (t txIso) explicit() txIso { return txIso{level: t.level} }

// txIsolation is the level of a transaction begun with opts, or isoUnset
// for the server's default.
func txIsolation(opts driver.TxOptions) txIso {
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
		return txIso{}
	case sql.LevelReadUncommitted:
		return txIso{level: isoReadUncommitted}
	case sql.LevelReadCommitted:
		return txIso{level: isoReadCommitted}
	case sql.LevelRepeatableRead:
		return txIso{level: isoRepeatableRead}
	case sql.LevelSerializable:
		return txIso{level: isoSerializable}
	}
	return txIso{level: isoOther}
}

// beginIsolation reads a BEGIN or START TRANSACTION statement: PostgreSQL's
// BEGIN ISOLATION LEVEL ..., and MySQL's START TRANSACTION WITH CONSISTENT
// SNAPSHOT, which takes the read view at once. These statements are short.
func beginIsolation(query string) txIso {
	var t txIso
	t.level, _ = isolationClause(query)
	t.read = containsFold(query, "consistent") && containsFold(query, "snapshot")
	return t
}

// isolationClause finds ISOLATION LEVEL l in a transaction's characteristics.
func isolationClause(q string) (isoLevel, bool) {
	for {
		var w string
		if w, q = setToken(q); w == "" {
			return isoUnset, false
		}
		if !strings.EqualFold(w, "ISOLATION") {
			continue
		}
		if w, q = setToken(q); !strings.EqualFold(w, "LEVEL") {
			return isoUnset, false
		}
		w1, q := setToken(q)
		w2, _ := setToken(q)
		switch {
		case strings.EqualFold(w1, "SERIALIZABLE"):
			return isoSerializable, true
		case strings.EqualFold(w1, "REPEATABLE") && strings.EqualFold(w2, "READ"):
			return isoRepeatableRead, true
		case strings.EqualFold(w1, "READ") && strings.EqualFold(w2, "COMMITTED"):
			return isoReadCommitted, true
		case strings.EqualFold(w1, "READ") && strings.EqualFold(w2, "UNCOMMITTED"):
			return isoReadUncommitted, true
		}
		return isoOther, true
	}
}

// parseIsoValue reads an isolation level as the servers spell it:
// "repeatable read" (PostgreSQL), 'REPEATABLE-READ' (MySQL variables),
// "REPEATABLE READ" (information_schema), quoted or not.
func parseIsoValue(v string) isoLevel {
	switch v = unquote(v); {
	case lettersEqualFold(v, "READUNCOMMITTED"):
		return isoReadUncommitted
	case lettersEqualFold(v, "READCOMMITTED"):
		return isoReadCommitted
	case lettersEqualFold(v, "REPEATABLEREAD"):
		return isoRepeatableRead
	case lettersEqualFold(v, "SERIALIZABLE"):
		return isoSerializable
	}
	return isoOther
}

// lettersEqualFold reports whether v, without its blanks, '-' and '_', is
// key (upper case ASCII letters), ignoring case.
func lettersEqualFold(v, key string) bool {
	j := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' || c == '-' || c == '_' || c == '\t' {
			continue
		}
		if j == len(key) || c|0x20 != key[j]|0x20 {
			return false
		}
		j++
	}
	return j == len(key)
}

// onConflict sees every error of a transaction. A unique violation arms the
// check of the transaction's next read. On MySQL only a transaction that
// already read can be blind: its read view predates the conflicting row.
func (ic *interceptor) onConflict(ctx context.Context, cl Class) {
	if ic.cfg.BlindReread == BlindRereadOff || !ic.inTx() || cl.Kind != KindUniqueViolation {
		return
	}
	if ic.cfg.Dialect != DialectPostgres && !ic.tx.iso.read {
		return
	}
	ic.tx.iso.check, ic.tx.iso.conflict = true, cl
}

// rereadCheck is asked for each query that succeeded: true makes its rows
// call blindReread if they end before the first row. The first read after
// an armed conflict is the re-read; whatever it returns, it disarms the
// check.
func (ic *interceptor) rereadCheck(c *call) bool {
	if !ic.tx.iso.check {
		return false
	}
	switch c.kind {
	case stmtSelect:
	case stmtWith:
		if lexStmt(c.query, ic.cfg.Dialect).writes {
			return false
		}
	default:
		return false
	}
	ic.tx.iso.check = false
	return true
}

// blindReread is called when the re-read after a unique violation ended
// before its first row; rs's rows are still open. It returns io.EOF (no
// rows, as the base driver said), the first row of a locking re-read
// (conflict_blind_reread=fix on MySQL), or an error wrapping
// ErrBlindReread.
func (ic *interceptor) blindReread(ctx context.Context, rs *rowsState, dest []driver.Value) error {
	_ = rs.closeRows() // the connection must be free for what follows
	rs.done = true
	level := ic.txLevel(ctx)
	if !ic.blindLevel(level) {
		return io.EOF
	}
	shape := lexStmt(rs.q.query, ic.cfg.Dialect)
	pg := ic.cfg.Dialect == DialectPostgres
	if !pg && shape.locking {
		return io.EOF // a locking read reads the latest committed row
	}
	cl := ic.tx.iso.conflict
	switch ic.cfg.BlindReread {
	case BlindRereadWarn:
		if !ic.tx.iso.warned {
			ic.tx.iso.warned = true
			ic.cfg.logger().WarnContext(ctx,
				"sqlconflict: blind re-read: a read after a unique violation returned no rows because the transaction's snapshot predates the conflicting row",
				ic.isoAttrs(cl, level)...)
		}
		return io.EOF
	case BlindRereadFix:
		// The locking read runs the query again: only if that repeats
		// nothing the server keeps (a SELECT may call a function that
		// takes a lock).
		if lockq, ok := lockingReread(rs.q.query, shape); ok && !pg && ic.rerunnable(ctx, &rs.c) {
			rows, st, err := ic.queryAgain(ctx, rs.q, lockq)
			if err != nil {
				ic.stmtFailed(ctx, err, ic.scope(ctx, Classify(err)))
				return ic.wrap(err)
			}
			rs.rows, rs.stmt, rs.done = rows, st, false
			return rs.next(ctx, dest)
		}
	}
	return fmt.Errorf("%w: a read after the unique violation on %q returned no rows under %s; %s",
		ErrBlindReread, cl.Constraint, level, ic.remedy())
}

// txLevel returns the transaction's isolation level: as the application set
// it, or as the server says, asked now. Asking catches every way of setting
// it (SET statements, set_config, init_connect, a changed server default).
func (ic *interceptor) txLevel(ctx context.Context) isoLevel {
	if ic.tx.iso.level != isoUnset {
		return ic.tx.iso.level
	}
	var v string
	note := func(cols []driver.Value) { v, _ = textValue(cols[len(cols)-1]) }
	var err error
	switch ic.cfg.Dialect {
	case DialectPostgres:
		err = ic.queryRows(ctx, sqlIsolationPostgres, note)
	case DialectMySQL:
		// The running transaction's level; the session's if InnoDB has
		// no transaction for the session.
		if err = ic.queryRows(ctx, sqlIsolationMySQLTx, note); err == nil && v == "" {
			err = ic.queryRows(ctx, sqlIsolationMySQL, func(cols []driver.Value) {
				if name, _ := textValue(cols[0]); v == "" || strings.EqualFold(name, "transaction_isolation") {
					note(cols)
				}
			})
		}
	default:
		return isoUnset
	}
	if err != nil {
		ic.cfg.logger().DebugContext(ctx, "sqlconflict: cannot read the transaction's isolation level", slog.String("error", err.Error()))
		return isoUnset
	}
	ic.tx.iso.level = parseIsoValue(v)
	return ic.tx.iso.level
}

// Queries for the isolation level, sent only when a re-read after a unique
// violation found nothing.
const (
	sqlIsolationPostgres = "SHOW transaction_isolation"
	sqlIsolationMySQLTx  = "SELECT trx_isolation_level FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()"
	// SHOW VARIABLES answers on MySQL 8 (transaction_isolation only),
	// MariaDB 10.x (tx_isolation only) and MariaDB >= 11.1 (both).
	sqlIsolationMySQL = "SHOW SESSION VARIABLES WHERE Variable_name IN ('transaction_isolation', 'tx_isolation')"
)

// blindLevel reports whether the dialect's level reads from a snapshot that
// a re-read cannot see past. MySQL's SERIALIZABLE turns plain SELECTs into
// locking reads, which see the latest committed row.
func (ic *interceptor) blindLevel(l isoLevel) bool {
	return l == isoRepeatableRead || l == isoSerializable && ic.cfg.Dialect == DialectPostgres
}

// lockingReread returns the query with a shared-lock clause appended, if it
// can take one: a single SELECT (or a WITH that reads) without a locking
// clause, a set operation or an INTO. LOCK IN SHARE MODE is MariaDB's
// spelling, and MySQL 8's synonym of FOR SHARE.
func lockingReread(q string, s stmtShape) (string, bool) {
	if !s.single || s.locking || s.setOp || s.into || s.writes || (s.kind != stmtSelect && s.kind != stmtWith) {
		return "", false
	}
	l := q[:s.end] + " LOCK IN SHARE MODE" + q[s.end:]
	// Read it back: the clause must have joined the statement (after a
	// lone '-', say, MySQL would read "- LOCK" as the start of a comment).
	if r := lexStmt(l, DialectMySQL); !r.single || !r.locking {
		return "", false
	}
	return l, true
}

// queryAgain runs text with the query's arguments on the base connection:
// directly, or prepared when the connection declines (go-sql-driver/mysql
// without interpolateParams) or the query was a prepared statement. A
// statement it prepares is returned to be closed with the rows.
func (ic *interceptor) queryAgain(ctx context.Context, q queryCall, text string) (driver.Rows, driver.Stmt, error) {
	if qc, ok := ic.conn.(driver.QueryerContext); ok && q.stmt == nil {
		rows, err := qc.QueryContext(ctx, text, q.args)
		if err != driver.ErrSkip {
			return rows, nil, err
		}
	}
	var st driver.Stmt
	var err error
	if pc, ok := ic.conn.(driver.ConnPrepareContext); ok {
		st, err = pc.PrepareContext(ctx, text)
	} else {
		st, err = ic.conn.Prepare(text)
	}
	if err != nil {
		return nil, nil, err
	}
	sq, ok := st.(driver.StmtQueryContext)
	if !ok {
		st.Close()
		return nil, nil, fmt.Errorf("sqlconflict: the base driver's statements cannot take a context")
	}
	rows, err := sq.QueryContext(ctx, q.args)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return rows, st, nil
}

// isoAttrs are the warnings' attributes.
func (ic *interceptor) isoAttrs(cl Class, l isoLevel) []any {
	return []any{
		slog.String("constraint", cl.Constraint),
		slog.String("code", cl.Code),
		slog.String("isolation", l.String()),
		slog.String("dialect", ic.cfg.Dialect.String()),
		slog.String("remedy", ic.remedy()),
	}
}

// Remedies per dialect.
const (
	remedyMySQL = "re-read with a locking read (SELECT ... LOCK IN SHARE MODE, FOR SHARE on MySQL 8, or FOR UPDATE), " +
		"set conflict_blind_reread=fix, run the transaction at READ COMMITTED, or retry the whole transaction with sqlconflict.RunTx"
	remedyPostgres = "retry the whole transaction with sqlconflict.RunTx (it reruns on ErrBlindReread), " +
		"or run it at READ COMMITTED; on PostgreSQL a locking read in the same transaction does not see the row either"
)

func (ic *interceptor) remedy() string {
	if ic.cfg.Dialect == DialectPostgres {
		return remedyPostgres
	}
	return remedyMySQL
}
