package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqlconflict/sqlconflict"
)

// config is the workload's shape, from the flags.
type config struct {
	workers int    // concurrent goroutines
	ops     int    // operations per worker
	keys    int    // hot keys (names per step, counters, accounts)
	seed    uint64 // of each worker's random choices, the same for both runs
}

// Run names.
const (
	runRaw = "raw"
	// runReplay is the application's code unchanged, its own BeginTx and
	// Commit, through sqlconflict at its defaults (conflict_replay=on): the
	// driver name and DSN are all that changed.
	runReplay  = "DSN only"
	runWrapped = "sqlconflict"
)

// stats counts what the sqlconflict driver reported doing.
type stats struct {
	stmtRetries        atomic.Int64
	savepointRollbacks atomic.Int64
	doomed             atomic.Int64
	replays            atomic.Int64
	warnings           atomic.Int64
	firstWarning       atomic.Pointer[string]
}

// observe is the Options.Observer. It runs on the goroutines using the
// database, concurrently.
func (s *stats) observe(_ context.Context, o sqlconflict.Observation) {
	switch o.Event {
	case sqlconflict.EventRetry:
		s.stmtRetries.Add(1)
	case sqlconflict.EventSavepointRollback:
		s.savepointRollbacks.Add(1)
	case sqlconflict.EventTxDoomed:
		s.doomed.Add(1)
	case sqlconflict.EventReplay:
		s.replays.Add(1)
	}
}

// warnCounter is the Options.Logger's handler: it counts the driver's
// warnings (blind re-reads, savepoint budget) instead of printing them
// through the table, and keeps the first one's message.
type warnCounter struct{ s *stats }

func (h warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h warnCounter) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h warnCounter) WithGroup(string) slog.Handler                { return h }

func (h warnCounter) Handle(_ context.Context, r slog.Record) error {
	h.s.warnings.Add(1)
	msg := r.Message
	h.s.firstWarning.CompareAndSwap(nil, &msg)
	return nil
}

// runScenario runs sc through the raw driver, through sqlconflict with the
// application's code unchanged (the defaults: conflict_replay=on), and through
// sqlconflict with RunTx.
func runScenario(ctx context.Context, cfg config, t *target, admin *sql.DB, sc *scenario, prog *progress) (scenarioResult, error) {
	res := scenarioResult{Name: sc.name, About: sc.about, Fix: sc.fix.desc}
	for _, run := range []string{runRaw, runReplay, runWrapped} {
		r, err := runOnce(ctx, cfg, t, admin, sc, run, prog)
		if err != nil {
			return res, fmt.Errorf("%s, %s run: %w", sc.name, run, err)
		}
		switch run {
		case runRaw:
			res.Raw = r
		case runReplay:
			res.Unchanged = r
		default:
			res.Wrapped = r
		}
	}
	res.Note = sc.notes[t.kind]
	if res.Raw.BlindRereads+res.Wrapped.BlindRereads > 0 {
		res.Note += fmt.Sprintf(" Blind re-reads: %d raw, each a get-or-create that failed; %d under sqlconflict, each failed with ErrBlindReread and rerun by RunTx.",
			res.Raw.BlindRereads, res.Wrapped.BlindRereads)
	}
	if w := res.Wrapped.Warnings; w > 0 {
		res.Note += fmt.Sprintf(" sqlconflict logged %d warnings, the first: %q.", w, res.Wrapped.FirstWarning)
	}
	return res, nil
}

// runOnce runs one workload of sc on fresh tables and checks the result.
func runOnce(ctx context.Context, cfg config, t *target, admin *sql.DB, sc *scenario, run string, prog *progress) (runResult, error) {
	r := runResult{Run: run, Ops: cfg.workers * cfg.ops}
	e := &env{t: t, admin: admin, keys: cfg.keys, prefix: fmt.Sprintf("sqlconflict_race_%x_", os.Getpid())}
	w := sc.start(e)
	defer e.drop(ctx)
	if err := w.setup(ctx); err != nil {
		return r, fmt.Errorf("setup: %w", err)
	}

	st := &stats{}
	var db *sql.DB
	var err error
	if run == runRaw {
		db, err = t.openRaw(ctx, cfg.workers)
	} else {
		// The defaults, as sql.Open("sqlconflict-...") gives them: the
		// Observer and Logger only count what the driver does.
		opts := sqlconflict.DefaultOptions()
		opts.Observer = st.observe
		opts.Logger = slog.New(warnCounter{st})
		db, err = t.openWrapped(ctx, cfg.workers, opts)
	}
	if err != nil {
		return r, err
	}
	defer db.Close()
	if err := warm(ctx, db, cfg.workers); err != nil {
		return r, err
	}

	var (
		mu        sync.Mutex
		failures  = map[string]int{}
		firstErr  error
		failed    atomic.Int64
		txRetries atomic.Int64
		wg        sync.WaitGroup
	)
	prog.start(fmt.Sprintf("%s (%s)", sc.name, run), r.Ops)
	start := time.Now()
	for worker := range cfg.workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(cfg.seed, uint64(worker)))
			for i := range cfg.ops {
				if ctx.Err() != nil {
					return
				}
				fn, done := w.op(rng, worker, i)
				attempts, err := execute(ctx, db, sc, run, fn)
				txRetries.Add(int64(max(attempts-1, 0)))
				if err == nil {
					done()
				} else if ctx.Err() == nil {
					failed.Add(1)
					mu.Lock()
					failures[t.redact(failureLabel(err))]++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				prog.add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	prog.finish()
	if err := ctx.Err(); err != nil {
		return r, err
	}

	r.Failed = int(failed.Load())
	r.TxRetries = txRetries.Load()
	r.StmtRetries = st.stmtRetries.Load()
	r.Replays = st.replays.Load()
	r.Retries = r.TxRetries + r.StmtRetries + r.Replays
	r.SavepointRollbacks = st.savepointRollbacks.Load()
	r.DoomedTx = st.doomed.Load()
	r.Warnings = st.warnings.Load()
	if m := st.firstWarning.Load(); m != nil {
		r.FirstWarning = *m
	}
	r.BlindRereads = e.blind
	r.Seconds = elapsed.Seconds()
	if r.Seconds > 0 {
		r.OpsPerSec = float64(r.Ops-r.Failed) / r.Seconds
	}
	if len(failures) > 0 {
		r.Failures = failures
		r.FirstError = t.redactErr(firstErr)
	}
	if r.Wrong, r.WrongDetail, err = w.check(ctx); err != nil {
		return r, fmt.Errorf("check: %w", err)
	}
	return r, nil
}

// warm opens the workers' connections before the clock starts.
func warm(ctx context.Context, db *sql.DB, workers int) error {
	conns := make([]*sql.Conn, 0, workers)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range workers {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// execute runs one operation as the application would: raw, and with the
// DSN only changed, in a transaction it begins and commits itself; under
// sqlconflict, through RunTx. Autocommit operations run on db directly either way. It returns the
// number of times fn ran.
func execute(ctx context.Context, db *sql.DB, sc *scenario, run string, fn opFunc) (attempts int, err error) {
	switch {
	case sc.autocommit:
		return 1, fn(ctx, db)
	case run == runRaw || run == runReplay:
		tx, err := db.BeginTx(ctx, sc.txOptions)
		if err != nil {
			return 1, err
		}
		if err := fn(ctx, tx); err != nil {
			tx.Rollback()
			return 1, err
		}
		return 1, tx.Commit()
	}
	// The TxRunner's limits are its zero values: DefaultMaxAttempts and
	// DefaultMaxElapsed.
	err = sc.fix.runner.Run(ctx, db, sc.txOptions, func(ctx context.Context, tx *sql.Tx) error {
		attempts++
		return fn(ctx, tx)
	})
	return attempts, err
}

// sqliteCodes names the SQLite result codes the scenarios meet.
var sqliteCodes = map[string]string{
	"5": "SQLITE_BUSY", "517": "SQLITE_BUSY_SNAPSHOT", "6": "SQLITE_LOCKED",
	"2067": "SQLITE_CONSTRAINT_UNIQUE", "1555": "SQLITE_CONSTRAINT_PRIMARYKEY",
}

// failureLabel names the kind of a failed operation's error.
func failureLabel(err error) string {
	var label string
	if _, ok := errors.AsType[*blindRereadError](err); ok {
		label = "blind re-read"
	} else if errors.Is(err, sqlconflict.ErrRetryTx) {
		label = "stale version"
	} else if cl := sqlconflict.Classify(err); cl.Kind != sqlconflict.KindUnknown {
		label = cl.Kind.String()
		if code := cl.Code; code != "" {
			if name, ok := sqliteCodes[code]; ok && cl.Dialect == sqlconflict.DialectSQLite {
				code = name
			}
			label += " " + code
		}
	} else {
		msg := err.Error()
		if len(msg) > 60 {
			msg = msg[:57] + "..."
		}
		label = "other: " + msg
	}
	if re, ok := errors.AsType[*sqlconflict.RetryError](err); ok {
		label += fmt.Sprintf(" after %d attempts", re.Attempts)
	}
	return strings.TrimSpace(label)
}
