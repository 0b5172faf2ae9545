//go:build ignore

// driver-suites runs the base drivers' own test suites, go-sql-driver/mysql's
// and lib/pq's (the versions go.work selects, the newest any module
// requires; .ci/check-versions tests the root's go.mod minimums) and pgx
// v5's stdlib package's, twice: on the raw driver, and through sqlconflict. It prints each run's totals and every test whose
// outcome differs, and exits 1 if a test fails (or panics) only through the
// wrapper.
//
// Usage, from anywhere in the repository:
//
//	go run scripts/driver-suites.go [-suites mysql,pq,pgx] [-reruns 5] [-timeout 6m] [-race] [-keep] [-v]
//
// For each suite it copies the module's source from the module cache into a
// temporary folder (same module path), adds a replace of
// github.com/sqlconflict/sqlconflict to this repository (and, for pgx, of
// github.com/sqlconflict/sqlconflict/pgx to its pgx folder), adds two test
// files (one with hooks, an external one that sets them when
// SQLCONFLICT_SUITE_WRAP=1), makes the few edits listed below (each printed
// with its line), and builds one test binary (pgx: of its stdlib package).
// The baseline is that binary with the switch off; the wrapped run is the
// same binary with it on. Wrapped, the suite's sql.Open driver name is
// sqlconflict's registered driver ("sqlconflict-mysql", "sqlconflict-postgres",
// "sqlconflict-pgx"; behind a pass-through that notes each use), the
// connectors it passes to sql.OpenDB go through sqlconflict.NewConnector with
// DefaultOptions, (pgx) its stdlib.OpenDB calls are the pgx module's OpenDB
// with DefaultOptions, and (mysql, pgx) the functions given to Conn.Raw start
// with sqlconflict.BaseConn, as a user's would.
//
// The servers: MariaDB/MySQL at MYSQL_TEST_ADDR (default 127.0.0.1:3306, user
// root, no password, database test) and PostgreSQL through the PG*
// variables (default 127.0.0.1:5432, user postgres, database test,
// sslmode=disable) and, for pgx, PGX_TEST_DATABASE (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable); variables already
// set in the environment are kept. The
// suites create and drop their own tables there. Failures that come from the
// machine (no TLS, missing roles or databases the suites expect) happen in
// both runs and are not differences.
//
// A panic ends a test binary; the tests it had not run yet are then run in a
// further invocation, so both runs cover every test. Each test that differs is
// run -reruns more times both ways, to tell a timing-flaky test from a
// difference: a wrapped-only failure counts unless the raw driver also fails
// one of the reruns (then the test is flaky, and it is printed as such), or
// the test does not go through the wrapper at all (its wrapped reruns opened
// no DSN, connection or connector through sqlconflict: lib/pq's Listener
// tests, say, whose 100 ms waits fail under load). One that the wrapped reruns
// do not reproduce still counts, as intermittent: the raw driver never failed
// it. A few wrapped-only failures are the wrapper's documented behaviour (the
// suite's intended list, each recognised by its error text): printed with the
// reason, not counted.
//
// Tests that would send traffic off this machine are skipped in both runs
// (the suite's skip pattern, printed).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

const (
	self        = "github.com/sqlconflict/sqlconflict"
	switchVar   = "SQLCONFLICT_SUITE_WRAP"
	hookComment = "// Added by sqlconflict's scripts/driver-suites.go to a temporary copy of\n// this module, to run its tests through the sqlconflict wrapper.\n"
)

// edit is one replacement in a file of the copy; count is how many matches
// are expected (the run stops if the upstream file changed).
type edit struct {
	file  string
	re    *regexp.Regexp
	repl  string
	count int
	why   string
}

type suite struct {
	name   string // flag name
	module string
	// pkg is the folder of the package whose tests run, in the module
	// ("": its root).
	pkg string
	// wrapper is the module of this repository whose driver the wrapped
	// run uses, as a folder ("": the root; "pgx"): its go.mod gives the
	// module's version, and the copy requires it beside the root.
	wrapper string
	env     [][2]string // variable, default
	files   map[string]string
	edits   []edit
	// skip is the -test.skip of both runs: tests that would send traffic
	// off this machine (a dial to a public or broadcast address), which the
	// runs must not do.
	skip, skipWhy string
	// intended lists the wrapped-only failures that are the wrapper's
	// documented behaviour, each recognised by its error text; printed, not
	// counted. Any other failure of the same test counts.
	intended []intended
}

type intended struct {
	test, wrappedError, why string
}

var suites = []suite{
	{
		name:   "mysql",
		module: "github.com/go-sql-driver/mysql",
		env: [][2]string{
			{"MYSQL_TEST_USER", "root"},
			{"MYSQL_TEST_PASS", ""},
			{"MYSQL_TEST_PROT", "tcp"},
			{"MYSQL_TEST_ADDR", "127.0.0.1:3306"},
			{"MYSQL_TEST_DBNAME", "test"},
		},
		files: map[string]string{
			"sqlconflict_hooks_test.go": `package mysql

` + hookComment + `// Unset, the hooks change nothing: the baseline is the suite as published.

import "database/sql/driver"

var (
	sqlconflictUnwrap    = func(c any) any { return c }
	sqlconflictConnector = func(c driver.Connector) driver.Connector { return c }
)

// SetDriverNameTest sets the driver name the suite's sql.Open calls use.
func SetDriverNameTest(name string) { driverNameTest = name }

// DriverNameTest is that name.
func DriverNameTest() string { return driverNameTest }

// SetRawUnwrap sets what the suite's Conn.Raw functions apply to the driver
// connection they are given before asserting its type.
func SetRawUnwrap(f func(any) any) { sqlconflictUnwrap = f }

// SetWrapConnector sets what wraps the connectors the suite passes to sql.OpenDB.
func SetWrapConnector(f func(driver.Connector) driver.Connector) { sqlconflictConnector = f }
`,
			"sqlconflict_wrap_test.go": wrapTest("mysql", `
	"github.com/go-sql-driver/mysql"`, "sqlconflict.DriverMySQL", `"u@tcp(127.0.0.1:1)/x"`, `
	mysql.SetDriverNameTest(suiteDriverName)
	mysql.SetRawUnwrap(func(c any) any { return sqlconflict.BaseConn(c) })
	mysql.SetWrapConnector(wrapConnector)`, "mysql.DriverNameTest()"),
		},
		edits: []edit{
			{
				file:  "driver_test.go",
				re:    regexp.MustCompile(`conn\.Raw\(func\(conn any\) error \{`),
				repl:  `conn.Raw(func(conn any) error { conn = sqlconflictUnwrap(conn);`,
				count: 3,
				why:   "a Raw function asserts *mysqlConn / driver.Execer: it unwraps first, as sqlconflict.BaseConn documents (identity in the baseline)",
			},
			{
				file:  "driver_test.go",
				re:    regexp.MustCompile(`sql\.OpenDB\((\w+)\)`),
				repl:  `sql.OpenDB(sqlconflictConnector($1))`,
				count: 4,
				why:   "a connector given to sql.OpenDB goes through sqlconflict.NewConnector when wrapped (identity in the baseline)",
			},
			{
				file:  "driver_test.go",
				re:    regexp.MustCompile(`sql\.Open\("mysql", `),
				repl:  `sql.Open(driverNameTest, `,
				count: 3,
				why:   "runTestsParallel and TestErrorInMultiResult name \"mysql\" where the rest of the suite uses driverNameTest (\"mysql\" in the baseline)",
			},
		},
		skip:    `^TestConnectorReturnsTimeout$`,
		skipWhy: "it dials 1.1.1.1:1234 (a public address) to see a connect timeout",
	},
	{
		name:   "pq",
		module: "github.com/lib/pq",
		env: [][2]string{
			{"PGHOST", "127.0.0.1"},
			{"PGPORT", "5432"},
			{"PGUSER", "postgres"},
			{"PGDATABASE", "test"},
			{"PGSSLMODE", "disable"},
		},
		files: map[string]string{
			"internal/pqtest/sqlconflict_driver.go": `package pqtest

` + hookComment + `
// DriverName is the driver name DB opens; the wrapped run sets it.
var DriverName = "postgres"
`,
			"sqlconflict_hooks_test.go": `package pq

` + hookComment + `// Unset, the hook changes nothing: the baseline is the suite as published.

import "database/sql/driver"

var sqlconflictConnector = func(c driver.Connector) driver.Connector { return c }

// SetWrapConnector sets what wraps the connectors the suite passes to sql.OpenDB.
func SetWrapConnector(f func(driver.Connector) driver.Connector) { sqlconflictConnector = f }
`,
			"sqlconflict_wrap_test.go": wrapTest("pq", `
	"github.com/lib/pq"
	"github.com/lib/pq/internal/pqtest"`, "sqlconflict.DriverPostgres", `"host=127.0.0.1 port=1"`, `
	pqtest.DriverName = suiteDriverName
	pq.SetWrapConnector(wrapConnector)`, "pqtest.DriverName"),
		},
		edits: []edit{
			{
				file:  "internal/pqtest/pqtest.go",
				re:    regexp.MustCompile(`sql\.Open\("postgres", `),
				repl:  `sql.Open(DriverName, `,
				count: 1,
				why:   "pqtest.DB/MustDB, the suite's helper behind nearly every test, opens the driver named by pqtest.DriverName",
			},
			{
				file:  "ssl_test.go",
				re:    regexp.MustCompile(`sql\.Open\("postgres", `),
				repl:  `sql.Open(pqtest.DriverName, `,
				count: 1,
				why:   "the SNI test's sql.Open likewise",
			},
			{
				file:  "connector_test.go",
				re:    regexp.MustCompile(`sql\.OpenDB\(c\)`),
				repl:  `sql.OpenDB(sqlconflictConnector(c))`,
				count: 2,
				why:   "a connector given to sql.OpenDB goes through sqlconflict.NewConnector when wrapped (identity in the baseline)",
			},
			{
				file:  "error_test.go",
				re:    regexp.MustCompile(`sql\.OpenDB\(c\)`),
				repl:  `sql.OpenDB(sqlconflictConnector(c))`,
				count: 2,
				why:   "likewise",
			},
			{
				file:  "notify_test.go",
				re:    regexp.MustCompile(`sql\.OpenDB\(c\)`),
				repl:  `sql.OpenDB(sqlconflictConnector(c))`,
				count: 1,
				why:   "likewise",
			},
			{
				file:  "notice_test.go",
				re:    regexp.MustCompile(`sql\.OpenDB\(c\)`),
				repl:  `sql.OpenDB(sqlconflictConnector(c))`,
				count: 1,
				why:   "likewise",
			},
		},
		skip: `^Example|^(TestOpen|TestConnectMulti)$/^(hostaddr=255\.255\.255\.255|#0[1-3])$`,
		skipWhy: "TestOpen/hostaddr=255.255.255.255 and TestConnectMulti's cases #01-#03 dial 255.255.255.255; " +
			"the examples (package pq_test) open lib/pq directly, so they cannot show a difference, " +
			"and need a database pqgo and a host named postgres (ExampleListener waits for the -timeout without them)",
		intended: []intended{{
			test:         "TestUnexpectedEOF",
			wrappedError: "sqlconflict: connection lost with the statement in flight; it may have run: driver: bad connection",
			why: "the fake server cuts the connection in the middle of the reply to \"select truncate\"; lib/pq answers " +
				"driver.ErrBadConn although it sent the query, and the test expects database/sql to run it again. " +
				"The wrapper refuses that re-send on purpose for lib/pq and pgx (retry.go, inFlight: the server may have " +
				"run the statement, and a SELECT can call a function that writes) and returns *sqlconflict.LostConnError",
		}, {
			test:         "TestContextCancelExec",
			wrappedError: "not *pq.Error: *sqlconflict.interrupted",
			why:          cancelCut,
		}, {
			test:         "TestQueryRowContext",
			wrappedError: "not *pq.Error: *sqlconflict.interrupted",
			why:          cancelCut,
		}, {
			test:         "TestListenerReconnect",
			wrappedError: "panic: wantEvent: timeout",
			why: "lib/pq's Listener runs on a connection of its own, which does not go through the wrapper (only the " +
				"test's NOTIFY does), and gives its reconnect a 20 ms interval and each event a short wait; its sibling " +
				"TestListenerClose panics the same way in raw runs under the suite's parallel load",
		}},
	},
	{
		name:    "pgx",
		module:  "github.com/jackc/pgx/v5",
		pkg:     "stdlib",
		wrapper: "pgx",
		env: [][2]string{
			{"PGX_TEST_DATABASE", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"},
		},
		files: map[string]string{
			"stdlib/sqlconflict_hooks_test.go": `package stdlib_test

` + hookComment + `// Unset, the hooks change nothing: the baseline is the suite as published.

import "github.com/jackc/pgx/v5/stdlib"

var (
	// sqlconflictDriverName is the driver name the suite's sql.Open calls use.
	sqlconflictDriverName = "pgx"
	// sqlconflictUnwrap is what the suite's Conn.Raw functions apply to the
	// driver connection they are given before asserting its type.
	sqlconflictUnwrap = func(c any) any { return c }
	// sqlconflictOpenDB and sqlconflictOpenDBFromPool stand for
	// stdlib.OpenDB and stdlib.OpenDBFromPool.
	sqlconflictOpenDB         = stdlib.OpenDB
	sqlconflictOpenDBFromPool = stdlib.OpenDBFromPool
)
`,
			"stdlib/sqlconflict_wrap_test.go": wrapTest("stdlib", `
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"`, "sqlconflictpgx.DriverName", `"host=127.0.0.1 port=1"`, `
	sqlconflictDriverName = suiteDriverName
	sqlconflictUnwrap = func(c any) any { return sqlconflict.BaseConn(c) }
	sqlconflictOpenDB = func(config pgx.ConnConfig, opts ...stdlib.OptionOpenDB) *sql.DB {
		db, err := sqlconflictpgx.OpenDB(config, sqlconflict.DefaultOptions(), opts...)
		if err != nil {
			panic(err)
		}
		noteUse()
		return db
	}
	sqlconflictOpenDBFromPool = func(pool *pgxpool.Pool, opts ...stdlib.OptionOpenDB) *sql.DB {
		db := sql.OpenDB(wrapConnector(stdlib.GetPoolConnector(pool, opts...)))
		db.SetMaxIdleConns(0) // as stdlib.OpenDBFromPool does
		return db
	}`, "sqlconflictDriverName"),
		},
		edits: []edit{
			{
				file:  "stdlib/sql_test.go",
				re:    regexp.MustCompile(`sql\.Open\("pgx", `),
				repl:  `sql.Open(sqlconflictDriverName, `,
				count: 3,
				why:   "TestRegisterConnConfig (a name from stdlib.RegisterConnConfig) and TestCheckIdleConn open \"pgx\" by name (\"pgx\" in the baseline; TestSQLOpen, which checks pgx's own names, is left alone)",
			},
			{
				file:  "stdlib/sql_test.go",
				re:    regexp.MustCompile(`stdlib\.OpenDB\(`),
				repl:  `sqlconflictOpenDB(`,
				count: 4,
				why:   "openDB, behind most tests, and the other tests that open a pgx.ConnConfig go through the pgx module's OpenDB with DefaultOptions when wrapped, as a config built in code does (stdlib.OpenDB in the baseline)",
			},
			{
				file:  "stdlib/sql_go1.27_test.go",
				re:    regexp.MustCompile(`stdlib\.OpenDB\(`),
				repl:  `sqlconflictOpenDB(`,
				count: 1,
				why:   "likewise (built by Go 1.27 and later only)",
			},
			{
				file:  "stdlib/sql_test.go",
				re:    regexp.MustCompile(`stdlib\.OpenDBFromPool\(`),
				repl:  `sqlconflictOpenDBFromPool(`,
				count: 1,
				why:   "a pgxpool connector goes through sqlconflict.NewConnector when wrapped (stdlib.OpenDBFromPool in the baseline)",
			},
			{
				file:  "stdlib/sql_test.go",
				re:    regexp.MustCompile(`driverConn\.\(\*stdlib\.Conn\)`),
				repl:  `sqlconflictUnwrap(driverConn).(*stdlib.Conn)`,
				count: 5,
				why:   "a Raw function asserts *stdlib.Conn: it unwraps first, as sqlconflict.BaseConn documents (identity in the baseline)",
			},
		},
	},
}

// cancelCut is why a lib/pq test that cancels pg_sleep and expects 57014
// may get the wrapper's cut instead: the hard bound (sock.go,
// docs/reliability.md). The server's answer to lib/pq's cancel request came
// later than conflict_cancel_grace (80 ms; two graces once the cancel
// request is answered), and the wrapper cut the connection where raw lib/pq
// waits for the server however long it takes. Recognised only by that cut's
// error; any other failure of these tests counts.
const cancelCut = "the server answered lib/pq's cancel request later than conflict_cancel_grace allows (the suite runs " +
	"its tests in parallel; alone, TestContextCancelExec meets this in 2-3 of 30 wrapped runs, which cancel while the " +
	"connection is still being opened), so the wrapper cut the connection at its hard bound and returned " +
	"*sqlconflict.interrupted, an unknown outcome, instead of waiting for the 57014"

// wrapTest is the external test file of a suite's copy: when the switch is
// on, it registers sqlconflict's driver under suiteDriverName through a
// pass-through that notes each use in the file named by
// SQLCONFLICT_SUITE_CONNECTS (a byte per DSN opened, connection made or
// connector wrapped), points the suite at it, and wraps the suite's
// connectors with sqlconflict.NewConnector. The notes tell a test that goes
// through the wrapper from one that does not (lib/pq's Listener tests, say).
func wrapTest(pkg, imports, registered, dsn, setup, current string) string {
	return strings.NewReplacer("PKG", pkg, "IMPORTS", imports, "REGISTERED", registered, "DSN", dsn,
		"SETUP", setup, "CURRENT", current, "COMMENT", hookComment, "SWITCH", switchVar).Replace(wrapTestTemplate)
}

const wrapTestTemplate = `package PKG_test

COMMENT
import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
IMPORTS
	"github.com/sqlconflict/sqlconflict"
)

const suiteDriverName = "sqlconflict-suite"

var sqlconflictWrapped = os.Getenv("SWITCH") == "1"

// init runs after the package under test's own (this package imports it),
// and before any test.
func init() {
	if !sqlconflictWrapped {
		return
	}
	db, err := sql.Open(REGISTERED, DSN)
	if err != nil {
		panic(err)
	}
	sql.Register(suiteDriverName, noting{db.Driver()})
	db.Close()
SETUP
}

func wrapConnector(c driver.Connector) driver.Connector {
	w, err := sqlconflict.NewConnector(c, sqlconflict.DefaultOptions())
	if err != nil {
		panic(err)
	}
	noteUse()
	return notingConnector{w}
}

func noteUse() {
	if name := os.Getenv("SQLCONFLICT_SUITE_CONNECTS"); name != "" {
		if f, err := os.OpenFile(name, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Write([]byte{'.'})
			f.Close()
		}
	}
}

// noting passes everything to sqlconflict's registered driver.
type noting struct{ base driver.Driver }

func (d noting) Open(dsn string) (driver.Conn, error) {
	noteUse()
	return d.base.Open(dsn)
}

func (d noting) OpenConnector(dsn string) (driver.Connector, error) {
	noteUse()
	c, err := d.base.(driver.DriverContext).OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return notingConnector{c}, nil
}

type notingConnector struct{ driver.Connector }

func (c notingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	noteUse()
	return c.Connector.Connect(ctx)
}

func (c notingConnector) Close() error {
	if cl, ok := c.Connector.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// TestSQLConflictSuiteSwitch checks that the switch took: wrapped, the suite's
// driver is sqlconflict's (*sqlconflict.Driver, or the pgx module's);
// otherwise the base driver's.
func TestSQLConflictSuiteSwitch(t *testing.T) {
	db, err := sql.Open(CURRENT, DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	typ := reflect.TypeOf(db.Driver())
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	isWrapped := typ.PkgPath() == "github.com/sqlconflict/sqlconflict" || strings.HasPrefix(typ.PkgPath(), "github.com/sqlconflict/sqlconflict/")
	t.Logf("driver %q: %T", CURRENT, db.Driver())
	if isWrapped != sqlconflictWrapped {
		t.Fatalf("wrapped = %v, want %v", isWrapped, sqlconflictWrapped)
	}
}
`

var (
	flagSuites  = flag.String("suites", "mysql,pq,pgx", "suites to run, comma-separated: mysql, pq, pgx")
	flagReruns  = flag.Int("reruns", 5, "times each differing test is run again, each way")
	flagRace    = flag.Bool("race", false, "build the suites with -race")
	flagKeep    = flag.Bool("keep", false, "keep the temporary copies (their path is printed)")
	flagVerbose = flag.Bool("v", false, "print the full output of every failing test")
	flagTimeout = flag.Duration("timeout", 6*time.Minute, "-test.timeout of each suite run")
)

func main() {
	flag.Parse()
	start := time.Now()
	repo, err := findRepo()
	if err != nil {
		fatal(err)
	}
	tmp, err := os.MkdirTemp("", "sqlconflict-driver-suites-")
	if err != nil {
		fatal(err)
	}
	if *flagKeep {
		fmt.Printf("driver-suites: copies kept in %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	want := strings.Split(*flagSuites, ",")
	bad := 0
	ran := 0
	for _, s := range suites {
		if !slices.Contains(want, s.name) {
			continue
		}
		ran++
		n, err := runSuite(repo, tmp, s)
		if err != nil {
			fmt.Printf("driver-suites: %s: %v\n", s.name, err)
			bad++
			continue
		}
		bad += n
	}
	if ran == 0 {
		fatal(fmt.Errorf("no suite named in -suites=%s", *flagSuites))
	}
	fmt.Printf("\ndriver-suites: done in %s\n", time.Since(start).Round(time.Second))
	if bad > 0 {
		fmt.Printf("driver-suites: FAIL: %d difference(s) caused by the wrapper (or a suite that could not run)\n", bad)
		if !*flagKeep {
			os.RemoveAll(tmp)
		}
		os.Exit(1)
	}
	fmt.Println("driver-suites: OK: no test fails only through the wrapper")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "driver-suites:", err)
	os.Exit(2)
}

// findRepo finds this repository's root: the nearest folder upwards whose
// go.mod is sqlconflict's.
func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && regexp.MustCompile(`(?m)^module `+regexp.QuoteMeta(self)+`\s*$`).Match(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run it inside the sqlconflict repository")
		}
		dir = parent
	}
}

// goCmd runs the go command in dir, outside any workspace, with the local
// toolchain.
func goCmd(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func runSuite(repo, tmp string, s suite) (int, error) {
	t0 := time.Now()
	// The version the workspace's own test run uses (go.work selects the
	// newest any module requires: the demo pins the latest base drivers),
	// not the root's go.mod minimum, which check-versions tests.
	lc := exec.Command("go", "list", "-m", "-f", "{{.Version}}", s.module)
	lc.Dir = filepath.Join(repo, s.wrapper)
	lc.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	vout, err := lc.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("go list -m %s: %v\n%s", s.module, err, vout)
	}
	version := string(vout)
	version = strings.TrimSpace(version)
	fmt.Printf("\n==== %s %s: its own test suite, raw and through sqlconflict\n", s.module, version)
	out, err := goCmd(repo, "mod", "download", "-json", s.module+"@"+version)
	if err != nil {
		return 0, err
	}
	var dl struct{ Dir string }
	if err := json.Unmarshal([]byte(out), &dl); err != nil || dl.Dir == "" {
		return 0, fmt.Errorf("go mod download %s@%s: no Dir in %q", s.module, version, out)
	}
	dir := filepath.Join(tmp, s.name)
	if err := copyTree(dl.Dir, dir); err != nil {
		return 0, err
	}
	fmt.Printf("copy of %s in %s\n", dl.Dir, dir)
	if err := patch(repo, dir, s); err != nil {
		return 0, err
	}
	bin := filepath.Join(tmp, s.name+".test")
	args := []string{"test", "-c", "-vet=off", "-o", bin}
	if *flagRace {
		args = append(args, "-race")
	}
	if _, err := goCmd(dir, append(args, "./"+s.pkg)...); err != nil {
		return 0, err
	}
	fmt.Printf("built %s in %s\n", bin, time.Since(t0).Round(time.Second))

	env := suiteEnv(s)
	pkg, pkgDir := s.module, dir
	if s.pkg != "" {
		pkg, pkgDir = s.module+"/"+s.pkg, filepath.Join(dir, filepath.FromSlash(s.pkg))
	}
	r := &runner{pkg: pkg, dir: pkgDir, bin: bin, env: env, skip: s.skip, uses: filepath.Join(tmp, s.name+".uses")}
	if s.skip != "" {
		fmt.Printf("skipped in both runs: -test.skip='%s': %s\n", s.skip, s.skipWhy)
	}
	list, err := r.list()
	if err != nil {
		return 0, err
	}
	raw := r.full(false, list)
	r.resetUses()
	wrapped := r.full(true, list)
	fmt.Printf("the wrapped run went through sqlconflict %d times (DSNs opened, connections made, connectors wrapped)\n", r.used())
	return compare(r, s, raw, wrapped), nil
}

// suiteEnv is the environment of a suite run: this process's, less the
// switch, with the suite's variables defaulted.
func suiteEnv(s suite) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, switchVar+"=") {
			env = append(env, kv)
		}
	}
	var shown []string
	for _, v := range s.env {
		val, ok := os.LookupEnv(v[0])
		if !ok {
			val = v[1]
			env = append(env, v[0]+"="+val)
		}
		shown = append(shown, v[0]+"="+val)
	}
	fmt.Printf("environment: %s\n", strings.Join(shown, " "))
	return env
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

// patch adds the hook files, makes the edits (printing each) and points the
// copy's go.mod at this repository.
func patch(repo, dir string, s suite) error {
	names := make([]string, 0, len(s.files))
	for n := range s.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s already exists upstream", n)
		}
		if err := os.WriteFile(p, []byte(s.files[n]), 0o644); err != nil {
			return err
		}
		fmt.Printf("added %s\n", n)
	}
	for _, e := range s.edits {
		p := filepath.Join(dir, e.file)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		n := 0
		for i, l := range lines {
			if !e.re.MatchString(l) {
				continue
			}
			n += len(e.re.FindAllStringIndex(l, -1))
			nl := e.re.ReplaceAllString(l, e.repl)
			fmt.Printf("edit %s:%d (%s)\n\t- %s\n\t+ %s\n", e.file, i+1, e.why, strings.TrimSpace(l), strings.TrimSpace(nl))
			lines[i] = nl
		}
		if n != e.count {
			return fmt.Errorf("%s: %d matches of %s, want %d: has the upstream file changed?", e.file, n, e.re, e.count)
		}
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			return err
		}
	}

	// go.mod: require and replace sqlconflict (and the suite's wrapper
	// module, pgx's), at least their go lines; go.sum: theirs (the hashes of
	// their requirements).
	mods := [][2]string{{self, repo}} // module path, folder
	if s.wrapper != "" {
		mods = append(mods, [2]string{self + "/" + s.wrapper, filepath.Join(repo, filepath.FromSlash(s.wrapper))})
	}
	cur, err := goCmd(dir, "mod", "edit", "-json")
	if err != nil {
		return err
	}
	var cf struct{ Go string }
	if err := json.Unmarshal([]byte(cur), &cf); err != nil {
		return err
	}
	goLine, goFrom := cf.Go, ""
	var edits []string
	f, err := os.OpenFile(filepath.Join(dir, "go.sum"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, m := range mods {
		modGo, err := goCmd(m[1], "mod", "edit", "-json")
		if err != nil {
			return err
		}
		var mf struct{ Go string }
		if err := json.Unmarshal([]byte(modGo), &mf); err != nil {
			return err
		}
		if versionLess(goLine, mf.Go) {
			goLine, goFrom = mf.Go, m[0]
		}
		edits = append(edits, "-require="+m[0]+"@v0.0.0", "-replace="+m[0]+"="+m[1])
		fmt.Printf("edit go.mod: require %s v0.0.0, replace it => %s\n", m[0], m[1])
		sum, err := os.ReadFile(filepath.Join(m[1], "go.sum"))
		if err != nil {
			return err
		}
		f.Write(sum)
	}
	if goFrom != "" {
		edits = append(edits, "-go="+goLine)
		fmt.Printf("edit go.mod: go %s -> go %s (%s's go line; the copy must be at least that)\n", cf.Go, goLine, goFrom)
	}
	if _, err := goCmd(dir, append([]string{"mod", "edit"}, edits...)...); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if _, err := goCmd(dir, "mod", "tidy"); err != nil {
		return err
	}
	return nil
}

func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < 3; i++ {
		var x, y int
		if i < len(pa) {
			fmt.Sscan(pa[i], &x)
		}
		if i < len(pb) {
			fmt.Sscan(pb[i], &y)
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// ---- running ----

type runner struct {
	pkg, dir, bin string
	env           []string
	skip          string // -test.skip
	uses          string // the file the wrapped runs note their uses of the wrapper in
}

func (r *runner) resetUses() { os.Remove(r.uses) }

// used is how many times the wrapped runs since resetUses went through the
// wrapper: DSNs opened, connections made, connectors wrapped.
func (r *runner) used() int64 {
	fi, err := os.Stat(r.uses)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// result is one run of a suite: every test's (and subtest's) outcome.
type result struct {
	wrapped  bool
	status   map[string]string   // pass, fail, skip, panic, timeout, incomplete
	history  map[string][]string // every outcome, for -test.count > 1
	output   map[string][]string
	panics   []string // the panic lines
	pkgFail  []string // package-level failure output (TestMain, a crash outside a test)
	elapsed  time.Duration
	restarts int
}

func newResult(wrapped bool) *result {
	return &result{wrapped: wrapped, status: map[string]string{}, history: map[string][]string{}, output: map[string][]string{}}
}

func (r *runner) envFor(wrapped bool) []string {
	if wrapped {
		return append(slices.Clip(r.env), switchVar+"=1", "SQLCONFLICT_SUITE_CONNECTS="+r.uses)
	}
	return r.env
}

// list returns the top-level tests, examples and fuzz targets (whose seeds run
// as tests) of the binary, less those -test.skip skips whole.
func (r *runner) list() ([]string, error) {
	cmd := exec.Command(r.bin, "-test.list", ".")
	cmd.Dir, cmd.Env = r.dir, r.env
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -test.list: %v", r.bin, err)
	}
	var whole []*regexp.Regexp
	for _, alt := range splitTop(r.skip) {
		if alt != "" && !strings.Contains(alt, "/") {
			whole = append(whole, regexp.MustCompile(alt))
		}
	}
	var names []string
	for _, l := range strings.Fields(string(out)) {
		if !strings.HasPrefix(l, "Benchmark") &&
			!slices.ContainsFunc(whole, func(re *regexp.Regexp) bool { return re.MatchString(l) }) {
			names = append(names, l)
		}
	}
	return names, nil
}

// splitTop splits a -test.run/-test.skip pattern at its top-level '|', as
// the testing package does.
func splitTop(p string) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case '|':
			if depth == 0 {
				parts = append(parts, p[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, p[start:])
}

// full runs every test of list; after a crash (a panic or a timeout ends the
// binary) it runs again those that had not finished, less the one that
// crashed.
func (r *runner) full(wrapped bool, list []string) *result {
	res := newResult(wrapped)
	t0 := time.Now()
	remaining := list
	for {
		run := ""
		if len(remaining) != len(list) {
			quoted := make([]string, len(remaining))
			for i, n := range remaining {
				quoted[i] = regexp.QuoteMeta(n)
			}
			run = "^(" + strings.Join(quoted, "|") + ")$"
			res.restarts++
		}
		r.once(res, wrapped, run, 1)
		var left []string
		for _, n := range remaining {
			if _, ok := res.status[n]; !ok {
				left = append(left, n)
			}
		}
		if len(left) == 0 || len(left) == len(remaining) {
			for _, n := range left {
				res.status[n] = "incomplete"
			}
			break
		}
		remaining = left
	}
	res.elapsed = time.Since(t0)
	mode := "raw"
	if wrapped {
		mode = "wrapped"
	}
	fmt.Printf("%-8s ran in %s%s\n", mode, res.elapsed.Round(time.Second), restartNote(res.restarts))
	return res
}

func restartNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (binary started again %d time(s) after a crash, for the tests not finished)", n)
}

type event struct {
	Action string
	Test   string
	Output string
}

var timedOutTest = regexp.MustCompile(`^\s+(\S+) \([0-9.a-zµ]+\)$`)

// once runs the binary through test2json and adds what it reports to res.
// Tests that a crash interrupted (started, no result, not the crashing one)
// are left without a status, for full to run again.
func (r *runner) once(res *result, wrapped bool, run string, count int) {
	args := []string{"tool", "test2json", "-t", "-p", r.pkg, r.bin, "-test.v=test2json", fmt.Sprintf("-test.count=%d", count),
		"-test.timeout=" + flagTimeout.String()}
	if run != "" {
		args = append(args, "-test.run="+run)
	}
	if r.skip != "" {
		args = append(args, "-test.skip="+r.skip)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir, cmd.Env = r.dir, r.envFor(wrapped)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		res.pkgFail = append(res.pkgFail, err.Error())
		return
	}
	if err := cmd.Start(); err != nil {
		res.pkgFail = append(res.pkgFail, err.Error())
		return
	}
	var (
		running    []string // started, not finished, in order
		timingOut  bool     // after "panic: test timed out", the running tests are listed
		crashed    bool
		testFailed bool
	)
	markFailed := func(t, how string) {
		res.status[t] = how
		if how == "timeout" {
			res.history[t] = append(res.history[t], how)
		}
		testFailed = true
		for p := parent(t); p != ""; p = parent(p) {
			if s := res.status[p]; s != "panic" && s != "timeout" {
				res.status[p] = "fail"
			}
		}
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var ev event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Action {
		case "run":
			running = append(running, ev.Test)
			if !slices.ContainsFunc(res.history[ev.Test], failed) {
				res.output[ev.Test] = nil // keep a failed iteration's output
			}
			delete(res.status, ev.Test)
		case "output":
			line := strings.TrimRight(ev.Output, "\n")
			if ev.Test != "" {
				res.output[ev.Test] = append(res.output[ev.Test], line)
			}
			t := strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(t, "panic: test timed out"):
				timingOut, crashed = true, true
				res.panics = append(res.panics, "(timeout): "+t)
				if strings.HasPrefix(ev.Test, "Example") {
					// An example is not in the list of running tests
					// that follows; examples run one at a time.
					markFailed(ev.Test, "timeout")
				}
			case timingOut && timedOutTest.MatchString(line):
				name := timedOutTest.FindStringSubmatch(line)[1]
				markFailed(name, "timeout")
				res.output[name] = append(res.output[name], t)
				res.panics = append(res.panics, name+": still running at the timeout")
			case strings.HasPrefix(t, "panic: ") || strings.HasPrefix(t, "fatal error: "):
				crashed = true
				who := ev.Test
				if who == "" && len(running) > 0 {
					who = running[len(running)-1]
				}
				if who != "" {
					markFailed(who, "panic")
					if ev.Test == "" {
						res.output[who] = append(res.output[who], line)
					}
				}
				res.panics = append(res.panics, fmt.Sprintf("%s: %s", orPkg(who), t))
			case ev.Test == "" && t != "" && !timingOut && t != "PASS" && t != "FAIL" &&
				!strings.HasPrefix(t, "ok ") && !strings.HasPrefix(t, "FAIL\t") && !strings.HasPrefix(t, "exit status"):
				res.pkgFail = append(res.pkgFail, line)
			}
		case "pass", "fail", "skip":
			if ev.Test == "" {
				if ev.Action == "fail" && !crashed && !testFailed {
					res.pkgFail = append(res.pkgFail, "(the package failed with no failing test)")
				}
				continue
			}
			if s := res.status[ev.Test]; s != "panic" && s != "timeout" {
				res.status[ev.Test] = ev.Action
			}
			res.history[ev.Test] = append(res.history[ev.Test], res.status[ev.Test])
			if ev.Action == "fail" {
				testFailed = true
			}
			if i := slices.Index(running, ev.Test); i >= 0 {
				running = slices.Delete(running, i, i+1)
			}
		}
	}
	io.Copy(io.Discard, stdout)
	cmd.Wait()
	if crashed {
		// The interrupted tests get no status, so full runs them again; their
		// parents too (a parent's status comes from its subtests' run).
		// A test that crashed, and its parents, keep theirs.
		keep := map[string]bool{}
		for t, s := range res.status {
			if s == "panic" || s == "timeout" {
				for ; t != ""; t = parent(t) {
					keep[t] = true
				}
			}
		}
		for _, t := range running {
			for ; t != ""; t = parent(t) {
				if !keep[t] {
					delete(res.status, t)
				}
			}
		}
	} else {
		for _, t := range running {
			if _, ok := res.status[t]; !ok {
				res.status[t] = "incomplete"
			}
		}
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		res.pkgFail = append(res.pkgFail, "stderr: "+s)
	}
}

func orPkg(t string) string {
	if t == "" {
		return "(package)"
	}
	return t
}

func parent(t string) string {
	if i := strings.LastIndex(t, "/"); i >= 0 {
		return t[:i]
	}
	return ""
}

func failed(s string) bool { return s == "fail" || s == "panic" || s == "timeout" || s == "incomplete" }

// ---- comparing ----

type counts struct{ pass, fail, skip, panic, incomplete int }

func count(r *result) (c counts) {
	for _, s := range r.status {
		switch s {
		case "pass":
			c.pass++
		case "fail":
			c.fail++
		case "skip":
			c.skip++
		case "panic", "timeout":
			c.panic++
		case "incomplete":
			c.incomplete++
		}
	}
	return c
}

// compare prints the totals and the differences, reruns the differing tests,
// and returns how many differences the wrapper causes.
func compare(r *runner, s suite, raw, wrapped *result) int {
	fmt.Printf("\n%s totals (tests and subtests):\n", s.name)
	for _, res := range []*result{raw, wrapped} {
		c := count(res)
		mode := "raw"
		if res.wrapped {
			mode = "wrapped"
		}
		fmt.Printf("  %-8s pass %4d   fail %3d   skip %3d   panic %d   incomplete %d   (%s)\n",
			mode, c.pass, c.fail, c.skip, c.panic, c.incomplete, res.elapsed.Round(time.Second))
	}

	names := map[string]bool{}
	for n := range raw.status {
		names[n] = true
	}
	for n := range wrapped.status {
		names[n] = true
	}
	all := make([]string, 0, len(names))
	for n := range names {
		all = append(all, n)
	}
	sort.Strings(all)

	var onlyWrapped, onlyRaw, bothFail, skipDiff, presence []string
	for _, n := range all {
		a, b := raw.status[n], wrapped.status[n]
		switch {
		case a == "" || b == "":
			presence = append(presence, n)
		case failed(b) && !failed(a):
			onlyWrapped = append(onlyWrapped, n)
		case failed(a) && !failed(b):
			onlyRaw = append(onlyRaw, n)
		case failed(a) && failed(b):
			bothFail = append(bothFail, n)
		case a != b:
			skipDiff = append(skipDiff, n)
		}
	}

	fmt.Printf("\n%s: failing in both runs (the machine: no TLS, roles, ...; not differences): %d\n", s.name, len(bothFail))
	for _, n := range bothFail {
		fmt.Printf("  %s  [raw %s, wrapped %s]  %s\n", n, raw.status[n], wrapped.status[n], firstError(raw.output[n]))
		if !sameError(raw.output[n], wrapped.output[n]) {
			fmt.Printf("    raw:     %s\n    wrapped: %s\n", firstError(raw.output[n]), firstError(wrapped.output[n]))
		}
	}
	for _, res := range []*result{raw, wrapped} {
		if len(res.panics) > 0 {
			fmt.Printf("%s panics (%s):\n", s.name, map[bool]string{false: "raw", true: "wrapped"}[res.wrapped])
			for _, p := range res.panics {
				fmt.Printf("  %s\n", p)
			}
		}
	}
	if len(presence) > 0 {
		fmt.Printf("%s: tests that ran in one run only (subtests of a test that stopped earlier in the other):\n", s.name)
		for _, n := range presence {
			fmt.Printf("  %s  [raw %q, wrapped %q]\n", n, raw.status[n], wrapped.status[n])
		}
	}
	if len(skipDiff) > 0 {
		fmt.Printf("%s: tests that passed in one run and were skipped in the other:\n", s.name)
		for _, n := range skipDiff {
			fmt.Printf("  %s  [raw %s, wrapped %s]\n", n, raw.status[n], wrapped.status[n])
			printOutput("    ", wrapped.output[n])
		}
	}
	for _, n := range []struct {
		name string
		res  *result
	}{{"raw", raw}, {"wrapped", wrapped}} {
		if len(n.res.pkgFail) > 0 {
			fmt.Printf("%s: package-level output of the %s run (outside any test):\n", s.name, n.name)
			for _, l := range n.res.pkgFail {
				fmt.Printf("  %s\n", l)
			}
		}
	}

	fmt.Printf("\n%s: failing only raw: %d\n", s.name, len(onlyRaw))
	for _, n := range onlyRaw {
		fmt.Printf("  %s  [raw %s, wrapped %s]\n", n, raw.status[n], wrapped.status[n])
		printOutput("    ", raw.output[n])
	}
	fmt.Printf("\n%s: failing only wrapped: %d\n", s.name, len(onlyWrapped))
	for _, n := range onlyWrapped {
		fmt.Printf("  %s  [raw %s, wrapped %s]\n", n, raw.status[n], wrapped.status[n])
		printOutput("    ", wrapped.output[n])
	}

	bad, nIntended := 0, 0
	// A test fails with its failing subtest: the subtest stands for both.
	var differing []string
	for _, n := range append(slices.Clone(onlyWrapped), onlyRaw...) {
		parentOnly := slices.ContainsFunc(append(slices.Clone(onlyWrapped), onlyRaw...),
			func(m string) bool { return strings.HasPrefix(m, n+"/") })
		if !parentOnly {
			differing = append(differing, n)
		}
	}
	if len(differing) > 0 && *flagReruns > 0 {
		fmt.Printf("\n%s: the differing tests, run %d more time(s) each way, alone:\n", s.name, *flagReruns)
	}
	for _, n := range differing {
		if in, ok := isIntended(s, n, wrapped); ok {
			fmt.Printf("  %s: INTENDED, not counted: %s\n", n, in.why)
			nIntended++
			continue
		}
		top := n
		if i := strings.Index(n, "/"); i >= 0 {
			top = n[:i]
		}
		var rs, ws []string
		var wout []string
		var uses int64
		if *flagReruns > 0 {
			for _, w := range []bool{false, true} {
				r.resetUses()
				res := newResult(w)
				r.once(res, w, "^"+regexp.QuoteMeta(top)+"$", *flagReruns)
				h := res.history[n]
				for len(h) < *flagReruns {
					h = append(h, "absent") // a crash ended the reruns
				}
				if w {
					ws = h
					uses = r.used()
					if slices.ContainsFunc(h, failed) {
						wout = res.output[n]
					}
				} else {
					rs = h
				}
			}
		}
		verdict := ""
		wrappedOnly := slices.Contains(onlyWrapped, n)
		wfails := 0
		for _, st := range ws {
			if failed(st) {
				wfails++
			}
		}
		switch {
		case !wrappedOnly:
			verdict = "fails only raw: not the wrapper's"
		case slices.ContainsFunc(rs, failed):
			verdict = "flaky: fails raw too on a rerun; not counted"
		case uses == 0 && len(ws) > 0:
			verdict = "does not go through the wrapper (its wrapped reruns never used sqlconflict): timing, not counted"
		case wfails == 0:
			verdict = fmt.Sprintf("DIFFERENCE, intermittent: the %d wrapped reruns pass, but the raw driver never failed it", len(ws))
			bad++
		default:
			verdict = fmt.Sprintf("DIFFERENCE: fails through the wrapper only (%d of %d wrapped reruns)", wfails, len(ws))
			bad++
		}
		fmt.Printf("  %s: raw %s; wrapped %s -> %s\n", n, strings.Join(rs, " "), strings.Join(ws, " "), verdict)
		if wrappedOnly && wout != nil && !sameError(wout, wrapped.output[n]) {
			fmt.Println("    wrapped rerun's error:")
			printOutput("      ", wout)
		}
	}
	// A panic only wrapped that is not a test failure above (cannot happen:
	// a panic marks its test) is covered by onlyWrapped.
	fmt.Printf("\n%s: %d difference(s) caused by the wrapper; %d intended (listed above)\n", s.name, bad, nIntended)
	return bad
}

// isIntended reports whether n's wrapped-only failure is one the suite lists
// as the wrapper's intended behaviour, with that error text.
func isIntended(s suite, n string, wrapped *result) (intended, bool) {
	for _, in := range s.intended {
		if st := wrapped.status[n]; in.test == n && (st == "fail" || st == "panic") &&
			slices.ContainsFunc(wrapped.output[n], func(l string) bool { return strings.Contains(l, in.wrappedError) }) {
			return in, true
		}
	}
	return intended{}, false
}

var framing = regexp.MustCompile(`^\s*(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|FAIL|SKIP)|PASS$|FAIL$)`)

func errorLines(out []string) []string {
	var ls []string
	for _, l := range out {
		if !framing.MatchString(l) && strings.TrimSpace(l) != "" {
			ls = append(ls, l)
		}
	}
	return ls
}

func firstError(out []string) string {
	ls := errorLines(out)
	if len(ls) == 0 {
		return ""
	}
	l := strings.TrimSpace(ls[0])
	if len(l) > 200 {
		l = l[:200] + "..."
	}
	return l
}

func sameError(a, b []string) bool {
	norm := regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)
	return norm.ReplaceAllString(firstError(a), "N") == norm.ReplaceAllString(firstError(b), "N")
}

func printOutput(indent string, out []string) {
	ls := errorLines(out)
	max := 15
	if *flagVerbose {
		max = len(ls)
	}
	for i, l := range ls {
		if i == max {
			fmt.Printf("%s... (%d more lines; -v prints them)\n", indent, len(ls)-max)
			break
		}
		if len(l) > 300 && !*flagVerbose {
			l = l[:300] + "..."
		}
		fmt.Printf("%s%s\n", indent, l)
	}
}
