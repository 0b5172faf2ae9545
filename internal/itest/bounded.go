package itest

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"
)

// The hard bound, measured the same way for every base driver: each kind of
// call against one fault, through the raw driver and through the wrapper,
// on a connection taken from the pool before the fault (or, for a new
// connection, one opened after it).

// Bounded is what a hard-bound test measures against one fault.
type Bounded struct {
	Raw, Wrapped string // driver names
	Table        string // a table with a row (id 1, v)
	// Q rewrites $n placeholders for the server's dialect; nil keeps them.
	Q func(string) string
	// Open returns a new *sql.DB for the driver named on the faulty path.
	Open func(t *testing.T, driver string) *sql.DB
	// UnknownOutcome reports whether the wrapper classified err as an
	// unknown outcome (sqlconflict.Classify, which this package cannot
	// import).
	UnknownOutcome func(err error) bool
}

type boundedOp struct {
	name string
	run  func(ctx context.Context, db *sql.DB, c *sql.Conn) error
}

func (b Bounded) ops() []boundedOp {
	q := b.Q
	if q == nil {
		q = func(s string) string { return s }
	}
	update := "UPDATE " + b.Table + " SET v = v + 1 WHERE id = 1"
	return []boundedOp{
		{"exec", func(ctx context.Context, _ *sql.DB, c *sql.Conn) error {
			_, err := c.ExecContext(ctx, update)
			return err
		}},
		{"exec with args", func(ctx context.Context, _ *sql.DB, c *sql.Conn) error {
			_, err := c.ExecContext(ctx, q("UPDATE "+b.Table+" SET v = v + 1 WHERE id = $1"), 1)
			return err
		}},
		{"query", func(ctx context.Context, _ *sql.DB, c *sql.Conn) error {
			var v int
			return c.QueryRowContext(ctx, "SELECT v FROM "+b.Table+" WHERE id = 1").Scan(&v)
		}},
		{"transaction", func(ctx context.Context, _ *sql.DB, c *sql.Conn) error {
			tx, err := c.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, update); err != nil {
				return err
			}
			return tx.Commit()
		}},
		{"ping", func(ctx context.Context, _ *sql.DB, c *sql.Conn) error { return c.PingContext(ctx) }},
		{"new connection", func(ctx context.Context, db *sql.DB, _ *sql.Conn) error { return db.PingContext(ctx) }},
	}
}

// Run measures every kind of call against the fault that fault starts (it
// returns the function that ends it), with a deadline of 500 ms, and fails
// t unless every wrapped call returned within MaxLate of its deadline with
// an error matching the context's, of unknown outcome (but a new
// connection, which sent nothing). The raw driver's figures are logged
// beside. Every call, raw ones included, must return once the fault ends.
func (b Bounded) Run(t *testing.T, fault func() (end func())) {
	t.Helper()
	const deadline, patience = 500 * time.Millisecond, 3 * time.Second
	ops := b.ops()
	drivers := map[bool]string{false: b.Raw, true: b.Wrapped}
	type side struct {
		db    *sql.DB
		conns []*sql.Conn
	}
	sides := map[bool]*side{}
	for _, wrapped := range []bool{false, true} {
		sd := &side{db: b.Open(t, drivers[wrapped])}
		for range ops {
			c, err := sd.db.Conn(context.Background())
			if err == nil {
				err = c.PingContext(context.Background())
				t.Cleanup(func() { c.Close() })
			}
			if err != nil {
				t.Fatalf("%s: %v", drivers[wrapped], err)
			}
			sd.conns = append(sd.conns, c)
		}
		sides[wrapped] = sd
	}
	end := fault()
	ended := false
	defer func() {
		if !ended {
			end()
		}
	}()
	results := map[bool][]*Late{}
	for _, wrapped := range []bool{true, false} {
		sd := sides[wrapped]
		for i, op := range ops {
			db := sd.db
			if op.name == "new connection" {
				db = b.Open(t, drivers[wrapped])
			}
			results[wrapped] = append(results[wrapped],
				CallLate(deadline, patience, func(ctx context.Context) error { return op.run(ctx, db, sd.conns[i]) }))
		}
	}
	end()
	ended = true
	for i, op := range ops {
		raw, wr := results[false][i], results[true][i]
		t.Logf("%-14s raw: %-60s wrapped: %v", op.name, raw, wr)
		switch {
		case !wr.Returned || wr.Late > MaxLate:
			t.Errorf("%s: wrapped %v, want within %v of the deadline", op.name, wr, MaxLate)
		case wr.Err == nil:
			t.Errorf("%s: wrapped call succeeded against the fault", op.name)
		case !errors.Is(wr.Err, context.DeadlineExceeded):
			t.Errorf("%s: wrapped error %v does not match context.DeadlineExceeded", op.name, wr.Err)
		case op.name != "new connection" && !b.UnknownOutcome(wr.Err):
			t.Errorf("%s: wrapped error %v not classified an unknown outcome", op.name, wr.Err)
		}
	}
	for _, rs := range results {
		for _, r := range rs {
			select {
			case <-r.Done:
			case <-time.After(30 * time.Second):
				t.Errorf("a call was still blocked 30 s after the fault ended")
			}
		}
	}
}
