package sqlconflict

import (
	"context"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Verified transaction replay (conflict_replay=on). While a transaction
// begun with BeginTx runs, replayLog records each statement the application
// sends in it, with its arguments, and what the application has seen of its
// outcome: a checksum of the rows it read (the prefix it consumed, and
// whether it saw their end), RowsAffected and LastInsertId once it asked for
// them, the error it was handed and went on after. When the server aborts
// the transaction for a conflict a fresh attempt can clear, the wrapper
// rolls it back, begins another with the same options on the same
// connection, and sends the recorded statements again, comparing each
// outcome with the record. Only if all of it is the same does the failing
// statement (or COMMIT) run again, in the new transaction; the application
// never sees the conflict. Anything different, and the application gets the
// original error with the transaction aborted (PostgreSQL) or doomed by the
// guard (MySQL), as without replay. Nothing is sent on the happy path: the
// record costs memory and a hash per row read.

// replayLog is the record of one connection's transaction.
type replayLog struct {
	on   bool   // recording the transaction BeginTx opened
	why  string // why it cannot be replayed, once known; "" while it can
	gen  uint64 // counts transactions: a result read late marks nothing
	ctx  context.Context
	opts driver.TxOptions
	tx   driver.Tx // the base transaction: BeginTx's, or the last replay's
	// replaced: tx is a replay's; the Tx database/sql holds is gone.
	replaced bool
	entries  []replayEntry
	bytes    int
	open     int                // recorded queries whose rows are still open
	attempts int                // replays of this transaction
	checked  bool               // its statements were found fit to be sent again
	failed   time.Time          // its first replayed conflict: the time budget starts there
	endBegin context.CancelFunc // ends the context of the replay's BeginTx
	// changed: in the last replay a statement affected another number of
	// rows than the first time, which the application had not asked for,
	// or a write affected none (metAgain).
	changed bool
	same    int           // replays in a row that met the same unique violation, nothing changed (metAgain)
	wait    time.Duration // the backoff before the last replay, for the Observer
	h       maphash.Hash
}

// replayEntry is one statement sent in the transaction.
type replayEntry struct {
	query    string
	args     []driver.NamedValue
	prepared bool // run as a prepared statement (binary protocol), so replayed as one
	isQuery  bool
	own      bool          // the wrapper's savepoint statement
	errCode  string        // the error the application was handed and went on after
	res      *replayResult // an Exec's result, as handed out
	rows     int           // rows handed to the application
	sum      uint64        // their checksum
	eof      bool          // the application saw the end of the rows
}

// replayDiff is why a replay did not verify: the first difference from the
// record, or a step that failed. It goes to the event, never to the caller.
type replayDiff struct{ why string }

func (d *replayDiff) Error() string { return d.why }

// start begins recording the transaction BeginTx opened with opts on ctx.
func (l *replayLog) start(ctx context.Context, opts driver.TxOptions, tx driver.Tx) {
	l.reset()
	l.on, l.ctx, l.opts, l.tx = true, ctx, opts, tx
}

// reset forgets the transaction, keeping a small array for the next one.
// A log that recorded nothing has nothing to forget: BeginTx, Commit and
// Rollback cost nothing with conflict_replay off.
func (l *replayLog) reset() {
	if !l.on {
		return
	}
	if l.endBegin != nil {
		l.endBegin()
	}
	clear(l.entries)
	if cap(l.entries) > 64 {
		l.entries = nil
	}
	*l = replayLog{gen: l.gen + 1, entries: l.entries[:0], h: l.h}
}

// refuse marks the transaction as not replayable, and frees its record.
func (l *replayLog) refuse(why string) {
	if !l.on || l.why != "" {
		return
	}
	l.why = why
	clear(l.entries)
	l.entries = l.entries[:0]
}

// recording reports whether statements are to be recorded.
func (l *replayLog) recording() bool { return l.on && l.why == "" }

// add records a statement, and returns its entry's number (from 1), or 0.
func (l *replayLog) add(c *call, limit, bytes int) int {
	if !l.recording() {
		return 0
	}
	size := len(c.query)
	args := make([]driver.NamedValue, len(c.args))
	for i, a := range c.args {
		if b, ok := a.Value.([]byte); ok {
			a.Value = append([]byte(nil), b...) // the caller may reuse its buffer
			size += len(b)
		} else if s, ok := a.Value.(string); ok {
			size += len(s)
		} else {
			size += 8
		}
		args[i] = a
	}
	l.bytes += size
	if len(l.entries) >= limit || l.bytes > bytes {
		l.refuse(fmt.Sprintf("past conflict_replay_statements (%d) or conflict_replay_bytes (%d)", limit, bytes))
		return 0
	}
	l.entries = append(l.entries, replayEntry{query: c.query, args: args, prepared: c.prepared, isQuery: c.isQuery})
	return len(l.entries)
}

// own records one of the wrapper's savepoint statements.
func (l *replayLog) own(q string) {
	if l.recording() {
		l.entries = append(l.entries, replayEntry{query: q, own: true})
	}
}

// failedStmt records that the application was handed err for c and the
// transaction went on. A guarded statement goes before the ROLLBACK TO
// that undid it, as it was sent.
func (l *replayLog) failedStmt(c *call, err error, limit, bytes int, rollbackTo string) {
	i := l.add(c, limit, bytes)
	if i == 0 {
		return
	}
	l.entries[i-1].errCode = serverCode(err)
	if n := len(l.entries); c.guarded && n >= 2 && l.entries[n-2].own && l.entries[n-2].query == rollbackTo {
		l.entries[n-2], l.entries[n-1] = l.entries[n-1], l.entries[n-2]
	}
}

// serverCode identifies a server error for comparison: the dialect and the
// code. Errors that are not the server's compare as unequal to anything.
func serverCode(err error) string {
	cl := Classify(err)
	if cl.Dialect == DialectUnknown || cl.Code == "" {
		return "?" + err.Error()
	}
	return strconv.Itoa(int(cl.Dialect)) + ":" + cl.Code
}

// entry returns the live entry numbered i of generation gen, or nil.
func (l *replayLog) entry(gen uint64, i int) *replayEntry {
	if !l.recording() || gen != l.gen || i < 1 || i > len(l.entries) {
		return nil
	}
	return &l.entries[i-1]
}

// result wraps an Exec's result, to learn whether the application asks
// for RowsAffected or LastInsertId.
func (l *replayLog) result(res driver.Result, i int) driver.Result {
	e := l.entry(l.gen, i)
	if e == nil {
		return res
	}
	e.res = &replayResult{res: res}
	return e.res
}

// replayResult is an Exec's result as the application holds it: after a
// replay it answers with the replayed statement's result.
type replayResult struct {
	res            driver.Result
	ra, id         int64
	raSeen, idSeen bool
	raErr, idErr   bool
}

// RowsAffected implements driver.Result.
func (r *replayResult) RowsAffected() (int64, error) {
	n, err := r.res.RowsAffected()
	if !r.raSeen {
		r.raSeen, r.ra, r.raErr = true, n, err != nil
	}
	return n, err
}

// LastInsertId implements driver.Result.
func (r *replayResult) LastInsertId() (int64, error) {
	n, err := r.res.LastInsertId()
	if !r.idSeen {
		r.idSeen, r.id, r.idErr = true, n, err != nil
	}
	return n, err
}

// Unwrap returns the base driver's result.
func (r *replayResult) Unwrap() driver.Result { return r.res }

// row adds a row handed to the application to its query's checksum.
func (l *replayLog) row(gen uint64, i int, dest []driver.Value) {
	if e := l.entry(gen, i); e != nil {
		e.rows++
		e.sum = l.sum(e.sum, dest)
	}
}

// end records that the application saw the end of a query's rows.
func (l *replayLog) end(gen uint64, i int) {
	if e := l.entry(gen, i); e != nil {
		e.eof = true
	}
}

// sum chains a row onto a checksum. maphash's seed is the connection's,
// random, so a difference cannot be crafted to collide.
func (l *replayLog) sum(prev uint64, row []driver.Value) uint64 {
	h := &l.h
	h.Reset()
	var b [17]byte
	binary.LittleEndian.PutUint64(b[:8], prev)
	_, _ = h.Write(b[:8])
	for _, v := range row {
		switch v := v.(type) {
		case nil:
			_ = h.WriteByte(0)
		case int64:
			b[0] = 1
			binary.LittleEndian.PutUint64(b[1:9], uint64(v))
			_, _ = h.Write(b[:9])
		case float64:
			b[0] = 2
			binary.LittleEndian.PutUint64(b[1:9], math.Float64bits(v))
			_, _ = h.Write(b[:9])
		case bool:
			b[0], b[1] = 3, 0
			if v {
				b[1] = 1
			}
			_, _ = h.Write(b[:2])
		case []byte:
			b[0] = 4
			binary.LittleEndian.PutUint64(b[1:9], uint64(len(v)))
			_, _ = h.Write(b[:9])
			_, _ = h.Write(v)
		case string:
			b[0] = 5
			binary.LittleEndian.PutUint64(b[1:9], uint64(len(v)))
			_, _ = h.Write(b[:9])
			_, _ = h.WriteString(v)
		case time.Time:
			_, off := v.Zone()
			b[0] = 6
			binary.LittleEndian.PutUint64(b[1:9], uint64(v.Unix()))
			binary.LittleEndian.PutUint64(b[9:17], uint64(v.Nanosecond())<<32|uint64(uint32(off)))
			_, _ = h.Write(b[:17])
		default:
			_ = h.WriteByte(7)
			_, _ = h.WriteString(fmt.Sprintf("%T %#v", v, v))
		}
	}
	return h.Sum64()
}

// replayCures reports the errors after which the server has aborted the
// transaction for a conflict that a new attempt may not meet: deadlocks,
// serialization and Galera certification failures, a lock timeout that
// ended the transaction, and on PostgreSQL (where any error aborts it) a
// unique violation.
func replayCures(cl Class, d Dialect) bool {
	if cl.Dialect == DialectUnknown {
		return false
	}
	switch cl.Kind {
	case KindDeadlock, KindSerializationFailure:
		return true
	case KindTransactionRollback:
		return cl.Retryable
	case KindLockTimeout:
		return d == DialectPostgres || cl.Scope == ScopeTransaction
	case KindUniqueViolation:
		return d == DialectPostgres
	}
	return false
}

// replay runs the transaction again after cl aborted it, up to its entry
// upTo (the failing statement is not among them), and reports whether all
// it re-sent came out as the application had seen: then the caller runs the
// failing statement, or COMMIT, again. ended: the transaction is already
// over (a failed COMMIT); otherwise it is rolled back first. A replay that
// does not verify leaves the transaction as the conflict left it, and
// c.first is the application's error.
//
// A statement (or PREPARE) that lost the connection is replayed the same
// way on a new connection (move.go): nothing of the transaction committed.
func (ic *interceptor) replay(ctx context.Context, c *call, cl Class, upTo int, openRows int, ended bool) bool {
	end := ended
	l := &ic.rp
	lost := l.on && ic.lostConn(cl)
	if !l.on || !lost && !replayCures(cl, ic.cfg.Dialect) {
		return false
	}
	if l.why != "" {
		ic.replayEvent(ctx, EventReplayFailed, cl, l.attempts+1, 0, l.why)
		return false
	}
	switch {
	case ic.tx.doomed != nil || ic.tx.unended || ic.tx.unsure || ic.tx.fromText || ic.sess.chains:
		l.refuse("the transaction's state is not the wrapper's to repeat")
	case l.open != openRows:
		l.refuse("rows of an earlier query are still open")
	case lost && ended:
		l.refuse("the connection was lost at COMMIT: its outcome is unknown")
	case lost && openRows != 0:
		l.refuse("the connection was lost while rows were read")
	case lost && ic.sess.touched:
		l.refuse("the session was changed in a way a new connection would not repeat")
	case lost && l.dependsOnSession(c.query):
		l.refuse("a statement reads the session's own history (LAST_INSERT_ID, currval, ...), which a new connection lacks")
	case !lost && ic.cfg.Dialect == DialectPostgres && l.appSavepoint():
		// The error aborted only what followed the application's
		// savepoint, which ROLLBACK TO undoes: the application handles
		// it, in the transaction it has (a replay that did not verify
		// could not give it back with its savepoints).
		l.refuse("the application's savepoint can undo the error")
	}
	if l.why != "" {
		ic.replayEvent(ctx, EventReplayFailed, cl, l.attempts+1, 0, l.why)
		return false
	}
	if l.failed.IsZero() {
		l.failed = time.Now()
	}
	moved := false // to a new connection, in this replay
	for {
		if l.attempts >= ic.cfg.Retries || ic.cfg.RetryTimeout > 0 && time.Since(l.failed) >= ic.cfg.RetryTimeout {
			ic.replayEvent(ctx, EventReplayFailed, cl, l.attempts+1, 0, "attempts or time spent (conflict_retries, conflict_retry_timeout)")
			ic.replayGiveUp(ctx, end, moved)
			return false
		}
		l.attempts++
		wait := backoff(l.attempts-1, ic.cfg.Backoff, ic.cfg.MaxBackoff)
		if cl.Kind == KindUniqueViolation {
			// Raised only once the conflicting row is committed, which
			// a replay a moment later sees: short waits, enough to let
			// a storm's winner of the moment commit (metAgain).
			wait = min(wait, 4*ic.cfg.Backoff)
		}
		if t := ic.cfg.RetryTimeout; t > 0 {
			wait = min(wait, t-time.Since(l.failed))
		}
		l.wait = wait
		if sleep(ctx, wait) != nil {
			ic.replayEvent(ctx, EventReplayFailed, cl, l.attempts, 0, "the context ended")
			ic.replayGiveUp(ctx, end, moved)
			return false
		}
		var err error
		dialed := false
		if lost {
			// The transaction went with the connection: begin it on a
			// new one, with nothing to roll back. A server that does
			// not take the connection yet (a restart, a failover) is
			// tried again, as a conflict is.
			err, dialed = ic.moveConn(ctx), true
			if err == nil {
				moved, ended, dialed = true, true, false
			}
		}
		if err == nil {
			err = ic.replayOnce(ctx, c, upTo, ended)
			ended = false
		}
		if err == nil {
			if openRows == 0 {
				// Otherwise once the open query's rows are checked too
				// (rows.go, replayed).
				ic.replayEvent(ctx, EventReplay, cl, l.attempts, upTo, "")
			}
			c.replayed = true
			return true
		}
		if rc := Classify(err); !errors.As(err, new(*replayDiff)) {
			if lost = ic.lostConn(rc) || dialed && rc.Kind == KindUnavailable; lost || replayCures(rc, ic.cfg.Dialect) {
				cl = rc
				continue // the replay met a conflict of its own, or lost its connection: once more
			}
		}
		ic.replayEvent(ctx, EventReplayFailed, cl, l.attempts, upTo, err.Error())
		if moved {
			ic.dropMoved()
		} else {
			ic.replayUndo(ctx, c.first, end)
		}
		return false
	}
}

// dropMoved ends a replay on a new connection that did not verify: the
// new connection is closed, as the lost one was, so that the application's
// next statements fail as they would have on the lost one, and none runs
// outside its transaction.
func (ic *interceptor) dropMoved() {
	ic.rp.refuse("a replay did not verify")
	ic.rp.tx = nil
	ic.moved.close()
	_ = ic.conn.Close()
	ic.sess.discard = true
}

// replayOnce ends the aborted transaction, begins a new one and sends the
// first upTo entries again, comparing each with the record.
func (ic *interceptor) replayOnce(ctx context.Context, c *call, upTo int, ended bool) error {
	l := &ic.rp
	l.changed = false
	if !ended && l.tx != nil {
		if err := ic.replayRollback(ctx); err != nil {
			return &replayDiff{"ROLLBACK: " + err.Error()}
		}
	}
	l.tx = nil
	if !l.checked {
		// Asked now, outside the aborted transaction: what the schema
		// says of the tables is read on this connection.
		l.checked = true
		if why := ic.replayChecks(ctx, c, upTo); why != "" {
			return &replayDiff{why}
		}
	}
	if err := ic.replayBegin(ctx); err != nil {
		return &replayDiff{"BEGIN: " + err.Error()}
	}
	for i := range l.entries[:upTo] {
		if err := ic.resend(ctx, &l.entries[i], i+1); err != nil {
			return err
		}
	}
	return nil
}

// resend sends one recorded statement again and compares its outcome with
// what the application saw. It returns a replayDiff for a difference, the
// server's error for a failure that is not a recorded one.
func (ic *interceptor) resend(ctx context.Context, e *replayEntry, n int) error {
	w := ic.sock.watch(ctx)
	err := ic.resend1(ctx, e, n)
	return ic.settle(w, err)
}

func (ic *interceptor) resend1(ctx context.Context, e *replayEntry, n int) error {
	diff := func(what string) error {
		return &replayDiff{"statement " + strconv.Itoa(n) + ": " + what}
	}
	var st driver.Stmt
	if e.prepared {
		var err error
		if st, err = prepareConn(ctx, ic.conn, e.query); err != nil {
			return ic.resendErr(e, err, diff)
		}
		defer st.Close()
	}
	if !e.isQuery {
		var res driver.Result
		var err error
		switch {
		case st != nil:
			sx, ok := st.(driver.StmtExecContext)
			if !ok {
				return diff("the statement has no ExecContext")
			}
			res, err = sx.ExecContext(ctx, e.args)
		default:
			ex, ok := ic.conn.(driver.ExecerContext)
			if !ok {
				return diff("the connection has no ExecContext")
			}
			res, err = ex.ExecContext(ctx, e.query, e.args)
		}
		if err != nil || e.errCode != "" {
			return ic.resendErr(e, err, diff)
		}
		if r := e.res; r != nil {
			if r.raSeen {
				if n, err := res.RowsAffected(); (err != nil) != r.raErr || n != r.ra {
					return diff(fmt.Sprintf("RowsAffected %d, the application saw %d", n, r.ra))
				}
			}
			if r.idSeen {
				if n, err := res.LastInsertId(); (err != nil) != r.idErr || n != r.id {
					return diff(fmt.Sprintf("LastInsertId %d, the application saw %d", n, r.id))
				}
			}
			if !ic.rp.changed {
				// Not a difference the application saw, but the world
				// moved since the first attempt, or may be moving: a
				// write that found no rows may have waited for another
				// transaction that took them, the winner of the moment
				// in a delete-then-insert storm, which a later replay
				// can follow (metAgain).
				was, werr := r.res.RowsAffected()
				now, nerr := res.RowsAffected()
				ic.rp.changed = was != now || (werr != nil) != (nerr != nil) || nerr == nil && now == 0
			}
			r.res = res
		}
		return nil
	}
	var rows driver.Rows
	var err error
	switch {
	case st != nil:
		sq, ok := st.(driver.StmtQueryContext)
		if !ok {
			return diff("the statement has no QueryContext")
		}
		rows, err = sq.QueryContext(ctx, e.args)
	default:
		qc, ok := ic.conn.(driver.QueryerContext)
		if !ok {
			return diff("the connection has no QueryContext")
		}
		rows, err = qc.QueryContext(ctx, e.query, e.args)
	}
	if err != nil || e.errCode != "" {
		return ic.resendErr(e, err, diff)
	}
	if err := ic.rp.skip(rows, e.rows, e.sum, e.eof, make([]driver.Value, len(rows.Columns())), diff); err != nil {
		_ = rows.Close()
		return err
	}
	return rows.Close()
}

// resendErr compares a re-sent statement's error with the recorded one.
func (ic *interceptor) resendErr(e *replayEntry, err error, diff func(string) error) error {
	switch {
	case err == nil:
		return diff("succeeded; the application had been handed an error")
	case e.errCode == "":
		return err
	case serverCode(err) != e.errCode:
		return diff("failed with " + serverCode(err) + "; the application had been handed " + e.errCode)
	}
	return nil
}

// skip reads the first n rows of a replayed query, which must sum to what
// the application saw (and end there if it saw them end).
func (l *replayLog) skip(rows driver.Rows, n int, want uint64, eof bool, dest []driver.Value, diff func(string) error) error {
	var sum uint64
	for i := 0; i < n; i++ {
		if err := rows.Next(dest); err != nil {
			if err == io.EOF {
				return diff(fmt.Sprintf("%d rows, the application had read %d", i, n))
			}
			return err
		}
		sum = l.sum(sum, dest)
	}
	if sum != want {
		return diff("the rows differ from those the application read")
	}
	if eof {
		switch err := rows.Next(dest); {
		case err == nil:
			return diff(fmt.Sprintf("more than the %d rows the application read to their end", n))
		case err != io.EOF:
			return err
		}
	}
	return nil
}

// replayUndo leaves the transaction as the conflict (orig) had left it,
// after a replay that did not verify: on MySQL rolled back, for the guard
// to doom; on PostgreSQL aborted, so that the driver and the server answer
// the rest as they would have (lib/pq's Commit its ErrInFailedTransaction,
// the server 25P02); after a failed COMMIT (ended), over.
func (ic *interceptor) replayUndo(ctx context.Context, orig error, ended bool) {
	l := &ic.rp
	l.refuse("a replay did not verify")
	if l.tx != nil && (ended || ic.guards()) {
		_ = ic.replayRollback(ctx)
	}
	if ended || ic.guards() {
		return
	}
	if l.tx == nil {
		// Rolled back, and no transaction is open: begin one to abort.
		if ic.replayBegin(ctx) != nil {
			ic.tx.active, ic.tx.doomed = true, orig // nothing may run on as if in the transaction
			return
		}
	}
	err := ic.exec(ctx, "DO $$BEGIN RAISE EXCEPTION 'sqlconflict: transaction replay not verified; the transaction stays aborted'; END$$")
	if err == nil || Classify(err).Dialect == DialectUnknown {
		ic.tx.active, ic.tx.doomed = true, orig
		ic.sess.discard = true
	}
	ic.tx.failed = true
}

// appSavepoint reports whether the application set a savepoint of its own
// in the transaction.
func (l *replayLog) appSavepoint() bool {
	for i := range l.entries {
		if e := &l.entries[i]; !e.own && parseStmt(e.query) == stmtSavepoint {
			if w, _ := firstWord(e.query); strings.EqualFold(w, "SAVEPOINT") {
				return true
			}
		}
	}
	return false
}

// replayGiveUp ends the replays when their attempts, their time or the
// context ran out, a conflict having aborted the last one: that leaves the
// transaction as the first conflict did, except after a failed COMMIT, when
// the application's transaction is over and a replay's must not outlive it.
func (ic *interceptor) replayGiveUp(ctx context.Context, ended, moved bool) {
	l := &ic.rp
	if moved {
		ic.dropMoved()
		return
	}
	l.refuse("the replays gave up")
	if ended && l.replaced && l.tx != nil {
		_ = ic.replayRollback(ctx)
	}
}

// replayRollback rolls back the replay's base transaction (l.tx), bounded by
// ctx; if that fails the connection is discarded. lib/pq's transaction is
// its connection, and must end through its Rollback, which stops the
// goroutine lib/pq ties to it; the watchdog bounds that, when the wrapper
// dials lib/pq's sockets. The Rollback of go-sql-driver/mysql takes no
// context, pgx's the one its BeginTx had: for them ROLLBACK is sent as one
// of the wrapper's own statements, which ctx bounds, and the driver's Tx,
// which holds nothing the connection needs, is dropped.
func (ic *interceptor) replayRollback(ctx context.Context) error {
	l := &ic.rp
	tx := l.tx
	l.tx = nil
	var err error
	if any(tx) == any(ic.conn) || ic.sock != nil {
		w := ic.sock.watch(ctx)
		err = ic.settle(w, tx.Rollback())
	} else {
		err = ic.exec(ctx, "ROLLBACK")
	}
	if err != nil {
		ic.sess.discard = true
	}
	return err
}

// replayBegin begins the replay's base transaction (l.tx) with the
// application's options; if that fails the connection is discarded. The
// base driver may tie the transaction to the context BeginTx gets for as
// long as it lasts (lib/pq cancels it when that context ends), so that
// context is the application's BeginTx context, and the replay's is ended
// only with the transaction (reset). The caller's context bounds the round
// trip: it ends BeginTx's context too while BeginTx runs (go-sql-driver/mysql
// and pgx watch only that one), and a BEGIN it ended is a failed one, even if
// the driver returned a transaction.
func (ic *interceptor) replayBegin(ctx context.Context) error {
	l := &ic.rp
	bc, ok := ic.conn.(driver.ConnBeginTx)
	if !ok {
		return errors.New("the base connection has no BeginTx")
	}
	if l.endBegin != nil {
		l.endBegin()
	}
	bctx, cancel := context.WithCancel(l.ctx)
	l.endBegin = cancel
	stop := context.AfterFunc(ctx, cancel)
	w := ic.sock.watch(ctx)
	tx, err := bc.BeginTx(bctx, l.opts)
	if !stop() && (err == nil || errors.Is(err, context.Canceled)) {
		// Ended by ctx. A Rollback could block as long as the server
		// does: the connection is discarded instead, which ends the
		// transaction if one began.
		err = context.Cause(ctx)
	}
	if err = ic.settle(w, err); err != nil {
		ic.sess.discard = true
		return err
	}
	// The wrapper's view of the transaction (its savepoints, its reads)
	// stays: the replay sends the same statements, its own included.
	l.tx, l.replaced = tx, true
	return nil
}

// replayChecks returns why the statements cannot be sent again, or "".
func (ic *interceptor) replayChecks(ctx context.Context, c *call, upTo int) string {
	l := &ic.rp
	if c.query != "" && !ic.resendable(ctx, c.query) {
		return "the failing statement cannot be sent again (not one plain statement, or effects a rollback keeps)"
	}
	for i := range l.entries[:upTo] {
		if e := &l.entries[i]; !e.own && !ic.resendable(ctx, e.query) {
			return "statement " + strconv.Itoa(i+1) + " cannot be sent again (not one plain statement, or effects a rollback keeps)"
		}
	}
	return ""
}

// resendable reports whether a recorded statement may be sent again: one
// plain statement (a SELECT, a DML statement, a savepoint of the
// application's) whose effects a rollback undoes whole, as for a statement
// retry (rerunnable).
func (ic *interceptor) resendable(ctx context.Context, q string) bool {
	switch k := parseStmt(q); k {
	case stmtSavepoint, stmtRollbackTo:
		return lexStmt(q, ic.cfg.Dialect).single
	default:
		return ic.rerunnable(ctx, &call{query: q, kind: k})
	}
}

// prepareConn prepares q on conn, with the context if it can.
func prepareConn(ctx context.Context, conn driver.Conn, q string) (driver.Stmt, error) {
	if pc, ok := conn.(driver.ConnPrepareContext); ok {
		return pc.PrepareContext(ctx, q)
	}
	return conn.Prepare(q)
}

// baseTx returns the base transaction to commit or roll back: the one a
// replay began, if there was one, else tx.
func (ic *interceptor) baseTx(tx driver.Tx) driver.Tx {
	if ic.rp.replaced && ic.rp.tx != nil {
		return ic.rp.tx
	}
	return tx
}

// metAgain reports a unique violation that the statement met again after
// a replay that verified and in which every statement affected the same
// rows as the first time: the conflicting row was committed before, and
// nothing the transaction did depends on it (a blind INSERT). That is the
// data's answer, not a race's; every further replay would get it too, for
// as long as the retry budget lasts. The application gets its first error,
// with the transaction aborted by the second, as it was by the first. A
// replay whose statements found the rows changed (Airflow's DELETE now
// deleting the winner's row), or a write of it that found none (the DELETE
// that waited for the winner of the moment, whose row it then no longer
// sees), is a race that may still be running, and goes on within the
// retry budget.
func (ic *interceptor) metAgain(c *call, cl Class) bool {
	l := &ic.rp
	if !c.replayed || cl.Kind != KindUniqueViolation || l.changed {
		l.same = 0
		return false
	}
	l.same++
	return l.same >= uniqueAgain
}

// uniqueAgain is how many replays in a row may meet the same unique
// violation, with nothing changed, before it is taken as the data's
// answer: in a storm (Airflow's delete-then-insert, two dozen workers on
// one key) a replay can meet a new winner's row each time while its own
// statements affect the same rows.
const uniqueAgain = 12

// replayStmt replays the transaction after a statement's conflict: every
// entry before it (the statement is not recorded yet, or is the query
// whose rows failed, the last entry).
func (ic *interceptor) replayStmt(ctx context.Context, c *call, cl Class) bool {
	l := &ic.rp
	upTo, open := len(l.entries), 0
	if c.rec > 0 {
		if c.gen != l.gen || c.rec != len(l.entries) {
			l.refuse("statements followed the query whose rows failed")
		}
		upTo, open = c.rec-1, 1
	}
	if !ic.replay(ctx, c, cl, upTo, open, false) {
		return false
	}
	c.verify = c.rec > 0
	return true
}

// replayCommit replays the transaction after its COMMIT failed with err,
// and commits the replay. It returns nil once a replay committed, else the
// error to handle as COMMIT's: the original one, unless a replay's own
// COMMIT failed for another reason; and whether a replay ran (the
// transaction id learnt before the first COMMIT is no longer its).
func (ic *interceptor) replayCommit(ctx context.Context, err error) (error, bool) {
	c := call{first: err}
	for {
		if !ic.replay(ctx, &c, Classify(err), len(ic.rp.entries), 0, true) {
			if c.replayed {
				return c.first, true
			}
			return err, false
		}
		ic.endTx(ic.sess.chains)
		w := ic.sock.watch(ctx)
		err = ic.settle(w, ic.rp.tx.Commit())
		ic.rp.tx = nil // over, committed or not
		if err == nil {
			return nil, true
		}
		err = ic.notSent(err, true)
		if cl := Classify(err); !replayCures(cl, ic.cfg.Dialect) {
			return err, true
		} else if ic.metAgain(&c, cl) {
			// A deferred constraint's violation at COMMIT, again.
			return c.first, true
		}
	}
}

// replayPrepare replays the transaction after a PREPARE in it failed with
// err for a conflict, and prepares query again. It returns err itself when
// that does not work out.
func (ic *interceptor) replayPrepare(ctx context.Context, conn driver.ConnPrepareContext, query string, err error) (driver.Stmt, error) {
	c := call{query: query, first: err}
	for ic.replay(ctx, &c, Classify(err), len(ic.rp.entries), 0, false) {
		w := ic.sock.watch(ctx)
		st, perr := current(ic, conn).PrepareContext(ctx, query)
		if perr = ic.settle(w, perr); perr == nil {
			return st, nil
		}
		if !replayCures(Classify(perr), ic.cfg.Dialect) {
			return nil, perr
		}
		err = perr
	}
	if c.replayed {
		return nil, c.first
	}
	return nil, err
}
