package sqlconflict

// Benchmarks on the in-memory fakeDriver (fakedriver_test.go): the
// wrapper's own per-statement cost, with no network to hide it, and the
// number of statements savepoint mode sends. Every benchmark here runs the
// raw base driver and the wrapped one as sub-benchmarks of one function, so
// that one `go test -bench` invocation measures both on the same machine
// state; docs/BENCHMARKS.md has the commands and the results.
//
// This file holds no Test functions: `go test` without -bench runs nothing
// from it.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ngrok/sqlmw"
)

// benchDrv says how a benchmark's base connections are wrapped.
type benchDrv int

const (
	benchRaw     benchDrv = iota // the base driver alone
	benchSqlmw                   // sqlmw with its NullInterceptor: the floor any sqlmw-based wrapper pays
	benchWrapped                 // sqlconflict
)

// benchFakeDB opens the fake driver raw, under sqlmw's NullInterceptor, or
// wrapped with opts. The fake's connections are free, so what differs is
// sqlmw's cost and the interceptor's.
func benchFakeDB(b *testing.B, drv benchDrv, opts Options) *sql.DB {
	b.Helper()
	var c driver.Connector = dsnConnector{drv: &fakeDriver{}}
	switch drv {
	case benchSqlmw:
		c = benchNullConnector{c}
	case benchWrapped:
		var err error
		if c, err = NewConnector(c, opts); err != nil {
			b.Fatal(err)
		}
	}
	db := sql.OpenDB(c)
	b.Cleanup(func() { db.Close() })
	db.SetMaxIdleConns(4)
	if err := db.Ping(); err != nil { // open the connection outside the timed loop
		b.Fatal(err)
	}
	return db
}

// benchNullConnector wraps connections in sqlmw with its NullInterceptor,
// which forwards every call: the cost of sqlmw alone.
type benchNullConnector struct{ base driver.Connector }

func (c benchNullConnector) Connect(ctx context.Context) (driver.Conn, error) {
	bc, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return sqlmw.Driver(connDriver{bc}, sqlmw.NullInterceptor{}).Open("")
}

func (c benchNullConnector) Driver() driver.Driver { return c.base.Driver() }

// benchFakeModes are the configurations the fake-driver benchmarks compare.
// "raw" is the base driver alone; "sqlmw" is sqlmw with a do-nothing
// interceptor; "wrapped" is sqlconflict with its default options (3
// statement retries, savepoints off). The key=value names let
// `benchstat -col /drv` put them side by side.
var benchFakeModes = []struct {
	name string
	drv  benchDrv
}{
	{"drv=raw", benchRaw},
	{"drv=sqlmw", benchSqlmw},
	{"drv=wrapped", benchWrapped},
}

// benchFakeEach runs, for each of benchFakeModes, the operation that
// prepare returns for that mode's database.
func benchFakeEach(b *testing.B, prepare func(b *testing.B, db *sql.DB) func() error) {
	for _, m := range benchFakeModes {
		b.Run(m.name, func(b *testing.B) {
			op := prepare(b, benchFakeDB(b, m.drv, DefaultOptions()))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := op(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFakeExec: one Exec without arguments in autocommit.
func BenchmarkFakeExec(b *testing.B) {
	ctx := context.Background()
	benchFakeEach(b, func(_ *testing.B, db *sql.DB) func() error {
		return func() error {
			_, err := db.ExecContext(ctx, "UPDATE t SET v = v + 1 WHERE id = 1")
			return err
		}
	})
}

// BenchmarkFakeExecArgs: one Exec with two arguments in autocommit.
func BenchmarkFakeExecArgs(b *testing.B) {
	ctx := context.Background()
	benchFakeEach(b, func(_ *testing.B, db *sql.DB) func() error {
		return func() error {
			_, err := db.ExecContext(ctx, "UPDATE t SET v = $1 WHERE id = $2", 7, 1)
			return err
		}
	})
}

// BenchmarkFakeQuery: QueryRow + Scan of one row in autocommit.
func BenchmarkFakeQuery(b *testing.B) {
	ctx := context.Background()
	benchFakeEach(b, func(_ *testing.B, db *sql.DB) func() error {
		var v int64
		return func() error {
			return db.QueryRowContext(ctx, "SELECT v FROM t WHERE id = $1", 1).Scan(&v)
		}
	})
}

// benchORMSelect returns an ORM-style SELECT of about n bytes: many
// qualified columns, a join and a filter, no locking clause.
func benchORMSelect(n int) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i := 0; b.Len() < n-120; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "\"orders\".\"column_%02d\" AS \"orders_column_%02d\"", i, i)
	}
	b.WriteString(` FROM "orders" INNER JOIN "customers" ON "customers"."id" = "orders"."customer_id" WHERE "orders"."id" = $1`)
	return b.String()
}

// BenchmarkFakeQueryLength: QueryRow + Scan in autocommit, and the same
// statement's Exec, for a 100-byte and a 2.4 KB SELECT: what the wrapper
// reads of a statement on the happy path must not grow with its length.
func BenchmarkFakeQueryLength(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{100, 2400} {
		q := benchORMSelect(n)
		b.Run(fmt.Sprintf("bytes=%d/op=query", n), func(b *testing.B) {
			benchFakeEach(b, func(_ *testing.B, db *sql.DB) func() error {
				var v int64
				return func() error { return db.QueryRowContext(ctx, q, 1).Scan(&v) }
			})
		})
		b.Run(fmt.Sprintf("bytes=%d/op=exec", n), func(b *testing.B) {
			benchFakeEach(b, func(_ *testing.B, db *sql.DB) func() error {
				return func() error { _, err := db.ExecContext(ctx, q, 1); return err }
			})
		})
	}
}

// BenchmarkFakeStmtExec: Exec of a statement prepared once (the
// StmtExecContext path).
func BenchmarkFakeStmtExec(b *testing.B) {
	ctx := context.Background()
	benchFakeEach(b, func(b *testing.B, db *sql.DB) func() error {
		db.SetMaxOpenConns(1)
		st, err := db.PrepareContext(ctx, "UPDATE t SET v = $1 WHERE id = $2")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		return func() error {
			_, err := st.ExecContext(ctx, 7, 1)
			return err
		}
	})
}

// BenchmarkFakeTx: BEGIN; UPDATE; SELECT; COMMIT. The wrapped variants run
// with savepoints off and in writes mode (PostgreSQL dialect, so a savepoint
// costs one statement).
func BenchmarkFakeTx(b *testing.B) {
	ctx := context.Background()
	off := DefaultOptions()
	writes := DefaultOptions()
	writes.Savepoints = SavepointsWrites
	writes.Dialect = DialectPostgres
	replay := DefaultOptions()
	replay.Replay = ReplayOn
	replay.Dialect = DialectPostgres
	for _, m := range []struct {
		name string
		drv  benchDrv
		opts Options
	}{
		{"drv=raw", benchRaw, Options{}},
		{"drv=sqlmw", benchSqlmw, Options{}},
		{"drv=wrapped", benchWrapped, off},
		{"drv=wrapped-savepoints", benchWrapped, writes},
		{"drv=wrapped-replay", benchWrapped, replay},
	} {
		b.Run(m.name, func(b *testing.B) {
			db := benchFakeDB(b, m.drv, m.opts)
			b.ReportAllocs()
			var v int64
			b.ResetTimer()
			for range b.N {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, "UPDATE t SET v = $1 WHERE id = $2", 7, 1); err != nil {
					b.Fatal(err)
				}
				if err := tx.QueryRowContext(ctx, "SELECT v FROM t WHERE id = $1", 1).Scan(&v); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchWritesPerTx is the number of guarded writes in the savepoint
// benchmarks' transaction.
const benchWritesPerTx = 4

// BenchmarkFakeSavepoints counts the statements that reach the base
// connection for a transaction of benchWritesPerTx writes: savepoints off,
// and writes mode in each dialect. The metric wrapper-stmts/write is the
// wrapper's own statements (SAVEPOINT, RELEASE, ROLLBACK TO) per guarded
// write; round-trips/tx counts every call that reaches the base connection,
// BEGIN and COMMIT included.
func BenchmarkFakeSavepoints(b *testing.B) {
	ctx := context.Background()
	mode := func(sp SavepointMode, d Dialect) Options {
		o := DefaultOptions()
		o.Savepoints, o.Dialect = sp, d
		return o
	}
	for _, m := range []struct {
		name    string
		wrapped bool
		opts    Options
	}{
		{"sp=raw", false, Options{}},
		{"sp=off", true, mode(SavepointsOff, DialectPostgres)},
		{"sp=writes-postgres", true, mode(SavepointsWrites, DialectPostgres)},
		{"sp=writes-mysql", true, mode(SavepointsWrites, DialectMySQL)},
		{"sp=writes-unknown", true, mode(SavepointsWrites, DialectUnknown)},
	} {
		b.Run(m.name, func(b *testing.B) {
			n := &benchCounter{}
			var c driver.Connector = &benchCountConnector{base: dsnConnector{drv: &fakeDriver{}}, n: n}
			if m.wrapped {
				var err error
				if c, err = NewConnector(c, m.opts); err != nil {
					b.Fatal(err)
				}
			}
			db := sql.OpenDB(c)
			defer db.Close()
			write := func(i int) (string, []any) {
				return "UPDATE t SET v = v + 1 WHERE id = $1", []any{i}
			}
			// One transaction before counting: a new connection's setup
			// (the wrapper asks for the session's isolation level) is not
			// the transaction's.
			benchGuardedTx(b, ctx, db, write)
			b.ReportAllocs()
			n.reset()
			b.ResetTimer()
			for range b.N {
				benchGuardedTx(b, ctx, db, write)
			}
			n.report(b, b.N, benchWritesPerTx)
		})
	}
}

// benchGuardedTx runs one transaction of benchWritesPerTx writes, the i-th
// given by write(i), and commits it.
func benchGuardedTx(b *testing.B, ctx context.Context, db *sql.DB, write func(i int) (string, []any)) {
	benchGuardedTxEnd(b, ctx, db, true, write)
}

// benchGuardedTxEnd is benchGuardedTx ending in COMMIT or, with commit
// false, in ROLLBACK.
func benchGuardedTxEnd(b *testing.B, ctx context.Context, db *sql.DB, commit bool, write func(i int) (string, []any)) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := range benchWritesPerTx {
		q, args := write(i)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			_ = tx.Rollback()
			b.Fatal(err)
		}
	}
	end := tx.Rollback
	if commit {
		end = tx.Commit
	}
	if err := end(); err != nil {
		b.Fatal(err)
	}
}

// benchCounter counts what reaches a base connection through a
// benchCountConnector.
type benchCounter struct {
	roundTrips   atomic.Int64 // calls that reach the server: statements, prepares, BEGIN, COMMIT, ROLLBACK
	wrapperStmts atomic.Int64 // statements naming the wrapper's savepoint
	closes       atomic.Int64 // prepared statements closed (no reply awaited on MySQL, none sent by lib/pq for unnamed ones)
}

func (n *benchCounter) reset() {
	n.roundTrips.Store(0)
	n.wrapperStmts.Store(0)
	n.closes.Store(0)
}

func (n *benchCounter) note(q string) {
	n.roundTrips.Add(1)
	if strings.Contains(q, "sqlconflict_sp_") {
		n.wrapperStmts.Add(1)
	}
}

// report turns the counts into per-transaction and per-write metrics.
func (n *benchCounter) report(b *testing.B, txs, writesPerTx int) {
	if txs == 0 {
		return
	}
	b.ReportMetric(float64(n.roundTrips.Load())/float64(txs), "round-trips/tx")
	b.ReportMetric(float64(n.wrapperStmts.Load())/float64(txs*writesPerTx), "wrapper-stmts/write")
}

// benchCountConnector wraps a base connector, counting what its connections
// send. It sits below the wrapper (sqlconflict.NewConnector(counting)), so it
// sees the wrapper's own statements as well as the application's.
type benchCountConnector struct {
	base driver.Connector
	n    *benchCounter
}

func (c *benchCountConnector) Connect(ctx context.Context) (driver.Conn, error) {
	bc, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &benchCountConn{c: bc, n: c.n}, nil
}

// Driver returns the base driver, so that the wrapper detects its dialect.
func (c *benchCountConnector) Driver() driver.Driver { return c.base.Driver() }

// benchCountConn forwards every optional interface the real drivers have,
// declining (ErrSkip, or the database/sql default) where the base lacks one.
type benchCountConn struct {
	c driver.Conn
	n *benchCounter
}

var (
	_ driver.ExecerContext      = (*benchCountConn)(nil)
	_ driver.QueryerContext     = (*benchCountConn)(nil)
	_ driver.ConnBeginTx        = (*benchCountConn)(nil)
	_ driver.ConnPrepareContext = (*benchCountConn)(nil)
	_ driver.Pinger             = (*benchCountConn)(nil)
	_ driver.SessionResetter    = (*benchCountConn)(nil)
	_ driver.Validator          = (*benchCountConn)(nil)
	_ driver.NamedValueChecker  = (*benchCountConn)(nil)
)

func (c *benchCountConn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

func (c *benchCountConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	var st driver.Stmt
	var err error
	if pc, ok := c.c.(driver.ConnPrepareContext); ok {
		st, err = pc.PrepareContext(ctx, q)
	} else {
		st, err = c.c.Prepare(q)
	}
	c.n.note(q)
	if err != nil {
		return nil, err
	}
	return &benchCountStmt{st: st, q: q, n: c.n}, nil
}

func (c *benchCountConn) Close() error { return c.c.Close() }

func (c *benchCountConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *benchCountConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var tx driver.Tx
	var err error
	if bt, ok := c.c.(driver.ConnBeginTx); ok {
		tx, err = bt.BeginTx(ctx, opts)
	} else {
		//lint:ignore SA1019 fallback for drivers without ConnBeginTx
		tx, err = c.c.Begin()
	}
	c.n.note("BEGIN")
	if err != nil {
		return nil, err
	}
	return benchCountTx{tx: tx, n: c.n}, nil
}

func (c *benchCountConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.c.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := e.ExecContext(ctx, q, args)
	if err != driver.ErrSkip { // ErrSkip: declined before sending anything
		c.n.note(q)
	}
	return r, err
}

func (c *benchCountConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	qc, ok := c.c.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := qc.QueryContext(ctx, q, args)
	if err != driver.ErrSkip {
		c.n.note(q)
	}
	return r, err
}

func (c *benchCountConn) Ping(ctx context.Context) error {
	if p, ok := c.c.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *benchCountConn) ResetSession(ctx context.Context) error {
	if r, ok := c.c.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *benchCountConn) IsValid() bool {
	if v, ok := c.c.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *benchCountConn) CheckNamedValue(nv *driver.NamedValue) error {
	if nc, ok := c.c.(driver.NamedValueChecker); ok {
		return nc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

type benchCountTx struct {
	tx driver.Tx
	n  *benchCounter
}

func (t benchCountTx) Commit() error   { t.n.note("COMMIT"); return t.tx.Commit() }
func (t benchCountTx) Rollback() error { t.n.note("ROLLBACK"); return t.tx.Rollback() }

type benchCountStmt struct {
	st driver.Stmt
	q  string
	n  *benchCounter
}

var (
	_ driver.StmtExecContext  = (*benchCountStmt)(nil)
	_ driver.StmtQueryContext = (*benchCountStmt)(nil)
	//lint:ignore SA1019 the real drivers' statements have it
	_ driver.ColumnConverter = (*benchCountStmt)(nil)
)

func (s *benchCountStmt) Close() error  { s.n.closes.Add(1); return s.st.Close() }
func (s *benchCountStmt) NumInput() int { return s.st.NumInput() }

func (s *benchCountStmt) Exec(args []driver.Value) (driver.Result, error) {
	s.n.note(s.q)
	//lint:ignore SA1019 forwarding the legacy method
	return s.st.Exec(args)
}

func (s *benchCountStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.n.note(s.q)
	//lint:ignore SA1019 forwarding the legacy method
	return s.st.Query(args)
}

func (s *benchCountStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := s.st.(driver.StmtExecContext); ok {
		s.n.note(s.q)
		return e.ExecContext(ctx, args)
	}
	return s.Exec(benchValues(args))
}

func (s *benchCountStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := s.st.(driver.StmtQueryContext); ok {
		s.n.note(s.q)
		return q.QueryContext(ctx, args)
	}
	return s.Query(benchValues(args))
}

func (s *benchCountStmt) ColumnConverter(idx int) driver.ValueConverter {
	//lint:ignore SA1019 forwarding the legacy method
	if cc, ok := s.st.(driver.ColumnConverter); ok {
		return cc.ColumnConverter(idx)
	}
	return driver.DefaultParameterConverter
}

func benchValues(args []driver.NamedValue) []driver.Value {
	v := make([]driver.Value, len(args))
	for i, a := range args {
		v[i] = a.Value
	}
	return v
}

// BenchmarkWatchdog is the price of bounding one call by its context on a
// socket the wrapper dialed (sock.go): arming the watchdog and disarming it,
// for a context that can end (a request's) and one that cannot.
func BenchmarkWatchdog(b *testing.B) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	s := &sock{Conn: c1, grace: 50 * time.Millisecond}
	for _, deadline := range []bool{false, true} {
		b.Run(fmt.Sprintf("deadline=%v", deadline), func(b *testing.B) {
			ctx := context.Background()
			if deadline {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Hour)
				defer cancel()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				w := s.watch(ctx)
				if w.done(nil) {
					b.Fatal("cut")
				}
			}
		})
	}
}
