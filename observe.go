package sqlconflict

import (
	"context"
	"log/slog"
)

// Event is something the wrapper did about a conflict.
type Event int

const (
	// EventRetry: a statement is about to be run again.
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
)

// String returns "retry", "savepoint rollback", "transaction doomed",
// "commit settled", "transaction replayed" or "replay failed".
func (e Event) String() string {
	switch e {
	case EventRetry:
		return "retry"
	case EventSavepointRollback:
		return "savepoint rollback"
	case EventTxDoomed:
		return "transaction doomed"
	case EventCommitSettled:
		return "commit settled"
	case EventReplay:
		return "transaction replayed"
	case EventReplayFailed:
		return "replay failed"
	}
	return "unknown"
}

// Observation is one event reported to [Options.Observer].
type Observation struct {
	Event   Event
	Class   Class // the classification of the error behind the event
	Attempt int   // for EventRetry, the number of the attempt about to run (2 for the first retry); for the replay events, the replay's number (from 1)
	// Statements is, for EventReplay and EventReplayFailed, how many
	// recorded statements the replay sent again.
	Statements int
	// Reason is, for EventReplayFailed, why the transaction was not
	// replayed or what differed.
	Reason string
}

// event reports what the wrapper did: to the Observer, and to the logger at
// debug level.
func (ic *interceptor) event(ev Event, cl Class, attempt int) {
	if ic.cfg.Observer != nil {
		ic.cfg.Observer(Observation{Event: ev, Class: cl, Attempt: attempt})
	}
	if l := ic.cfg.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
		l.Debug("sqlconflict: "+ev.String(),
			slog.String("kind", cl.Kind.String()), slog.String("code", cl.Code), slog.Int("attempt", attempt))
	}
}

// replayEvent reports a replay event with its figures.
func (ic *interceptor) replayEvent(ev Event, cl Class, attempt, stmts int, reason string) {
	if ic.cfg.Observer != nil {
		ic.cfg.Observer(Observation{Event: ev, Class: cl, Attempt: attempt, Statements: stmts, Reason: reason})
	}
	if l := ic.cfg.logger(); l.Enabled(context.Background(), slog.LevelDebug) {
		l.Debug("sqlconflict: "+ev.String(), slog.String("kind", cl.Kind.String()), slog.String("code", cl.Code),
			slog.Int("attempt", attempt), slog.Int("statements", stmts), slog.String("reason", reason))
	}
}
