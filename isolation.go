package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// The blind re-read (docs/isolation.md). Under REPEATABLE READ a transaction
// reads from a snapshot fixed before the statement that failed with a unique
// violation, so re-reading the key after the conflict does not see the row
// that caused it. The wrapper tracks, per connection, the isolation level of
// the current transaction and whether it already holds its snapshot; on a
// unique violation that makes the re-read blind it logs a warning and checks
// the transaction's next SELECT.
//
// Cost on the statement path: the bookkeeping below is a few branches per
// statement and never allocates; SET statements are parsed only when they
// mention "isolation"; the session default is read once per connection.

// isoLevel is a transaction isolation level as the wrapper tracks it.
type isoLevel uint8

const (
	isoUnset isoLevel = iota // unknown: never warned about
	isoReadUncommitted
	isoReadCommitted
	isoRepeatableRead
	isoSerializable
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

// isoState is the connection's isolation bookkeeping.
type isoState struct {
	session isoLevel // the session default
	next    isoLevel // SET TRANSACTION without SESSION: the next transaction only
	initial isoLevel // the session default the connection opened with, for RESET and DEFAULT
}

// txIso is the isolation bookkeeping of the current transaction. It lives in
// txState, so the end of the transaction clears it.
type txIso struct {
	level isoLevel
	// snapshot: the transaction holds its snapshot (PostgreSQL: a statement
	// ran; MySQL: a consistent, non-locking read ran, or START TRANSACTION
	// WITH CONSISTENT SNAPSHOT).
	snapshot bool
	warned   bool  // the conflict warning was logged in this transaction
	check    bool  // the next SELECT is checked for a blind re-read
	conflict Class // the unique violation that armed check
}

// Queries for the session default. SHOW VARIABLES is the one form that
// answers on MySQL 8 (transaction_isolation only), MariaDB 10.x (tx_isolation
// only) and MariaDB >= 11.1 (both), in one round trip.
const (
	sqlIsolationPostgres = "SHOW transaction_isolation"
	sqlIsolationMySQL    = "SHOW SESSION VARIABLES WHERE Variable_name IN ('transaction_isolation', 'tx_isolation')"
)

// initIsolation reads the session's default isolation level. A server that
// answers with an error (a MySQL-compatible without the variable, say) costs
// only the warnings on this connection; an error that lost the connection is
// returned, as the connection is unusable anyway.
func (ic *interceptor) initIsolation(ctx context.Context) error {
	if ic.cfg.BlindReread == BlindRereadOff {
		return nil
	}
	var q string
	switch ic.cfg.Dialect {
	case DialectPostgres:
		q = sqlIsolationPostgres
	case DialectMySQL:
		q = sqlIsolationMySQL
	default:
		return nil
	}
	v, err := ic.queryIsolation(ctx, q)
	if err != nil {
		if errors.Is(err, driver.ErrBadConn) || ctx.Err() != nil || Classify(err).Kind == KindConnectionLost {
			return err
		}
		level := slog.LevelDebug
		if ic.cfg.isoQueryWarned.CompareAndSwap(false, true) {
			level = slog.LevelWarn
		}
		ic.cfg.logger().Log(ctx, level, "sqlconflict: cannot read the session isolation level; blind re-read warnings on this connection need the level set by sql.TxOptions or a SET statement",
			slog.String("dialect", ic.cfg.Dialect.String()), slog.String("query", q), slog.String("error", err.Error()))
		return nil
	}
	ic.iso.session = parseIsoValue(v, ic.cfg.Dialect)
	ic.iso.initial = ic.iso.session
	return nil
}

// queryIsolation runs q on the base connection and returns the value of its
// last column: PostgreSQL's one row, or MySQL's transaction_isolation row if
// there is one, else its tx_isolation row.
func (ic *interceptor) queryIsolation(ctx context.Context, q string) (string, error) {
	var rows driver.Rows
	err := driver.ErrSkip
	if qc, ok := ic.conn.(driver.QueryerContext); ok {
		rows, err = qc.QueryContext(ctx, q, nil)
	}
	if err == driver.ErrSkip {
		var st driver.Stmt
		if pc, ok := ic.conn.(driver.ConnPrepareContext); ok {
			st, err = pc.PrepareContext(ctx, q)
		} else {
			st, err = ic.conn.Prepare(q)
		}
		if err != nil {
			return "", err
		}
		defer st.Close()
		if sq, ok := st.(driver.StmtQueryContext); ok {
			rows, err = sq.QueryContext(ctx, nil)
		} else {
			rows, err = st.Query(nil) //nolint:staticcheck // fallback for statements without StmtQueryContext
		}
	}
	if err != nil {
		return "", err
	}
	defer rows.Close()
	dest := make([]driver.Value, len(rows.Columns()))
	if len(dest) == 0 {
		return "", errors.New("sqlconflict: the isolation level query returned no columns")
	}
	var v string
	for {
		if err := rows.Next(dest); err == io.EOF {
			return v, nil
		} else if err != nil {
			return "", err
		}
		s, _ := textValue(dest[len(dest)-1])
		if len(dest) < 2 {
			return s, nil
		}
		name, _ := textValue(dest[0])
		v = s
		if strings.EqualFold(name, "transaction_isolation") {
			return v, nil
		}
	}
}

// textValue returns a text column's value.
func textValue(v driver.Value) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case []byte:
		return string(v), true
	}
	return "", false
}

// parseIsoValue reads an isolation level as the servers spell it in
// variables: "repeatable read" (PostgreSQL), 'REPEATABLE-READ' (MySQL),
// quoted or not, or MySQL's enum index. Anything else is isoUnset.
func parseIsoValue(v string, d Dialect) isoLevel {
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		v = v[1 : len(v)-1]
	}
	switch {
	case lettersEqualFold(v, "READUNCOMMITTED"):
		return isoReadUncommitted
	case lettersEqualFold(v, "READCOMMITTED"):
		return isoReadCommitted
	case lettersEqualFold(v, "REPEATABLEREAD"):
		return isoRepeatableRead
	case lettersEqualFold(v, "SERIALIZABLE"):
		return isoSerializable
	}
	if d != DialectPostgres && len(v) == 1 && v[0] >= '0' && v[0] <= '3' {
		return isoReadUncommitted + isoLevel(v[0]-'0') // MySQL's enum order
	}
	return isoUnset
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

// txIsolation is the level of a transaction begun with opts: the level asked
// for, or with sql.LevelDefault the next-transaction setting if any, else the
// session default. Levels the wrapper does not model are unknown.
func (ic *interceptor) txIsolation(opts driver.TxOptions) txIso {
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
		return ic.nextTxIsolation()
	case sql.LevelReadUncommitted:
		return txIso{level: isoReadUncommitted}
	case sql.LevelReadCommitted:
		return txIso{level: isoReadCommitted}
	case sql.LevelRepeatableRead:
		return txIso{level: isoRepeatableRead}
	case sql.LevelSerializable:
		return txIso{level: isoSerializable}
	}
	return txIso{}
}

func (ic *interceptor) nextTxIsolation() txIso {
	if ic.iso.next != isoUnset {
		return txIso{level: ic.iso.next}
	}
	return txIso{level: ic.iso.session}
}

// noteBegin reads a BEGIN or START TRANSACTION sent as a statement, after
// afterStmt began the transaction at the next-transaction level:
// PostgreSQL's BEGIN ISOLATION LEVEL ..., and MySQL's START TRANSACTION WITH
// CONSISTENT SNAPSHOT, which takes the read view at once.
func (ic *interceptor) noteBegin(query string) {
	if ic.cfg.BlindReread == BlindRereadOff {
		return
	}
	if l, ok := isolationClause(query); ok {
		ic.tx.iso.level = l
	}
	if ic.cfg.Dialect != DialectPostgres && hasWord(query, "CONSISTENT") && hasWord(query, "SNAPSHOT") {
		ic.tx.iso.snapshot = true
	}
}

// setScope is the scope a SET statement names for a variable.
type setScope uint8

const (
	scopeNone    setScope = iota // SET var = v
	scopeSession                 // SESSION, @@SESSION., and MySQL's LOCAL, @@LOCAL.
	scopeLocal                   // PostgreSQL's LOCAL: the current transaction
	scopeGlobal                  // GLOBAL, PERSIST, PERSIST_ONLY, @@GLOBAL.
	scopeAt                      // MySQL's @@var: for transaction_isolation, the next transaction
)

// noteSet reads a SET (or RESET) statement that succeeded:
//
//	SET [SESSION] TRANSACTION ISOLATION LEVEL l          MySQL: next transaction, or session
//	SET TRANSACTION ISOLATION LEVEL l                    PostgreSQL: the current transaction
//	SET SESSION CHARACTERISTICS AS TRANSACTION ...       PostgreSQL: session
//	SET [SESSION|@@SESSION.|@@] {tx,transaction}_isolation = v   MySQL (@@: next transaction)
//	SET [SESSION] default_transaction_isolation {=|TO} v          PostgreSQL: session
//	SET transaction_isolation = v                        PostgreSQL: the current transaction
//	RESET {ALL|default_transaction_isolation}            PostgreSQL
//
// Statements that do not mention isolation cost one scan of their text.
func (ic *interceptor) noteSet(query string) {
	if ic.cfg.BlindReread == BlindRereadOff {
		return
	}
	w, s := firstWord(query)
	if strings.EqualFold(w, "RESET") {
		if w, _ = firstWord(s); strings.EqualFold(w, "ALL") || strings.EqualFold(w, "default_transaction_isolation") {
			ic.setSession(ic.iso.initial)
		}
		return
	}
	if !containsFold(s, "isolation") {
		return
	}
	pg := ic.cfg.Dialect == DialectPostgres
	for {
		scope := scopeNone
		tok, r := setToken(s)
		switch {
		case strings.EqualFold(tok, "SESSION"):
			scope = scopeSession
		case strings.EqualFold(tok, "LOCAL"):
			scope = scopeLocal
			if !pg {
				scope = scopeSession
			}
		case strings.EqualFold(tok, "GLOBAL"), strings.EqualFold(tok, "PERSIST"), strings.EqualFold(tok, "PERSIST_ONLY"):
			scope = scopeGlobal
		case tok == "@@":
			scope = scopeAt
		}
		if scope != scopeNone {
			tok, r = setToken(r)
		}
		if scope == scopeAt {
			if dot, r2 := setToken(r); dot == "." { // @@SESSION.var, @@GLOBAL.var
				scope = scopeGlobal
				if strings.EqualFold(tok, "SESSION") || strings.EqualFold(tok, "LOCAL") {
					scope = scopeSession
				}
				tok, r = setToken(r2)
			}
		}
		switch {
		case strings.EqualFold(tok, "TRANSACTION"):
			if l, ok := isolationClause(r); ok {
				ic.setTransaction(scope, l)
			}
			return
		case strings.EqualFold(tok, "CHARACTERISTICS"): // PostgreSQL: SESSION CHARACTERISTICS AS TRANSACTION
			if l, ok := isolationClause(r); ok {
				ic.setSession(l)
			}
			return
		case strings.EqualFold(tok, "transaction_isolation"), strings.EqualFold(tok, "tx_isolation"):
			var v string
			v, r = setValue(r)
			ic.setVariable(scope, v)
		case pg && strings.EqualFold(tok, "default_transaction_isolation"):
			var v string
			v, r = setValue(r)
			if scope == scopeNone || scope == scopeSession {
				ic.setSession(ic.valueLevel(v))
			}
		}
		// MySQL sets several variables in one statement, separated by commas.
		if s = skipAssignment(r); s == "" {
			return
		}
	}
}

// setTransaction applies SET [scope] TRANSACTION ISOLATION LEVEL l.
func (ic *interceptor) setTransaction(scope setScope, l isoLevel) {
	switch {
	case scope == scopeSession:
		ic.setSession(l)
	case scope != scopeNone:
	case ic.tx.active:
		// PostgreSQL: the current transaction (MySQL refuses it in one).
		ic.tx.iso.level = l
	case ic.cfg.Dialect != DialectPostgres:
		// MySQL: the next transaction. PostgreSQL ignores it outside one.
		ic.iso.next = l
	}
}

// setVariable applies SET [scope] {tx,transaction}_isolation = v.
func (ic *interceptor) setVariable(scope setScope, v string) {
	if ic.cfg.Dialect == DialectPostgres {
		// Any scope: the current transaction; outside one, nothing.
		if ic.tx.active {
			ic.tx.iso.level = parseIsoValue(v, DialectPostgres)
		}
		return
	}
	switch scope {
	case scopeNone, scopeSession:
		ic.setSession(ic.valueLevel(v))
	case scopeAt:
		if strings.EqualFold(v, "DEFAULT") {
			ic.iso.next = isoUnset
		} else {
			ic.iso.next = parseIsoValue(v, ic.cfg.Dialect)
		}
	}
}

// valueLevel reads a session value; DEFAULT is the level the connection
// opened with.
func (ic *interceptor) valueLevel(v string) isoLevel {
	if strings.EqualFold(v, "DEFAULT") {
		return ic.iso.initial
	}
	return parseIsoValue(v, ic.cfg.Dialect)
}

// setSession sets the session default, which on MySQL also cancels a
// pending next-transaction level (seen on MariaDB 10.11).
func (ic *interceptor) setSession(l isoLevel) {
	ic.iso.session = l
	ic.iso.next = isoUnset
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
		return isoUnset, true // a level the wrapper does not model
	}
}

// setValue reads "= v", ":= v" or "TO v" and returns v (a word, a number or
// a quoted string with its quotes) and the text after it.
func setValue(s string) (string, string) {
	op, r := setToken(s)
	if op != "=" && op != ":=" && !strings.EqualFold(op, "TO") {
		return "", s
	}
	return setToken(r)
}

// skipAssignment skips to the text after the next comma outside quotes and
// parentheses, or returns "" at the end of the statement.
func skipAssignment(s string) string {
	depth := 0
	for {
		tok, r := setToken(s)
		switch tok {
		case "", ";":
			return ""
		case "(":
			depth++
		case ")":
			depth--
		case ",":
			if depth <= 0 {
				return r
			}
		}
		s = r
	}
}

// setToken returns the next token of a SET statement and the text after it:
// a word, a number, a quoted string with its quotes, "@@", ":=", or any
// other single byte. Blanks and comments are skipped; "" is the end.
func setToken(s string) (string, string) {
	s, ok := skipBlanks(s)
	if !ok || s == "" {
		return "", ""
	}
	switch c := s[0]; {
	case isLetter(c):
		j := 0
		for j < len(s) && isLetter(s[j]) {
			j++
		}
		return s[:j], s[j:]
	case c == '\'' || c == '"' || c == '`':
		j := 1
		for j < len(s) {
			if s[j] == '\\' && c != '`' {
				j += 2
				continue
			}
			if s[j] == c {
				if j+1 < len(s) && s[j+1] == c { // doubled quote
					j += 2
					continue
				}
				break
			}
			j++
		}
		if j >= len(s) {
			return s, ""
		}
		return s[:j+1], s[j+1:]
	case c == '@' && len(s) > 1 && s[1] == '@', c == ':' && len(s) > 1 && s[1] == '=':
		return s[:2], s[2:]
	default:
		return s[:1], s[1:]
	}
}

// containsFold reports whether s contains sub (lower case ASCII), ignoring
// case, without allocating.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i]|0x20 == sub[0] && strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// noteStmt does the snapshot bookkeeping for a SELECT, WITH or write that
// succeeded.
func (ic *interceptor) noteStmt(k stmtKind, query string) {
	if !ic.tx.active {
		// MySQL: an autocommit statement that touches a table is the
		// transaction a SET TRANSACTION applied to (seen on MariaDB 10.11;
		// SELECT 1 and SET leave it pending).
		if ic.iso.next != isoUnset && (k == stmtWrite || hasWord(query, "FROM")) {
			ic.iso.next = isoUnset
		}
		return
	}
	if ic.tx.iso.snapshot || ic.cfg.BlindReread == BlindRereadOff {
		return
	}
	if ic.cfg.Dialect == DialectPostgres {
		ic.tx.iso.snapshot = true // the first statement takes it
		return
	}
	// InnoDB creates the read view at the first consistent read: a SELECT
	// from a table, not a locking one (nor INSERT ... SELECT, UPDATE, ...).
	if k != stmtWrite && !isWrite(k, query) && hasWord(query, "FROM") {
		ic.tx.iso.snapshot = true
	}
}

// blindLevel reports whether the dialect's level reads from a snapshot that
// a re-read cannot see past. MySQL's SERIALIZABLE turns plain SELECTs into
// locking reads, which see the latest committed row.
func (ic *interceptor) blindLevel(l isoLevel) bool {
	return l == isoRepeatableRead || l == isoSerializable && ic.cfg.Dialect == DialectPostgres
}

// onConflict sees every error in a transaction. On a unique violation in a
// transaction whose re-read would be blind it warns once per transaction and
// arms the check of the next SELECT.
func (ic *interceptor) onConflict(ctx context.Context, cl Class) {
	if ic.cfg.BlindReread == BlindRereadOff || !ic.tx.active {
		return
	}
	t := &ic.tx.iso
	held := t.snapshot
	pg := ic.cfg.Dialect == DialectPostgres
	if pg {
		t.snapshot = true // the failed statement took it, if nothing before did
	}
	// Only 23505 and its MySQL equivalents: PostgreSQL reports some of these
	// conflicts as 40001, which RunTx already retries.
	if cl.Kind != KindUniqueViolation || !ic.blindLevel(t.level) {
		return
	}
	// Without an earlier snapshot, MySQL's re-read takes a fresh one and sees
	// the row. PostgreSQL's failed statement took one, which misses the row
	// if it committed while the statement waited for it: the SELECT check
	// tells, without a warning beforehand.
	if !held && !pg {
		return
	}
	t.check, t.conflict = true, cl
	// Inside RunTx with RetryUniqueViolation the whole transaction reruns
	// with a fresh snapshot: the remedy is already applied, so no warning.
	if held && !t.warned && !rerunsOnUniqueViolation(ctx) {
		t.warned = true
		ic.cfg.logger().WarnContext(ctx,
			"sqlconflict: unique violation in a transaction whose snapshot predates the conflicting row; a plain re-read in this transaction will not see that row",
			ic.isoAttrs(cl)...)
	}
}

// rereadMayBeBlind is asked for each query that succeeded; true makes rows.go
// call blindReread if it returns no rows. The first SELECT after an armed
// conflict is the re-read; it disarms the check whatever it returns. On
// MySQL a locking read sees the row; on PostgreSQL it does not.
func (ic *interceptor) rereadMayBeBlind(k stmtKind, query string) bool {
	if !ic.tx.iso.check {
		return false
	}
	if k != stmtSelect && (k != stmtWith || isWrite(k, query)) {
		return false
	}
	ic.tx.iso.check = false
	return ic.cfg.Dialect == DialectPostgres || !isLockingRead(query)
}

// blindReread is called when the re-read returned no rows. It returns io.EOF
// after a warning, or an error wrapping ErrBlindReread with
// conflict_blind_reread=error.
func (ic *interceptor) blindReread(ctx context.Context) error {
	cl := ic.tx.iso.conflict
	if ic.cfg.BlindReread == BlindRereadError {
		return fmt.Errorf("%w: a SELECT after the unique violation on %q returned no rows under %s; %s",
			ErrBlindReread, cl.Constraint, ic.tx.iso.level, ic.remedy())
	}
	ic.cfg.logger().WarnContext(ctx,
		"sqlconflict: blind re-read: a SELECT after a unique violation returned no rows because the transaction's snapshot predates the conflicting row",
		ic.isoAttrs(cl)...)
	return io.EOF
}

// isoAttrs are the warnings' attributes.
func (ic *interceptor) isoAttrs(cl Class) []any {
	return []any{
		slog.String("constraint", cl.Constraint),
		slog.String("code", cl.Code),
		slog.String("isolation", ic.tx.iso.level.String()),
		slog.String("dialect", ic.cfg.Dialect.String()),
		slog.String("remedy", ic.remedy()),
	}
}

// Remedies per dialect. RunTx alone does not retry a unique violation;
// RetryUniqueViolation makes it.
const (
	remedyMySQL = "re-read with a locking read (SELECT ... LOCK IN SHARE MODE, FOR SHARE on MySQL 8, or FOR UPDATE), " +
		"run the transaction at READ COMMITTED, or retry the whole transaction with sqlconflict.TxRunner{RetryUniqueViolation: true}.Run"
	remedyPostgres = "retry the whole transaction with sqlconflict.TxRunner{RetryUniqueViolation: true}.Run, " +
		"or run it at READ COMMITTED; on PostgreSQL a locking read in the same transaction does not see the row either"
)

func (ic *interceptor) remedy() string {
	if ic.cfg.Dialect == DialectPostgres {
		return remedyPostgres
	}
	return remedyMySQL
}
