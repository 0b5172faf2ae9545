package itest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// What the fault tests and benchmarks of every module measure the same way.

// MaxLate is the hard bound's target: no call through the wrapper returns
// later than this after its context's deadline, whatever the fault.
const MaxLate = 100 * time.Millisecond

// Late is what one call bounded by a deadline did.
type Late struct {
	Late     time.Duration // past the deadline; meaningful if Returned
	Err      error
	Returned bool          // within the caller's patience
	Done     chan struct{} // closed when the call returns, late or not
}

// CallLate runs op with a context whose deadline is d from now and waits
// for it at most patience past the deadline. A call still blocked then is
// left running; Done tells when it ends.
func CallLate(d, patience time.Duration, op func(ctx context.Context) error) *Late {
	r := &Late{Done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	deadline, _ := ctx.Deadline()
	go func() {
		defer close(r.Done)
		defer cancel()
		r.Err = op(ctx)
	}()
	select {
	case <-r.Done:
		r.Returned, r.Late = true, max(0, time.Since(deadline))
	case <-time.After(d + patience):
	}
	return r
}

func (r *Late) String() string {
	if !r.Returned {
		return "still blocked"
	}
	return fmt.Sprintf("%v late (%s)", r.Late.Round(time.Millisecond), ErrName(r.Err))
}

// ErrName names an error briefly for a log: the context's error it matches,
// or its type and the start of its message.
func ErrName(err error) string {
	switch {
	case err == nil:
		return "no error"
	case errors.Is(err, context.DeadlineExceeded):
		return "context.DeadlineExceeded"
	case errors.Is(err, context.Canceled):
		return "context.Canceled"
	}
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60] + "..."
	}
	return fmt.Sprintf("%T %q", err, msg)
}

// WithParams returns dsn (a URL or go-sql-driver/mysql's form) with query
// parameters appended.
func WithParams(dsn string, params ...string) string {
	if len(params) == 0 {
		return dsn
	}
	sep := "?"
	if strings.Contains(dsn[strings.LastIndex(dsn, "/")+1:], "?") {
		sep = "&"
	}
	return dsn + sep + strings.Join(params, "&")
}

// Pairs times op through raw and wrapped alternately, each iteration a
// pair, and reports the median of each and the median of the pairs'
// ratios (wrapped/raw): a loopback round trip on a shared machine varies
// far more than a wrapper's cost, and pairing exposes both drivers to the
// same conditions. With deadline, each call gets a context with a
// deadline of its own, as a request handler's.
func Pairs(b *testing.B, raw, wrapped *sql.DB, deadline bool, op func(context.Context, *sql.DB) error) {
	b.Helper()
	do := func(db *sql.DB) time.Duration {
		start := time.Now()
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if deadline {
			ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		}
		err := op(ctx, db)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	do(raw) // open both connections outside the timed loop
	do(wrapped)
	var rawT, wrappedT, ratios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var r, w time.Duration
		if i%2 == 0 {
			r, w = do(raw), do(wrapped)
		} else {
			w, r = do(wrapped), do(raw)
		}
		rawT = append(rawT, float64(r))
		wrappedT = append(wrappedT, float64(w))
		ratios = append(ratios, float64(w)/float64(r))
	}
	b.ReportMetric(Median(rawT), "raw-ns/op")
	b.ReportMetric(Median(wrappedT), "wrapped-ns/op")
	b.ReportMetric(Median(ratios), "wrapped/raw")
}

// Median returns the median of v (0 for none; the mean of the middle two
// for an even count); v is sorted in place.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}
