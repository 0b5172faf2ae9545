package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"time"
)

// rowsState follows a query's rows, so that an error reported after the
// query returned is handled as one reported by the query itself, wherever
// it surfaces: at Next (PostgreSQL reports lock waits, deadlocks and
// serialization failures of a query there, and MySQL a deadlock after the
// first rows of a locking read), at Close (MySQL's driver reads the rest of
// the result there) or at NextResultSet. As long as no row reached the
// caller, an autocommit query that provably had no effect can be run again;
// a failure in a transaction dooms it on every path alike.
//
// It is the driver.Rows that sqlmw wraps, and implements every optional
// rows interface by forwarding to the current attempt's rows; sqlmw reads
// which of them to offer from the original rows through Unwrap. One lives
// in each interceptor, so following a query allocates nothing.
type rowsState struct {
	ic      *interceptor
	orig    driver.Rows // the first attempt's rows, for Unwrap
	rows    driver.Rows // the current attempt's rows; nil once closed
	stmt    driver.Stmt // a statement the wrapper prepared for a re-read, closed with the rows
	q       queryCall
	c       call
	attempt int
	handed  bool      // a row reached the caller
	reread  bool      // the first read after a unique violation (isolation.go)
	done    bool      // the rows may not be run again
	dog     *watchdog // bounds the query by its context until the rows close (sock.go)
}

// queryCall is one query on the base connection or statement.
type queryCall struct {
	conn  driver.QueryerContext   // set for a query on the connection
	stmt  driver.StmtQueryContext // set for a prepared statement
	query string
	args  []driver.NamedValue
}

// do runs the query on ic's base connection: the one sqlmw handed the
// hook, or the one the connection moved to (move.go).
func (c queryCall) do(ic *interceptor, ctx context.Context) (driver.Rows, error) {
	switch {
	case ic.moved != nil && c.stmt != nil:
		return ic.movedQuery(ctx, c.stmt, c.query, c.args)
	case c.stmt != nil:
		return c.stmt.QueryContext(ctx, c.args)
	}
	return current(ic, c.conn).QueryContext(ctx, c.query, c.args)
}

// query1 runs a query and follows its rows.
func query1(ic *interceptor, ctx context.Context, q queryCall, hasArgs bool) (context.Context, driver.Rows, error) {
	c := call{query: q.query, hasArgs: hasArgs, args: q.args, prepared: q.stmt != nil, isQuery: true}
	s := ic.sock
	w := ic.sock.watch(ctx) // rows read from the socket until they close
	rows, err := run(ic, ctx, &c, func(ctx context.Context) (driver.Rows, error) { return q.do(ic, ctx) })
	if err != nil {
		return ctx, nil, ic.settle(w, err)
	}
	if ic.sock != s {
		// A replay moved the connection (move.go): the rows come from
		// the new one's socket.
		w.done(nil)
		w = ic.sock.watch(ctx)
	}
	rs := &ic.rows
	if rs.ic != nil {
		rs = new(rowsState) // the slot's query is still open
	}
	*rs = rowsState{ic: ic, orig: rows, rows: rows, q: q, c: c, reread: ic.rereadCheck(&c), dog: w}
	if c.rec > 0 {
		ic.rp.open++
		if rs.reread {
			ic.rp.refuse("a blind re-read check")
		}
	}
	return ctx, rs, nil
}

// RowsNext implements sqlmw.Interceptor.
func (ic *interceptor) RowsNext(ctx context.Context, rows driver.Rows, dest []driver.Value) error {
	if rs, ok := rows.(*rowsState); ok {
		return rs.next(ctx, dest)
	}
	return rows.Next(dest)
}

// RowsClose implements sqlmw.Interceptor.
func (ic *interceptor) RowsClose(ctx context.Context, rows driver.Rows) error {
	if rs, ok := rows.(*rowsState); ok {
		return rs.close(ctx)
	}
	return rows.Close()
}

func (rs *rowsState) next(ctx context.Context, dest []driver.Value) error {
	ic := rs.ic
	for {
		var err error
		if rs.rows == nil {
			if rs.done {
				return io.EOF // closed after an error that was already returned
			}
			rs.rows, err = rs.q.do(rs.ic, ctx)
			if err == nil && rs.c.verify {
				rs.c.verify = false
				if err = rs.verify(dest); err != nil && errors.As(err, new(*replayDiff)) {
					return rs.replayFailed(ctx, err)
				} else if err == nil {
					rs.replayed(ctx)
				}
			}
		}
		if err == nil {
			if err = rs.rows.Next(dest); err == nil {
				rs.handed = true
				if rs.c.rec > 0 {
					ic.rp.row(rs.c.gen, rs.c.rec, dest)
				}
				return nil
			}
			if err == io.EOF {
				if rs.c.rec > 0 {
					ic.rp.end(rs.c.gen, rs.c.rec)
				}
				if rs.reread && !rs.handed {
					rs.reread = false
					return ic.blindReread(ctx, rs, dest)
				}
				return err
			}
			// Close before the wrapper talks to the server again: the base
			// connection is not free while a result set is open.
			_ = rs.closeRows()
		}
		if rs.dog.cuts(err) {
			rs.done = true
			ic.stmtFailed(ctx, err, Classify(err))
			return ic.cutErr(rs.dog, err)
		}
		again, out := ic.failed(ctx, &rs.c, err, rs.attempt, !rs.handed && !rs.done)
		if !again {
			rs.done = true
			// An error among the rows, which the record does not hold.
			ic.rp.refuse("a query's rows ended in an error the application was handed")
			return out
		}
		rs.attempt++
	}
}

// close closes the current rows, handling an error the base driver reports
// only now (go-sql-driver/mysql reads the rest of the result in Close).
func (rs *rowsState) close(ctx context.Context) error {
	ic := rs.ic
	if ic == nil {
		return nil // a slot already freed
	}
	err := rs.closeRows()
	failed := err != nil && !rs.done
	if failed && rs.c.rec > 0 && ic.rp.on && !rs.dog.cuts(err) {
		if err = rs.replayClose(ctx, err); err == nil {
			failed = false
		} else if errors.As(err, new(*replayDiff)) {
			err = rs.c.first
		}
	}
	dog := rs.dog
	if rs.c.rec > 0 && rs.c.gen == ic.rp.gen {
		ic.rp.open--
		rs.c.rec = 0
	}
	if rs == &ic.rows {
		ic.rows = rowsState{} // free the slot
	}
	if dog.done(err) {
		return ic.cutErr(dog, err)
	}
	if failed {
		ic.stmtFailed(ctx, err, ic.scope(ctx, Classify(err)))
		return ic.wrap(err)
	}
	return err
}

func (rs *rowsState) closeRows() error {
	if rs.rows == nil {
		return nil
	}
	err := rs.rows.Close()
	rs.rows = nil
	if rs.stmt != nil {
		rs.stmt.Close()
		rs.stmt = nil
	}
	return err
}

// current returns the rows the optional interfaces forward to.
func (rs *rowsState) current() driver.Rows {
	if rs.rows != nil {
		return rs.rows
	}
	return rs.orig
}

// Unwrap implements sqlmw.RowsUnwrapper.
func (rs *rowsState) Unwrap() driver.Rows { return rs.orig }

// Columns implements driver.Rows.
func (rs *rowsState) Columns() []string { return rs.current().Columns() }

// Close implements driver.Rows. sqlmw calls RowsClose instead.
func (rs *rowsState) Close() error { return rs.close(context.Background()) }

// Next implements driver.Rows. sqlmw calls RowsNext instead.
func (rs *rowsState) Next(dest []driver.Value) error { return rs.next(context.Background(), dest) }

// HasNextResultSet implements driver.RowsNextResultSet.
func (rs *rowsState) HasNextResultSet() bool {
	r, ok := rs.current().(driver.RowsNextResultSet)
	return ok && r.HasNextResultSet()
}

// NextResultSet implements driver.RowsNextResultSet. An error here (the
// second statement of a multi-statement query, or of a procedure) is one of
// the transaction's like any other.
func (rs *rowsState) NextResultSet() error {
	r, ok := rs.current().(driver.RowsNextResultSet)
	if !ok {
		return io.EOF
	}
	rs.handed = true // a new result set: this query is not run again
	err := r.NextResultSet()
	if err != nil && err != io.EOF {
		rs.ic.stmtFailed(context.Background(), err, rs.ic.scope(context.Background(), Classify(err)))
		return rs.ic.wrap(err)
	}
	return err
}

// ColumnTypeScanType implements driver.RowsColumnTypeScanType.
func (rs *rowsState) ColumnTypeScanType(i int) reflect.Type {
	if r, ok := rs.current().(driver.RowsColumnTypeScanType); ok {
		return r.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

// ColumnTypeDatabaseTypeName implements driver.RowsColumnTypeDatabaseTypeName.
func (rs *rowsState) ColumnTypeDatabaseTypeName(i int) string {
	if r, ok := rs.current().(driver.RowsColumnTypeDatabaseTypeName); ok {
		return r.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

// ColumnTypeLength implements driver.RowsColumnTypeLength.
func (rs *rowsState) ColumnTypeLength(i int) (int64, bool) {
	if r, ok := rs.current().(driver.RowsColumnTypeLength); ok {
		return r.ColumnTypeLength(i)
	}
	return 0, false
}

// ColumnTypeNullable implements driver.RowsColumnTypeNullable.
func (rs *rowsState) ColumnTypeNullable(i int) (bool, bool) {
	if r, ok := rs.current().(driver.RowsColumnTypeNullable); ok {
		return r.ColumnTypeNullable(i)
	}
	return false, false
}

// ColumnTypePrecisionScale implements driver.RowsColumnTypePrecisionScale.
func (rs *rowsState) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if r, ok := rs.current().(driver.RowsColumnTypePrecisionScale); ok {
		return r.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

// verify reads again, after a replay, the rows of this query that the
// application had read, which must be the same (replay.go).
func (rs *rowsState) verify(dest []driver.Value) error {
	l := &rs.ic.rp
	e := l.entry(rs.c.gen, rs.c.rec)
	if e == nil {
		return &replayDiff{"the query's record is gone"}
	}
	n, sum := e.rows, e.sum
	err := l.skip(rs.rows, n, sum, false, dest, func(what string) error {
		return &replayDiff{"the open query: " + what}
	})
	if err != nil {
		_ = rs.closeRows()
	}
	return err
}

// replayed reports the replay whose open query's rows checked out.
func (rs *rowsState) replayed(ctx context.Context) {
	rs.ic.replayEvent(ctx, EventReplay, Classify(rs.c.first), rs.ic.rp.attempts, rs.c.rec-1, "")
}

// replayFailed ends the rows after a replay that did not verify, with the
// transaction as the conflict left it and the application's error.
func (rs *rowsState) replayFailed(ctx context.Context, diff error) error {
	ic := rs.ic
	_ = rs.closeRows()
	rs.done = true
	ic.replayEvent(ctx, EventReplayFailed, Classify(rs.c.first), ic.rp.attempts, rs.c.rec-1, diff.Error())
	ic.replayUndo(ctx, rs.c.first, false)
	err := rs.c.first
	ic.stmtFailed(ctx, err, ic.scope(ctx, Classify(err)))
	return ic.wrap(err)
}

// replayClose replays the transaction after the rows' Close reported a
// conflict (go-sql-driver/mysql reads the rest of a result there): the
// query is run again, the rows the application read are checked, and the
// rest is read and closed. It returns nil once that worked, a replayDiff
// (the transaction then left as the conflict left it) or the error to
// handle as Close's.
func (rs *rowsState) replayClose(ctx context.Context, err error) error {
	ic := rs.ic
	if rs.c.first == nil {
		rs.c.first, rs.c.failed = err, time.Now()
	}
	for ic.replayStmt(ctx, &rs.c, ic.scope(ctx, Classify(err))) {
		rs.c.verify = false
		rows, qerr := rs.q.do(rs.ic, ctx)
		if qerr != nil {
			err = qerr
			continue
		}
		rs.rows = rows
		if verr := rs.verify(make([]driver.Value, len(rows.Columns()))); verr != nil {
			if errors.As(verr, new(*replayDiff)) {
				_ = rs.replayFailed(ctx, verr)
				return verr
			}
			err = verr
			continue
		}
		rs.replayed(ctx)
		if err = rs.closeRows(); err == nil {
			return nil
		}
	}
	if rs.c.replayed {
		return rs.c.first
	}
	return err
}
