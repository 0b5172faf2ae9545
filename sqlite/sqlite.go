// Package sqlite registers sqlconflict over the pure-Go SQLite driver
// [modernc.org/sqlite] as the driver "sqlconflict-sqlite": no server and no
// cgo.
//
//	import _ "github.com/sqlconflict/sqlconflict/sqlite"
//
//	db, err := sql.Open("sqlconflict-sqlite", "file:/var/lib/app/app.db?_pragma=journal_mode(WAL)&conflict_retries=10")
//
// DSNs are modernc.org/sqlite's, a file name or a file: URI whose parameters
// follow its first '?', plus the conflict_* options (see
// [sqlconflict.SplitDSN] and [sqlconflict.DSNQuery]), which are removed
// before modernc.org/sqlite sees the DSN. The errors are modernc.org/sqlite's
// own *sqlite.Error unless conflict_wrap_errors=true;
// [sqlconflict.Classify] and the Is* functions read them.
//
// SQLite lets one connection write at a time. What Go programs meet as
// "database is locked" is one of two errors, which sqlconflict treats
// differently:
//
//   - SQLITE_BUSY: another connection holds the lock, and busy_timeout (zero
//     unless the DSN sets it, as with _pragma=busy_timeout(5000)) ran out
//     waiting for it. It is a [sqlconflict.KindLockTimeout] of
//     [sqlconflict.ScopeStatement]: the statement had no effect. Statements
//     in autocommit are retried (conflict_retries, with backoff); in a
//     transaction the error is returned and [sqlconflict.RunTx] reruns the
//     transaction.
//   - SQLITE_BUSY_SNAPSHOT (WAL mode): a transaction that read, and then
//     wrote after another connection had committed. No busy_timeout helps,
//     since the transaction's snapshot is stale. It is a
//     [sqlconflict.KindSerializationFailure] of
//     [sqlconflict.ScopeTransaction]: the wrapper dooms the transaction so
//     that nothing more runs in it, and RunTx reruns it. Beginning write
//     transactions with _txlock=immediate avoids it, at the price of
//     serialising them from their first read.
//
// UNIQUE and PRIMARY KEY violations are [sqlconflict.KindUniqueViolation],
// with the table and column in [sqlconflict.Class]; FOREIGN KEY, NOT NULL and
// CHECK violations have their kinds too. SQLITE_LOCKED (a table locked
// within a shared cache or by the connection's own unfinished statement) is
// a retryable KindLockTimeout.
//
// The base driver is the one modernc.org/sqlite registers as "sqlite", so
// functions, collations and connection hooks registered with that package
// apply here too.
//
// This package is named after its directory. A file that also imports
// modernc.org/sqlite needs another name for one of them, such as
// sqlconflictsqlite.
package sqlite

import (
	"database/sql"
	"database/sql/driver"

	"github.com/sqlconflict/sqlconflict"
	_ "modernc.org/sqlite" // registers "sqlite"
)

// DriverName is the name this package registers with database/sql.
const DriverName = "sqlconflict-sqlite"

// base is modernc.org/sqlite's registered driver, the one that carries the
// functions and collations registered with it. sql.Open connects to
// nothing; it is how every version of modernc.org/sqlite hands its driver
// out (its NewConnector is newer than the oldest version this module allows).
var base driver.Driver

func init() {
	db, err := sql.Open("sqlite", "")
	if err != nil {
		panic("sqlconflict/sqlite: " + err.Error())
	}
	base = db.Driver()
	db.Close()
	sql.Register(DriverName, sqlconflict.Wrap(base, options(sqlconflict.DefaultOptions())))
}

// options returns opts for SQLite.
func options(opts sqlconflict.Options) sqlconflict.Options {
	opts.Dialect = sqlconflict.DialectSQLite
	return opts
}

// OpenDB opens dsn as sql.Open("sqlconflict-sqlite", dsn) does, but starting
// from opts rather than [sqlconflict.DefaultOptions]: for the options that
// have no DSN form, such as [sqlconflict.Options.Observer] and Logger. The
// conflict_* options in dsn override opts. OpenDB fails only on an invalid
// option; like sql.Open, it does not connect, so modernc.org/sqlite's own
// parameters are checked by the first use of the *sql.DB.
func OpenDB(dsn string, opts sqlconflict.Options) (*sql.DB, error) {
	c, err := sqlconflict.Wrap(base, options(opts)).OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(c), nil
}
