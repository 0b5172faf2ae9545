package sqlconflict

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEventNames: the stable names, row by row; a metric label must not
// change under a dashboard.
func TestEventNames(t *testing.T) {
	for _, tt := range []struct {
		e    Event
		want string
	}{
		{EventRetry, "retry"},
		{EventSavepointRollback, "savepoint_rollback"},
		{EventTxDoomed, "tx_doomed"},
		{EventCommitSettled, "commit_settled"},
		{EventReplay, "replay"},
		{EventReplayFailed, "replay_failed"},
		{EventRerun, "rerun"},
		{Event(0), "Event(0)"},
		{Event(99), "Event(99)"},
		{Event(-1), "Event(-1)"},
	} {
		if got := tt.e.String(); got != tt.want {
			t.Errorf("Event(%d).String() = %q, want %q", int(tt.e), got, tt.want)
		}
	}
}

// TestKindScopeNames: Name is String in snake_case, for every kind and
// scope, and nothing a label would trip on.
func TestKindScopeNames(t *testing.T) {
	for _, tt := range []struct {
		k    Kind
		want string
	}{
		{KindUnknown, "unknown"},
		{KindUniqueViolation, "unique_violation"},
		{KindForeignKeyViolation, "foreign_key_violation"},
		{KindNotNullViolation, "not_null_violation"},
		{KindCheckViolation, "check_violation"},
		{KindExclusionViolation, "exclusion_violation"},
		{KindIntegrityViolation, "integrity_violation"},
		{KindDeadlock, "deadlock"},
		{KindSerializationFailure, "serialization_failure"},
		{KindTransactionRollback, "transaction_rollback"},
		{KindLockTimeout, "lock_timeout"},
		{KindQueryCanceled, "query_canceled"},
		{KindTxAborted, "transaction_aborted"},
		{KindConnectionLost, "connection_lost"},
		{KindUnavailable, "server_unavailable"},
		{KindReadOnly, "read_only"},
	} {
		if got := tt.k.Name(); got != tt.want {
			t.Errorf("Kind(%d).Name() = %q, want %q", int(tt.k), got, tt.want)
		}
	}
	if n := Kind(len(kindNames)).Name(); n != "Kind(16)" {
		t.Errorf("kindNames has a kind this table lacks, or a bad fallback: %q", n)
	}
	for s, want := range map[Scope]string{
		ScopeNone: "none", ScopeStatement: "statement", ScopeTransaction: "transaction",
		ScopeUnknownOutcome: "unknown_outcome",
	} {
		if got := s.Name(); got != want {
			t.Errorf("Scope(%d).Name() = %q, want %q", int(s), got, want)
		}
	}
	label := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	for e := EventRetry; e <= EventRerun; e++ {
		if !label.MatchString(e.String()) {
			t.Errorf("event name %q is not snake_case", e)
		}
	}
}

type ctxKey struct{}

// recorder keeps what an Observer saw, with the context value the caller
// put in.
type recorder struct {
	mu   sync.Mutex
	obs  []Observation
	ctxs []any
}

func (r *recorder) observe(ctx context.Context, o Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.obs = append(r.obs, o)
	r.ctxs = append(r.ctxs, ctx.Value(ctxKey{}))
}

func (r *recorder) events(e Event) []Observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Observation
	for _, o := range r.obs {
		if o.Event == e {
			out = append(out, o)
		}
	}
	return out
}

// TestObserverRetry: a statement retry reaches the Observer with the
// caller's context, its attempt, the wait about to be waited and the time
// since the first failure.
func TestObserverRetry(t *testing.T) {
	var r recorder
	opts := fastOptions(DialectPostgres)
	opts.Backoff, opts.MaxBackoff = 2*time.Millisecond, 2*time.Millisecond
	opts.Observer = r.observe
	d := &fakeDriver{errs: failN("UPDATE t SET x = 1", 2, errPGDeadlock)}
	db := openFake(t, d, opts)
	ctx := context.WithValue(context.Background(), ctxKey{}, "caller")
	if _, err := db.ExecContext(ctx, "UPDATE t SET x = 1"); err != nil {
		t.Fatal(err)
	}
	retries := r.events(EventRetry)
	if len(retries) != 2 {
		t.Fatalf("retries = %+v, want 2", retries)
	}
	for i, o := range retries {
		// backoff is jittered, up to the bound
		if o.Attempt != i+2 || o.Class.Kind != KindDeadlock || o.Wait <= 0 || o.Wait > 2*time.Millisecond {
			t.Errorf("retry %d: %+v, want attempt %d, deadlock, a wait in (0, 2ms]", i, o, i+2)
		}
	}
	if retries[1].Elapsed < retries[0].Elapsed+retries[0].Wait {
		t.Errorf("elapsed %v, then %v: the second retry follows the first's wait, %v", retries[0].Elapsed, retries[1].Elapsed, retries[0].Wait)
	}
	for i, v := range r.ctxs {
		if v != "caller" {
			t.Errorf("event %d (%v) got a context without the caller's value: %v", i, r.obs[i].Event, v)
		}
	}
}

// TestObserverRerun: RunTx's whole-transaction reruns reach the Observer
// of the connection they ran on, with the caller's context, and a
// TxRunner's own Observer instead when it has one.
func TestObserverRerun(t *testing.T) {
	off := fastOptions(DialectPostgres)
	off.Replay = ReplayOff // else the wrapper replays the COMMIT first
	var conn recorder
	off.Observer = conn.observe
	d := &fakeDriver{errs: failN("COMMIT", 2, errPGSerial)}
	db := openFake(t, d, off)
	ctx := context.WithValue(context.Background(), ctxKey{}, "caller")
	fn := func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)")
		return err
	}
	if err := (TxRunner{Backoff: time.Millisecond, MaxBackoff: time.Millisecond}).Run(ctx, db, nil, fn); err != nil {
		t.Fatal(err)
	}
	reruns := conn.events(EventRerun)
	if len(reruns) != 2 {
		t.Fatalf("reruns = %+v, want 2", reruns)
	}
	for i, o := range reruns {
		if o.Attempt != i+2 || o.Class.Kind != KindSerializationFailure || o.Wait <= 0 || o.Wait > time.Millisecond {
			t.Errorf("rerun %d: %+v, want attempt %d, serialization failure, a wait in (0, 1ms]", i, o, i+2)
		}
	}
	if reruns[1].Elapsed < reruns[0].Elapsed+reruns[0].Wait {
		t.Errorf("second rerun's elapsed %v, after the first's %v and its wait %v", reruns[1].Elapsed, reruns[0].Elapsed, reruns[0].Wait)
	}
	for i, v := range conn.ctxs {
		if v != "caller" {
			t.Errorf("event %d (%v): context value %v, want the caller's", i, conn.obs[i].Event, v)
		}
	}

	// A TxRunner's own Observer takes the reruns; the connection's keeps
	// the wrapper's own events.
	conn = recorder{}
	var own recorder
	d.errs = failN("COMMIT", 1, errPGSerial)
	if err := (TxRunner{Backoff: time.Millisecond, Observer: own.observe}).Run(ctx, db, nil, fn); err != nil {
		t.Fatal(err)
	}
	if n, m := len(own.events(EventRerun)), len(conn.events(EventRerun)); n != 1 || m != 0 {
		t.Errorf("reruns: TxRunner.Observer saw %d, the connection's %d; want 1 and 0", n, m)
	}

	// A first unique violation reruns at once: Wait 0.
	own = recorder{}
	d.errs = failN("COMMIT", 1, errPGUnique)
	if err := (TxRunner{RetryUniqueViolation: true, Observer: own.observe}).Run(ctx, db, nil, fn); err != nil {
		t.Fatal(err)
	}
	if rr := own.events(EventRerun); len(rr) != 1 || rr[0].Wait != 0 || rr[0].Class.Kind != KindUniqueViolation {
		t.Errorf("unique violation rerun: %+v, want one with no wait", rr)
	}

	// ErrRetryTx from fn, with no database error: a rerun of the zero Class.
	own = recorder{}
	d.errs = nil
	first := true
	err := (TxRunner{Backoff: time.Millisecond, Observer: own.observe}).Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
		if first {
			first = false
			return ErrRetryTx
		}
		return nil
	})
	if rr := own.events(EventRerun); err != nil || len(rr) != 1 || rr[0].Class.Kind != KindUnknown {
		t.Errorf("ErrRetryTx: err %v, reruns %+v", err, rr)
	}
}

// TestObserverRerunNoConnection: a rerun after a BeginTx that failed
// before any connection was had still reaches a TxRunner's Observer, and
// with none set, Run goes on without one.
func TestObserverRerunNoConnection(t *testing.T) {
	var calls int
	db := beginnerFunc(func(ctx context.Context, _ *sql.TxOptions) (*sql.Tx, error) {
		calls++
		if calls == 1 {
			return nil, errPGSerial
		}
		return nil, errors.New("stop")
	})
	var own recorder
	err := TxRunner{Backoff: time.Millisecond, Observer: own.observe}.Run(context.Background(), db, nil,
		func(context.Context, *sql.Tx) error { return nil })
	if err == nil || err.Error() != "stop" || len(own.events(EventRerun)) != 1 {
		t.Errorf("err %v, reruns %+v", err, own.obs)
	}
	calls = 0
	if err := (TxRunner{Backoff: time.Millisecond}).Run(context.Background(), db, nil,
		func(context.Context, *sql.Tx) error { return nil }); err == nil || err.Error() != "stop" {
		t.Errorf("no Observer: err %v", err)
	}
}

type beginnerFunc func(context.Context, *sql.TxOptions) (*sql.Tx, error)

func (f beginnerFunc) BeginTx(ctx context.Context, o *sql.TxOptions) (*sql.Tx, error) {
	return f(ctx, o)
}

// TestObserverDebugLog: each event goes to the logger at debug level, under
// its stable name, with the caller's context.
func TestObserverDebugLog(t *testing.T) {
	var buf bytes.Buffer
	opts := fastOptions(DialectPostgres)
	opts.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d := &fakeDriver{errs: failN("UPDATE t SET x = 1", 1, errPGDeadlock)}
	db := openFake(t, d, opts)
	if _, err := db.Exec("UPDATE t SET x = 1"); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, `msg="sqlconflict: retry" kind=deadlock code=40P01 attempt=2 wait=`) {
		t.Errorf("debug log:\n%s", out)
	}
}

// TestObserverReplay: a replay reaches the Observer with the context of the
// transaction, its wait and the time since the conflict.
func TestObserverReplay(t *testing.T) {
	var r recorder
	opts := fastOptions(DialectPostgres)
	opts.Backoff, opts.MaxBackoff = time.Millisecond, time.Millisecond
	opts.Savepoints = SavepointsOff // the replay then sends the INSERT alone
	opts.Observer = r.observe
	d := &fakeDriver{errs: failN("COMMIT", 1, errPGSerial)}
	db := openFake(t, d, opts)
	ctx := context.WithValue(context.Background(), ctxKey{}, "caller")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	rp := r.events(EventReplay)
	if len(rp) != 1 || rp[0].Attempt != 1 || rp[0].Statements != 1 || rp[0].Wait <= 0 || rp[0].Elapsed < rp[0].Wait {
		t.Fatalf("replays = %+v, want one of 1 statement, with its wait and elapsed", rp)
	}
	for i, v := range r.ctxs {
		if v != "caller" {
			t.Errorf("event %d (%v): context value %v, want the transaction's", i, r.obs[i].Event, v)
		}
	}
}
