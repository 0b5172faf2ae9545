package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// Kind says what went wrong, independent of the database.
type Kind int

// Kinds of errors [Classify] recognises.
const (
	KindUnknown Kind = iota
	KindUniqueViolation
	KindForeignKeyViolation
	KindNotNullViolation
	KindCheckViolation
	KindExclusionViolation
	KindIntegrityViolation // other SQLSTATE class 23 codes (fallback)
	KindDeadlock
	KindSerializationFailure
	KindTransactionRollback // other SQLSTATE class 40 codes (fallback), e.g. 40002
	KindLockTimeout
	KindQueryCanceled
	KindTxAborted
	KindConnectionLost
	// KindUnavailable: the server could not be reached or would not serve
	// (a refused connection, too many connections, a node that is starting
	// up, shutting down or out of its cluster's primary component): nothing
	// was done, and trying again later, or on another node, may work.
	KindUnavailable
	// KindReadOnly: the server refused a write because it is read-only (a
	// replica, often after a failover) or the transaction is: nothing was
	// done. The connection is discarded when it returns to the pool, so
	// that the next attempt connects anew, to wherever the primary is now.
	KindReadOnly
)

var kindNames = [...]string{
	KindUnknown:              "unknown",
	KindUniqueViolation:      "unique violation",
	KindForeignKeyViolation:  "foreign key violation",
	KindNotNullViolation:     "not null violation",
	KindCheckViolation:       "check violation",
	KindExclusionViolation:   "exclusion violation",
	KindIntegrityViolation:   "integrity violation",
	KindDeadlock:             "deadlock",
	KindSerializationFailure: "serialization failure",
	KindTransactionRollback:  "transaction rollback",
	KindLockTimeout:          "lock timeout",
	KindQueryCanceled:        "query canceled",
	KindTxAborted:            "transaction aborted",
	KindConnectionLost:       "connection lost",
	KindUnavailable:          "server unavailable",
	KindReadOnly:             "read only",
}

// String returns a lower-case description such as "unique violation".
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Name returns the kind's stable snake_case name, fit for a metric label
// or a span attribute: String with '_' for each space, such as
// "unique_violation".
func (k Kind) Name() string { return strings.ReplaceAll(k.String(), " ", "_") }

// Scope says how much work the server undid, which decides what, if
// anything, can be retried.
type Scope int

// Scopes of an error.
const (
	// ScopeNone: no error, or not a database error we know.
	ScopeNone Scope = iota
	// ScopeStatement: the server undid only the failed statement. On
	// PostgreSQL the transaction is additionally left aborted until ROLLBACK
	// TO SAVEPOINT.
	ScopeStatement
	// ScopeTransaction: the server rolled back the whole transaction, or only
	// rerunning the whole transaction can help.
	ScopeTransaction
	// ScopeUnknownOutcome: the statement may or may not have taken effect
	// (connection lost mid-flight, 40003); never retry blindly.
	ScopeUnknownOutcome
)

// String returns "none", "statement", "transaction" or "unknown outcome".
func (s Scope) String() string {
	switch s {
	case ScopeNone:
		return "none"
	case ScopeStatement:
		return "statement"
	case ScopeTransaction:
		return "transaction"
	case ScopeUnknownOutcome:
		return "unknown outcome"
	}
	return "Scope(" + strconv.Itoa(int(s)) + ")"
}

// Name returns the scope's stable snake_case name: "none", "statement",
// "transaction" or "unknown_outcome".
func (s Scope) Name() string { return strings.ReplaceAll(s.String(), " ", "_") }

// Dialect is the database family an error came from; scopes differ between
// them (a deadlock undoes a statement on PostgreSQL, a transaction on InnoDB).
type Dialect int

// Dialects.
const (
	DialectUnknown  Dialect = iota
	DialectPostgres         // PostgreSQL and compatibles (CockroachDB, YugabyteDB)
	DialectMySQL            // MySQL, MariaDB, TiDB
	DialectSQLite           // SQLite (modernc.org/sqlite, and drivers with the same errors)
)

// String returns "unknown", "postgres", "mysql" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case DialectUnknown:
		return "unknown"
	case DialectPostgres:
		return "postgres"
	case DialectMySQL:
		return "mysql"
	case DialectSQLite:
		return "sqlite"
	}
	return "Dialect(" + strconv.Itoa(int(d)) + ")"
}

// Class is the classification of an error.
type Class struct {
	Kind  Kind
	Scope Scope
	// Retryable: re-running the statement (ScopeStatement) or the whole
	// transaction (ScopeTransaction) may succeed and the failed attempt had
	// no effect. True exactly for deadlocks, serialization failures, lock
	// timeouts, an unavailable or read-only server (a new connection may
	// reach one that serves, or the new primary), a connection the driver
	// lost before it sent anything, and KindTxAborted whose cause is one of
	// those. Not for a write refused because the transaction itself was
	// declared read-only (MySQL's 1792): that would fail every time.
	Retryable  bool
	Dialect    Dialect
	Code       string // MySQL error number or SQLite extended result code in decimal ("1062", "2067"), or the PostgreSQL SQLSTATE ("23505")
	SQLState   string // 5-character SQLSTATE when known ("23000" for MySQL 1062)
	Constraint string // constraint or key name, when the error names one
	Table      string
	Column     string
}

// The code tables: the only place that maps codes to classes.
var (
	// pgCodes maps PostgreSQL SQLSTATEs, and SQLSTATE classes (two
	// characters) as the fallback for codes not listed. Any error aborts a
	// PostgreSQL transaction, but a savepoint recovers it, hence
	// ScopeStatement.
	//
	// 21000 (cardinality_violation, "more than one row returned by a subquery")
	// is deliberately not a unique violation, although Spring maps it to
	// DuplicateKeyException: no key was duplicated and re-reading cannot help.
	pgCodes = map[string]Class{
		"23505": {Kind: KindUniqueViolation, Scope: ScopeStatement},
		"23503": {Kind: KindForeignKeyViolation, Scope: ScopeStatement},
		"23502": {Kind: KindNotNullViolation, Scope: ScopeStatement},
		"23514": {Kind: KindCheckViolation, Scope: ScopeStatement},
		"23P01": {Kind: KindExclusionViolation, Scope: ScopeStatement},
		"40P01": {Kind: KindDeadlock, Scope: ScopeStatement, Retryable: true},
		"55P03": {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true}, // lock_timeout and NOWAIT
		"57014": {Kind: KindQueryCanceled, Scope: ScopeStatement},
		"40001": {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},
		"25P02": {Kind: KindTxAborted, Scope: ScopeTransaction},
		"40003": {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}, // statement_completion_unknown
		"23":    {Kind: KindIntegrityViolation, Scope: ScopeStatement},
		"40":    {Kind: KindTransactionRollback, Scope: ScopeTransaction},
		"08":    {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}, // connection_exception
		// The server ended the session (restart, crash, failover).
		"57P01": {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}, // admin_shutdown
		"57P02": {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}, // crash_shutdown
		// The server would not take the connection: nothing was sent.
		"57P03": {Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}, // cannot_connect_now
		"53300": {Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}, // too_many_connections
		// A hot standby, or default_transaction_read_only.
		"25006": {Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true}, // read_only_sql_transaction
	}

	// pgMessages maps PostgreSQL SQLSTATEs that mean different things by
	// their message, as mysqlMessages does.
	pgMessages = map[string][]struct {
		text  string
		class Class
	}{
		"0A000": { // feature_not_supported
			// lib/pq begins every transaction READ WRITE, which a hot
			// standby refuses: the server is read-only, as after a failover.
			{"during recovery", Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true}},
		},
	}

	// mysqlCodes maps MySQL, MariaDB and TiDB error numbers. InnoDB rolls
	// back the whole transaction on a deadlock but only the statement on
	// other errors (1205 included, unless innodb_rollback_on_timeout=ON).
	mysqlCodes = map[uint16]Class{
		1062: {Kind: KindUniqueViolation, Scope: ScopeStatement, SQLState: "23000"}, // ER_DUP_ENTRY
		1586: {Kind: KindUniqueViolation, Scope: ScopeStatement, SQLState: "23000"}, // ER_DUP_ENTRY_WITH_KEY_NAME
		1022: {Kind: KindUniqueViolation, Scope: ScopeStatement, SQLState: "23000"}, // ER_DUP_KEY
		1216: {Kind: KindForeignKeyViolation, Scope: ScopeStatement, SQLState: "23000"},
		1217: {Kind: KindForeignKeyViolation, Scope: ScopeStatement, SQLState: "23000"},
		1451: {Kind: KindForeignKeyViolation, Scope: ScopeStatement, SQLState: "23000"},
		1452: {Kind: KindForeignKeyViolation, Scope: ScopeStatement, SQLState: "23000"},
		1048: {Kind: KindNotNullViolation, Scope: ScopeStatement, SQLState: "23000"}, // ER_BAD_NULL_ERROR
		1364: {Kind: KindNotNullViolation, Scope: ScopeStatement, SQLState: "HY000"}, // ER_NO_DEFAULT_FOR_FIELD
		3819: {Kind: KindCheckViolation, Scope: ScopeStatement, SQLState: "HY000"},   // MySQL ER_CHECK_CONSTRAINT_VIOLATED
		4025: {Kind: KindCheckViolation, Scope: ScopeStatement, SQLState: "23000"},   // MariaDB ER_CONSTRAINT_FAILED
		1213: {Kind: KindDeadlock, Scope: ScopeTransaction, Retryable: true, SQLState: "40001"},
		149:  {Kind: KindDeadlock, Scope: ScopeTransaction, Retryable: true},                                // Galera (HA_ERR_LOCK_DEADLOCK)
		1020: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true, SQLState: "HY000"}, // MariaDB ER_CHECKREAD
		8002: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},                    // TiDB: SELECT FOR UPDATE transaction met a commit conflict
		8005: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},                    // TiDB: write conflict, txnStartTS is stale
		8022: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},                    // TiDB
		8028: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},                    // TiDB
		9007: {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},                    // TiDB write conflict
		1205: {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true, SQLState: "HY000"},            // ER_LOCK_WAIT_TIMEOUT
		3572: {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true, SQLState: "HY000"},            // ER_LOCK_NOWAIT
		3024: {Kind: KindQueryCanceled, Scope: ScopeStatement, SQLState: "HY000"},                           // ER_QUERY_TIMEOUT
		1317: {Kind: KindQueryCanceled, Scope: ScopeStatement, SQLState: "70100"},                           // ER_QUERY_INTERRUPTED
		1028: {Kind: KindQueryCanceled, Scope: ScopeStatement, SQLState: "HY000"},                           // ER_FILSORT_ABORT
		1969: {Kind: KindQueryCanceled, Scope: ScopeStatement, SQLState: "70100"},                           // MariaDB ER_STATEMENT_TIMEOUT
		2006: {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome, SQLState: "HY000"},                     // CR_SERVER_GONE_ERROR
		2013: {Kind: KindConnectionLost, Scope: ScopeUnknownOutcome, SQLState: "HY000"},                     // CR_SERVER_LOST
		// The server would not serve: nothing was done.
		1040: {Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, SQLState: "08004"}, // ER_CON_COUNT_ERROR
		1203: {Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, SQLState: "42000"}, // ER_TOO_MANY_USER_CONNECTIONS
		// Galera: the node is not in the primary component, is joining, is
		// desynced with wsrep_reject_queries, or is shutting down.
		1047: {Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, SQLState: "08S01"}, // ER_UNKNOWN_COM_ERROR "WSREP has not yet prepared node"
		// Writes refused by a read-only server or transaction.
		1792: {Kind: KindReadOnly, Scope: ScopeStatement, SQLState: "25006"},                  // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION: the transaction's own
		1836: {Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, SQLState: "HY000"}, // ER_READ_ONLY_MODE
	}

	// mysqlMessages maps MySQL numbers that mean different things by their
	// message: the first row whose text the message contains applies; a
	// message that matches none is classified by its SQLSTATE.
	mysqlMessages = map[uint16][]struct {
		text  string
		class Class
	}{
		1180: { // ER_ERROR_DURING_COMMIT
			// Galera lost the primary component at COMMIT: in tests here the
			// transaction had committed on the cluster about half the time.
			{"Not connected to Primary Component", Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}},
			// Galera's wsrep_max_ws_rows: the server rolled the transaction
			// back (@@in_transaction is 0), and a rerun would hit it again.
			{"wsrep_max_ws_rows exceeded", Class{Kind: KindTransactionRollback, Scope: ScopeTransaction}},
		},
		1105: { // ER_UNKNOWN_ERROR
			// Galera's wsrep_max_ws_size, at COMMIT: rolled back, permanent.
			{"Maximum writeset size exceeded", Class{Kind: KindTransactionRollback, Scope: ScopeTransaction}},
		},
		1290: { // ER_OPTION_PREVENTS_STATEMENT, also for --secure-file-priv and others
			{"read-only", Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true}},
			{"read_only", Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true}},
		},
	}

	// readOnlyConnect are the messages of a connection refused because the
	// server is read-only, where the DSN asks for a writable one: pgx's
	// target_session_attrs=read-write ("ValidateConnect failed: read only
	// connection") and lib/pq's.
	readOnlyConnect = []string{"read only connection", "session is read-only", "server is in hot standby mode"}

	// sqliteCodes maps SQLite extended result codes, and primary result
	// codes (code & 0xff) as the fallback for extended codes not listed.
	// SQLite undoes only the failed statement on a constraint error (the
	// default ON CONFLICT ABORT) and on SQLITE_BUSY; SQLITE_BUSY_SNAPSHOT means
	// the transaction's snapshot is too old to write from, which only a new
	// transaction cures. An interrupted write inside a transaction rolls the
	// transaction back, hence ScopeTransaction for SQLITE_INTERRUPT.
	sqliteCodes = map[int]Class{
		2067: {Kind: KindUniqueViolation, Scope: ScopeStatement},                         // SQLITE_CONSTRAINT_UNIQUE
		1555: {Kind: KindUniqueViolation, Scope: ScopeStatement},                         // SQLITE_CONSTRAINT_PRIMARYKEY
		2579: {Kind: KindUniqueViolation, Scope: ScopeStatement},                         // SQLITE_CONSTRAINT_ROWID
		787:  {Kind: KindForeignKeyViolation, Scope: ScopeStatement},                     // SQLITE_CONSTRAINT_FOREIGNKEY
		1299: {Kind: KindNotNullViolation, Scope: ScopeStatement},                        // SQLITE_CONSTRAINT_NOTNULL
		275:  {Kind: KindCheckViolation, Scope: ScopeStatement},                          // SQLITE_CONSTRAINT_CHECK
		19:   {Kind: KindIntegrityViolation, Scope: ScopeStatement},                      // SQLITE_CONSTRAINT (TRIGGER, DATATYPE, ...)
		5:    {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true},            // SQLITE_BUSY: "database is locked"
		261:  {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true},            // SQLITE_BUSY_RECOVERY
		773:  {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true},            // SQLITE_BUSY_TIMEOUT
		517:  {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true}, // SQLITE_BUSY_SNAPSHOT
		6:    {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true},            // SQLITE_LOCKED: "database table is locked"
		262:  {Kind: KindLockTimeout, Scope: ScopeStatement, Retryable: true},            // SQLITE_LOCKED_SHAREDCACHE
		9:    {Kind: KindQueryCanceled, Scope: ScopeTransaction},                         // SQLITE_INTERRUPT
	}

	// mysqlStates is the fallback for MySQL numbers not in mysqlCodes, by
	// SQLSTATE and then by SQLSTATE class (two characters).
	mysqlStates = map[string]Class{
		"40001": {Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true},
		"23":    {Kind: KindIntegrityViolation, Scope: ScopeStatement},
		"40":    {Kind: KindTransactionRollback, Scope: ScopeTransaction},
	}
)

// lookupState finds a 5-character SQLSTATE in table, falling back on its class.
func lookupState(table map[string]Class, state string) Class {
	if len(state) != 5 {
		return Class{}
	}
	if c, ok := table[state]; ok {
		return c
	}
	return table[state[:2]]
}

// Classify classifies err, looking through wrapped errors. It recognises
// *pq.Error, *mysql.MySQLError, any error with a SQLState() string method
// (pgx's *pgconn.PgError), any error with a Code() int method from a package
// whose path contains "sqlite" (modernc.org/sqlite's *sqlite.Error),
// [*TxAbortedError], and lost connections and canceled contexts. It returns
// the zero Class for nil.
func Classify(err error) Class {
	if err == nil {
		return Class{}
	}
	// A RetryError is its last real cause, whatever ended the retries.
	if e := (*RetryError)(nil); errors.As(err, &e) && e != nil && e.Err != nil {
		if e.class != nil {
			return *e.class
		}
		return Classify(e.Err)
	}
	if e := (*notSentError)(nil); errors.As(err, &e) && e != nil {
		return e.class()
	}
	if e := (*rolledBackError)(nil); errors.As(err, &e) && e != nil {
		return e.class()
	}
	// First, so that a doomed transaction is not mistaken for its cause.
	if e := (*TxAbortedError)(nil); errors.As(err, &e) && e != nil {
		c := Classify(e.Cause)
		c.Kind, c.Scope = KindTxAborted, ScopeTransaction
		return c
	}
	// What the wrapper classified when it wrapped (conflict_wrap_errors),
	// where it knew more than the error shows: a failed connect.
	if e := (*Error)(nil); errors.As(err, &e) && e != nil && e.Class.Kind != KindUnknown {
		return e.Class
	}
	if e := (*pq.Error)(nil); errors.As(err, &e) && e != nil {
		return classifyPostgres(string(e.Code), e.Message, e.Constraint, e.Table, e.Column)
	}
	if e := (*mysql.MySQLError)(nil); errors.As(err, &e) && e != nil {
		return classifyMySQL(e)
	}
	if e := sqlStater(nil); errors.As(err, &e) && !isNilPointer(e) {
		constraint, table, column := pgxFields(e)
		return classifyPostgres(e.SQLState(), stringField(reflect.Indirect(reflect.ValueOf(e)), "Message"), constraint, table, column)
	}
	if e := findSQLiteError(err); e != nil {
		return classifySQLite(e.Code(), e.Error())
	}
	return classifyOther(err)
}

// IsUniqueViolation reports whether err is a unique (duplicate key) violation.
func IsUniqueViolation(err error) bool { return Classify(err).Kind == KindUniqueViolation }

// IsRetryable reports whether rerunning the statement or transaction (see
// [Class.Scope]) may succeed and the failed attempt had no effect.
func IsRetryable(err error) bool { return Classify(err).Retryable }

// sqlStater is implemented by pgx's *pgconn.PgError (and *pq.Error), so pgx
// errors are recognised without importing pgx.
type sqlStater interface {
	error
	SQLState() string
}

func classifyPostgres(code, message, constraint, table, column string) Class {
	c := lookupState(pgCodes, code)
	for _, m := range pgMessages[code] {
		if strings.Contains(message, m.text) {
			c = m.class
			break
		}
	}
	c.Dialect, c.Code, c.SQLState = DialectPostgres, code, code
	c.Constraint, c.Table, c.Column = constraint, table, column
	return c
}

func classifyMySQL(e *mysql.MySQLError) Class {
	c, known := mysqlCodes[e.Number]
	for _, m := range mysqlMessages[e.Number] {
		if strings.Contains(e.Message, m.text) {
			c, known = m.class, true
			break
		}
	}
	if e.SQLState != ([5]byte{}) {
		c.SQLState = string(e.SQLState[:])
	}
	if !known {
		state := c.SQLState
		c = lookupState(mysqlStates, state)
		c.SQLState = state
	}
	c.Dialect, c.Code = DialectMySQL, strconv.Itoa(int(e.Number))
	c.Constraint, c.Table, c.Column = parseMySQLMessage(e.Number, e.Message)
	return c
}

// sqliteCoder is implemented by modernc.org/sqlite's *sqlite.Error, whose
// Code returns the extended result code, so SQLite errors are recognised
// without importing a SQLite driver.
type sqliteCoder interface {
	error
	Code() int
}

// findSQLiteError returns the first error in err's tree, in the order
// errors.As visits it, that is a sqliteCoder from a package whose path
// contains "sqlite". The package test keeps other errors that happen to have
// a Code() int method (HTTP client errors, say) from passing for SQLite's.
func findSQLiteError(err error) sqliteCoder {
	for err != nil {
		if e, ok := err.(sqliteCoder); ok && !isNilPointer(e) && isSQLitePackage(reflect.TypeOf(e)) {
			return e
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if s := findSQLiteError(e); s != nil {
					return s
				}
			}
			return nil
		default:
			return nil
		}
	}
	return nil
}

// isSQLitePackage reports whether t, or the type it points to, comes from a
// package whose import path contains "sqlite".
func isSQLitePackage(t reflect.Type) bool {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t != nil && strings.Contains(t.PkgPath(), "sqlite")
}

func classifySQLite(code int, msg string) Class {
	c, ok := sqliteCodes[code]
	if !ok {
		c = sqliteCodes[code&0xff]
	}
	c.Dialect, c.Code = DialectSQLite, strconv.Itoa(code)
	c.Constraint, c.Table, c.Column = parseSQLiteMessage(code, msg)
	return c
}

// parseSQLiteMessage extracts the names SQLite puts in a constraint error's
// message: "UNIQUE constraint failed: t.a" (t.a, t.b for a composite key),
// "NOT NULL constraint failed: t.a", "CHECK constraint failed: chk_name".
// modernc.org/sqlite adds a prefix and the code in parentheses:
// "constraint failed: UNIQUE constraint failed: t.a (2067)". The names are
// schema names, never row values. It never panics and returns only
// substrings of msg.
func parseSQLiteMessage(code int, msg string) (constraint, table, column string) {
	const failed = " constraint failed: "
	i := strings.LastIndex(msg, failed)
	if i < 0 {
		return "", "", ""
	}
	names := msg[i+len(failed):]
	if j := strings.LastIndex(names, " ("); j >= 0 && strings.HasSuffix(names, ")") {
		if _, err := strconv.Atoi(names[j+2 : len(names)-1]); err == nil {
			names = names[:j] // modernc's " (2067)"
		}
	}
	switch code {
	case 2067, 1555, 1299:
		if strings.Contains(names, ", ") {
			// A composite key: the table is the same for every column.
			table, _, _ = strings.Cut(names, ".")
			return "", table, ""
		}
		table, column, ok := strings.Cut(names, ".")
		if !ok {
			return "", "", ""
		}
		return "", table, column
	case 275:
		return names, "", ""
	}
	return "", "", ""
}

// classifyOther recognises errors that carry no server code.
func classifyOther(err error) Class {
	switch {
	// A refused or failed dial sent nothing, even one that the caller's
	// context ended (its error matches context.DeadlineExceeded or
	// context.Canceled): before the context case.
	case errors.Is(err, syscall.ECONNREFUSED), isDialError(err):
		return Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}
	// Before net.Error: context.DeadlineExceeded implements it too.
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Class{Kind: KindQueryCanceled, Scope: ScopeUnknownOutcome}
	// The transaction's snapshot cannot see a committed row: as with a
	// serialization failure, a new transaction will.
	case errors.Is(err, ErrBlindReread):
		return Class{Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true}
	// lib/pq's and pgx's answers to Commit on a transaction an earlier
	// error aborted (25P02); it has rolled back.
	case errors.Is(err, pq.ErrInFailedTransaction), hasText(err, pgxCommitRollback):
		return Class{Kind: KindTxAborted, Scope: ScopeTransaction, Dialect: DialectPostgres}
	case errors.Is(err, mysql.ErrInvalidConn):
		return Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome, Dialect: DialectMySQL}
	// driver.ErrBadConn reaching us means database/sql already used up its
	// own retries, and a wrapped driver may not honour the "nothing was
	// sent" contract: treat the outcome as unknown.
	// io.EOF: lib/pq's answer when the server closes the connection under it.
	// lib/pq's refusals of a host for target_session_attrs, and its error
	// for a multi-host DSN that reached none: only Connect returns these.
	case hasText(err, "session is read-only"), hasText(err, "server is in hot standby mode"):
		return Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}
	case hasPrefixText(err, pqNoHost):
		if hasAnyText(err, readOnlyConnect) {
			return Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}
		}
		return Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}
	// pgx's failure to connect, whatever broke the handshake: nothing sent.
	case isPgxConnectError(err):
		if hasAnyText(err, readOnlyConnect) {
			return Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}
		}
		return Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}
	case errors.Is(err, ErrConnectionLost), errors.Is(err, driver.ErrBadConn),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		isPgxConnLost(err):
		return Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}
	}
	if e := net.Error(nil); errors.As(err, &e) {
		return Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}
	}
	return Class{}
}

// isDialError reports a failure to open a connection: nothing was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// pgxCommitRollback is the text of pgx's ErrTxCommitRollback, recognised
// without importing pgx.
const pgxCommitRollback = "commit unexpectedly resulted in rollback"

// pqNoHost starts lib/pq's error for a multi-host DSN none of whose hosts
// it could use.
const pqNoHost = "pq: could not connect to any of the hosts:"

// hasText reports whether err's tree holds an errors.New error with exactly
// the text msg.
func hasText(err error, msg string) bool {
	switch u := err.(type) {
	case nil:
		return false
	case interface{ Unwrap() error }:
		return hasText(u.Unwrap(), msg)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if hasText(e, msg) {
				return true
			}
		}
		return false
	}
	return reflect.TypeOf(err) == errorStringType && err.Error() == msg
}

var errorStringType = reflect.TypeOf(errors.New(""))

// isPgxConnLost recognises pgconn's "conn closed": a statement on a
// connection that died, without importing pgx.
func isPgxConnLost(err error) bool {
	e := (interface {
		error
		SafeToRetry() bool
	})(nil)
	return errors.As(err, &e) && !isNilPointer(e) && e.Error() == "conn closed"
}

// isPgxConnectError recognises *pgconn.ConnectError, pgx's failure to open
// a connection, without importing pgx.
func isPgxConnectError(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		t := reflect.TypeOf(e)
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Name() == "ConnectError" && strings.Contains(t.PkgPath(), "jackc/pgx") {
			return true
		}
	}
	return false
}

// hasPrefixText reports whether an error in err's chain made by
// fmt.Errorf with one %w has a message starting with prefix. Only those
// are asked: their message is a stored string, where another error's
// Error method may panic (a typed nil pointer, or a join holding one).
func hasPrefixText(err error, prefix string) bool {
	if reflect.TypeOf(err) == wrapErrorType && !isNilPointer(err) && strings.HasPrefix(err.Error(), prefix) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return hasPrefixText(u.Unwrap(), prefix)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if hasPrefixText(e, prefix) {
				return true
			}
		}
	}
	return false
}

var wrapErrorType = reflect.TypeOf(fmt.Errorf("%w", errors.ErrUnsupported))

// hasAnyText reports whether err's message holds one of texts.
func hasAnyText(err error, texts []string) bool {
	msg := err.Error()
	for _, t := range texts {
		if strings.Contains(msg, t) {
			return true
		}
	}
	return false
}

func isNilPointer(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// pgxFields reads pgconn.PgError's ConstraintName, TableName and ColumnName
// by reflection, when the error has them, to avoid depending on pgx.
func pgxFields(e error) (constraint, table, column string) {
	v := reflect.Indirect(reflect.ValueOf(e))
	if v.Kind() != reflect.Struct {
		return "", "", ""
	}
	return stringField(v, "ConstraintName"), stringField(v, "TableName"), stringField(v, "ColumnName")
}

func stringField(v reflect.Value, name string) string {
	f, ok := v.Type().FieldByName(name)
	if !ok || !f.IsExported() || f.Type.Kind() != reflect.String {
		return ""
	}
	fv, err := v.FieldByIndexErr(f.Index)
	if err != nil {
		return ""
	}
	return fv.String()
}

// parseMySQLMessage extracts the names MySQL and MariaDB put only in the
// message text. Values inside the message are user data and may contain
// quotes, so names are anchored on the end of the message where possible.
// It never panics and returns only substrings of msg.
func parseMySQLMessage(number uint16, msg string) (constraint, table, column string) {
	switch number {
	case 1062, 1586:
		// MariaDB: Duplicate entry 'a'b' for key 'title'
		// MySQL 8: Duplicate entry 'x' for key 'articles.title'
		i := strings.LastIndex(msg, " for key '")
		if i < 0 {
			return "", "", ""
		}
		key := strings.TrimSuffix(msg[i+len(" for key '"):], "'")
		if j := strings.LastIndexByte(key, '.'); j >= 0 {
			return key[j+1:], key[:j], ""
		}
		return key, "", ""
	case 1022:
		// Can't write; duplicate key in table 't'
		return "", msgQuoted(msg, "table '", "'"), ""
	case 1216, 1217, 1451, 1452:
		// Cannot add or update a child row: a foreign key constraint fails
		// (`test`.`child`, CONSTRAINT `fk_child_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`))
		i := strings.Index(msg, ", CONSTRAINT `")
		if i < 0 {
			return "", "", ""
		}
		name, _, _ := strings.Cut(msg[i+len(", CONSTRAINT `"):], "`")
		return name, msgLastIdent(msg[:i]), ""
	case 4025:
		// MariaDB: CONSTRAINT `chk_pos` failed for `test`.`t`
		i := strings.LastIndex(msg, "` failed for ")
		if i < 0 {
			return "", "", ""
		}
		return msgQuoted(msg[:i+1], "CONSTRAINT `", "`"), msgLastIdent(msg[i+len("` failed for "):]), ""
	case 3819:
		// MySQL: Check constraint 'chk_pos' is violated.
		return msgQuoted(msg, "constraint '", "' is violated"), "", ""
	case 1048:
		// Column 'name' cannot be null
		return "", "", msgQuoted(msg, "Column '", "' cannot be null")
	case 1364:
		// Field 'name' doesn't have a default value
		return "", "", msgQuoted(msg, "Field '", "' doesn't have a default value")
	}
	return "", "", ""
}

// msgQuoted returns the text between the first left and the last right
// after it, or "" when msg does not have that shape.
func msgQuoted(msg, left, right string) string {
	j := strings.LastIndex(msg, right)
	if j < 0 {
		return ""
	}
	i := strings.Index(msg[:j], left)
	if i < 0 {
		return ""
	}
	return msg[i+len(left) : j]
}

// msgLastIdent returns the last backquoted identifier of s: "child" for
// "... (`test`.`child`".
func msgLastIdent(s string) string {
	s = strings.TrimRight(s, " ")
	if !strings.HasSuffix(s, "`") {
		return ""
	}
	s = s[:len(s)-1]
	return s[strings.LastIndexByte(s, '`')+1:]
}
