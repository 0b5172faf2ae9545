package otel_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictotel "github.com/sqlconflict/sqlconflict/otel"
)

// The bucket boundaries the package doc lists.
var buckets = []float64{0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

var (
	pgDeadlock = sqlconflict.Class{Kind: sqlconflict.KindDeadlock, Scope: sqlconflict.ScopeStatement,
		Retryable: true, Dialect: sqlconflict.DialectPostgres, Code: "40P01", SQLState: "40P01"}
	myDeadlock = sqlconflict.Class{Kind: sqlconflict.KindDeadlock, Scope: sqlconflict.ScopeTransaction,
		Retryable: true, Dialect: sqlconflict.DialectMySQL, Code: "1213", SQLState: "40001"}
	pgUnique = sqlconflict.Class{Kind: sqlconflict.KindUniqueViolation, Scope: sqlconflict.ScopeStatement,
		Dialect: sqlconflict.DialectPostgres, Code: "23505", SQLState: "23505", Constraint: "tags_name_key", Table: "tags"}
	sqliteBusy = sqlconflict.Class{Kind: sqlconflict.KindSerializationFailure, Scope: sqlconflict.ScopeTransaction,
		Retryable: true, Dialect: sqlconflict.DialectSQLite, Code: "517"}
)

// observations are one of each event, as the wrapper and RunTx report
// them.
var observations = []sqlconflict.Observation{
	{Event: sqlconflict.EventRetry, Class: pgDeadlock, Attempt: 2, Wait: 2 * time.Millisecond, Elapsed: 1100 * time.Millisecond},
	{Event: sqlconflict.EventRetry, Class: pgDeadlock, Attempt: 3, Wait: 4 * time.Millisecond, Elapsed: 2200 * time.Millisecond},
	{Event: sqlconflict.EventSavepointRollback, Class: pgUnique, Attempt: 0},
	{Event: sqlconflict.EventTxDoomed, Class: myDeadlock},
	{Event: sqlconflict.EventCommitSettled, Class: sqlconflict.Class{Dialect: sqlconflict.DialectPostgres}},
	{Event: sqlconflict.EventReplay, Class: myDeadlock, Attempt: 1, Wait: 30 * time.Millisecond, Elapsed: 31 * time.Millisecond, Statements: 3},
	{Event: sqlconflict.EventReplayFailed, Class: myDeadlock, Attempt: 2, Wait: 8 * time.Millisecond, Elapsed: 50 * time.Millisecond,
		Statements: 1, Reason: "statement 1: 2 rows affected, not 1"},
	{Event: sqlconflict.EventRerun, Class: sqlconflict.Class{}, Attempt: 2, Elapsed: 40 * time.Millisecond},
	{Event: sqlconflict.EventRerun, Class: sqliteBusy, Attempt: 3, Wait: 600 * time.Millisecond, Elapsed: 700 * time.Millisecond},
}

// meter returns a MeterProvider whose reader the test collects.
func meter(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	return mp, reader
}

func newObserver(t *testing.T, opts ...sqlconflictotel.Option) sqlconflict.Observer {
	t.Helper()
	obs, err := sqlconflictotel.NewObserver(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return obs
}

func collect(t *testing.T, reader *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// scope returns the test's one scope of metrics.
func scope(t *testing.T, rm metricdata.ResourceMetrics) metricdata.ScopeMetrics {
	t.Helper()
	if len(rm.ScopeMetrics) != 1 {
		t.Fatalf("%d scopes of metrics, want 1: %+v", len(rm.ScopeMetrics), rm.ScopeMetrics)
	}
	return rm.ScopeMetrics[0]
}

func attrs(outcome string, cl sqlconflict.Class, extra ...attribute.KeyValue) attribute.Set {
	kv := []attribute.KeyValue{
		attribute.String("sqlconflict.outcome", outcome),
		attribute.String("sqlconflict.kind", cl.Kind.Name()),
		attribute.String("sqlconflict.scope", cl.Scope.Name()),
	}
	switch cl.Dialect {
	case sqlconflict.DialectPostgres:
		kv = append(kv, attribute.String("db.system.name", "postgresql"))
	case sqlconflict.DialectMySQL:
		kv = append(kv, attribute.String("db.system.name", "mysql"))
	case sqlconflict.DialectSQLite:
		kv = append(kv, attribute.String("db.system.name", "sqlite"))
	}
	if cl.Code != "" {
		kv = append(kv, attribute.String("db.response.status_code", cl.Code))
	}
	return attribute.NewSet(append(kv, extra...)...)
}

func point(n int64, set attribute.Set) metricdata.DataPoint[int64] {
	return metricdata.DataPoint[int64]{Attributes: set, Value: n}
}

func sum(points ...metricdata.DataPoint[int64]) metricdata.Sum[int64] {
	return metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: points}
}

// hist is the data point of waits (seconds, in order).
func hist(set attribute.Set, waits ...float64) metricdata.HistogramDataPoint[float64] {
	dp := metricdata.HistogramDataPoint[float64]{Attributes: set, Count: uint64(len(waits)), Bounds: buckets,
		BucketCounts: make([]uint64, len(buckets)+1)}
	lo, hi := waits[0], waits[0]
	for _, w := range waits {
		dp.Sum += w
		lo, hi = min(lo, w), max(hi, w)
		i := 0
		for i < len(buckets) && w > buckets[i] {
			i++
		}
		dp.BucketCounts[i]++
	}
	dp.Min, dp.Max = metricdata.NewExtrema(lo), metricdata.NewExtrema(hi)
	return dp
}

// TestMetrics: each event counts once in sqlconflict.conflicts, by
// outcome, kind, scope, system and code; the retries, replays and reruns
// also in sqlconflict.retries, with their waits in sqlconflict.retry.wait.
func TestMetrics(t *testing.T) {
	mp, reader := meter(t)
	obs := newObserver(t, sqlconflictotel.WithMeterProvider(mp))
	ctx := context.Background()
	for _, o := range observations {
		obs(ctx, o)
	}
	unknown := sqlconflict.Class{}
	want := metricdata.ScopeMetrics{
		Scope: instrumentation.Scope{Name: "github.com/sqlconflict/sqlconflict/otel", SchemaURL: semconv.SchemaURL},
		Metrics: []metricdata.Metrics{
			{
				Name:        "sqlconflict.conflicts",
				Description: "Conflicts, and lost answers, that sqlconflict acted on, by what it did about them (sqlconflict.outcome).",
				Unit:        "{conflict}",
				Data: sum(
					point(2, attrs("retry", pgDeadlock)),
					point(1, attrs("savepoint_rollback", pgUnique)),
					point(1, attrs("tx_doomed", myDeadlock)),
					point(1, attrs("commit_settled", observations[4].Class)),
					point(1, attrs("replay", myDeadlock)),
					point(1, attrs("replay_failed", myDeadlock)),
					point(1, attrs("rerun", unknown)),
					point(1, attrs("rerun", sqliteBusy)),
				),
			},
			{
				Name:        "sqlconflict.retries",
				Description: "Statements re-sent, transactions replayed and verified, and transactions rerun by RunTx, after a conflict.",
				Unit:        "{retry}",
				Data: sum(
					point(2, attrs("retry", pgDeadlock)),
					point(1, attrs("replay", myDeadlock)),
					point(1, attrs("rerun", unknown)),
					point(1, attrs("rerun", sqliteBusy)),
				),
			},
			{
				Name:        "sqlconflict.retry.wait",
				Description: "The backoff before each statement retry, transaction replay and RunTx rerun.",
				Unit:        "s",
				Data: metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: []metricdata.HistogramDataPoint[float64]{
					hist(attrs("retry", pgDeadlock), 0.002, 0.004),
					hist(attrs("replay", myDeadlock), 0.03),
					hist(attrs("rerun", unknown), 0),
					hist(attrs("rerun", sqliteBusy), 0.6),
				}},
			},
		},
	}
	metricdatatest.AssertEqual(t, want, scope(t, collect(t, reader)), metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
}

// TestSpanEvents: each event is a span event on the caller's span, with
// its class and figures; the in-memory exporter gets them as they were
// added.
func TestSpanEvents(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	mp, _ := meter(t)
	obs := newObserver(t, sqlconflictotel.WithMeterProvider(mp))

	ctx, span := tp.Tracer("test").Start(context.Background(), "checkout")
	for _, o := range observations {
		obs(ctx, o)
	}
	span.End()

	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	pg, my, lite := "db.system.name=postgresql", "db.system.name=mysql", "db.system.name=sqlite"
	want := [][]string{
		{"sqlconflict.retry", "sqlconflict.kind=deadlock", "sqlconflict.scope=statement", pg, "db.response.status_code=40P01",
			"sqlconflict.retryable=true", "sqlconflict.attempt=2", "sqlconflict.wait=0.002", "sqlconflict.elapsed=1.1"},
		{"sqlconflict.retry", "sqlconflict.kind=deadlock", "sqlconflict.scope=statement", pg, "db.response.status_code=40P01",
			"sqlconflict.retryable=true", "sqlconflict.attempt=3", "sqlconflict.wait=0.004", "sqlconflict.elapsed=2.2"},
		{"sqlconflict.savepoint_rollback", "sqlconflict.kind=unique_violation", "sqlconflict.scope=statement", pg,
			"db.response.status_code=23505", "sqlconflict.retryable=false", "sqlconflict.constraint=tags_name_key", "sqlconflict.attempt=0"},
		{"sqlconflict.tx_doomed", "sqlconflict.kind=deadlock", "sqlconflict.scope=transaction", my, "db.response.status_code=1213",
			"sqlconflict.retryable=true"},
		{"sqlconflict.commit_settled", "sqlconflict.kind=unknown", "sqlconflict.scope=none", pg, "sqlconflict.retryable=false"},
		{"sqlconflict.replay", "sqlconflict.kind=deadlock", "sqlconflict.scope=transaction", my, "db.response.status_code=1213",
			"sqlconflict.retryable=true", "sqlconflict.attempt=1", "sqlconflict.wait=0.03", "sqlconflict.elapsed=0.031",
			"sqlconflict.statements=3"},
		{"sqlconflict.replay_failed", "sqlconflict.kind=deadlock", "sqlconflict.scope=transaction", my, "db.response.status_code=1213",
			"sqlconflict.retryable=true", "sqlconflict.attempt=2", "sqlconflict.wait=0.008", "sqlconflict.elapsed=0.05",
			"sqlconflict.statements=1", "sqlconflict.reason=statement 1: 2 rows affected, not 1"},
		{"sqlconflict.rerun", "sqlconflict.kind=unknown", "sqlconflict.scope=none", "sqlconflict.retryable=false",
			"sqlconflict.attempt=2", "sqlconflict.wait=0", "sqlconflict.elapsed=0.04"},
		{"sqlconflict.rerun", "sqlconflict.kind=serialization_failure", "sqlconflict.scope=transaction", lite,
			"db.response.status_code=517", "sqlconflict.retryable=true", "sqlconflict.attempt=3", "sqlconflict.wait=0.6",
			"sqlconflict.elapsed=0.7"},
	}
	got := spans[0].Events
	if len(got) != len(want) {
		t.Fatalf("%d span events, want %d: %v", len(got), len(want), got)
	}
	for i, ev := range got {
		g := []string{ev.Name}
		for _, kv := range ev.Attributes {
			g = append(g, string(kv.Key)+"="+kv.Value.Emit())
		}
		if fmt.Sprint(g) != fmt.Sprint(want[i]) {
			t.Errorf("span event %d:\n got %q\nwant %q", i, g, want[i])
		}
	}
	// The types, which Emit does not show.
	for _, kv := range got[6].Attributes {
		wantType := attribute.STRING
		switch kv.Key {
		case "sqlconflict.retryable":
			wantType = attribute.BOOL
		case "sqlconflict.attempt", "sqlconflict.statements":
			wantType = attribute.INT64
		case "sqlconflict.wait", "sqlconflict.elapsed":
			wantType = attribute.FLOAT64
		}
		if kv.Value.Type() != wantType {
			t.Errorf("%s is a %v, want a %v", kv.Key, kv.Value.Type(), wantType)
		}
	}
}

// TestNoSpan: without a span, with one that is not recording, or with span
// events turned off, the Observer adds no event and still counts.
func TestNoSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.NeverSample()))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	mp, reader := meter(t)
	obs := newObserver(t, sqlconflictotel.WithMeterProvider(mp))
	quiet := newObserver(t, sqlconflictotel.WithMeterProvider(mp), sqlconflictotel.WithSpanEvents(false))
	o := observations[0]

	obs(context.Background(), o)
	ctx, span := tp.Tracer("test").Start(context.Background(), "unsampled")
	if span.IsRecording() {
		t.Fatal("the span records")
	}
	obs(ctx, o)
	span.End()

	rec := tracetest.NewSpanRecorder()
	tp2 := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp2.Shutdown(context.Background()) })
	ctx, span = tp2.Tracer("test").Start(context.Background(), "quiet")
	quiet(ctx, o)
	span.End()

	if n := len(exp.GetSpans()); n != 0 {
		t.Errorf("%d spans exported, want 0", n)
	}
	if ended := rec.Ended(); len(ended) != 1 || len(ended[0].Events()) != 0 {
		t.Errorf("WithSpanEvents(false): spans %v, want one without events", ended)
	}
	m := named(t, scope(t, collect(t, reader)), "sqlconflict.conflicts")
	metricdatatest.AssertEqual(t, metricdata.Metrics{Name: m.Name, Description: m.Description, Unit: m.Unit,
		Data: sum(point(3, attrs("retry", pgDeadlock)))}, m, metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
}

// TestWithAttributes: the attributes given are added to every measurement,
// and replace the Observer's own of the same key.
func TestWithAttributes(t *testing.T) {
	mp, reader := meter(t)
	obs := newObserver(t, sqlconflictotel.WithMeterProvider(mp),
		sqlconflictotel.WithAttributes(semconv.DBSystemNameMariaDB, attribute.String("db.namespace", "shop")))
	obs(context.Background(), observations[5]) // a replay on MySQL
	mariadb := attribute.NewSet(
		attribute.String("sqlconflict.outcome", "replay"),
		attribute.String("sqlconflict.kind", "deadlock"),
		attribute.String("sqlconflict.scope", "transaction"),
		attribute.String("db.system.name", "mariadb"),
		attribute.String("db.response.status_code", "1213"),
		attribute.String("db.namespace", "shop"),
	)
	sm := scope(t, collect(t, reader))
	if len(sm.Metrics) != 3 {
		t.Fatalf("%d metrics, want 3", len(sm.Metrics))
	}
	for _, m := range sm.Metrics {
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		}
		if len(sets) != 1 || !sets[0].Equals(&mariadb) {
			t.Errorf("%s: attributes %v, want %v", m.Name, sets, mariadb.ToSlice())
		}
	}
}

// named returns the metric called name in sm.
func named(t *testing.T, sm metricdata.ScopeMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, m := range sm.Metrics {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("no metric %s in %+v", name, sm.Metrics)
	return metricdata.Metrics{}
}

// TestGlobalMeterProvider: an Observer made before the global
// MeterProvider is set reports to the one set later. OpenTelemetry hands
// its global meters over once per process, so this test holds only on its
// first run (not under -count=2).
func TestGlobalMeterProvider(t *testing.T) {
	obs := newObserver(t)
	mp, reader := meter(t)
	otel.SetMeterProvider(mp)
	obs(context.Background(), observations[0])
	// By name: through the global delegate the metrics come in no fixed
	// order (CI once saw the wait histogram first).
	m := named(t, scope(t, collect(t, reader)), "sqlconflict.conflicts")
	if s, ok := m.Data.(metricdata.Sum[int64]); !ok || len(s.DataPoints) != 1 || s.DataPoints[0].Value != 1 {
		t.Errorf("got %+v, want sqlconflict.conflicts at 1", m)
	}
}

// TestConcurrent: an Observer is called from every goroutine that uses a
// connection (run with -race).
func TestConcurrent(t *testing.T) {
	mp, reader := meter(t)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	obs := newObserver(t, sqlconflictotel.WithMeterProvider(mp))
	ctx, span := tp.Tracer("test").Start(context.Background(), "shared")
	defer span.End()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				obs(ctx, observations[0])
			}
		}()
	}
	wg.Wait()
	m := named(t, scope(t, collect(t, reader)), "sqlconflict.conflicts")
	metricdatatest.AssertEqual(t, metricdata.Metrics{Name: m.Name, Description: m.Description, Unit: m.Unit,
		Data: sum(point(800, attrs("retry", pgDeadlock)))}, m, metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars())
}
