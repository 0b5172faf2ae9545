package sqlconflict

import (
	"context"
	"log/slog"
	"strconv"
	"time"
)

// Event is something the wrapper did about a conflict.
type Event int

const (
	// EventRetry: a statement that had no effect is about to be run again,
	// after Observation.Wait.
	EventRetry Event = iota + 1
	// EventSavepointRollback: a guarded statement failed and was rolled back
	// to its savepoint; the transaction goes on.
	EventSavepointRollback
	// EventTxDoomed: an error ended the transaction on the server; its
	// remaining statements and Commit will fail with ErrTxAborted.
	EventTxDoomed
	// EventCommitSettled: a COMMIT whose answer was lost was settled by
	// asking the server (conflict_verify_commit). Class is the zero Class
	// (Kind unknown) when the transaction committed, KindConnectionLost
	// with ScopeTransaction when it rolled back.
	EventCommitSettled
	// EventReplay: a transaction that a conflict aborted was replayed
	// (conflict_replay) and everything the application had seen came out
	// the same; the failing statement or COMMIT runs again. Statements is
	// how many were sent again.
	EventReplay
	// EventReplayFailed: a transaction that a conflict aborted was not
	// replayed, or its replay did not verify; the application gets the
	// conflict. Reason says why (the first difference found, say).
	EventReplayFailed
	// EventRerun: RunTx (or a TxRunner) is about to run the whole
	// transaction function again, after Observation.Wait, because the
	// attempt before it failed with Class.
	EventRerun
)

// eventNames are the events' stable names, fit for metric labels.
var eventNames = [...]string{
	EventRetry:             "retry",
	EventSavepointRollback: "savepoint_rollback",
	EventTxDoomed:          "tx_doomed",
	EventCommitSettled:     "commit_settled",
	EventReplay:            "replay",
	EventReplayFailed:      "replay_failed",
	EventRerun:             "rerun",
}

// String returns the event's stable snake_case name: "retry",
// "savepoint_rollback", "tx_doomed", "commit_settled", "replay",
// "replay_failed" or "rerun".
func (e Event) String() string {
	if e > 0 && int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "Event(" + strconv.Itoa(int(e)) + ")"
}

// Observation is one event reported to an [Observer].
type Observation struct {
	Event Event
	Class Class // the classification of the error behind the event
	// Attempt is, for EventRetry and EventRerun, the number of the attempt
	// about to run (2 for the first retry); for the replay events, the
	// replay's number (from 1); for EventSavepointRollback, the number of
	// retries before it (0 for the first failure).
	Attempt int
	// Wait is the backoff before the attempt: about to be waited, for
	// EventRetry and EventRerun (reported before the wait); waited, for
	// EventReplay and EventReplayFailed. Zero for the other events, and
	// for a rerun that goes at once.
	Wait time.Duration
	// Elapsed is the time since the first failure of the statement
	// (EventRetry) or of the transaction (the replay events), or since the
	// first attempt began (EventRerun). Zero for the other events.
	Elapsed time.Duration
	// Statements is, for EventReplay and EventReplayFailed, how many
	// recorded statements the replay sent again.
	Statements int
	// Reason is, for EventReplayFailed, why the transaction was not
	// replayed or what differed.
	Reason string
}

// Observer is told of what the wrapper does about conflicts, synchronously,
// on the goroutine using the connection, with the context of the call that
// met the conflict (the application's span, say). It must be quick and must
// not use the database. See [Options.Observer] and [TxRunner.Observer].
type Observer func(ctx context.Context, o Observation)

// report tells obs and, at debug level, l of o.
func report(ctx context.Context, obs Observer, l *slog.Logger, o Observation) {
	if obs != nil {
		obs(ctx, o)
	}
	if l.Enabled(ctx, slog.LevelDebug) {
		attrs := []slog.Attr{slog.String("kind", o.Class.Kind.Name()), slog.String("code", o.Class.Code),
			slog.Int("attempt", o.Attempt)}
		if o.Wait != 0 || o.Elapsed != 0 {
			attrs = append(attrs, slog.Duration("wait", o.Wait), slog.Duration("elapsed", o.Elapsed))
		}
		if o.Event == EventReplay || o.Event == EventReplayFailed {
			attrs = append(attrs, slog.Int("statements", o.Statements), slog.String("reason", o.Reason))
		}
		l.LogAttrs(ctx, slog.LevelDebug, "sqlconflict: "+o.Event.String(), attrs...)
	}
}

// event reports what the wrapper did: to the Observer, and to the logger at
// debug level.
func (ic *interceptor) event(ctx context.Context, o Observation) {
	report(ctx, ic.cfg.Observer, ic.cfg.logger(), o)
}

// replayEvent reports a replay event with its figures.
func (ic *interceptor) replayEvent(ctx context.Context, ev Event, cl Class, attempt, stmts int, reason string) {
	l := &ic.rp
	o := Observation{Event: ev, Class: cl, Attempt: attempt, Wait: l.wait, Statements: stmts, Reason: reason}
	if !l.failed.IsZero() {
		o.Elapsed = time.Since(l.failed)
	}
	ic.event(ctx, o)
}
