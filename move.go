package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"syscall"
)

// Replay on a fresh connection (conflict_replay=on). A transaction whose
// connection was lost before its COMMIT was sent committed nothing: the
// server rolls it back when it finds the session gone. The wrapper opens
// a new base connection from the same connector and replays the
// transaction there, verified as on the same connection (replay.go).
//
// The fresh session is as the connector opens it: the DSN's settings, no
// more. So this is done only for a connection whose session the
// application never changed in a way a new one would lack (a SET, a
// temporary table, a lock, a user variable, a function the wrapper does not
// know, sql.Conn.Raw): touches marks it at the first such statement.
//
// database/sql keeps the driver connection it has; sqlmw, which wraps it,
// keeps handing the interceptor the lost base connection and its
// statements. From the move on, each hook uses ic.conn instead, and a
// statement the application prepared on the lost connection is prepared
// again on the new one when it is next used. IsValid is false from then on
// (the lost connection's own answer), so database/sql closes the connection
// when it returns to the pool; until then it serves the transaction to its
// end and whatever a *sql.Conn sends after it.

// movedConn is what a connection that moved keeps of the lost one.
type movedConn struct {
	stmts map[driver.Stmt]driver.Stmt // the lost connection's statements, prepared again on ic.conn
}

// touches reports whether a statement may change the session in a way a
// fresh connection would not repeat. Transaction control does not; one
// plain SELECT or DML statement does not unless it has effects a rollback
// keeps or calls a function the wrapper does not know (the retry rules,
// rerunnable); anything else (SET, DDL, LOCK, LISTEN, PREPARE, a string of
// several statements) may.
func (ic *interceptor) touches(c *call) bool {
	switch c.kind {
	case stmtBegin, stmtCommit, stmtRollback, stmtSavepoint, stmtRollbackTo:
		return false
	case stmtSelect, stmtWrite, stmtWith:
		s := lexStmt(c.query, ic.cfg.Dialect)
		return !s.single || s.effects || s.userVars || s.calls && !ic.cfg.RetryFunctions
	}
	return true
}

// sessionFunctions answer from the session's own history (the last id it
// inserted, its sequence values, its id): on a fresh connection they would
// answer otherwise, in a write the application never sees.
var sessionFunctions = []string{"last_insert_id", "lastval", "currval", "found_rows", "row_count", "connection_id", "pg_backend_pid"}

// sessionDependent reports whether q calls one of sessionFunctions (or
// names one: the test errs toward refusing).
func sessionDependent(q string) bool {
	for _, f := range sessionFunctions {
		if containsFold(q, f) {
			return true
		}
	}
	return false
}

// dependsOnSession reports whether the failing statement q or a statement
// recorded in the transaction depends on the lost session's history.
func (l *replayLog) dependsOnSession(q string) bool {
	if sessionDependent(q) {
		return true
	}
	for i := range l.entries {
		if sessionDependent(l.entries[i].query) {
			return true
		}
	}
	return false
}

// noteSession marks the session as changed by c, if it may be (touches).
// It costs a scan of each statement's text while conflict_replay is on and
// the session is untouched.
func (ic *interceptor) noteSession(c *call) {
	if ic.cfg.Replay == ReplayOn && !ic.sess.touched && ic.touches(c) {
		ic.sess.touched = true
	}
}

// lostConn reports whether cl, the error of a statement, lost the
// connection: the base connection says it is no longer usable, or (pgx's
// stdlib connection has no IsValid) its socket is closed or its peer gone.
func (ic *interceptor) lostConn(cl Class) bool {
	if cl.Kind != KindConnectionLost {
		return false
	}
	return !ic.alive() || ic.peer != nil && (closedConn(ic.peer) || peerGone(ic.peer))
}

// closedConn reports whether c's socket is closed (the driver closed it
// after an error).
func closedConn(c net.Conn) bool {
	c, _ = underTLS(c)
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil
}

// moveConn opens a new base connection and makes it the connection's, in
// place of the lost one, which it closes. The transaction is to be begun on
// it again (the lost one's is gone).
func (ic *interceptor) moveConn(ctx context.Context) error {
	if ic.redial == nil {
		return errors.New("no connector to open a connection with")
	}
	bc, s, err := ic.redial(ctx)
	if err != nil {
		return err
	}
	if ic.moved == nil {
		ic.moved = &movedConn{}
	}
	ic.moved.close()
	// The lost connection: the server sees its session end, if the path
	// is up. (sqlmw closes the first one again with the connection; a
	// second Close is harmless.)
	_ = ic.conn.Close()
	discard := ic.sess.discard
	ic.connect(bc, s)
	ic.sess.discard = discard
	ic.rp.tx = nil
	return nil
}

// close closes the statements prepared again on the new connection.
func (m *movedConn) close() {
	for _, st := range m.stmts {
		_ = st.Close()
	}
	clear(m.stmts)
}

// stmt returns the statement to run, after the connection moved, in place
// of st, which the application prepared with query on a lost connection:
// the same query prepared on the new connection.
func (ic *interceptor) stmt(ctx context.Context, st driver.Stmt, query string) (driver.Stmt, error) {
	if n, ok := ic.moved.stmts[st]; ok {
		return n, nil
	}
	n, err := prepareConn(ctx, ic.conn, query)
	if err != nil {
		return nil, err
	}
	if ic.moved.stmts == nil {
		ic.moved.stmts = map[driver.Stmt]driver.Stmt{}
	}
	ic.moved.stmts[st] = n
	return n, nil
}

// StmtClose implements sqlmw.Interceptor: a statement prepared again on the
// new connection is closed with the application's.
func (ic *interceptor) StmtClose(ctx context.Context, st driver.Stmt) error {
	if ic.moved != nil {
		if n, ok := ic.moved.stmts[st]; ok {
			delete(ic.moved.stmts, st)
			_ = n.Close()
		}
	}
	return st.Close()
}

// ConnPing implements sqlmw.Interceptor: after a move, the new connection
// answers.
func (ic *interceptor) ConnPing(ctx context.Context, p driver.Pinger) error {
	if ic.moved != nil {
		p, _ = ic.conn.(driver.Pinger)
		if p == nil {
			return nil
		}
	}
	return p.Ping(ctx)
}

// current returns what a hook is to call in place of c, the base
// connection (as an ExecerContext, QueryerContext, ...) that sqlmw handed
// it: c until the connection moved, then the new base connection.
func current[T any](ic *interceptor, c T) T {
	if ic.moved != nil {
		if n, ok := any(ic.conn).(T); ok {
			return n
		}
	}
	return c
}

// movedExec and movedQuery run the application's prepared statement st
// after the connection moved: as prepared again on the new connection.
func (ic *interceptor) movedExec(ctx context.Context, st driver.StmtExecContext, query string, args []driver.NamedValue) (driver.Result, error) {
	n, err := ic.stmt(ctx, st.(driver.Stmt), query)
	if err != nil {
		return nil, err
	}
	if x, ok := n.(driver.StmtExecContext); ok {
		return x.ExecContext(ctx, args)
	}
	return nil, errors.New("sqlconflict: the statement prepared again has no ExecContext")
}

func (ic *interceptor) movedQuery(ctx context.Context, st driver.StmtQueryContext, query string, args []driver.NamedValue) (driver.Rows, error) {
	n, err := ic.stmt(ctx, st.(driver.Stmt), query)
	if err != nil {
		return nil, err
	}
	if x, ok := n.(driver.StmtQueryContext); ok {
		return x.QueryContext(ctx, args)
	}
	return nil, errors.New("sqlconflict: the statement prepared again has no QueryContext")
}
