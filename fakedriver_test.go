package sqlconflict

import (
	"context"
	"database/sql/driver"
	"io"
	"sync"
)

// fakeDriver is an in-memory base driver for unit tests and benchmarks. Its
// connections count the optional interfaces database/sql calls through the
// wrapper, and answer statements with results scripted by errs.
type fakeDriver struct {
	mu    sync.Mutex
	calls map[string]int
	stmts []string
	// errs returns the error for a statement, or nil; nil errs: all succeed.
	errs func(query string) error
	// autocommitOff makes the session check (sqlSessionMySQL) answer that
	// autocommit is off.
	autocommitOff bool
}

func (d *fakeDriver) note(call string) {
	d.mu.Lock()
	if d.calls == nil {
		d.calls = map[string]int{}
	}
	d.calls[call]++
	d.mu.Unlock()
}

func (d *fakeDriver) count(call string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[call]
}

// sent counts how often q reached a connection.
func (d *fakeDriver) sent(q string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, s := range d.stmts {
		if s == q {
			n++
		}
	}
	return n
}

func (d *fakeDriver) Open(string) (driver.Conn, error) { return &fakeConn{d: d}, nil }

type fakeConn struct{ d *fakeDriver }

var (
	_ driver.ExecerContext      = (*fakeConn)(nil)
	_ driver.QueryerContext     = (*fakeConn)(nil)
	_ driver.ConnBeginTx        = (*fakeConn)(nil)
	_ driver.Pinger             = (*fakeConn)(nil)
	_ driver.SessionResetter    = (*fakeConn)(nil)
	_ driver.Validator          = (*fakeConn)(nil)
	_ driver.NamedValueChecker  = (*fakeConn)(nil)
	_ driver.ConnPrepareContext = (*fakeConn)(nil)
)

func (c *fakeConn) exec(q string) error {
	if c.d.errs == nil {
		return nil
	}
	c.d.mu.Lock()
	c.d.stmts = append(c.d.stmts, q)
	c.d.mu.Unlock()
	return c.d.errs(q)
}

func (c *fakeConn) Prepare(q string) (driver.Stmt, error) { return &fakeStmt{c: c, q: q}, nil }
func (c *fakeConn) PrepareContext(_ context.Context, q string) (driver.Stmt, error) {
	return &fakeStmt{c: c, q: q}, nil
}
func (c *fakeConn) Close() error              { return nil }
func (c *fakeConn) Begin() (driver.Tx, error) { return fakeTx{c}, nil }
func (c *fakeConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return fakeTx{c}, nil
}
func (c *fakeConn) ExecContext(_ context.Context, q string, _ []driver.NamedValue) (driver.Result, error) {
	if err := c.exec(q); err != nil {
		return nil, err
	}
	return driver.RowsAffected(1), nil
}
func (c *fakeConn) QueryContext(_ context.Context, q string, _ []driver.NamedValue) (driver.Rows, error) {
	if err := c.exec(q); err != nil {
		return nil, err
	}
	if q == sqlSessionMySQL {
		ac := "ON"
		if c.d.autocommitOff {
			ac = "OFF"
		}
		return &fakeVarRows{vars: [][2]string{{"autocommit", ac}, {"in_transaction", "0"}, {"innodb_rollback_on_timeout", "OFF"}}}, nil
	}
	return &fakeRows{n: 1}, nil
}

// fakeVarRows answers SHOW VARIABLES.
type fakeVarRows struct{ vars [][2]string }

func (r *fakeVarRows) Columns() []string { return []string{"Variable_name", "Value"} }
func (r *fakeVarRows) Close() error      { return nil }
func (r *fakeVarRows) Next(dest []driver.Value) error {
	if len(r.vars) == 0 {
		return io.EOF
	}
	dest[0], dest[1] = r.vars[0][0], r.vars[0][1]
	r.vars = r.vars[1:]
	return nil
}
func (c *fakeConn) Ping(context.Context) error { c.d.note("Ping"); return nil }
func (c *fakeConn) ResetSession(context.Context) error {
	c.d.note("ResetSession")
	return nil
}
func (c *fakeConn) IsValid() bool { c.d.note("IsValid"); return true }

// CheckNamedValue accepts uint64 with the high bit set, which database/sql's
// default converter refuses, so a test sees whether the wrapper forwards it.
func (c *fakeConn) CheckNamedValue(nv *driver.NamedValue) error {
	c.d.note("CheckNamedValue")
	if _, ok := nv.Value.(uint64); ok {
		return nil
	}
	return driver.ErrSkip
}

type fakeTx struct{ c *fakeConn }

func (t fakeTx) Commit() error   { return t.c.exec("COMMIT") }
func (t fakeTx) Rollback() error { return t.c.exec("ROLLBACK") }

type fakeStmt struct {
	c *fakeConn
	q string
}

func (s *fakeStmt) Close() error  { return nil }
func (s *fakeStmt) NumInput() int { return -1 }
func (s *fakeStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.q, nil)
}
func (s *fakeStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.q, nil)
}

type fakeRows struct{ n int }

func (r *fakeRows) Columns() []string { return []string{"x"} }
func (r *fakeRows) Close() error      { return nil }
func (r *fakeRows) Next(dest []driver.Value) error {
	if r.n == 0 {
		return io.EOF
	}
	r.n--
	dest[0] = int64(1)
	return nil
}
