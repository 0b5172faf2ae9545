package sqlconflict

import (
	"context"
	"database/sql/driver"
	"io"
)

// rowsKey marks the context sqlmw passes to RowsNext and RowsClose for a
// query the wrapper follows.
type rowsKey struct{}

// queryState follows a query whose first Next may still fail with an error
// worth retrying: PostgreSQL reports lock waits, deadlocks and serialization
// failures of a query there, not when it returns the rows. As long as no row
// reached the caller, the query can be run again.
type queryState struct {
	ic      *interceptor
	rows    driver.Rows // the current attempt's rows; nil once closed
	call    queryCall
	rerun   bool // the query may still be run again
	guarded bool
	attempt int
	handed  bool // a row reached the caller
	blind   bool // a re-read that may be blind (see isolation.go)
}

// queryCall is one query on the base connection or statement, kept as a
// value rather than a closure: a closure that might be stored for a rerun
// would be heap-allocated on every query, followed or not.
type queryCall struct {
	conn  driver.QueryerContext   // set for a query on the connection
	stmt  driver.StmtQueryContext // set for a prepared statement
	query string
	args  []driver.NamedValue
}

func (c queryCall) do(ctx context.Context) (driver.Rows, error) {
	if c.stmt != nil {
		return c.stmt.QueryContext(ctx, c.args)
	}
	return c.conn.QueryContext(ctx, c.query, c.args)
}

// query1 runs a query and decides whether to follow its rows.
func query1(ic *interceptor, ctx context.Context, call queryCall, hasArgs bool) (context.Context, driver.Rows, error) {
	var info stmtInfo
	query := call.query
	rows, err := run(ic, ctx, query, hasArgs, call.do, &info)
	if err != nil {
		return ctx, nil, err
	}
	retry := info.guarded || (!ic.tx.active && ic.cfg.Retries > 0 && isWrite(info.kind, query))
	blind := ic.rereadMayBeBlind(info.kind, query)
	if !retry && !blind {
		return ctx, rows, nil
	}
	qs := &queryState{ic: ic, rows: rows, call: call, rerun: retry, guarded: info.guarded, blind: blind}
	return context.WithValue(ctx, rowsKey{}, qs), rows, nil
}

// RowsNext implements sqlmw.Interceptor.
func (ic *interceptor) RowsNext(ctx context.Context, rows driver.Rows, dest []driver.Value) error {
	if qs, ok := ctx.Value(rowsKey{}).(*queryState); ok {
		return qs.next(ctx, dest)
	}
	err := rows.Next(dest)
	if err != nil && err != io.EOF {
		ic.txFailed(ctx, err, Classify(err))
		return ic.wrap(err)
	}
	return err
}

// RowsClose implements sqlmw.Interceptor.
func (ic *interceptor) RowsClose(ctx context.Context, rows driver.Rows) error {
	if qs, ok := ctx.Value(rowsKey{}).(*queryState); ok {
		if qs.rows == nil {
			return nil
		}
		err := qs.rows.Close()
		qs.rows = nil
		return err
	}
	return rows.Close()
}

func (qs *queryState) next(ctx context.Context, dest []driver.Value) error {
	ic := qs.ic
	for {
		var err error
		if qs.rows == nil {
			if !qs.rerun {
				return io.EOF // closed after an error that was already returned
			}
			qs.rows, err = qs.call.do(ctx)
		}
		if err == nil {
			if err = qs.rows.Next(dest); err == nil {
				qs.handed = true
				return nil
			}
			if err == io.EOF {
				if !qs.handed && qs.blind {
					return ic.blindReread(ctx)
				}
				return err
			}
			// Close before the wrapper talks to the server again: the base
			// connection is not free while a result set is open.
			_ = qs.rows.Close()
			qs.rows = nil
		}
		again, out := ic.failed(ctx, err, qs.guarded, qs.attempt, !qs.handed && qs.rerun)
		if !again {
			qs.rerun = false
			return out
		}
		qs.attempt++
	}
}
