package otel_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictotel "github.com/sqlconflict/sqlconflict/otel"
)

// pgDSN is the PostgreSQL server of the integration tests: unset, they
// skip; set, an unreachable server fails them.
func pgDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("SQLCONFLICT_PG_DSN")
	if dsn == "" {
		t.Skip("SQLCONFLICT_PG_DSN is not set")
	}
	return dsn
}

// openPG opens dsn through lib/pq: wrapped with opts, or raw if opts is
// nil. A server that does not answer fails the test.
func openPG(t *testing.T, dsn string, opts *sqlconflict.Options) *sql.DB {
	t.Helper()
	base, err := pq.NewConnector(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(base)
	if opts != nil {
		c, err := sqlconflict.NewConnector(base, *opts)
		if err != nil {
			t.Fatal(err)
		}
		db = sql.OpenDB(c)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("SQLCONFLICT_PG_DSN is set, but the server does not answer: %v", err)
	}
	return db
}

// TestIntegrationDeadlockReplayed: a plain transaction that loses a real
// deadlock on PostgreSQL is replayed by the wrapper (conflict_replay, on by
// default), and the Observer counts it and adds the event to the
// application's span.
func TestIntegrationDeadlockReplayed(t *testing.T) {
	dsn := pgDSN(t)
	mp, reader := meter(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	opts := sqlconflict.DefaultOptions()
	opts.Observer = newObserver(t, sqlconflictotel.WithMeterProvider(mp))
	db := openPG(t, dsn, &opts)
	raw := openPG(t, dsn, nil)

	var b [6]byte
	rand.Read(b[:])
	tbl := "sqlconflictotel_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := raw.ExecContext(ctx, "CREATE TABLE "+tbl+" (id INT PRIMARY KEY, v INT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Exec("DROP TABLE IF EXISTS " + tbl) })
	if _, err := raw.ExecContext(ctx, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	upd := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"

	// The other session, raw, checks for deadlocks late, so that the
	// victim, which waits first and checks after deadlock_timeout (1 s by
	// default), is the one PostgreSQL aborts.
	other, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	if _, err := other.ExecContext(ctx, "SET LOCAL deadlock_timeout = '30s'"); err != nil {
		t.Fatal(err)
	}

	appCtx, span := tp.Tracer("test").Start(ctx, "transfer")
	victim, err := db.BeginTx(appCtx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Rollback()
	if _, err := victim.ExecContext(appCtx, upd, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := other.ExecContext(ctx, upd, 2); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := victim.ExecContext(appCtx, upd, 2) // waits for the other session
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	// Closes the cycle; the victim's deadlock check aborts it, and its
	// replay waits for row 1 until the other session commits.
	if _, err := other.ExecContext(ctx, upd, 1); err != nil {
		t.Fatalf("the server aborted the other session, not the victim: %v", err)
	}
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the victim's update: %v, want it replayed", err)
	}
	if err := victim.Commit(); err != nil {
		t.Fatal(err)
	}
	span.End()
	var v1, v2 int
	if err := raw.QueryRowContext(ctx, "SELECT (SELECT v FROM "+tbl+" WHERE id = 1), (SELECT v FROM "+tbl+" WHERE id = 2)").Scan(&v1, &v2); err != nil {
		t.Fatal(err)
	}
	if v1 != 2 || v2 != 2 {
		t.Errorf("rows %d, %d, want 2, 2: both transactions committed", v1, v2)
	}

	replay := attribute.NewSet(
		attribute.String("sqlconflict.outcome", "replay"),
		attribute.String("sqlconflict.kind", "deadlock"),
		attribute.String("sqlconflict.scope", "statement"),
		attribute.String("db.system.name", "postgresql"),
		attribute.String("db.response.status_code", "40P01"),
	)
	sm := scope(t, collect(t, reader))
	for _, m := range sm.Metrics {
		var n uint64
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				n += uint64(dp.Value)
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				n += dp.Count
				sets = append(sets, dp.Attributes)
			}
		}
		if n != 1 || len(sets) != 1 || !sets[0].Equals(&replay) {
			t.Errorf("%s: %d at %v, want 1 at %v", m.Name, n, sets, replay.ToSlice())
		}
	}
	if len(sm.Metrics) != 3 {
		t.Errorf("%d metrics, want 3", len(sm.Metrics))
	}

	spans := exp.GetSpans()
	if len(spans) != 1 || spans[0].Name != "transfer" {
		t.Fatalf("spans %v, want the application's", spans)
	}
	evs := spans[0].Events
	if len(evs) != 1 || evs[0].Name != "sqlconflict.replay" {
		t.Fatalf("span events %v, want one sqlconflict.replay", evs)
	}
	got := attribute.NewSet(evs[0].Attributes...)
	for _, want := range []attribute.KeyValue{
		attribute.String("sqlconflict.kind", "deadlock"),
		attribute.String("db.response.status_code", "40P01"),
		attribute.String("db.system.name", "postgresql"),
		attribute.Bool("sqlconflict.retryable", true),
		attribute.Int("sqlconflict.attempt", 1),
		attribute.Int("sqlconflict.statements", 1), // the update of row 1, before the failing one
	} {
		if v, ok := got.Value(want.Key); !ok || v != want.Value {
			t.Errorf("span event attribute %s = %v, want %v", want.Key, v.Emit(), want.Value.Emit())
		}
	}
	for _, k := range []attribute.Key{"sqlconflict.wait", "sqlconflict.elapsed"} {
		if v, ok := got.Value(k); !ok || v.AsFloat64() < 0 || v.AsFloat64() > 30 {
			t.Errorf("span event attribute %s = %v, want seconds", k, v.Emit())
		}
	}
	var logged []string
	for _, kv := range evs[0].Attributes {
		logged = append(logged, string(kv.Key)+"="+kv.Value.Emit())
	}
	t.Logf("%s: %s", evs[0].Name, strings.Join(logged, " "))
}
