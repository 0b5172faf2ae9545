package otel_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/lib/pq"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictotel "github.com/sqlconflict/sqlconflict/otel"
)

// The Observer goes in the Options of the wrapped connector; it reports
// to the global MeterProvider, and adds events to the span of the
// application's call.
func Example() {
	obs, err := sqlconflictotel.NewObserver()
	if err != nil {
		log.Fatal(err)
	}
	opts := sqlconflict.DefaultOptions()
	opts.Observer = obs
	base, err := pq.NewConnector(os.Getenv("DATABASE_URL")) // a DSN without conflict_* options: set them in opts
	if err != nil {
		log.Fatal(err)
	}
	connector, err := sqlconflict.NewConnector(base, opts)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
}

// The instruments, read with the SDK's ManualReader after two retries of a
// statement that deadlocked (the Observations the wrapper would report).
func ExampleNewObserver() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	obs, err := sqlconflictotel.NewObserver(sqlconflictotel.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	deadlock := sqlconflict.Class{Kind: sqlconflict.KindDeadlock, Scope: sqlconflict.ScopeStatement,
		Retryable: true, Dialect: sqlconflict.DialectPostgres, Code: "40P01"}
	obs(ctx, sqlconflict.Observation{Event: sqlconflict.EventRetry, Class: deadlock, Attempt: 2, Wait: 3 * time.Millisecond})
	obs(ctx, sqlconflict.Observation{Event: sqlconflict.EventRetry, Class: deadlock, Attempt: 3, Wait: 7 * time.Millisecond})

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					outcome, _ := dp.Attributes.Value(sqlconflictotel.OutcomeKey)
					kind, _ := dp.Attributes.Value(sqlconflictotel.KindKey)
					fmt.Printf("%s{outcome=%s, kind=%s} %d\n", m.Name, outcome.Emit(), kind.Emit(), dp.Value)
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					fmt.Printf("%s count %d, sum %.3f %s\n", m.Name, dp.Count, dp.Sum, m.Unit)
				}
			}
		}
	}
	// Output:
	// sqlconflict.conflicts{outcome=retry, kind=deadlock} 2
	// sqlconflict.retries{outcome=retry, kind=deadlock} 2
	// sqlconflict.retry.wait count 2, sum 0.010 s
}

// The span event the Observer adds to the application's span, here one
// recorded by the SDK's SpanRecorder.
func ExampleNewObserver_spanEvent() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	obs, err := sqlconflictotel.NewObserver()
	if err != nil {
		log.Fatal(err)
	}
	ctx, span := tp.Tracer("app").Start(context.Background(), "checkout")
	obs(ctx, sqlconflict.Observation{Event: sqlconflict.EventReplay, Attempt: 1, Wait: 4 * time.Millisecond,
		Elapsed: 5 * time.Millisecond, Statements: 2,
		Class: sqlconflict.Class{Kind: sqlconflict.KindDeadlock, Scope: sqlconflict.ScopeTransaction,
			Retryable: true, Dialect: sqlconflict.DialectMySQL, Code: "1213"}})
	span.End()

	for _, ev := range rec.Ended()[0].Events() {
		fmt.Println(ev.Name)
		for _, kv := range ev.Attributes {
			fmt.Printf("  %s: %s\n", kv.Key, kv.Value.Emit())
		}
	}
	// Output:
	// sqlconflict.replay
	//   sqlconflict.kind: deadlock
	//   sqlconflict.scope: transaction
	//   db.system.name: mysql
	//   db.response.status_code: 1213
	//   sqlconflict.retryable: true
	//   sqlconflict.attempt: 1
	//   sqlconflict.wait: 0.004
	//   sqlconflict.elapsed: 0.005
	//   sqlconflict.statements: 2
}
