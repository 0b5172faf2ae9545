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
// Only pgx used through database/sql is wrapped. Code that uses *pgx.Conn or
// pgxpool directly bypasses database/sql and so the wrapper; it can still
// classify its errors with [sqlconflict.Classify].
//
// This package is named after its directory. A file that also imports pgx
// itself needs another name for one of them, such as sqlconflictpgx.
package pgx

import (
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
	sql.Register(DriverName, sqlconflict.Wrap(stdlib.GetDefaultDriver(), options(sqlconflict.DefaultOptions())))
}

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
