// Command sqlconflict-race runs the races sqlconflict exists for, each three
// times with the same workload: through the raw base driver, as the
// application was written; through sqlconflict with the code unchanged,
// only the driver name and DSN changed ("DSN only": the defaults, which
// replay aborted transactions); and through sqlconflict with the
// transactions in RunTx. It prints, per run, the operations,
// the failed ones, the retries, the wrong final values (lost updates,
// missing or extra rows) and the throughput.
//
//	go run ./cmd/sqlconflict-race
//	go run ./cmd/sqlconflict-race -scenario get-or-create,deadlock-pair -workers 16
//	go run ./cmd/sqlconflict-race -dsn "postgres://app@localhost/test?sslmode=disable"
//	go run ./cmd/sqlconflict-race -dsn "root@tcp(127.0.0.1:3306)/test" -json
//
// Without -dsn it uses a SQLite database in a new temporary directory,
// through the pure-Go modernc.org/sqlite: no server and no cgo. It is
// configured as an application would configure it (WAL, busy_timeout of
// 5s), so what fails there is what an application meets: "database is
// locked" for a transaction that reads and then writes. The races the
// driver exists for (duplicate keys, deadlocks, the blind re-read) need a
// server: with -dsn it uses PostgreSQL (a postgres:// URL or key=value DSN,
// through lib/pq), MySQL or MariaDB (go-sql-driver/mysql's DSN), or a
// SQLite file; it creates and drops tables named sqlconflict_race_*.
//
// The sqlconflict runs use the library's defaults: DefaultOptions and
// TxRunners with zero limits. conflict_* options in the DSN configure them;
// the raw run does not see them.
//
// The scenarios are get-or-create, upsert-same-key (the control: an atomic
// upsert, which no database fails), optimistic-counter, deadlock-pair and
// blind-reread; the notes after the table say what each does and what
// happens on the database used.
//
// The exit status is 1 if a sqlconflict run failed an operation or left a
// wrong final value, and 2 on bad usage or a database error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Default operations per worker: fewer on a server, where a PostgreSQL
// deadlock costs deadlock_timeout (1s) to detect.
const (
	defaultOpsSQLite = 100
	defaultOpsServer = 40
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // a sqlconflict run failed operations or left wrong values
	exitError  = 2 // bad usage, or the database could not be used
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command; stderr gets the progress bar if it is a terminal.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sqlconflict-race", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		scenarioList = fs.String("scenario", "all", "comma-separated scenarios to run: "+scenarioNames())
		dsn          = fs.String("dsn", "", "a PostgreSQL or MySQL DSN (default: a SQLite database in a temporary directory)")
		jsonOut      = fs.Bool("json", false, "print the results as JSON")
		cfg          config
	)
	fs.IntVar(&cfg.workers, "workers", 8, "concurrent workers")
	fs.IntVar(&cfg.ops, "ops", 0, fmt.Sprintf("operations per worker and scenario (default %d on SQLite, %d on a server)", defaultOpsSQLite, defaultOpsServer))
	fs.IntVar(&cfg.keys, "keys", 4, "hot keys: new names per step, counters, accounts")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the workers' random choices, the same for both runs")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: sqlconflict-race [flags]\n\n"+
			"Runs each race three times, through the raw driver, through sqlconflict with the code unchanged (its defaults, conflict_replay=on), and through sqlconflict with RunTx, and compares.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitError
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sqlconflict-race: "+format+"\n", a...)
		return exitError
	}
	if fs.NArg() > 0 {
		return fail("unexpected arguments %q", fs.Args())
	}
	if cfg.workers < 1 || cfg.ops < 0 || cfg.keys < 1 {
		return fail("-workers and -keys must be at least 1, and -ops not negative")
	}
	scs, err := findScenarios(*scenarioList)
	if err != nil {
		return fail("%v", err)
	}

	t, err := newTarget(*dsn)
	if err != nil {
		return fail("%v", err) // sqlconflict.SplitDSN's errors quote no password
	}
	defer t.close()
	if cfg.ops == 0 {
		cfg.ops = defaultOpsServer
		if t.kind == kindSQLite {
			cfg.ops = defaultOpsSQLite
		}
	}
	admin, err := t.openRaw(ctx, 1)
	if err != nil {
		return fail("%s (%s)", t.redactErr(err), t.display)
	}
	defer admin.Close()

	var progressOut *os.File
	if f, ok := stderr.(*os.File); ok {
		progressOut = f
	}
	prog := newProgress(progressOut)
	rep := &report{Database: t.kind, DSN: t.display, Workers: cfg.workers, Ops: cfg.ops, Keys: cfg.keys, Seed: cfg.seed}
	if !*jsonOut {
		writeHeader(stdout, rep)
	}
	for _, sc := range scs {
		res, err := runScenario(ctx, cfg, t, admin, sc, prog)
		if err != nil {
			return fail("%s", t.redactErr(err))
		}
		rep.Scenarios = append(rep.Scenarios, res)
		if !*jsonOut {
			writeScenario(stdout, res)
		}
	}
	rep.OK = rep.ok()
	if *jsonOut {
		if err := writeJSON(stdout, rep); err != nil {
			return fail("%v", err)
		}
	} else {
		writeFooter(stdout, rep)
	}
	if !rep.OK {
		return exitFailed
	}
	return exitOK
}
