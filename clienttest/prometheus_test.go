package clienttest

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sqlconflict/sqlconflict"
)

// NewPrometheusObserver is the Prometheus example of docs/reliability.md
// ("Observing retries in production"), compiled and run here so that the
// root module and the otel module need not require client_golang. Keep the
// two copies the same.
//
// NewPrometheusObserver registers sqlconflict's metrics with reg and returns
// the Observer that updates them: every event by what was done and the
// error's kind, and the wait before each statement retry, transaction replay
// and RunTx rerun (the histogram's count is the number of retries).
func NewPrometheusObserver(reg prometheus.Registerer) (sqlconflict.Observer, error) {
	conflicts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sqlconflict_conflicts_total",
		Help: "Conflicts, and lost answers, that sqlconflict acted on, by what it did (event).",
	}, []string{"event", "kind"})
	waits := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sqlconflict_retry_wait_seconds",
		Help:    "The backoff before each statement retry, transaction replay and RunTx rerun.",
		Buckets: []float64{0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}, []string{"event", "kind"})
	for _, c := range []prometheus.Collector{conflicts, waits} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context, o sqlconflict.Observation) {
		// Quick, and never touches the database: it runs on the
		// goroutine using the connection.
		event, kind := o.Event.String(), o.Class.Kind.Name()
		conflicts.WithLabelValues(event, kind).Inc()
		switch o.Event {
		case sqlconflict.EventRetry, sqlconflict.EventReplay, sqlconflict.EventRerun:
			waits.WithLabelValues(event, kind).Observe(o.Wait.Seconds())
		}
	}, nil
}

// The metrics after what the wrapper reports for a statement that deadlocked
// twice before it went through, and a transaction whose replay did not
// verify, which RunTx then reran (the Observations are made up here; on a
// server, set opts.Observer and the wrapper reports them).
func ExampleNewPrometheusObserver() {
	reg := prometheus.NewRegistry()
	obs, err := NewPrometheusObserver(reg)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	deadlock := sqlconflict.Class{Kind: sqlconflict.KindDeadlock, Scope: sqlconflict.ScopeStatement,
		Retryable: true, Dialect: sqlconflict.DialectPostgres, Code: "40P01"}
	unique := sqlconflict.Class{Kind: sqlconflict.KindUniqueViolation, Scope: sqlconflict.ScopeStatement,
		Dialect: sqlconflict.DialectPostgres, Code: "23505"}
	for _, o := range []sqlconflict.Observation{
		{Event: sqlconflict.EventRetry, Class: deadlock, Attempt: 2, Wait: 3 * time.Millisecond},
		{Event: sqlconflict.EventRetry, Class: deadlock, Attempt: 3, Wait: 7 * time.Millisecond},
		{Event: sqlconflict.EventReplayFailed, Class: unique, Attempt: 1, Reason: "statement 1: no row, not 1"},
		{Event: sqlconflict.EventRerun, Class: unique, Attempt: 2, Wait: 20 * time.Millisecond},
	} {
		obs(ctx, o)
	}

	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			if h := m.GetHistogram(); h != nil {
				fmt.Printf("%s count %d, sum %.3f\n", name, h.GetSampleCount(), h.GetSampleSum())
			} else {
				fmt.Printf("%s %g\n", name, m.GetCounter().GetValue())
			}
		}
	}
	// Output:
	// sqlconflict_conflicts_total{event="replay_failed",kind="unique_violation"} 1
	// sqlconflict_conflicts_total{event="rerun",kind="unique_violation"} 1
	// sqlconflict_conflicts_total{event="retry",kind="deadlock"} 2
	// sqlconflict_retry_wait_seconds{event="rerun",kind="unique_violation"} count 1, sum 0.020
	// sqlconflict_retry_wait_seconds{event="retry",kind="deadlock"} count 2, sum 0.010
}

// TestPrometheusObserverInDocs: docs/reliability.md shows NewPrometheusObserver
// exactly as it is here, where it runs.
func TestPrometheusObserverInDocs(t *testing.T) {
	src, err := os.ReadFile("prometheus_test.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "prometheus_test.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var here string
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "NewPrometheusObserver" {
			here = string(src[fset.Position(fn.Pos()).Offset:fset.Position(fn.End()).Offset])
		}
	}
	doc, err := os.ReadFile("../docs/reliability.md")
	if err != nil {
		t.Fatal(err)
	}
	var shown string
	for _, b := range goBlocks(string(doc)) {
		if i := strings.Index(b.code, "func NewPrometheusObserver("); i >= 0 {
			shown = strings.TrimSpace(b.code[i:])
		}
	}
	if here == "" || shown == "" {
		t.Fatalf("NewPrometheusObserver not found: here %t, in docs/reliability.md %t", here != "", shown != "")
	}
	if shown != here {
		t.Errorf("docs/reliability.md shows another NewPrometheusObserver than prometheus_test.go's:\n%s\n\nwant:\n%s", shown, here)
	}
}
