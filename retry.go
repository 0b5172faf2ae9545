package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"math/rand/v2"
	"time"
)

// call is one statement as run sees it.
type call struct {
	query   string
	hasArgs bool
	kind    stmtKind
	guarded bool      // runs behind the wrapper's savepoint
	several uint8     // 0: not looked at yet; 1: one statement (or not several for certain); 2: several (multi)
	first   error     // the first attempt's error
	failed  time.Time // when the first attempt failed: the retries' time budget starts there

	// For conflict_replay (replay.go): what the statement sends, its entry
	// in the transaction's record (from 1; 0 if not recorded) and that
	// record's generation, and whether a replay ran for it.
	args     []driver.NamedValue
	prepared bool
	isQuery  bool
	rec      int
	gen      uint64
	replayed bool
	verify   bool // a replay ran: the reopened rows' prefix is checked (rows.go)
}

// run executes one statement (Exec or Query, direct or prepared) under the
// wrapper's policy: the doomed-transaction guard, the savepoint guard, and
// retries of attempts that provably had no effect.
func run[T any](ic *interceptor, ctx context.Context, c *call, do func(context.Context) (T, error)) (T, error) {
	var zero T
	c.kind = parseStmt(c.query)
	if ic.inTx() {
		if err := ic.beforeTxStmt(ctx, c); err != nil {
			return zero, err
		}
		if ic.cfg.VerifyCommit && !ic.tx.wrote {
			ic.tx.wrote = c.kind != stmtSelect || lexStmt(c.query, ic.cfg.Dialect).calls
		}
	}
	ic.noteSession(c)
	s := ic.sock
	for attempt := 0; ; attempt++ {
		alive := ic.alive()
		var v T
		var err error
		if ic.sock == s {
			v, err = do(ctx)
		} else {
			// A replay moved the connection (move.go): the hook's
			// watchdog watches the lost one's socket.
			w := ic.sock.watch(ctx)
			v, err = do(ctx)
			err = ic.settle(w, err)
		}
		if err == nil {
			ic.afterStmt(c)
			if ic.rp.on {
				c.rec, c.gen = ic.rp.add(c, ic.cfg.ReplayStatements, ic.cfg.ReplayBytes), ic.rp.gen
			}
			return v, nil
		}
		if ic.noteSkip(err, c.hasArgs) {
			if c.guarded {
				ic.tx.pendingSP = c.query
			}
			return zero, err
		}
		again, out := ic.failed(ctx, c, err, attempt, true)
		if !again {
			if ic.rp.on {
				ic.rp.failedStmt(c, out, ic.cfg.ReplayStatements, ic.cfg.ReplayBytes, ic.cfg.sp.rollbackTo)
			}
			return zero, ic.inFlight(ctx, out, alive)
		}
	}
}

// alive reports whether the base connection considered itself usable.
func (ic *interceptor) alive() bool {
	return ic.valid == nil || ic.valid.IsValid()
}

// inFlight keeps database/sql from running a statement twice. database/sql
// runs a statement again on another connection when the driver answers
// driver.ErrBadConn, which a driver may only do when it sent nothing.
// go-sql-driver/mysql keeps that promise (and its rejectReadOnly failover
// relies on the retry), so its ErrBadConn passes. lib/pq and pgx do not
// always (see badConnSafe): they may answer ErrBadConn when a connection
// breaks under a statement the server ran, and the statement, a SELECT that
// calls a function that writes included, would run twice. So with such a
// base driver a statement sent on a connection that was alive fails with an
// unknown outcome instead. A connection already broken before the call sent
// nothing, and keeps database/sql's retry; so does a call whose context has
// ended, since database/sql then sends nothing again (lib/pq marks the
// connection bad when the context ends before it sent the statement).
func (ic *interceptor) inFlight(ctx context.Context, err error, alive bool) error {
	if !alive || ctx.Err() != nil || ic.cfg.badConnSafe || ic.inTx() || !errors.Is(err, driver.ErrBadConn) {
		return err
	}
	return &LostConnError{Cause: err}
}

// notSent reads driver.ErrBadConn inside a transaction from a driver that
// keeps the contract: the statement (or COMMIT) was not sent, or was
// refused unapplied (go-sql-driver/mysql's rejectReadOnly failover), and
// the connection is gone, with the transaction. database/sql does not retry
// inside a transaction; the error says that nothing committed and that the
// whole transaction may run again.
// inTx says whether the statement ran in a transaction (TxCommit knows it
// did after recording the transaction's end).
func (ic *interceptor) notSent(err error, inTx bool) error {
	if ic.cfg.badConnSafe && inTx && errors.Is(err, driver.ErrBadConn) && !errors.As(err, new(*notSentError)) {
		return &notSentError{err: err, tx: true}
	}
	return err
}

// notSentError is driver.ErrBadConn from a base driver that answers it only
// when it sent nothing (badConnSafe), inside a transaction: the statement
// was not applied, the connection is closed, and the transaction rolled
// back with it. It unwraps to driver.ErrBadConn, which database/sql needs
// to close the connection; it reads (Error) as the driver's error.
type notSentError struct {
	err error
	tx  bool // the transaction is gone with the connection
}

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

func (e *notSentError) class() Class {
	scope := ScopeStatement
	if e.tx {
		scope = ScopeTransaction
	}
	return Class{Kind: KindConnectionLost, Scope: scope, Retryable: true}
}

// failed applies the policy to a failed attempt: it reports whether to run the
// statement again (after backing off) and otherwise the error to return.
// canRetry is false once rows have reached the caller.
func (ic *interceptor) failed(ctx context.Context, c *call, err error, attempt int, canRetry bool) (bool, error) {
	err = ic.notSent(err, ic.inTx())
	cl := ic.scope(ctx, Classify(err))
	if c.first == nil {
		c.first, c.failed = err, time.Now()
	} else if ic.untracked(cl) {
		// The retry met PostgreSQL's 25P02: the session was in a
		// transaction the wrapper did not see, which the first error
		// aborted. The first error is the application's.
		return false, ic.wrap(c.first)
	}
	if ic.multi(c) {
		// Never run again (not atomic), and it stopped part way: what it
		// did to the session is known only by asking.
		ic.afterMulti(c.query, false)
	}
	switch {
	case c.kind == stmtCommit || c.kind == stmtRollback || c.kind == stmtPrepareTx:
		// A COMMIT or ROLLBACK that fails ends the transaction all the
		// same: the server has rolled it back, or is made to.
		ic.endTx(false)
		ic.commitFailed(ctx, err)
		return false, ic.wrap(err)
	case c.kind == stmtXA:
		// XA COMMIT or ROLLBACK answered with XA_RB*: the branch was
		// rolled back, and is over. Other refusals leave it as it was.
		if xa(c.query) == xaEnd && cl.Dialect == DialectMySQL && (cl.Code == "1402" || cl.Code == "1613" || cl.Code == "1614") {
			ic.endTx(false)
		}
		ic.stmtFailed(ctx, err, cl)
		return false, ic.wrap(err)
	case !ic.inTx():
		// Autocommit, as the wrapper knows it. Run it again only if it is
		// one atomic statement (never CALL, DO, or a string of several)
		// that the server undid, and the server confirms autocommit.
		if !canRetry || !retriesInPlace(cl) || !ic.budget(c, attempt) ||
			!ic.rerunnable(ctx, c) || !ic.confirmAutocommit(ctx) {
			ic.stmtFailed(ctx, err, cl)
			return false, ic.wrap(err)
		}
	case c.guarded && cl.Kind == KindLockTimeout && cl.Scope == ScopeStatement:
		// Behind our savepoint the failed statement is undone alone and
		// the transaction stays usable; a lock wait may end next time.
		if !ic.undo(ctx, err, cl, attempt) {
			return false, ic.wrap(err)
		}
		if !canRetry || !ic.budget(c, attempt) || !ic.rerunnable(ctx, c) {
			return false, ic.wrap(err)
		}
		ic.tx.savepoints++ // the retry uses a new subtransaction
	case c.guarded && cl.Scope == ScopeStatement && !cl.wholeTx():
		// A unique violation, say: undone alone, and returned, so that
		// the application can re-read and go on.
		ic.undo(ctx, err, cl, attempt)
		return false, ic.wrap(err)
	default:
		// Unguarded in a transaction, or an error that only a rerun of the
		// whole transaction can cure: rolling back to a savepoint keeps the
		// locks taken before it, so a deadlock would form again. That
		// rerun is a verified replay, with conflict_replay.
		if ic.rp.on {
			if !ic.metAgain(c, cl) && ic.replayStmt(ctx, c, cl) {
				return true, nil
			}
			if c.replayed {
				err = c.first // the application's error, as without replay
				cl = ic.scope(ctx, Classify(err))
				ic.rp.refuse("the statement failed again after a replay")
			}
		}
		ic.stmtFailed(ctx, err, cl)
		return false, ic.wrap(err)
	}
	wait := backoff(attempt, ic.cfg.Backoff, ic.cfg.MaxBackoff)
	if t := ic.cfg.RetryTimeout; t > 0 {
		wait = min(wait, t-time.Since(c.failed))
	}
	ic.event(ctx, Observation{Event: EventRetry, Class: cl, Attempt: attempt + 2, Wait: wait, Elapsed: time.Since(c.failed)})
	if sleep(ctx, wait) != nil {
		// The context ended before the retry: the call returns what the
		// last attempt got, the driver's own error. That attempt had no
		// effect (it would not have been retried otherwise), and
		// Classify says so, where the context's error would read as an
		// unknown outcome.
		if !ic.inTx() {
			ic.stmtFailed(ctx, err, cl)
		}
		return false, ic.wrap(err)
	}
	return true, nil
}

// retriesInPlace reports the errors worth running the statement again for
// on the same connection: a conflict a moment may clear, or a server not
// ready yet. A read-only server stays read-only for this connection; only a
// new connection (RunTx's next attempt) may reach a primary.
func retriesInPlace(cl Class) bool {
	return cl.Retryable && cl.Kind != KindReadOnly
}

// rerunnable reports whether running the statement's text again alone
// repeats nothing the server did not undo: it is one atomic statement
// (never CALL, DO, or a string of several), it assigns no user variable,
// takes no advisory or named lock and changes no setting, calls no function
// the wrapper does not know (unless conflict_retry_functions), and touches
// no table whose engine, triggers or definition could do any of that.
func (ic *interceptor) rerunnable(ctx context.Context, c *call) bool {
	if !c.kind.atomic() {
		return false
	}
	s := lexStmt(c.query, ic.cfg.Dialect)
	if !s.single || s.effects || s.calls && !ic.cfg.RetryFunctions {
		return false
	}
	return ic.schemaAllows(ctx, c.query)
}

// budget reports whether the statement may be retried once more: within
// conflict_retries and conflict_retry_timeout.
func (ic *interceptor) budget(c *call, attempt int) bool {
	return attempt < ic.cfg.Retries && (ic.cfg.RetryTimeout <= 0 || time.Since(c.failed) < ic.cfg.RetryTimeout)
}

// wholeTx reports the errors that only a new transaction can cure:
// deadlocks and serialization failures, whatever the server undid.
func (c Class) wholeTx() bool {
	return c.Kind == KindDeadlock || c.Kind == KindSerializationFailure || c.Kind == KindTransactionRollback
}

// untracked reports a retry that PostgreSQL refused with 25P02, and starts
// tracking the transaction it revealed.
func (ic *interceptor) untracked(cl Class) bool {
	if cl.Dialect != DialectPostgres || cl.Code != "25P02" {
		return false
	}
	ic.tx.active, ic.tx.failed = true, true
	return true
}

// stmtFailed records an error that is returned to the application.
func (ic *interceptor) stmtFailed(ctx context.Context, err error, cl Class) {
	ic.noteServer(cl)
	if ic.inTx() {
		ic.txFailed(ctx, err, cl)
		return
	}
	// In autocommit as far as the wrapper knows. On MySQL a deadlock or
	// another transaction-scoped error ends a transaction if there was one:
	// ask whether there was (autocommit=0 set where the wrapper could not
	// see it), so that what follows cannot commit its second half.
	if ic.cfg.Dialect == DialectMySQL && cl.Dialect == DialectMySQL && cl.Scope == ScopeTransaction && !ic.confirmAutocommit(ctx) {
		ic.txFailed(ctx, err, cl)
	}
}

// txFailed records an error that is returned inside a transaction.
func (ic *interceptor) txFailed(ctx context.Context, err error, cl Class) {
	switch {
	case !ic.guards():
		// PostgreSQL aborted the transaction on any error of its own.
		if cl.Dialect == DialectPostgres {
			ic.tx.failed = true
		}
	case cl.Scope == ScopeTransaction || cl.Scope == ScopeUnknownOutcome:
		ic.doom(ctx, err, cl)
	}
	ic.onConflict(ctx, cl)
}

// backoff returns the wait before retry number attempt+1: exponential growth
// from base capped at max, with full jitter so that the racers that collided
// spread out instead of colliding again in step.
func backoff(attempt int, base, max time.Duration) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return rand.N(d + 1)
}

// sleep waits for d or until ctx ends, returning ctx's error in that case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
