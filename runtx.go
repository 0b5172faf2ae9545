package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// TxBeginner is what RunTx needs: *sql.DB and *sql.Conn have it.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// TxRunner runs transactions with whole-transaction retries. Its zero value
// uses the defaults documented on each field.
type TxRunner struct {
	// MaxAttempts bounds the attempts, the first included. Zero means
	// DefaultMaxAttempts.
	MaxAttempts int
	// MaxElapsed bounds the time from the first attempt's start after which
	// no new attempt begins. Zero means DefaultMaxElapsed. The context's
	// deadline ends the reruns too, whichever comes first.
	MaxElapsed time.Duration
	// Backoff and MaxBackoff shape the wait between attempts, as the
	// conflict_backoff and conflict_max_backoff options do. Zero means 5ms
	// and 1s.
	Backoff, MaxBackoff time.Duration
	// RetryUniqueViolation reruns the transaction on a unique violation too.
	// Right for get-or-create written as select-then-insert: the rerun sees
	// the winner's row. Wrong where the duplicate is a real user error.
	RetryUniqueViolation bool
	// Observer, when set, is told of each rerun (EventRerun) before its
	// wait. Nil means the Observer of the sqlconflict connection the
	// failed attempt began its transaction on ([Options.Observer]), if
	// any: RunTx's reruns reach the same Observer as the wrapper's own
	// retries, with nothing set here.
	Observer Observer
}

// The bounds of a zero TxRunner. Contention storms end long before them
// (docs/BENCHMARKS.md): they keep an operation from retrying for ever, not
// from succeeding.
const (
	DefaultMaxAttempts = 100
	DefaultMaxElapsed  = 30 * time.Second
)

// ErrRetryTx, returned by a RunTx function (possibly wrapped), asks for
// another attempt: for instance when an optimistic-lock UPDATE ... WHERE
// version = $n matched no row because another transaction got there first.
var ErrRetryTx = errors.New("sqlconflict: transaction should be retried")

// RetryError is returned when retrying stopped while the last attempt's
// error was one that another attempt might have cured: the attempts or the
// time ran out, or the caller's context ended. Err is the last real cause,
// what the server or the network said; [Classify] classifies a RetryError
// as Err, so a deadline that ended the waiting for a server that refused
// connections reads as unavailable, nothing sent, not as an unknown
// outcome. errors.Is and errors.As reach Err and, when set, Ctx
// (errors.Is(err, context.DeadlineExceeded)).
type RetryError struct {
	Attempts int
	Err      error
	// Ctx is the context's error when the context ended the retries, else
	// nil.
	Ctx error

	class *Class // what Err was, where RunTx knew better than Classify (a failed BeginTx)
}

func (e *RetryError) Error() string {
	if e.Ctx != nil {
		return fmt.Sprintf("sqlconflict: transaction failed after %d attempts, then %v: %v", e.Attempts, e.Ctx, e.Err)
	}
	return fmt.Sprintf("sqlconflict: transaction failed after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns the last attempt's error and, if the context ended the
// retries, the context's error.
func (e *RetryError) Unwrap() []error {
	if e.Ctx == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Ctx}
}

// RunTx is TxRunner{}.Run: it runs fn in a transaction, retrying the whole
// transaction on deadlocks, serialization failures and lock timeouts.
func RunTx(ctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return TxRunner{}.Run(ctx, db, opts, fn)
}

// Run begins a transaction, runs fn, and commits. If fn or Commit fails with
// an error that a fresh attempt may not meet (see [Class.Retryable]), it rolls
// back, waits, and runs everything again, up to MaxAttempts. An error whose
// outcome is unknown (the connection was lost during COMMIT) is never retried.
// Other errors, fn's own included, are returned as they are.
//
// fn must confine its effects to tx, or make them idempotent: it may run
// several times. Work that must follow the commit belongs in [OnCommit].
func (r TxRunner) Run(ctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(ctx context.Context, tx *sql.Tx) error) error {
	attempts, elapsed, base, max := r.MaxAttempts, r.MaxElapsed, r.Backoff, r.MaxBackoff
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	if elapsed <= 0 {
		elapsed = DefaultMaxElapsed
	}
	if base <= 0 {
		base = 5 * time.Millisecond
	}
	if max <= 0 {
		max = time.Second
	}
	waits := 0 // attempts followed by a wait
	start := time.Now()
	obs := &runObs{} // the Observer of the connection an attempt began on
	bctx := context.WithValue(ctx, runObsKey{}, obs)
	var last error   // the last attempt's error that was not the context's
	var lastCl Class // and its class
	for attempt := 1; ; attempt++ {
		hooks, began, err := runOnce(ctx, bctx, db, opts, fn)
		if err == nil {
			for _, f := range hooks {
				f()
			}
			return nil
		}
		cl := Classify(err)
		if !began {
			// BeginTx failed: no statement of fn's was sent, and BEGIN
			// itself changes nothing, so a broken connection there is not
			// an unknown outcome.
			cl = classifyConnect(err)
			if last != nil && ctx.Err() != nil {
				// The context ended while this attempt waited for a
				// connection: what stopped the reruns is the last real
				// cause.
				return &RetryError{Attempts: attempt - 1, Err: last, Ctx: context.Cause(ctx), class: &lastCl}
			}
		}
		if !r.retryable(err, cl, opts) {
			return err
		}
		if attempt >= attempts {
			return &RetryError{Attempts: attempt, Err: err, class: &cl}
		}
		last, lastCl = err, cl
		// A unique violation is raised only once the conflicting row is
		// committed (the server waits for its writer), so a rerun after the
		// first attempt's duplicate goes at once: it will see the row.
		// Every other rerun waits, a duplicate on a later attempt included.
		if attempt == 1 && cl.Kind == KindUniqueViolation {
			r.rerun(ctx, obs, cl, attempt+1, 0, start)
			continue
		}
		wait := backoff(waits, base, max)
		if time.Since(start)+wait >= elapsed {
			return &RetryError{Attempts: attempt, Err: err, class: &cl}
		}
		r.rerun(ctx, obs, cl, attempt+1, wait, start)
		if werr := sleep(ctx, wait); werr != nil {
			return &RetryError{Attempts: attempt, Err: err, Ctx: context.Cause(ctx), class: &cl}
		}
		waits++
	}
}

// runObsKey is the context key under which Run hands BeginTx a *runObs.
type runObsKey struct{}

// runObs is filled by the wrapper's BeginTx with the connection's Observer
// and logger, so that Run reports its reruns where the wrapper reports its
// own retries.
type runObs struct {
	obs Observer
	log *slog.Logger
}

// rerun reports EventRerun, before the attempt's wait.
func (r TxRunner) rerun(ctx context.Context, ro *runObs, cl Class, attempt int, wait time.Duration, start time.Time) {
	obs, l := r.Observer, ro.log
	if obs == nil {
		obs = ro.obs
	}
	if l == nil {
		l = slog.Default()
	}
	report(ctx, obs, l, Observation{Event: EventRerun, Class: cl, Attempt: attempt, Wait: wait, Elapsed: time.Since(start)})
}

// retryable reports whether err may be cured by another attempt. A write
// refused as read-only is, when the server is read-only (a standby, a
// failover under way), but not in a transaction the application itself
// began READ ONLY.
func (r TxRunner) retryable(err error, cl Class, opts *sql.TxOptions) bool {
	if errors.Is(err, ErrRetryTx) {
		return true
	}
	switch {
	case cl.Scope == ScopeUnknownOutcome:
		return false
	case cl.Kind == KindReadOnly && opts != nil && opts.ReadOnly:
		return false
	}
	return cl.Retryable || r.RetryUniqueViolation && cl.Kind == KindUniqueViolation
}

// ErrTxEnded is returned by RunTx when its function committed or rolled
// back the transaction itself: RunTx commits it when the function returns
// nil, and it cannot tell what the function's own Commit did, nor run the
// OnCommit hooks, which did not run. It matches sql.ErrTxDone too.
var ErrTxEnded = fmt.Errorf("sqlconflict: the RunTx function ended the transaction itself (Commit or Rollback); "+
	"return nil and let RunTx commit: %w", sql.ErrTxDone)

// runOnce is one attempt. It returns the OnCommit hooks of a committed
// transaction, and whether the transaction began. A panic in fn rolls the
// transaction back before it goes on up, as net/http's recovery would
// otherwise leave the connection in the transaction, its locks held.
//
// bctx is ctx with the value through which the wrapper's BeginTx names its
// Observer; fn gets ctx itself.
func runOnce(ctx, bctx context.Context, db TxBeginner, opts *sql.TxOptions, fn func(context.Context, *sql.Tx) error) (_ []func(), began bool, _ error) {
	tx, err := db.BeginTx(bctx, opts)
	if err != nil {
		return nil, false, err
	}
	hooks := &commitHooks{}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
	}()
	if err := fn(context.WithValue(ctx, commitHooksKey{}, hooks), tx); err != nil {
		_ = tx.Rollback() // fn's error is the one that matters
		return nil, true, err
	}
	if err := tx.Commit(); err != nil {
		if errors.Is(err, sql.ErrTxDone) && ctx.Err() == nil {
			return nil, true, ErrTxEnded
		}
		return nil, true, err
	}
	return hooks.fns, true, nil
}

type commitHooksKey struct{}

// commitHooks is what RunTx puts in the context of its function.
type commitHooks struct {
	fns []func()
}

// ErrNotInRunTx is returned by [OnCommit] when its context is not that of a
// RunTx function: there is no commit it could wait for.
var ErrNotInRunTx = errors.New("sqlconflict: OnCommit outside a RunTx function: f was not run")

// OnCommit registers f to run once after the transaction of the RunTx call
// whose function's ctx it is given commits, and never for an attempt that
// fails or is retried: a job queued from f cannot run before the rows it
// needs are visible. Hooks run in registration order, on the goroutine that
// called RunTx.
//
// Given any other context (the application's own transaction included,
// whose commit the wrapper cannot see), OnCommit does not run f, logs a
// warning and returns ErrNotInRunTx: running f at once would let a job see
// the database before the commit. Code that is not in a transaction calls
// f itself.
func OnCommit(ctx context.Context, f func()) error {
	if h, ok := ctx.Value(commitHooksKey{}).(*commitHooks); ok {
		h.fns = append(h.fns, f)
		return nil
	}
	slog.Default().WarnContext(ctx, ErrNotInRunTx.Error())
	return ErrNotInRunTx
}
