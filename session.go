package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"strings"
)

// What the wrapper tracks of a MySQL session, and how it makes sure on the
// error path. A statement is run again alone only in a session that is in
// autocommit: with autocommit=0, or inside a transaction the wrapper did not
// see, a deadlock has rolled back everything since the transaction began,
// and the statement alone would commit the last part of it.

// autocommitState is the session's autocommit as far as the wrapper knows.
type autocommitState uint8

const (
	autocommitOn      autocommitState = iota // the servers' default
	autocommitOff                            // SET autocommit=0, or go-sql-driver/mysql's autocommit DSN parameter
	autocommitUnknown                        // set to a value the wrapper does not read (DEFAULT, a variable)
)

// sessState is the session's state that outlives transactions.
type sessState struct {
	autocommit autocommitState
	// chains: MySQL's completion_type is CHAIN, so a COMMIT or ROLLBACK
	// without AND NO CHAIN opens the next transaction at once.
	chains bool
	// rollbackOnTimeout: the server's innodb_rollback_on_timeout, read the
	// first time a lock wait timeout happens in a transaction (0: not yet
	// read, 1: OFF, 2: ON).
	rollbackOnTimeout uint8
	// discard: database/sql is to close the connection instead of reusing
	// it (see noteServer and commitFailed).
	discard bool
	// touched: a statement may have changed the session in a way a fresh
	// connection would not repeat (move.go), so a transaction is never
	// replayed on one. Followed only with conflict_replay=on.
	touched bool
}

// noteSet reads a SET statement that succeeded, for the session variables
// the wrapper tracks: autocommit and completion_type (MySQL). SET statements
// are short; those that mention neither cost one scan.
func (ic *interceptor) noteSet(query string) {
	if ic.cfg.Dialect != DialectMySQL {
		return
	}
	ac, ct := containsFold(query, "autocommit"), containsFold(query, "completion_type")
	if !ac && !ct {
		return
	}
	_, s := firstWord(query) // SET
	for s != "" {
		global, name, rest := setTarget(s)
		var v string
		v, rest = setValue(rest)
		if !global {
			switch {
			case strings.EqualFold(name, "autocommit"):
				ic.setAutocommit(parseSwitch(v))
			case strings.EqualFold(name, "completion_type"):
				ic.sess.chains = strings.EqualFold(unquote(v), "CHAIN") || unquote(v) == "1"
			}
		}
		s = skipAssignment(rest)
	}
}

// setAutocommit applies SET autocommit. Turning it on commits the open
// transaction (MySQL does so implicitly), doomed or not: after a doom the
// wrapper let nothing reach the server, so nothing half-done is committed.
func (ic *interceptor) setAutocommit(on, known bool) {
	switch {
	case !known:
		ic.sess.autocommit = autocommitUnknown
	case on:
		if ic.sess.autocommit != autocommitOn {
			ic.endTx(false)
		}
		ic.sess.autocommit = autocommitOn
	default:
		ic.sess.autocommit = autocommitOff
	}
}

// setTarget reads "[GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY] name" or
// "@@[scope.]name" and returns whether the scope is global (not this
// session), the name and the text after it.
func setTarget(s string) (global bool, name, rest string) {
	tok, r := setToken(s)
	switch {
	case strings.EqualFold(tok, "GLOBAL"), strings.EqualFold(tok, "PERSIST"), strings.EqualFold(tok, "PERSIST_ONLY"):
		global = true
		tok, r = setToken(r)
	case strings.EqualFold(tok, "SESSION"), strings.EqualFold(tok, "LOCAL"):
		tok, r = setToken(r)
	case tok == "@@":
		tok, r = setToken(r)
		if dot, r2 := setToken(r); dot == "." { // @@SESSION.var, @@GLOBAL.var
			global = !strings.EqualFold(tok, "SESSION") && !strings.EqualFold(tok, "LOCAL")
			tok, r = setToken(r2)
		}
	}
	return global, tok, r
}

// parseSwitch reads a boolean system variable's value: 1/0, ON/OFF,
// TRUE/FALSE, quoted or not. known is false for DEFAULT, a variable or an
// expression.
func parseSwitch(v string) (on, known bool) {
	switch u := unquote(v); {
	case u == "1", strings.EqualFold(u, "ON"), strings.EqualFold(u, "TRUE"):
		return true, true
	case u == "0", strings.EqualFold(u, "OFF"), strings.EqualFold(u, "FALSE"):
		return false, true
	}
	return false, false
}

// unquote strips one pair of matching quotes.
func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"' || v[0] == '`') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// dsnAutocommit reads go-sql-driver/mysql's autocommit DSN parameter, which
// the driver sends as SET autocommit=<value> when it connects.
func dsnAutocommit(dsn string) autocommitState {
	s := strings.LastIndexByte(dsn, '/')
	if s < 0 {
		return autocommitOn
	}
	_, query, ok := strings.Cut(dsn[s:], "?")
	if !ok {
		return autocommitOn
	}
	for _, seg := range strings.Split(query, "&") {
		key, val, _ := strings.Cut(seg, "=")
		if key != "autocommit" {
			continue
		}
		on, known := parseSwitch(strings.ReplaceAll(val, "%27", "'"))
		switch {
		case !known:
			return autocommitUnknown
		case !on:
			return autocommitOff
		}
	}
	return autocommitOn
}

// Session checks, sent only on the error path. SHOW VARIABLES answers on
// MySQL 8 (which has no in_transaction) and MariaDB alike, leaving out the
// variables a server does not have.
const sqlSessionMySQL = "SHOW SESSION VARIABLES WHERE Variable_name IN ('autocommit', 'in_transaction', 'innodb_rollback_on_timeout')"

// serverSession is what the server says of the session.
type serverSession struct {
	autocommit, inTx, rollbackOnTimeout bool
	reportsTx                           bool // the server has in_transaction (MariaDB; not MySQL 8)
}

// askSession asks a MySQL server for the session's state.
func (ic *interceptor) askSession(ctx context.Context) (serverSession, error) {
	st := serverSession{autocommit: true}
	found := false
	err := ic.queryRows(ctx, sqlSessionMySQL, func(cols []driver.Value) {
		name, _ := textValue(cols[0])
		v, _ := textValue(cols[len(cols)-1])
		on, _ := parseSwitch(v)
		switch strings.ToLower(name) {
		case "autocommit":
			st.autocommit, found = on, true
		case "in_transaction":
			st.inTx, st.reportsTx = on, true
		case "innodb_rollback_on_timeout":
			st.rollbackOnTimeout = on
		}
	})
	if err == nil && !found {
		err = errors.New("sqlconflict: the server did not report autocommit")
	}
	return st, err
}

// confirmAutocommit makes sure, before a statement is run again alone,
// that the session really is in autocommit with no transaction open: on
// MySQL by asking the server, since autocommit=0 may have been set where the
// wrapper could not see it (a DSN given to NewConnector's base connector, a
// procedure, init_connect). What the server says is kept: a session found in
// a transaction is tracked as one from then on.
func (ic *interceptor) confirmAutocommit(ctx context.Context) bool {
	if ic.cfg.Dialect != DialectMySQL {
		return true // PostgreSQL: see untracked in retry.go
	}
	st, err := ic.askSession(ctx)
	if err != nil {
		return false
	}
	ic.learn(st)
	return st.autocommit && !st.inTx && !ic.tx.unsure
}

// learn keeps what a MySQL server said of the session: a session found in
// a transaction is tracked as one from then on, and where the server says
// whether one is open (in_transaction), the wrapper is sure again.
func (ic *interceptor) learn(st serverSession) {
	ic.noteRollbackOnTimeout(st.rollbackOnTimeout)
	ic.sess.autocommit = autocommitOn
	if !st.autocommit {
		ic.sess.autocommit = autocommitOff
	}
	switch {
	case st.reportsTx && ic.tx.unsure:
		ic.tx = txState{active: st.inTx, released: true}
	case st.inTx:
		ic.tx.active = true
	}
}

func (ic *interceptor) noteRollbackOnTimeout(on bool) {
	ic.sess.rollbackOnTimeout = 1
	if on {
		ic.sess.rollbackOnTimeout = 2
	}
}

// scope corrects a MySQL lock wait timeout's scope inside a transaction:
// with innodb_rollback_on_timeout=ON the server has rolled back the whole
// transaction, not only the statement. The setting is read once per
// connection, the first time it matters.
func (ic *interceptor) scope(ctx context.Context, cl Class) Class {
	if cl.Dialect != DialectMySQL || cl.Code != "1205" || !ic.inTx() {
		return cl
	}
	if ic.sess.rollbackOnTimeout == 0 {
		st, err := ic.askSession(ctx)
		if err != nil {
			// Unknown: assume the worse, so nothing runs on in a
			// transaction that may be gone.
			cl.Scope = ScopeTransaction
			return cl
		}
		ic.noteRollbackOnTimeout(st.rollbackOnTimeout)
	}
	if ic.sess.rollbackOnTimeout == 2 {
		cl.Scope = ScopeTransaction
	}
	return cl
}

// queryRows runs one of the wrapper's own queries on the base connection,
// bounded as its caller is (ownCtx), and hands each row to f. An error
// means the answer is not known: the callers then assume the worse.
func (ic *interceptor) queryRows(ctx context.Context, q string, f func([]driver.Value)) error {
	ctx, cancel := ic.ownCtx(ctx)
	defer cancel()
	return ic.ownFailed(queryConn(ctx, ic.conn, q, f))
}

// queryConn runs a query of the wrapper's own on conn and hands each row to f.
func queryConn(ctx context.Context, conn driver.Conn, q string, f func([]driver.Value)) error {
	var rows driver.Rows
	err := driver.ErrSkip
	if qc, ok := conn.(driver.QueryerContext); ok {
		rows, err = qc.QueryContext(ctx, q, nil)
	}
	if err == driver.ErrSkip {
		var st driver.Stmt
		if pc, ok := conn.(driver.ConnPrepareContext); ok {
			st, err = pc.PrepareContext(ctx, q)
		} else {
			st, err = conn.Prepare(q)
		}
		if err != nil {
			return err
		}
		defer st.Close()
		if sq, ok := st.(driver.StmtQueryContext); ok {
			rows, err = sq.QueryContext(ctx, nil)
		} else {
			//lint:ignore SA1019 fallback for statements without StmtQueryContext
			rows, err = st.Query(nil)
		}
	}
	if err != nil {
		return err
	}
	dest := make([]driver.Value, len(rows.Columns()))
	if len(dest) == 0 {
		rows.Close()
		return errors.New("sqlconflict: a query of the wrapper's returned no columns")
	}
	for {
		if err = rows.Next(dest); err != nil {
			break
		}
		f(dest)
	}
	if cerr := rows.Close(); err == io.EOF {
		err = cerr
	}
	return err
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
		end, _, _ := quoteEnd(s, 0, c, c != '`')
		return s[:end], s[end:]
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
