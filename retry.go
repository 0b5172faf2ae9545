package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"math/rand/v2"
	"time"
)

// stmtInfo is what run learned about a statement, for query1.
type stmtInfo struct {
	kind    stmtKind
	guarded bool
}

// run executes one statement (Exec or Query, direct or prepared) under the
// wrapper's policy: the doomed-transaction guard, the savepoint guard, and
// retries of attempts that provably had no effect.
func run[T any](ic *interceptor, ctx context.Context, query string, hasArgs bool, call func(context.Context) (T, error), info *stmtInfo) (T, error) {
	var zero T
	k := parseStmt(query)
	info.kind = k
	if ic.tx.active {
		if err := ic.beforeTxStmt(ctx, k); err != nil {
			return zero, err
		}
		info.guarded = ic.guard(ctx, k, query)
		if info.guarded {
			if err := ic.savepoint(ctx); err != nil {
				ic.txFailed(ctx, err, Classify(err))
				return zero, ic.wrap(err)
			}
		}
	}
	for attempt := 0; ; attempt++ {
		alive := ic.alive()
		v, err := call(ctx)
		if err == nil {
			ic.afterStmt(k, query)
			return v, nil
		}
		if ic.noteSkip(err, hasArgs) {
			return zero, err
		}
		again, out := ic.failed(ctx, err, info.guarded, attempt, true)
		if !again {
			return zero, ic.inFlight(out, alive, k, query)
		}
	}
}

// alive reports whether the base connection considered itself usable.
func (ic *interceptor) alive() bool {
	return ic.valid == nil || ic.valid.IsValid()
}

// inFlight keeps database/sql from running a write twice. lib/pq and pgx
// answer driver.ErrBadConn when a connection that was fine breaks under a
// statement, even after the server ran it, and database/sql then runs the
// statement again on another connection: a duplicate write, seen in
// TestIntegrationFaultConnectionCuts. So a statement that may write, sent in
// autocommit on a connection that was alive, fails with an unknown outcome
// instead. Plain reads, and connections already broken before the call
// (nothing was sent), keep database/sql's transparent retry.
func (ic *interceptor) inFlight(err error, alive bool, k stmtKind, query string) error {
	if !alive || ic.tx.active || !errors.Is(err, driver.ErrBadConn) {
		return err
	}
	if (k == stmtSelect || k == stmtWith) && !isWrite(k, query) {
		return err
	}
	return &LostConnError{Cause: err}
}

// failed applies the policy to a failed attempt: it reports whether to run the
// statement again (after backing off) and otherwise the error to return.
// canRetry is false once rows have reached the caller.
func (ic *interceptor) failed(ctx context.Context, err error, guarded bool, attempt int, canRetry bool) (bool, error) {
	cl := Classify(err)
	switch {
	case !ic.tx.active:
		// Autocommit: a deadlock, serialization failure or lock timeout rolled
		// back the statement's own transaction, so running it again is safe.
	case guarded && cl.Scope != ScopeTransaction && cl.Scope != ScopeUnknownOutcome:
		// Behind our savepoint the failed statement can be undone alone, and
		// the transaction stays usable (PostgreSQL would otherwise abort it).
		if rerr := ic.rollbackTo(ctx); rerr != nil {
			ic.doom(err, Class{Kind: cl.Kind, Scope: ScopeTransaction})
			return false, ic.wrap(err)
		}
		ic.event(EventSavepointRollback, cl, attempt)
		ic.onConflict(ctx, cl)
	default:
		// Unguarded in a transaction: never retried, since on PostgreSQL the
		// transaction is aborted and on MySQL it may be gone.
		ic.txFailed(ctx, err, cl)
		return false, ic.wrap(err)
	}
	if !canRetry || !cl.Retryable || attempt >= ic.cfg.Retries {
		return false, ic.wrap(err)
	}
	if guarded {
		ic.tx.savepoints++ // the retry uses a new subtransaction
	}
	ic.event(EventRetry, cl, attempt+2)
	if werr := sleep(ctx, backoff(attempt, ic.cfg.Backoff, ic.cfg.MaxBackoff)); werr != nil {
		return false, werr
	}
	return true, nil
}

// txFailed records an unguarded error inside a transaction.
func (ic *interceptor) txFailed(ctx context.Context, err error, cl Class) {
	if !ic.tx.active {
		return
	}
	if ic.dooms(cl) {
		ic.doom(err, cl)
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
