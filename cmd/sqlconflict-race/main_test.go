package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// runCmd runs the command with args and returns its exit status and output.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// Test workload on the servers: the demo's workers and hot keys, with
// fewer operations. Enough for the raw runs to meet every race each time
// (a PostgreSQL deadlock costs deadlock_timeout, 1s, to detect, which
// bounds the test's time).
const (
	testWorkers = 8
	testOps     = 10
	testKeys    = 4
)

// TestScenarios runs every scenario on SQLite, and on PostgreSQL and
// MariaDB/MySQL when their DSNs are set, and checks what is true each time:
// the sqlconflict runs fail no operation and leave the right final state,
// the raw runs break no constraint, and on the servers the raw runs meet the
// races each scenario is built for.
func TestScenarios(t *testing.T) {
	// As in the core package's tests: a server whose variable is unset
	// skips; one that is set but unreachable fails.
	targets := []struct{ name, env, dsn string }{
		{name: "sqlite"},
		{name: "postgres", env: itest.EnvPG},
		{name: "mysql", env: itest.EnvMySQL},
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			args := []string{"-workers", fmt.Sprint(testWorkers), "-ops", fmt.Sprint(testOps), "-keys", fmt.Sprint(testKeys), "-json"}
			if tg.env != "" {
				tg.dsn = os.Getenv(tg.env)
				if tg.dsn == "" {
					t.Skipf("set %s to run the scenarios on this server", tg.env)
				}
			}
			if tg.dsn != "" {
				args = append(args, "-dsn", tg.dsn)
			}
			code, stdout, stderr := runCmd(t, args...)
			if code == exitError {
				t.Fatalf("exit %d (server unreachable or database error?): %s", code, stderr)
			}
			var rep report
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("bad JSON (%v): %s\nstderr: %s", err, stdout, stderr)
			}
			if rep.Database != tg.name {
				t.Fatalf("ran on %s, want %s", rep.Database, tg.name)
			}
			if len(rep.Scenarios) != len(scenarios) {
				t.Fatalf("%d scenarios in the report, want %d", len(rep.Scenarios), len(scenarios))
			}
			for i, s := range rep.Scenarios {
				for _, r := range []runResult{s.Raw, s.Unchanged, s.Wrapped} {
					if r.Ops != testWorkers*testOps {
						t.Errorf("%s %s: %d operations, want %d", s.Name, r.Run, r.Ops, testWorkers*testOps)
					}
				}
				if w := s.Wrapped; w.Failed != 0 || w.Wrong != 0 {
					t.Errorf("%s: sqlconflict run failed %d operations (%v, first: %s) and got %d wrong values (%s)",
						s.Name, w.Failed, w.Failures, w.FirstError, w.Wrong, w.WrongDetail)
				}
				if s.Unchanged.Wrong != 0 {
					t.Errorf("%s: the replay left %d wrong values (%s)", s.Name, s.Unchanged.Wrong, s.Unchanged.WrongDetail)
				}
				if s.Raw.Wrong != 0 {
					t.Errorf("%s: raw run got %d wrong values (%s): the checks expect constraints to hold",
						s.Name, s.Raw.Wrong, s.Raw.WrongDetail)
				}
				if s.Note == "" {
					t.Errorf("%s: no note for %s", s.Name, rep.Database)
				}
				// The races themselves happen on the servers only; raw
				// SQLite fails what it fails, from none to most.
				if race := scenarios[i].race; race != "" && rep.Database != kindSQLite && !hasFailure(s.Raw, race) {
					t.Errorf("%s: the raw run met no %q: %d failed (%v), %d wrong", s.Name, race, s.Raw.Failed, s.Raw.Failures, s.Raw.Wrong)
				}
			}
			if !rep.OK || code != exitOK {
				t.Errorf("ok = %v, exit %d; want true, 0", rep.OK, code)
			}
		})
	}
}

// hasFailure reports whether r failed an operation with a label starting
// with race.
func hasFailure(r runResult, race string) bool {
	for label, n := range r.Failures {
		if n > 0 && strings.HasPrefix(label, race) {
			return true
		}
	}
	return false
}

// TestDemo: the demo as a user first runs it, with every default, on
// SQLite: the sqlconflict runs fail nothing and leave the right state. What
// the raw runs fail varies from run to run, from nothing up, and is not
// checked.
func TestDemo(t *testing.T) {
	code, stdout, stderr := runCmd(t, "-json")
	if code != exitOK {
		t.Fatalf("exit %d: %s\n%s", code, stderr, stdout)
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Database != kindSQLite || rep.Workers != 8 || rep.Keys != 4 || rep.Ops != defaultOpsSQLite {
		t.Errorf("defaults: %s, %d workers, %d keys, %d operations", rep.Database, rep.Workers, rep.Keys, rep.Ops)
	}
	if !strings.Contains(rep.DSN, "busy_timeout(5000)") || strings.Contains(rep.DSN, "conflict_") {
		t.Errorf("default DSN %s: want a busy timeout and no conflict_* option", rep.DSN)
	}
	if len(rep.Scenarios) != len(scenarios) {
		t.Fatalf("%d scenarios, want %d", len(rep.Scenarios), len(scenarios))
	}
	for _, s := range rep.Scenarios {
		if s.Wrapped.Failed != 0 || s.Wrapped.Wrong != 0 {
			t.Errorf("%s: sqlconflict failed %d operations (%v, first: %s), %d wrong values (%s)",
				s.Name, s.Wrapped.Failed, s.Wrapped.Failures, s.Wrapped.FirstError, s.Wrapped.Wrong, s.Wrapped.WrongDetail)
		}
		if s.Raw.Wrong != 0 {
			t.Errorf("%s: raw run got %d wrong values (%s)", s.Name, s.Raw.Wrong, s.Raw.WrongDetail)
		}
	}
}

// TestDefaultsOnly: the sqlconflict runs use the library as it comes: no
// conflict_* option in the default DSN, and TxRunners with zero limits (the
// only field a scenario may set is RetryUniqueViolation, the documented
// remedy for a select-then-insert get-or-create).
func TestDefaultsOnly(t *testing.T) {
	if strings.Contains(defaultSQLiteParams, "conflict_") {
		t.Errorf("the default SQLite DSN sets sqlconflict options: %s", defaultSQLiteParams)
	}
	for _, sc := range scenarios {
		r := sc.fix.runner
		r.RetryUniqueViolation = false
		if r.Observer != nil || r.MaxAttempts != 0 || r.MaxElapsed != 0 || r.Backoff != 0 || r.MaxBackoff != 0 {
			t.Errorf("%s: TxRunner %+v, want the zero value (but RetryUniqueViolation)", sc.name, sc.fix.runner)
		}
	}
}

// TestTable: the default output is the table and its notes, and names every
// scenario.
func TestTable(t *testing.T) {
	code, stdout, stderr := runCmd(t, "-workers", "2", "-ops", "3", "-scenario", "get-or-create, deadlock-pair")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"sqlconflict-race: sqlite, file:", "SCENARIO", "get-or-create", "deadlock-pair",
		"raw", "sqlconflict", "no failed operation and no wrong final value"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "upsert-same-key") {
		t.Error("a scenario not asked for ran")
	}
	if stderr != "" {
		t.Errorf("stderr not a terminal, yet %q", stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-scenario", "nope"},
		{"-workers", "0"},
		{"-keys", "0"},
		{"-ops", "-1"},
		{"-bogus"},
		{"extra"},
		{"-dsn", "file:/tmp/x.db?conflict_retries=many"},
	} {
		if code, _, stderr := runCmd(t, args...); code != exitError || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want %d and a message", args, code, stderr, exitError)
		}
	}
	if code, _, _ := runCmd(t, "-h"); code != exitOK {
		t.Errorf("-h: exit %d", code)
	}
}

// TestPasswordNeverPrinted: unreachable servers with a password in the DSN
// fail the command without the password in any output.
func TestPasswordNeverPrinted(t *testing.T) {
	const pw = "s3cr3tPW"
	for _, dsn := range []string{
		"postgres://alice:" + pw + "@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		"postgres://alice:" + pw + "@local host/db", // a URL error quotes the URL
		"host=127.0.0.1 port=1 user=alice password=" + pw + " dbname=db sslmode=disable connect_timeout=2",
		"host=127.0.0.1 port=1 password='" + pw + "' sslmode=disable connect_timeout=2",
		"alice:" + pw + "@tcp(127.0.0.1:1)/db?timeout=2s",
		"alice:" + pw + "@tcp(127.0.0.1:1)/db?tls=nonexistent",
	} {
		code, stdout, stderr := runCmd(t, "-dsn", dsn, "-ops", "1")
		if code != exitError {
			t.Errorf("%s: exit %d, want %d", dsn, code, exitError)
		}
		if strings.Contains(stdout+stderr, pw) {
			t.Errorf("the password shows:\nstdout: %s\nstderr: %s", stdout, stderr)
		}
		if !strings.Contains(stderr, "sqlconflict-race: ") {
			t.Errorf("%s: no error message: %q", dsn, stderr)
		}
	}
}

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		dsn, kind, display, raw string
	}{
		{"postgres://alice:pw%3Fx@db:5432/app?sslmode=disable&conflict_retries=5", kindPostgres,
			"postgres://alice:xxxxx@db:5432/app?sslmode=disable&conflict_retries=5", "postgres://alice:pw%3Fx@db:5432/app?sslmode=disable"},
		{"PostgreSQL://db/app", kindPostgres, "PostgreSQL://db/app", "PostgreSQL://db/app"},
		{"host=/tmp user=a@b password='p w' conflict_retries=2", kindPostgres,
			"host=/tmp user=a@b password='xxxxx' conflict_retries=2", "host=/tmp user=a@b password='p w'"},
		{"dbname=app", kindPostgres, "dbname=app", "dbname=app"},
		{"root:hunter2@tcp(127.0.0.1:3306)/test?conflict_savepoints=writes", kindMySQL,
			"root:xxxxx@tcp(127.0.0.1:3306)/test?conflict_savepoints=writes", "root:hunter2@tcp(127.0.0.1:3306)/test"},
		{"root@unix(/run/mysqld.sock)/test", kindMySQL, "root@unix(/run/mysqld.sock)/test", "root@unix(/run/mysqld.sock)/test"},
		{"app@/test", kindMySQL, "app@/test", "app@/test"},
		{"file:/tmp/x.db?_pragma=busy_timeout(0)&conflict_retries=9", kindSQLite,
			"file:/tmp/x.db?_pragma=busy_timeout(0)&conflict_retries=9", "file:/tmp/x.db?_pragma=busy_timeout(0)"},
		{"/tmp/x.db?conflict_retries=9", kindSQLite, "/tmp/x.db?conflict_retries=9", "/tmp/x.db"},
		{"x.db", kindSQLite, "x.db", "x.db"},
		{":memory:", kindSQLite, ":memory:", ":memory:"},
	} {
		tg, err := newTarget(tc.dsn)
		if err != nil {
			t.Errorf("newTarget(%q): %v", tc.dsn, err)
			continue
		}
		if tg.kind != tc.kind || tg.display != tc.display || tg.rawDSN != tc.raw {
			t.Errorf("newTarget(%q) = kind %s, display %q, raw %q; want %s, %q, %q",
				tc.dsn, tg.kind, tg.display, tg.rawDSN, tc.kind, tc.display, tc.raw)
		}
	}

	def, err := newTarget("")
	if err != nil {
		t.Fatal(err)
	}
	if def.kind != kindSQLite || !strings.HasPrefix(def.dsn, "file:") || strings.Contains(def.rawDSN, "conflict_") {
		t.Errorf("default target: %+v", def)
	}
	if _, err := os.Stat(def.tmpDir); err != nil {
		t.Fatal(err)
	}
	def.close()
	if _, err := os.Stat(def.tmpDir); !os.IsNotExist(err) {
		t.Errorf("close left %s: %v", def.tmpDir, err)
	}
}

func TestFailureLabel(t *testing.T) {
	dup := &pq.Error{Code: "23505"}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{dup, "unique violation 23505"},
		{&mysql.MySQLError{Number: 1213}, "deadlock 1213"},
		{fmt.Errorf("x: %w", sqlconflict.ErrRetryTx), "stale version"},
		{&blindRereadError{name: "a", dup: dup}, "blind re-read"},
		{&sqlconflict.RetryError{Attempts: 10, Err: &mysql.MySQLError{Number: 1213}}, "deadlock 1213 after 10 attempts"},
		{errors.New(strings.Repeat("long message ", 10)), "other: long message long message long message long message long ..."},
	} {
		if got := failureLabel(tc.err); got != tc.want {
			t.Errorf("failureLabel(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestReportOK(t *testing.T) {
	r := &report{Scenarios: []scenarioResult{{Raw: runResult{Failed: 5, Wrong: 1}}}}
	if !r.ok() {
		t.Error("raw failures made the report fail")
	}
	r.Scenarios = append(r.Scenarios, scenarioResult{Wrapped: runResult{Wrong: 1}})
	if r.ok() {
		t.Error("a wrong value under sqlconflict passed")
	}
	r.Scenarios[1] = scenarioResult{Wrapped: runResult{Failed: 1}}
	if r.ok() {
		t.Error("a failure under sqlconflict passed")
	}
	var out bytes.Buffer
	r.OK = r.ok()
	writeFooter(&out, r)
	if !strings.Contains(out.String(), "sqlconflict FAILED") {
		t.Errorf("footer: %s", out.String())
	}
}

func TestProgress(t *testing.T) {
	p := newProgress(nil)
	if p.on {
		t.Fatal("progress on without a terminal")
	}
	p.start("x", 10)
	p.add(3)
	p.finish() // no-op, no panic
	var buf bytes.Buffer
	p = &progress{w: &buf, on: true}
	p.start("get-or-create (raw)", 10)
	p.add(5)
	p.finish()
	if got := p.line(); !strings.Contains(got, "get-or-create (raw)") || !strings.Contains(got, "5/10") ||
		!strings.Contains(got, strings.Repeat("#", barWidth/2)+strings.Repeat("-", barWidth/2)) {
		t.Errorf("line = %q", got)
	}
	if !strings.HasSuffix(buf.String(), "\r\033[K") {
		t.Errorf("finish did not erase the bar: %q", buf.String())
	}
}
