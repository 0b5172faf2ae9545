// Package pgx registers sqlconflict over pgx's database/sql driver,
// [github.com/jackc/pgx/v5/stdlib], as the driver "sqlconflict-pgx":
//
//	import _ "github.com/sqlconflict/sqlconflict/pgx"
//
//	db, err := sql.Open("sqlconflict-pgx", "postgres://app@db/app?conflict_retries=3")
//
// It behaves as "sqlconflict-postgres" does over lib/pq. DSNs are pgx's, as
// a URL or as key=value pairs, plus the conflict_* options (see
// [sqlconflict.SplitDSN]), which are removed before pgx sees the DSN: pgx
// would send them to the server as run-time parameters, and the server would
// refuse the connection. The errors are pgx's own *pgconn.PgError unless
// conflict_wrap_errors=true; [sqlconflict.Classify] and the Is* functions
// read them.
//
// A DSN may also be a name that [stdlib.RegisterConnConfig] returned
// ("registeredConnConfig0", ...; any name that begins so and holds no '='):
// the wrapper passes it to pgx untouched, and pgx connects with the
// registered *pgx.ConnConfig, through the wrapper as any other DSN. Such a
// name carries no conflict_* options, so its connections get the defaults,
// [sqlconflict.DefaultOptions]; conflict_* run-time parameters in the
// registered config are not read, and pgx sends them to the server as
// without the wrapper. [OpenDB] takes a config with options instead. A name
// pgx has not registered fails as it does with pgx alone, when the first
// connection is opened, with pgx's error.
//
// Only pgx used through database/sql is wrapped. Code that uses *pgx.Conn or
// pgxpool directly bypasses database/sql and so the wrapper; it can still
// classify its errors with [sqlconflict.Classify].
//
// This package is named after its directory. A file that also imports pgx
// itself needs another name for one of them, such as sqlconflictpgx.
package pgx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/sqlconflict/sqlconflict"
)

// DriverName is the name this package registers with database/sql.
const DriverName = "sqlconflict-pgx"

func init() {
	opts := options(sqlconflict.DefaultOptions())
	sql.Register(DriverName, &pgxDriver{dsns: sqlconflict.Wrap(stdlib.GetDefaultDriver(), opts), opts: opts})
}

// registeredPrefix begins the names [stdlib.RegisterConnConfig] returns.
// pgx's stdlib looks a name up among the registered ones when it connects,
// and parses any other as a DSN.
const registeredPrefix = "registeredConnConfig"

// pgxDriver is the driver registered as DriverName: sqlconflict's driver
// over pgx's stdlib for DSNs, and the names of registered configs passed to
// pgx untouched. Its connectors' Driver method returns it, so that
// db.Driver() opens what sql.Open does.
type pgxDriver struct {
	dsns *sqlconflict.Driver // reads and removes the conflict_* options of a DSN
	opts sqlconflict.Options // for registered names, which carry none
}

// Open implements [driver.Driver]. database/sql prefers OpenConnector.
func (d *pgxDriver) Open(name string) (driver.Conn, error) {
	c, err := d.OpenConnector(name)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements [driver.DriverContext].
func (d *pgxDriver) OpenConnector(name string) (driver.Connector, error) {
	var c driver.Connector
	var err error
	// A DSN holding '=' is a URL or key=value pairs, whatever its first
	// characters: its conflict_* options are read, never sent to pgx.
	if strings.HasPrefix(name, registeredPrefix) && !strings.Contains(name, "=") {
		base, ok := stdlib.GetDefaultDriver().(driver.DriverContext)
		if !ok {
			return nil, fmt.Errorf("sqlconflict/pgx: pgx's stdlib driver %T has no OpenConnector", stdlib.GetDefaultDriver())
		}
		var bc driver.Connector
		if bc, err = base.OpenConnector(name); err == nil {
			c, err = sqlconflict.NewConnector(bc, d.opts)
		}
	} else {
		c, err = d.dsns.OpenConnector(name)
	}
	if err != nil {
		return nil, err
	}
	return connector{c, d}, nil
}

// connector is a wrapped connector whose Driver is the registered driver.
type connector struct {
	driver.Connector
	drv *pgxDriver
}

func (c connector) Driver() driver.Driver { return c.drv }

// options returns opts for PostgreSQL over pgx: the dialect, and the way to
// pgx's socket, so that a pooled connection the server closed (a restart)
// is refused before it is reused.
func options(opts sqlconflict.Options) sqlconflict.Options {
	if opts.Dialect == sqlconflict.DialectUnknown {
		opts.Dialect = sqlconflict.DialectPostgres
	}
	if opts.NetConn == nil {
		opts.NetConn = netConn
	}
	return opts
}

// netConn returns the network connection under a pgx stdlib connection.
func netConn(c driver.Conn) net.Conn {
	if sc, ok := c.(*stdlib.Conn); ok {
		return sc.Conn().PgConn().Conn()
	}
	return nil
}

// OpenDB is [stdlib.OpenDB] wrapped with opts: for a configuration built in
// code (a BeforeConnect hook, a custom TLS config, a Tracer) rather than only
// parsed from a DSN. Start opts from [sqlconflict.DefaultOptions]; its
// Dialect may stay zero. conflict_* options that [pgx.ParseConfig] left in
// config.RuntimeParams override opts and are removed, as sql.Open would.
// pgxOpts are passed to [stdlib.GetConnector]. OpenDB fails only on an
// invalid option; like sql.OpenDB, it does not connect.
func OpenDB(config pgx.ConnConfig, opts sqlconflict.Options, pgxOpts ...stdlib.OptionOpenDB) (*sql.DB, error) {
	opts, config, err := runtimeOptions(config, options(opts))
	if err != nil {
		return nil, err
	}
	c, err := sqlconflict.NewConnector(stdlib.GetConnector(config, pgxOpts...), opts)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(c), nil
}

// runtimeOptions moves the conflict_* run-time parameters of config into
// opts, leaving the caller's map alone.
func runtimeOptions(config pgx.ConnConfig, opts sqlconflict.Options) (sqlconflict.Options, pgx.ConnConfig, error) {
	var kv strings.Builder
	params := make(map[string]string, len(config.RuntimeParams))
	for k, v := range config.RuntimeParams {
		if len(k) < len("conflict_") || !strings.EqualFold(k[:len("conflict_")], "conflict_") {
			params[k] = v
			continue
		}
		fmt.Fprintf(&kv, "%s='%s' ", k, strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
	}
	if kv.Len() == 0 {
		return opts, config, nil
	}
	opts, _, err := sqlconflict.SplitDSN(kv.String(), sqlconflict.DSNPostgresKV, opts)
	config.RuntimeParams = params
	return opts, config, err
}
