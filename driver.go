// Package sqlconflict is a database/sql driver that wraps lib/pq and
// go-sql-driver/mysql so that applications survive concurrent writes.
//
// It classifies duplicate-key, deadlock, serialization and lock-timeout errors
// with their scope (see [Classify]), retries statements that provably had no
// effect, replays a transaction a conflict aborted when everything the
// application saw comes out the same (conflict_replay, on by default), guards
// writes inside transactions with savepoints when asked to, refuses to run
// statements in a transaction that an earlier error doomed, and mends the
// re-read after a conflict that REPEATABLE READ makes blind
// (conflict_blind_reread=fix, the default; warn, error and off are the
// others).
//
// Adopting it means changing the driver name and, optionally, the DSN:
//
//	db, err := sql.Open("sqlconflict-postgres", "postgres://app@db/app?conflict_retries=3")
//	db, err := sql.Open("sqlconflict-mysql", "app@tcp(db:3306)/app?conflict_savepoints=writes")
//
// The errors an application receives are the base driver's own (*pq.Error,
// *mysql.MySQLError) unless conflict_wrap_errors=true.
//
// Importing github.com/sqlconflict/sqlconflict/sqlite registers
// "sqlconflict-sqlite" over the pure-Go modernc.org/sqlite, which this
// package does not import.
package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"reflect"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// Driver names registered by this package.
const (
	DriverPostgres = "sqlconflict-postgres" // wraps github.com/lib/pq
	DriverMySQL    = "sqlconflict-mysql"    // wraps github.com/go-sql-driver/mysql
)

func init() {
	sql.Register(DriverPostgres, &Driver{base: &pq.Driver{}, form: DSNPostgresKV, opts: withDialect(DialectPostgres)})
	sql.Register(DriverMySQL, &Driver{base: &mysql.MySQLDriver{}, form: DSNMySQL, opts: withDialect(DialectMySQL)})
}

func withDialect(d Dialect) Options {
	o := DefaultOptions()
	o.Dialect = d
	return o
}

// Driver is a database/sql driver wrapping a base driver. Its DSNs are the
// base driver's, plus conflict_* options that are read and removed before the
// base driver sees the DSN.
type Driver struct {
	base driver.Driver
	form DSNForm
	opts Options
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// Wrap returns a driver that wraps base with opts. conflict_* options in the
// DSNs later passed to it override opts. Register it with [sql.Register].
//
// With opts.Dialect set, DSNs are read in that dialect's forms: PostgreSQL's
// URL or key=value (libpq's, which lib/pq and pgx share), or
// go-sql-driver/mysql's, or for DialectSQLite a file name or URI whose
// parameters follow its first '?' ([DSNQuery]). Otherwise [SplitDSN]'s
// DSNAuto guesses the form.
func Wrap(base driver.Driver, opts Options) *Driver {
	form := DSNAuto
	switch opts.Dialect {
	case DialectPostgres:
		form = DSNPostgresKV // OpenConnector reads URLs as DSNPostgresURL
	case DialectMySQL:
		form = DSNMySQL
	case DialectSQLite:
		form = DSNQuery
	}
	return &Driver{base: base, form: form, opts: opts}
}

// Open implements [driver.Driver]. database/sql prefers OpenConnector.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements [driver.DriverContext]: it reads the conflict_*
// options once, so that a bad option makes sql.Open fail, naming the option.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	form := d.form
	if form == DSNPostgresKV && isPostgresURL(dsn) {
		form = DSNPostgresURL
	}
	if err := wrongForm(dsn, form); err != nil {
		return nil, err
	}
	opts, baseDSN, err := SplitDSN(dsn, form, d.opts)
	if err != nil {
		return nil, err
	}
	var base driver.Connector
	if _, ok := d.base.(*pq.Driver); ok {
		base = pqConnector{dsn: baseDSN, dialer: &dialer{grace: opts.resolved().CancelGrace}}
	} else if dc, ok := d.base.(driver.DriverContext); ok {
		if base, err = dc.OpenConnector(baseDSN); err != nil {
			return nil, redact(err, dsnSecrets(baseDSN))
		}
	} else {
		base = dsnConnector{dsn: baseDSN, drv: d.base}
	}
	c, err := newConnector(base, d, opts)
	if err != nil {
		return nil, err
	}
	c.secrets = dsnSecrets(baseDSN)
	if form == DSNMySQL {
		c.cfg.autocommit = dsnAutocommit(baseDSN)
	}
	return c, nil
}

// NewConnector wraps base, for use with [sql.OpenDB]. It fails if opts is
// invalid (see [Options.Validate]), or if base's configuration still holds
// a conflict_* parameter (left in the DSN given to pq.NewConnector, say),
// which the base driver would send to the server: NewConnector takes
// Options, not DSN options.
func NewConnector(base driver.Connector, opts Options) (driver.Connector, error) {
	if err := strayOptions(base); err != nil {
		return nil, err
	}
	return newConnector(base, &Driver{base: base.Driver(), form: DSNAuto, opts: opts}, opts)
}

// connector is the wrapping driver.Connector. It is immutable after
// construction and shared by every connection it makes.
type connector struct {
	base    driver.Connector
	drv     *Driver
	cfg     *config
	secrets []string // the DSN's password's forms, to keep them out of Connect's errors
	dials   bool     // the wrapper dials base's sockets (sock.go)
}

func newConnector(base driver.Connector, drv *Driver, opts Options) (*connector, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.resolved()
	if opts.Dialect == DialectUnknown {
		opts.Dialect = detectDialect(base.Driver())
	}
	owned, dials := ownDialer(base, opts.CancelGrace)
	base = owned.(driver.Connector)
	cfg := &config{Options: opts, sp: newSavepointSQL(), badConnSafe: badConnSafe(base.Driver()),
		schema: new(schemaFacts), ro: new(roPacer), base: base}
	return &connector{base: base, drv: drv, cfg: cfg, dials: dials}, nil
}

// Driver implements [driver.Connector].
func (c *connector) Driver() driver.Driver { return c.drv }

// config is the immutable per-connector configuration shared by its
// connections.
type config struct {
	Options
	sp spSQL // the wrapper's savepoint statements
	// badConnSafe: the base driver answers driver.ErrBadConn only when it
	// sent nothing (see inFlight).
	badConnSafe bool
	// autocommit: the session's autocommit when a connection opens, as the
	// DSN sets it (go-sql-driver/mysql's autocommit parameter).
	autocommit autocommitState
	schema     *schemaFacts     // what the connections learned of the schema (schema.go)
	ro         *roPacer         // how often read-only refusals may reconnect (readonly.go)
	base       driver.Connector // for connections of the wrapper's own (verify.go)
}

func (c *config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// connDriver lets sqlmw wrap a connection that is already open.
type connDriver struct{ c driver.Conn }

func (d connDriver) Open(string) (driver.Conn, error) { return d.c, nil }

// dsnConnector adapts a driver without DriverContext.
type dsnConnector struct {
	dsn string
	drv driver.Driver
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

// wrongForm refuses a DSN plainly written for another driver. lib/pq would
// take a MySQL DSN as one key=value pair whose key it sends to the server,
// password included, where it lands in the server's log. The error quotes
// nothing of the DSN.
func wrongForm(dsn string, form DSNForm) error {
	switch {
	case form == DSNPostgresKV && looksMySQL(dsn):
		return errors.New("sqlconflict: the DSN looks like go-sql-driver/mysql's form (user:password@tcp(host:port)/dbname?params), " +
			"not PostgreSQL's (postgres://user:password@host/dbname?params or host=... dbname=...): use sqlconflict-mysql, or a PostgreSQL DSN")
	case form == DSNMySQL && isPostgresURL(dsn):
		return errors.New("sqlconflict: the DSN is a postgres:// URL, not go-sql-driver/mysql's form (user:password@tcp(host:port)/dbname?params): " +
			"use sqlconflict-postgres, or a MySQL DSN")
	}
	return nil
}

// looksMySQL reports go-sql-driver/mysql's form: no '=' before the query,
// and an '@' or a tcp( or unix( address before a '/'. A libpq key=value DSN
// has an '=' in its first pair.
func looksMySQL(dsn string) bool {
	head, _, _ := strings.Cut(dsn, "?")
	slash := strings.LastIndexByte(head, '/')
	if slash < 0 || strings.ContainsRune(head, '=') {
		return false
	}
	addr := head[:slash]
	return strings.Contains(addr, "@") || strings.Contains(addr, "tcp(") || strings.Contains(addr, "unix(")
}

// isPostgresURL tells lib/pq's two DSN forms apart the way lib/pq does.
func isPostgresURL(dsn string) bool {
	l := strings.ToLower(dsn)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// basePackage returns the import path of the package that defines the
// base driver's type.
func basePackage(d driver.Driver) string {
	t := reflect.TypeOf(d)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return ""
	}
	return t.PkgPath()
}

// badConnSafe reports the base drivers known to answer driver.ErrBadConn
// only when nothing was sent: go-sql-driver/mysql (its contract since v1.5,
// which its rejectReadOnly failover relies on) and modernc.org/sqlite (only
// from ResetSession). lib/pq may answer it after sending (lib/pq#939). So
// may pgx's stdlib, though it means to answer it only when
// pgconn.SafeToRetry: a connection cut while a simple-protocol Exec reads
// its reply surfaces as pgconn's "conn closed" lock error, which is
// SafeToRetry, after the server ran the statement (seen in
// TestIntegrationFaultConnectionCuts: 5 writes applied twice in 150).
// An unknown driver is assumed not to keep the contract either.
func badConnSafe(d driver.Driver) bool {
	p := basePackage(d)
	return strings.Contains(p, "go-sql-driver/mysql") || strings.Contains(p, "modernc.org/sqlite")
}

// detectDialect guesses the SQL dialect from the base driver's package, so
// that NewConnector works with lib/pq, pgx's stdlib, go-sql-driver/mysql, and
// SQLite drivers (modernc.org/sqlite, mattn/go-sqlite3: any package path
// containing "sqlite", as [Classify] recognises SQLite errors) without the
// caller saying which.
func detectDialect(d driver.Driver) Dialect {
	switch p := basePackage(d); {
	case strings.Contains(p, "lib/pq"), strings.Contains(p, "jackc/pgx"):
		return DialectPostgres
	case strings.Contains(p, "go-sql-driver/mysql"):
		return DialectMySQL
	case strings.Contains(p, "sqlite"):
		return DialectSQLite
	}
	return DialectUnknown
}
