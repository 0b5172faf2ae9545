// Package otel reports what sqlconflict does about write conflicts to
// OpenTelemetry: [NewObserver] returns a [sqlconflict.Observer] that counts
// the conflicts and the retries in metrics, records the backoff waits in a
// histogram, and adds an event to the caller's current span for each one.
//
//	import sqlconflictotel "github.com/sqlconflict/sqlconflict/otel"
//
//	obs, err := sqlconflictotel.NewObserver() // the global MeterProvider
//	if err != nil {
//		return err
//	}
//	opts := sqlconflict.DefaultOptions()
//	opts.Observer = obs
//	connector, err := sqlconflict.NewConnector(baseConnector, opts)
//
// The Observer sees the events of the connections made with those options,
// and the reruns of RunTx (or a [sqlconflict.TxRunner]) of the transactions
// begun on them.
//
// # Metrics
//
// The meter is named "github.com/sqlconflict/sqlconflict/otel" ([ScopeName]).
// Three instruments, whose names and attributes are stable:
//
//   - sqlconflict.conflicts (Int64Counter, unit {conflict}): one for every
//     event the wrapper or RunTx reports, that is every conflict (or lost
//     answer) it acted on, by sqlconflict.outcome, what it did about it.
//     One error can end in more than one outcome: a deadlock whose replay
//     did not verify counts as replay_failed, then as rerun if RunTx runs
//     the transaction again.
//   - sqlconflict.retries (Int64Counter, unit {retry}): the work run again,
//     one for each statement re-sent (outcome retry), transaction replayed
//     and verified (replay) and transaction function rerun by RunTx (rerun).
//   - sqlconflict.retry.wait (Float64Histogram, unit s): the backoff before
//     each of those retries, in seconds; its count is sqlconflict.retries'.
//     Its buckets end at 0, 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, 100 ms,
//     250 ms, 500 ms, 1 s, 2.5 s, 5 s and 10 s (the wrapper's backoff is
//     random below a bound that grows from 5 ms to 1 s by default, and a
//     rerun may go at once), unless a view of the MeterProvider sets others.
//
// Each measurement has these attributes:
//
//   - sqlconflict.outcome: the event's name ([sqlconflict.Event.String]):
//     "retry", "savepoint_rollback", "tx_doomed", "commit_settled",
//     "replay", "replay_failed" or "rerun".
//   - sqlconflict.kind: the error's kind ([sqlconflict.Kind.Name]), such as
//     "deadlock", "serialization_failure", "lock_timeout" or
//     "unique_violation". An EventCommitSettled is "unknown" when the
//     transaction committed, "connection_lost" when it rolled back.
//   - sqlconflict.scope: what the server undid ([sqlconflict.Scope.Name]):
//     "none", "statement", "transaction" or "unknown_outcome".
//   - db.system.name: "postgresql", "mysql" (MariaDB included) or "sqlite",
//     when the dialect is known.
//   - db.response.status_code: the server's code, when there is one: the
//     PostgreSQL SQLSTATE ("40P01"), the MySQL error number ("1213") or the
//     SQLite extended result code ("517").
//
// plus those given with [WithAttributes]. All of them come from small,
// fixed sets: their cardinality stays low.
//
// The measurements are made with the caller's context, so an SDK that
// samples exemplars links them to the caller's trace.
//
// # Span events
//
// For every event, when the context's span ([trace.SpanFromContext]) is
// recording, the Observer adds to it a span event named "sqlconflict."
// followed by the event's name ("sqlconflict.retry",
// "sqlconflict.replay_failed", ...), with the attributes sqlconflict.kind,
// sqlconflict.scope, sqlconflict.retryable, db.system.name and
// db.response.status_code as above, sqlconflict.constraint (the
// constraint's name, when the error gave one), and the event's figures:
// sqlconflict.attempt; sqlconflict.wait and sqlconflict.elapsed, in seconds;
// sqlconflict.statements for the replay events; and sqlconflict.reason for a
// replay that failed. The Observer needs no tracer: the span is the
// application's own, from the context of its call that met the conflict.
// [WithSpanEvents] turns them off.
//
// # Name
//
// This package is named after its directory. A file that also imports
// go.opentelemetry.io/otel needs another name for one of them, such as
// sqlconflictotel.
package otel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sqlconflict/sqlconflict"
)

// ScopeName is the name of the meter the Observer's instruments belong to:
// the module's path.
const ScopeName = "github.com/sqlconflict/sqlconflict/otel"

// The instruments' names.
const (
	// ConflictsName is the counter of every event, by outcome.
	ConflictsName = "sqlconflict.conflicts"
	// RetriesName is the counter of statements re-sent, transactions
	// replayed and transactions rerun.
	RetriesName = "sqlconflict.retries"
	// RetryWaitName is the histogram of the waits before those retries, in
	// seconds.
	RetryWaitName = "sqlconflict.retry.wait"
)

// The attributes' keys. [semconv.DBSystemNameKey] and
// [semconv.DBResponseStatusCodeKey] are used too.
const (
	// OutcomeKey is what the wrapper did: the event's name, such as
	// "retry" or "replay".
	OutcomeKey = attribute.Key("sqlconflict.outcome")
	// KindKey is the error's [sqlconflict.Kind.Name], such as "deadlock".
	KindKey = attribute.Key("sqlconflict.kind")
	// ScopeKey is the error's [sqlconflict.Scope.Name], such as
	// "statement".
	ScopeKey = attribute.Key("sqlconflict.scope")
	// RetryableKey (span events only) is the error's Class.Retryable.
	RetryableKey = attribute.Key("sqlconflict.retryable")
	// ConstraintKey (span events only) is the name of the constraint the
	// error named, if any.
	ConstraintKey = attribute.Key("sqlconflict.constraint")
	// AttemptKey (span events only) is [sqlconflict.Observation.Attempt].
	AttemptKey = attribute.Key("sqlconflict.attempt")
	// WaitKey (span events only) is [sqlconflict.Observation.Wait], in
	// seconds.
	WaitKey = attribute.Key("sqlconflict.wait")
	// ElapsedKey (span events only) is [sqlconflict.Observation.Elapsed],
	// in seconds.
	ElapsedKey = attribute.Key("sqlconflict.elapsed")
	// StatementsKey (span events of replays only) is
	// [sqlconflict.Observation.Statements].
	StatementsKey = attribute.Key("sqlconflict.statements")
	// ReasonKey (span events only) is [sqlconflict.Observation.Reason],
	// when it is not empty.
	ReasonKey = attribute.Key("sqlconflict.reason")
)

// SpanEventPrefix begins the names of the span events; the event's name
// follows.
const SpanEventPrefix = "sqlconflict."

// waitBuckets are the retry.wait histogram's bucket boundaries (the package
// doc lists them).
var waitBuckets = []float64{0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// An Option configures [NewObserver].
type Option interface {
	apply(*config)
}

type config struct {
	mp     metric.MeterProvider
	attrs  []attribute.KeyValue
	noSpan bool
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithMeterProvider makes the instruments with mp instead of the global
// MeterProvider ([otel.GetMeterProvider]). Nil means the global one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.mp = mp })
}

// WithAttributes adds attrs to every measurement, after this package's own:
// an attribute with the key of one of them replaces it (db.system.name
// "mariadb", say, which the wrapper cannot tell from "mysql"). Use it to
// tell databases or pools apart, with attributes of low cardinality. They
// are not added to span events.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return optionFunc(func(c *config) { c.attrs = append(c.attrs, attrs...) })
}

// WithSpanEvents says whether the Observer adds events to the caller's
// span: by default it does.
func WithSpanEvents(on bool) Option {
	return optionFunc(func(c *config) { c.noSpan = !on })
}

type observer struct {
	conflicts metric.Int64Counter
	retries   metric.Int64Counter
	wait      metric.Float64Histogram
	attrs     []attribute.KeyValue
	spans     bool
}

// NewObserver returns an Observer that reports every event to
// OpenTelemetry, for [sqlconflict.Options.Observer] or
// [sqlconflict.TxRunner.Observer]. It may be made before the global
// MeterProvider is set: the instruments it makes with the global one then
// report to the provider set later. The Observer is safe for concurrent use
// and, as an Observer must be, quick: it never blocks.
//
// The error is one the MeterProvider gave when making an instrument; the
// Observer is then nil.
func NewObserver(opts ...Option) (sqlconflict.Observer, error) {
	var c config
	for _, o := range opts {
		o.apply(&c)
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	m := c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	ob := &observer{attrs: c.attrs, spans: !c.noSpan}
	var err1, err2, err3 error
	ob.conflicts, err1 = m.Int64Counter(ConflictsName, metric.WithUnit("{conflict}"),
		metric.WithDescription("Conflicts, and lost answers, that sqlconflict acted on, by what it did about them (sqlconflict.outcome)."))
	ob.retries, err2 = m.Int64Counter(RetriesName, metric.WithUnit("{retry}"),
		metric.WithDescription("Statements re-sent, transactions replayed and verified, and transactions rerun by RunTx, after a conflict."))
	ob.wait, err3 = m.Float64Histogram(RetryWaitName, metric.WithUnit("s"),
		metric.WithDescription("The backoff before each statement retry, transaction replay and RunTx rerun."),
		metric.WithExplicitBucketBoundaries(waitBuckets...))
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	return ob.observe, nil
}

// observe is the Observer.
func (ob *observer) observe(ctx context.Context, o sqlconflict.Observation) {
	kv := make([]attribute.KeyValue, 0, 5+len(ob.attrs))
	kv = append(kv, OutcomeKey.String(o.Event.String()))
	kv = classAttrs(kv, o.Class)
	kv = append(kv, ob.attrs...) // last: they win over ours (attribute.NewSet keeps the last)
	set := metric.WithAttributeSet(attribute.NewSet(kv...))
	ob.conflicts.Add(ctx, 1, set)
	if retried(o.Event) {
		ob.retries.Add(ctx, 1, set)
		ob.wait.Record(ctx, o.Wait.Seconds(), set)
	}
	if ob.spans {
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			span.AddEvent(SpanEventPrefix+o.Event.String(), trace.WithAttributes(spanAttrs(o)...))
		}
	}
}

// retried reports the events that run work again.
func retried(e sqlconflict.Event) bool {
	return e == sqlconflict.EventRetry || e == sqlconflict.EventReplay || e == sqlconflict.EventRerun
}

// classAttrs appends the attributes of cl that measurements carry.
func classAttrs(kv []attribute.KeyValue, cl sqlconflict.Class) []attribute.KeyValue {
	kv = append(kv, KindKey.String(cl.Kind.Name()), ScopeKey.String(cl.Scope.Name()))
	switch cl.Dialect {
	case sqlconflict.DialectPostgres:
		kv = append(kv, semconv.DBSystemNamePostgreSQL)
	case sqlconflict.DialectMySQL:
		kv = append(kv, semconv.DBSystemNameMySQL)
	case sqlconflict.DialectSQLite:
		kv = append(kv, semconv.DBSystemNameSQLite)
	}
	if cl.Code != "" {
		kv = append(kv, semconv.DBResponseStatusCode(cl.Code))
	}
	return kv
}

// spanAttrs returns the attributes of o's span event.
func spanAttrs(o sqlconflict.Observation) []attribute.KeyValue {
	kv := make([]attribute.KeyValue, 0, 12)
	kv = classAttrs(kv, o.Class)
	kv = append(kv, RetryableKey.Bool(o.Class.Retryable))
	if o.Class.Constraint != "" {
		kv = append(kv, ConstraintKey.String(o.Class.Constraint))
	}
	switch o.Event {
	case sqlconflict.EventTxDoomed, sqlconflict.EventCommitSettled:
		// No figures.
	case sqlconflict.EventSavepointRollback:
		kv = append(kv, AttemptKey.Int(o.Attempt))
	default: // a retry, a rerun, the replay events, and events added later
		kv = append(kv, AttemptKey.Int(o.Attempt), WaitKey.Float64(o.Wait.Seconds()), ElapsedKey.Float64(o.Elapsed.Seconds()))
	}
	if o.Event == sqlconflict.EventReplay || o.Event == sqlconflict.EventReplayFailed {
		kv = append(kv, StatementsKey.Int(o.Statements))
	}
	if o.Reason != "" {
		kv = append(kv, ReasonKey.String(o.Reason))
	}
	return kv
}
