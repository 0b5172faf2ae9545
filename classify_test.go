package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict/internal/sqlitefake"
)

// fakePgError stands in for pgx's *pgconn.PgError.
type fakePgError struct{ Code, ConstraintName, TableName, Message string }

func (e *fakePgError) Error() string    { return "ERROR: fake (SQLSTATE " + e.Code + ")" }
func (e *fakePgError) SQLState() string { return e.Code }

// wraps returns err as is and wrapped, since classification must see
// through fmt.Errorf("%w").
func wraps(err error) map[string]error {
	return map[string]error{
		"plain":   err,
		"wrapped": fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", err)),
		"joined":  errors.Join(errors.New("other"), err),
	}
}

// setPQCode sets a *pq.Error's Code, a pq.ErrorCode in older lib/pq and a
// pqerror.Code (pq.ErrorCode its deprecated alias) in newer: the tests build
// at both the oldest lib/pq go.mod allows and the newest.
func setPQCode[C ~string](code *C, s string) { *code = C(s) }

func TestClassifyPostgres(t *testing.T) {
	tests := []struct {
		code  string
		kind  Kind
		scope Scope
		retry bool
	}{
		{"23505", KindUniqueViolation, ScopeStatement, false},
		{"23503", KindForeignKeyViolation, ScopeStatement, false},
		{"23502", KindNotNullViolation, ScopeStatement, false},
		{"23514", KindCheckViolation, ScopeStatement, false},
		{"23P01", KindExclusionViolation, ScopeStatement, false},
		{"40P01", KindDeadlock, ScopeStatement, true},
		{"55P03", KindLockTimeout, ScopeStatement, true},
		{"57014", KindQueryCanceled, ScopeStatement, false},
		{"40001", KindSerializationFailure, ScopeTransaction, true},
		{"25P02", KindTxAborted, ScopeTransaction, false},
		{"40003", KindConnectionLost, ScopeUnknownOutcome, false},
		// Class fallbacks.
		{"23000", KindIntegrityViolation, ScopeStatement, false},
		{"23001", KindIntegrityViolation, ScopeStatement, false},
		{"40000", KindTransactionRollback, ScopeTransaction, false},
		{"40002", KindTransactionRollback, ScopeTransaction, false},
		{"08000", KindConnectionLost, ScopeUnknownOutcome, false},
		{"57P01", KindConnectionLost, ScopeUnknownOutcome, false},
		{"57P02", KindConnectionLost, ScopeUnknownOutcome, false},
		{"57P03", KindUnavailable, ScopeStatement, true},
		{"53300", KindUnavailable, ScopeStatement, true},
		{"25006", KindReadOnly, ScopeStatement, true},
		{"08006", KindConnectionLost, ScopeUnknownOutcome, false},
		// Unknown: 21000 is a cardinality violation, not a duplicate key.
		{"21000", KindUnknown, ScopeNone, false},
		{"42P01", KindUnknown, ScopeNone, false},
		{"55000", KindUnknown, ScopeNone, false},
		{"XX000", KindUnknown, ScopeNone, false},
	}
	for _, tt := range tests {
		want := Class{
			Kind: tt.kind, Scope: tt.scope, Retryable: tt.retry, Dialect: DialectPostgres,
			Code: tt.code, SQLState: tt.code, Constraint: "c", Table: "t",
		}
		pqErr := &pq.Error{Constraint: "c", Table: "t", Column: "col"}
		setPQCode(&pqErr.Code, tt.code)
		pgxErr := &fakePgError{Code: tt.code, ConstraintName: "c", TableName: "t"}
		for name, err := range wraps(pqErr) {
			w := want
			w.Column = "col"
			if got := Classify(err); got != w {
				t.Errorf("pq %s %s: Classify = %+v, want %+v", tt.code, name, got, w)
			}
		}
		for name, err := range wraps(pgxErr) {
			if got := Classify(err); got != want {
				t.Errorf("pgx %s %s: Classify = %+v, want %+v", tt.code, name, got, want)
			}
		}
	}
}

func TestClassifyMySQL(t *testing.T) {
	tests := []struct {
		number uint16
		state  string // SQLSTATE sent by the server, "" for none
		kind   Kind
		scope  Scope
		retry  bool
		want   string // expected Class.SQLState
	}{
		{1062, "", KindUniqueViolation, ScopeStatement, false, "23000"},
		{1586, "", KindUniqueViolation, ScopeStatement, false, "23000"},
		{1022, "", KindUniqueViolation, ScopeStatement, false, "23000"},
		{1216, "", KindForeignKeyViolation, ScopeStatement, false, "23000"},
		{1217, "", KindForeignKeyViolation, ScopeStatement, false, "23000"},
		{1451, "", KindForeignKeyViolation, ScopeStatement, false, "23000"},
		{1452, "", KindForeignKeyViolation, ScopeStatement, false, "23000"},
		{1048, "", KindNotNullViolation, ScopeStatement, false, "23000"},
		{1364, "", KindNotNullViolation, ScopeStatement, false, "HY000"},
		{3819, "", KindCheckViolation, ScopeStatement, false, "HY000"},
		{4025, "", KindCheckViolation, ScopeStatement, false, "23000"},
		{1213, "", KindDeadlock, ScopeTransaction, true, "40001"},
		{149, "", KindDeadlock, ScopeTransaction, true, ""},
		{1020, "", KindSerializationFailure, ScopeTransaction, true, "HY000"},
		{8002, "", KindSerializationFailure, ScopeTransaction, true, ""},
		{8005, "", KindSerializationFailure, ScopeTransaction, true, ""},
		{8022, "", KindSerializationFailure, ScopeTransaction, true, ""},
		{8028, "", KindSerializationFailure, ScopeTransaction, true, ""},
		{9007, "", KindSerializationFailure, ScopeTransaction, true, ""},
		{1205, "", KindLockTimeout, ScopeStatement, true, "HY000"},
		{3572, "", KindLockTimeout, ScopeStatement, true, "HY000"},
		{3024, "", KindQueryCanceled, ScopeStatement, false, "HY000"},
		{1317, "", KindQueryCanceled, ScopeStatement, false, "70100"},
		{1028, "", KindQueryCanceled, ScopeStatement, false, "HY000"},
		{1969, "", KindQueryCanceled, ScopeStatement, false, "70100"},
		{2006, "", KindConnectionLost, ScopeUnknownOutcome, false, "HY000"},
		{2013, "", KindConnectionLost, ScopeUnknownOutcome, false, "HY000"},
		{1040, "", KindUnavailable, ScopeStatement, true, "08004"},
		{1203, "", KindUnavailable, ScopeStatement, true, "42000"},
		{1047, "08S01", KindUnavailable, ScopeStatement, true, "08S01"},
		{1792, "25006", KindReadOnly, ScopeStatement, false, "25006"},
		{1836, "", KindReadOnly, ScopeStatement, true, "HY000"},
		// The server's SQLSTATE wins over the table's.
		{1213, "40001", KindDeadlock, ScopeTransaction, true, "40001"},
		{9007, "HY000", KindSerializationFailure, ScopeTransaction, true, "HY000"},
		// SQLSTATE fallbacks for numbers not in the table.
		{9999, "23000", KindIntegrityViolation, ScopeStatement, false, "23000"},
		{9999, "40001", KindSerializationFailure, ScopeTransaction, true, "40001"},
		{9999, "40000", KindTransactionRollback, ScopeTransaction, false, "40000"},
		{9999, "40002", KindTransactionRollback, ScopeTransaction, false, "40002"},
		// Unknown.
		{9999, "HY000", KindUnknown, ScopeNone, false, "HY000"},
		{9999, "", KindUnknown, ScopeNone, false, ""},
		{1146, "42S02", KindUnknown, ScopeNone, false, "42S02"},
		{1064, "42000", KindUnknown, ScopeNone, false, "42000"},
	}
	for _, tt := range tests {
		me := &mysql.MySQLError{Number: tt.number, Message: "x"}
		copy(me.SQLState[:], tt.state)
		want := Class{
			Kind: tt.kind, Scope: tt.scope, Retryable: tt.retry, Dialect: DialectMySQL,
			Code: fmt.Sprint(tt.number), SQLState: tt.want,
		}
		for name, err := range wraps(me) {
			if got := Classify(err); got != want {
				t.Errorf("%d %q %s: Classify = %+v, want %+v", tt.number, tt.state, name, got, want)
			}
		}
	}
}

// TestClassifyMySQLMessages: numbers whose meaning is in their message
// (mysqlMessages), row by row, with the texts the servers send.
func TestClassifyMySQLMessages(t *testing.T) {
	tests := []struct {
		number uint16
		state  string
		msg    string
		kind   Kind
		scope  Scope
		retry  bool
	}{
		{1180, "HY000", "Got error 6 \"No such device or address\" during COMMIT", KindUnknown, ScopeNone, false},
		{1180, "HY000", "Error while appending streaming replication fragment(provider status: Not connected to Primary Component)", KindConnectionLost, ScopeUnknownOutcome, false},
		{1180, "HY000", "Got error 90 \"Message too long\" during COMMIT: wsrep_max_ws_rows exceeded", KindTransactionRollback, ScopeTransaction, false},
		{1180, "HY000", "wsrep_max_ws_rows exceeded", KindTransactionRollback, ScopeTransaction, false},
		{1105, "HY000", "Maximum writeset size exceeded", KindTransactionRollback, ScopeTransaction, false},
		{1105, "HY000", "Unknown error", KindUnknown, ScopeNone, false},
		{1290, "HY000", "The MariaDB server is running with the --read-only option so it cannot execute this statement", KindReadOnly, ScopeStatement, true},
		{1290, "HY000", "The MySQL server is running with the --super-read-only option so it cannot execute this statement", KindReadOnly, ScopeStatement, true},
		{1290, "HY000", "The MySQL server is running with the --secure-file-priv option so it cannot execute this statement", KindUnknown, ScopeNone, false},
	}
	for _, tt := range tests {
		me := &mysql.MySQLError{Number: tt.number, Message: tt.msg}
		copy(me.SQLState[:], tt.state)
		for name, err := range wraps(me) {
			if got := Classify(err); got.Kind != tt.kind || got.Scope != tt.scope || got.Retryable != tt.retry || got.SQLState != tt.state {
				t.Errorf("%d %q %s: Classify = %+v, want %v/%v", tt.number, tt.msg, name, got, tt.kind, tt.scope)
			}
		}
	}
}

// TestClassifyConnect: a failure to open a connection, or to begin a
// transaction, sent nothing (connect.go), row by row.
func TestClassifyConnect(t *testing.T) {
	unavailable := Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}
	for _, tt := range []struct {
		name string
		err  error
		want Class
	}{
		{"connect EOF", io.EOF, unavailable},
		{"connect reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, unavailable},
		{"connect ErrBadConn", driver.ErrBadConn, unavailable},
		{"connect mysql invalid", mysql.ErrInvalidConn, Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, Dialect: DialectMySQL}},
		{"connect pq shutdown", &pq.Error{Code: "57P01", Message: "terminating connection due to administrator command"},
			Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres, Code: "57P01", SQLState: "57P01"}},
		{"connect read-only (lib/pq)", errors.New("session is read-only"), Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}},
		{"connect hot standby (lib/pq)", errors.New("server is in hot standby mode"), Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}},
		{"connect canceled", context.DeadlineExceeded, Class{Kind: KindQueryCanceled, Scope: ScopeStatement}},
		{"connect TLS", errors.New("x509: certificate signed by unknown authority"), Class{}},
	} {
		for name, err := range wraps(tt.err) {
			if got := classifyConnect(err); got != tt.want {
				t.Errorf("%s %s: classifyConnect = %+v, want %+v", tt.name, name, got, tt.want)
			}
		}
	}
}

// TestClassifyPostgresMessages: SQLSTATEs whose meaning is in the message.
func TestClassifyPostgresMessages(t *testing.T) {
	for _, tt := range []struct {
		code, msg string
		kind      Kind
		retry     bool
	}{
		{"0A000", "cannot set transaction read-write mode during recovery", KindReadOnly, true},
		{"0A000", "cannot use a transaction-scoped cursor here", KindUnknown, false},
	} {
		pqErr := &pq.Error{Message: tt.msg}
		setPQCode(&pqErr.Code, tt.code)
		got := Classify(pqErr)
		if got.Kind != tt.kind || got.Retryable != tt.retry || got.Code != tt.code {
			t.Errorf("%s %q: Classify = %+v, want %v retryable %v", tt.code, tt.msg, got, tt.kind, tt.retry)
		}
		pg := Classify(&fakePgError{Code: tt.code, Message: tt.msg})
		if pg.Kind != tt.kind {
			t.Errorf("pgx-shaped %s %q: Classify = %+v, want %v", tt.code, tt.msg, pg, tt.kind)
		}
	}
}

func TestClassifySQLite(t *testing.T) {
	tests := []struct {
		code  int
		kind  Kind
		scope Scope
		retry bool
	}{
		{2067, KindUniqueViolation, ScopeStatement, false},      // SQLITE_CONSTRAINT_UNIQUE
		{1555, KindUniqueViolation, ScopeStatement, false},      // SQLITE_CONSTRAINT_PRIMARYKEY
		{2579, KindUniqueViolation, ScopeStatement, false},      // SQLITE_CONSTRAINT_ROWID
		{787, KindForeignKeyViolation, ScopeStatement, false},   // SQLITE_CONSTRAINT_FOREIGNKEY
		{1299, KindNotNullViolation, ScopeStatement, false},     // SQLITE_CONSTRAINT_NOTNULL
		{275, KindCheckViolation, ScopeStatement, false},        // SQLITE_CONSTRAINT_CHECK
		{19, KindIntegrityViolation, ScopeStatement, false},     // SQLITE_CONSTRAINT
		{5, KindLockTimeout, ScopeStatement, true},              // SQLITE_BUSY
		{261, KindLockTimeout, ScopeStatement, true},            // SQLITE_BUSY_RECOVERY
		{773, KindLockTimeout, ScopeStatement, true},            // SQLITE_BUSY_TIMEOUT
		{517, KindSerializationFailure, ScopeTransaction, true}, // SQLITE_BUSY_SNAPSHOT
		{6, KindLockTimeout, ScopeStatement, true},              // SQLITE_LOCKED
		{262, KindLockTimeout, ScopeStatement, true},            // SQLITE_LOCKED_SHAREDCACHE
		{9, KindQueryCanceled, ScopeTransaction, false},         // SQLITE_INTERRUPT
		// Primary-code fallbacks for extended codes not listed.
		{1811, KindIntegrityViolation, ScopeStatement, false}, // SQLITE_CONSTRAINT_TRIGGER
		{3091, KindIntegrityViolation, ScopeStatement, false}, // SQLITE_CONSTRAINT_DATATYPE
		{531, KindIntegrityViolation, ScopeStatement, false},  // SQLITE_CONSTRAINT_COMMITHOOK
		{518, KindLockTimeout, ScopeStatement, true},          // SQLITE_LOCKED_VTAB
		// Unknown.
		{1, KindUnknown, ScopeNone, false},    // SQLITE_ERROR
		{8, KindUnknown, ScopeNone, false},    // SQLITE_READONLY
		{10, KindUnknown, ScopeNone, false},   // SQLITE_IOERR
		{3338, KindUnknown, ScopeNone, false}, // SQLITE_IOERR_FSYNC
		{13, KindUnknown, ScopeNone, false},   // SQLITE_FULL
	}
	for _, tt := range tests {
		want := Class{Kind: tt.kind, Scope: tt.scope, Retryable: tt.retry, Dialect: DialectSQLite, Code: fmt.Sprint(tt.code)}
		for name, err := range wraps(&sqlitefake.Error{Msg: "x", ExtendedCode: tt.code}) {
			if got := Classify(err); got != want {
				t.Errorf("%d %s: Classify = %+v, want %+v", tt.code, name, got, want)
			}
		}
	}

	// The names in the message, as modernc.org/sqlite words it.
	dup := &sqlitefake.Error{Msg: "constraint failed: UNIQUE constraint failed: users.email (2067)", ExtendedCode: 2067}
	want := Class{Kind: KindUniqueViolation, Scope: ScopeStatement, Dialect: DialectSQLite, Code: "2067", Table: "users", Column: "email"}
	if got := Classify(fmt.Errorf("insert: %w", dup)); got != want {
		t.Errorf("Classify = %+v, want %+v", got, want)
	}
	if !IsUniqueViolation(dup) || IsRetryable(dup) || !IsRetryable(&sqlitefake.Error{ExtendedCode: 5}) {
		t.Error("IsUniqueViolation / IsRetryable on SQLite errors")
	}

	// A Code() int method alone does not make an error SQLite's: the
	// package path must say so.
	if got := Classify(fmt.Errorf("x: %w", &codeError{code: 5})); got != (Class{}) {
		t.Errorf("Classify(non-SQLite Code() int error) = %+v, want zero", got)
	}
	// A non-SQLite coder before the SQLite error in the chain does not hide it.
	err := fmt.Errorf("outer: %w", &codeError{code: 404, err: &sqlitefake.Error{ExtendedCode: 517}})
	if got := Classify(err); got.Kind != KindSerializationFailure || got.Dialect != DialectSQLite {
		t.Errorf("Classify(chain) = %+v, want the SQLite error's class", got)
	}
}

// codeError has a Code() int method but is not a SQLite error.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return "code " + fmt.Sprint(e.code) }
func (e *codeError) Code() int     { return e.code }
func (e *codeError) Unwrap() error { return e.err }

func TestParseSQLiteMessage(t *testing.T) {
	tests := []struct {
		code                      int
		msg                       string
		constraint, table, column string
	}{
		// modernc.org/sqlite's wording.
		{2067, "constraint failed: UNIQUE constraint failed: p.name (2067)", "", "p", "name"},
		{1555, "constraint failed: UNIQUE constraint failed: p.id (1555)", "", "p", "id"},
		{2067, "constraint failed: UNIQUE constraint failed: t.a, t.b (2067)", "", "t", ""},
		{1299, "constraint failed: NOT NULL constraint failed: p.n (1299)", "", "p", "n"},
		{275, "constraint failed: CHECK constraint failed: chk_pos (275)", "chk_pos", "", ""},
		{275, "constraint failed: CHECK constraint failed: n >= 0 (275)", "n >= 0", "", ""},
		{787, "constraint failed: FOREIGN KEY constraint failed (787)", "", "", ""},
		// SQLite's own wording, as other drivers pass it on.
		{2067, "UNIQUE constraint failed: p.name", "", "p", "name"},
		{275, "CHECK constraint failed: x IN (1, 2)", "x IN (1, 2)", "", ""},
		// Garbage and unexpected shapes yield nothing rather than a guess.
		{2067, "", "", "", ""},
		{2067, "UNIQUE constraint failed: noDot (2067)", "", "", ""},
		{5, "database is locked (5) (SQLITE_BUSY)", "", "", ""},
		{3091, "constraint failed: cannot store TEXT value in INTEGER column st.k (3091)", "", "", ""},
		{2067, " constraint failed: ", "", "", ""},
		{2067, " constraint failed:  ()", "", "", ""},
	}
	for _, tt := range tests {
		c, tb, col := parseSQLiteMessage(tt.code, tt.msg)
		if c != tt.constraint || tb != tt.table || col != tt.column {
			t.Errorf("parseSQLiteMessage(%d, %q) = %q, %q, %q; want %q, %q, %q",
				tt.code, tt.msg, c, tb, col, tt.constraint, tt.table, tt.column)
		}
	}
}

func FuzzParseSQLiteMessage(f *testing.F) {
	f.Add(2067, "constraint failed: UNIQUE constraint failed: p.name (2067)")
	f.Add(275, "constraint failed: CHECK constraint failed: chk_pos (275)")
	f.Add(1299, "NOT NULL constraint failed: t.a, t.b")
	f.Add(275, " constraint failed:  (")
	f.Fuzz(func(t *testing.T, code int, msg string) {
		for _, n := range []int{code, 2067, 1555, 1299, 275} {
			c, tb, col := parseSQLiteMessage(n, msg)
			for _, s := range []string{c, tb, col} {
				if !strings.Contains(msg, s) {
					t.Fatalf("parseSQLiteMessage(%d, %q) returned %q, not a substring", n, msg, s)
				}
			}
		}
	})
}

func TestClassifyMySQLNames(t *testing.T) {
	me := &mysql.MySQLError{Number: 1062, SQLState: [5]byte{'2', '3', '0', '0', '0'},
		Message: "Duplicate entry 'x' for key 'articles.title'"}
	got := Classify(fmt.Errorf("insert: %w", me))
	if got.Constraint != "title" || got.Table != "articles" || got.Kind != KindUniqueViolation {
		t.Errorf("Classify = %+v", got)
	}
}

func TestParseMySQLMessage(t *testing.T) {
	tests := []struct {
		number                    uint16
		msg                       string
		constraint, table, column string
	}{
		{1062, "Duplicate entry 'a'b' for key 'title'", "title", "", ""},
		{1062, "Duplicate entry 'x' for key 'articles.title'", "title", "articles", ""},
		{1062, "Duplicate entry ' for key 'y' for key 'PRIMARY'", "PRIMARY", "", ""},
		{1062, "Duplicate entry '1-a' for key 't.PRIMARY'", "PRIMARY", "t", ""},
		{1586, "Duplicate entry 'x' for key 'uniq_email'", "uniq_email", "", ""},
		{1022, "Can't write; duplicate key in table 'articles'", "", "articles", ""},
		{1452, "Cannot add or update a child row: a foreign key constraint fails (`test`.`child`, CONSTRAINT `fk_child_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`))", "fk_child_parent", "child", ""},
		{1451, "Cannot delete or update a parent row: a foreign key constraint fails (`test`.`child`, CONSTRAINT `fk_child_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`))", "fk_child_parent", "child", ""},
		{1216, "Cannot add or update a child row: a foreign key constraint fails", "", "", ""},
		{1217, "Cannot delete or update a parent row: a foreign key constraint fails", "", "", ""},
		{4025, "CONSTRAINT `chk_pos` failed for `test`.`t`", "chk_pos", "t", ""},
		{3819, "Check constraint 'chk_pos' is violated.", "chk_pos", "", ""},
		{1048, "Column 'name' cannot be null", "", "", "name"},
		{1364, "Field 'name' doesn't have a default value", "", "", "name"},
		// Garbage and unexpected shapes yield nothing rather than a guess.
		{1062, "", "", "", ""},
		{1062, "Duplicate entry", "", "", ""},
		{1452, "a foreign key constraint fails", "", "", ""},
		{4025, "` failed for ", "", "", ""},
		{1048, "' cannot be null", "", "", ""},
		{1213, "Deadlock found when trying to get lock; try restarting transaction", "", "", ""},
	}
	for _, tt := range tests {
		c, tb, col := parseMySQLMessage(tt.number, tt.msg)
		if c != tt.constraint || tb != tt.table || col != tt.column {
			t.Errorf("parseMySQLMessage(%d, %q) = %q, %q, %q; want %q, %q, %q",
				tt.number, tt.msg, c, tb, col, tt.constraint, tt.table, tt.column)
		}
	}
}

func FuzzParseMySQLMessage(f *testing.F) {
	seeds := []struct {
		number uint16
		msg    string
	}{
		{1062, "Duplicate entry 'a'b' for key 'title'"},
		{1062, "Duplicate entry 'x' for key 'articles.title'"},
		{1022, "Can't write; duplicate key in table 'articles'"},
		{1452, "Cannot add or update a child row: a foreign key constraint fails (`test`.`child`, CONSTRAINT `fk_child_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`))"},
		{1451, "Cannot delete or update a parent row: a foreign key constraint fails (`test`.`child`, CONSTRAINT `fk_child_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`))"},
		{4025, "CONSTRAINT `chk_pos` failed for `test`.`t`"},
		{3819, "Check constraint 'chk_pos' is violated."},
		{1048, "Column 'name' cannot be null"},
		{1364, "Field 'name' doesn't have a default value"},
		{4025, "`` failed for `"},
		{1452, ", CONSTRAINT `"},
	}
	for _, s := range seeds {
		f.Add(s.number, s.msg)
	}
	f.Fuzz(func(t *testing.T, number uint16, msg string) {
		// Try every parsed number, not only the fuzzed one, so that each
		// message shape meets every parser.
		for _, n := range []uint16{number, 1062, 1586, 1022, 1216, 1217, 1451, 1452, 4025, 3819, 1048, 1364} {
			c, tb, col := parseMySQLMessage(n, msg)
			for _, s := range []string{c, tb, col} {
				if !strings.Contains(msg, s) {
					t.Fatalf("parseMySQLMessage(%d, %q) returned %q, not a substring", n, msg, s)
				}
			}
		}
	})
}

// fakeConnLockError is shaped like pgconn's unexported connLockError.
type fakeConnLockError struct{}

func (fakeConnLockError) Error() string     { return "conn closed" }
func (fakeConnLockError) SafeToRetry() bool { return true }

func TestClassifyOther(t *testing.T) {
	lost := Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome}
	canceled := Class{Kind: KindQueryCanceled, Scope: ScopeUnknownOutcome}
	unavailable := Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"ErrBadConn", driver.ErrBadConn, lost},
		{"ErrUnexpectedEOF", io.ErrUnexpectedEOF, lost},
		{"net.OpError", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("boom")}, lost},
		{"os deadline", os.ErrDeadlineExceeded, lost},
		{"ECONNRESET", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, lost},
		{"EPIPE", syscall.EPIPE, lost},
		{"ECONNREFUSED", syscall.ECONNREFUSED, unavailable},
		{"refused dial", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, unavailable},
		{"dial timeout", &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, unavailable},
		// A dial the caller's context ended, as net returns it: it matches
		// the context's error, and still sent nothing.
		{"dial at the context's deadline", dialErr(t, false), unavailable},
		{"dial of a canceled context", dialErr(t, true), unavailable},
		{"mysql.ErrInvalidConn", mysql.ErrInvalidConn, Class{Kind: KindConnectionLost, Scope: ScopeUnknownOutcome, Dialect: DialectMySQL}},
		{"pq.ErrInFailedTransaction", pq.ErrInFailedTransaction, Class{Kind: KindTxAborted, Scope: ScopeTransaction, Dialect: DialectPostgres}},
		{"pgx ErrTxCommitRollback", errors.New("commit unexpectedly resulted in rollback"), Class{Kind: KindTxAborted, Scope: ScopeTransaction, Dialect: DialectPostgres}},
		{"ErrBlindReread", fmt.Errorf("%w: no rows", ErrBlindReread), Class{Kind: KindSerializationFailure, Scope: ScopeTransaction, Retryable: true}},
		{"context.Canceled", context.Canceled, canceled},
		{"context.DeadlineExceeded", context.DeadlineExceeded, canceled},
		{"other", errors.New("syntax error"), Class{}},
		{"io.EOF", io.EOF, lost}, // lib/pq, when the server closes the connection
		{"LostConnError", &LostConnError{Cause: driver.ErrBadConn}, lost},
		{"pgx conn closed", fakeConnLockError{}, lost},
		// RetryError is its last real cause.
		{"RetryError after refused dials", &RetryError{Attempts: 3, Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, Ctx: context.DeadlineExceeded}, unavailable},
		{"RetryError after a failed BeginTx", &RetryError{Attempts: 3, Err: io.EOF, class: &Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true}}, unavailable},
		{"RetryError of a deadlock", &RetryError{Attempts: 2, Err: errPGDeadlock, Ctx: context.Canceled},
			Class{Kind: KindDeadlock, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres, Code: "40P01", SQLState: "40P01"}},
		// go-sql-driver/mysql's ErrBadConn in a transaction: not sent, the
		// transaction gone with the connection.
		{"not sent in tx", &notSentError{err: driver.ErrBadConn, tx: true}, Class{Kind: KindConnectionLost, Scope: ScopeTransaction, Retryable: true}},
		{"commit settled: rolled back", &rolledBackError{err: driver.ErrBadConn, xid: 7},
			Class{Kind: KindConnectionLost, Scope: ScopeTransaction, Retryable: true, Dialect: DialectPostgres}},
		// lib/pq's connect-only messages mark themselves.
		{"lib/pq target_session_attrs", errors.New("session is read-only"), Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}},
		{"lib/pq no host read-only", fmt.Errorf("pq: could not connect to any of the hosts:\n%w", errors.Join(
			fmt.Errorf("connecting to 127.0.0.1:5463: %w", errors.New("server is in hot standby mode")),
			fmt.Errorf("connecting to 127.0.0.1:5462: %w", errors.New("session is read-only")))),
			Class{Kind: KindReadOnly, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}},
		{"lib/pq no host", fmt.Errorf("pq: could not connect to any of the hosts:\n%w", errors.Join(
			fmt.Errorf("connecting to 127.0.0.1:1: %w", io.EOF), fmt.Errorf("connecting to 127.0.0.1:2: %w", io.ErrUnexpectedEOF))),
			Class{Kind: KindUnavailable, Scope: ScopeStatement, Retryable: true, Dialect: DialectPostgres}},
		{"a not-a-host error", errors.New("session is read-only, says the app"), Class{}},
		// conflict_wrap_errors: the class the wrapper knew when it wrapped.
		{"wrapped connect failure", &Error{Class: unavailable, Err: io.EOF}, unavailable},
		{"cut by the watchdog", &interrupted{ctx: context.DeadlineExceeded, cause: io.EOF, grace: time.Millisecond}, canceled},
	}
	for _, tt := range tests {
		for name, err := range wraps(tt.err) {
			if got := Classify(err); got != tt.want {
				t.Errorf("%s %s: Classify = %+v, want %+v", tt.name, name, got, tt.want)
			}
		}
	}
	if got := Classify(nil); got != (Class{}) {
		t.Errorf("Classify(nil) = %+v, want zero", got)
	}
	// What errors.Is reaches: a RetryError's context, never ErrBadConn
	// behind the wrapper's own connection retries or its watchdog's cut.
	re := &RetryError{Attempts: 2, Err: syscall.ECONNREFUSED, Ctx: context.DeadlineExceeded}
	if !errors.Is(re, context.DeadlineExceeded) || !errors.Is(re, syscall.ECONNREFUSED) {
		t.Errorf("RetryError %v does not reach its cause and its context", re)
	}
	if cut := (&interrupted{ctx: context.DeadlineExceeded, cause: driver.ErrBadConn}); errors.Is(cut, driver.ErrBadConn) || !errors.Is(cut, context.DeadlineExceeded) {
		t.Error("a cut call must match its context's error and never driver.ErrBadConn")
	}
	// Typed nil pointers in the chain must not panic. errors.Join does not
	// call their Error method, which would.
	var nilPq *pq.Error
	var nilMy *mysql.MySQLError
	var nilPgx *fakePgError
	var nilTx *TxAbortedError
	var nilSQLite *sqlitefake.Error
	for _, err := range []error{nilPq, nilMy, nilPgx, nilTx, nilSQLite} {
		if got := Classify(errors.Join(err)); got != (Class{}) {
			t.Errorf("Classify(%T(nil)) = %+v, want zero", err, got)
		}
	}
}

func TestHelpers(t *testing.T) {
	dup := fmt.Errorf("insert: %w", &pq.Error{Code: "23505"})
	deadlock := fmt.Errorf("update: %w", &mysql.MySQLError{Number: 1213})
	if !IsUniqueViolation(dup) || IsUniqueViolation(deadlock) || IsUniqueViolation(nil) {
		t.Error("IsUniqueViolation")
	}
	if !IsRetryable(deadlock) || IsRetryable(dup) || IsRetryable(nil) || IsRetryable(context.Canceled) {
		t.Error("IsRetryable")
	}
}

func TestError(t *testing.T) {
	pqErr := &pq.Error{Code: "23505", Message: "duplicate key value violates unique constraint \"t_pkey\"", Constraint: "t_pkey"}
	myErr := &mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"}
	for _, base := range []error{pqErr, myErr} {
		err := wrapError(base)
		e, ok := err.(*Error)
		if !ok {
			t.Fatalf("wrapError(%v) = %T, want *Error", base, err)
		}
		if e.Error() != base.Error() {
			t.Errorf("Error() = %q, want %q", e.Error(), base.Error())
		}
		if e.Class != Classify(base) || Classify(err) != Classify(base) {
			t.Errorf("Class = %+v, Classify = %+v, want %+v", e.Class, Classify(err), Classify(base))
		}
		if !errors.Is(err, e.Class.Kind.Err()) || errors.Is(err, ErrLockTimeout) {
			t.Errorf("errors.Is on %v", err)
		}
		if wrapError(err) != err {
			t.Error("wrapError wrapped an *Error twice")
		}
	}

	err := fmt.Errorf("outer: %w", wrapError(pqErr))
	if !errors.Is(err, ErrUniqueViolation) || errors.Is(err, ErrDeadlock) {
		t.Error("errors.Is through fmt.Errorf")
	}
	if got := (*pq.Error)(nil); !errors.As(err, &got) || got != pqErr {
		t.Errorf("errors.As *pq.Error = %v", got)
	}
	if e := (*Error)(nil); !errors.As(err, &e) || e.Err.(*pq.Error) != pqErr {
		t.Error("e.Err.(*pq.Error)")
	}
	if got := (*mysql.MySQLError)(nil); !errors.As(wrapError(myErr), &got) || got != myErr {
		t.Errorf("errors.As *mysql.MySQLError = %v", got)
	}
	if !errors.Is(wrapError(myErr), ErrDeadlock) {
		t.Error("errors.Is(ErrDeadlock)")
	}

	// Unknown errors and nil pass through unchanged.
	plain := errors.New("syntax error")
	if wrapError(plain) != plain || wrapError(nil) != nil {
		t.Error("wrapError changed an unknown error or nil")
	}
	unknown := &pq.Error{Code: "42601"}
	if wrapError(unknown) != error(unknown) {
		t.Error("wrapError wrapped an unknown code")
	}
	// database/sql's retry on ErrBadConn must keep working.
	if !errors.Is(wrapError(driver.ErrBadConn), driver.ErrBadConn) {
		t.Error("wrapped ErrBadConn lost")
	}
	if (&Error{}).Is(nil) {
		t.Error("zero Error matched nil")
	}
}

func TestTxAbortedError(t *testing.T) {
	deadlock := &pq.Error{Code: "40P01"}
	err := fmt.Errorf("exec: %w", &TxAbortedError{Cause: deadlock})
	want := Class{Kind: KindTxAborted, Scope: ScopeTransaction, Retryable: true,
		Dialect: DialectPostgres, Code: "40P01", SQLState: "40P01"}
	if got := Classify(err); got != want {
		t.Errorf("Classify = %+v, want %+v", got, want)
	}
	if !errors.Is(err, ErrTxAborted) {
		t.Error("errors.Is(ErrTxAborted)")
	}
	if got := (*pq.Error)(nil); !errors.As(err, &got) || got != deadlock {
		t.Error("errors.As *pq.Error through TxAbortedError")
	}
	if s := (&TxAbortedError{Cause: deadlock}).Error(); s != "sqlconflict: transaction aborted by an earlier error: "+deadlock.Error() {
		t.Errorf("Error() = %q", s)
	}

	dup := &mysql.MySQLError{Number: 1062, Message: "Duplicate entry 'x' for key 'articles.title'"}
	err = &TxAbortedError{Cause: wrapError(dup)}
	want = Class{Kind: KindTxAborted, Scope: ScopeTransaction, Dialect: DialectMySQL,
		Code: "1062", SQLState: "23000", Constraint: "title", Table: "articles"}
	if got := Classify(err); got != want {
		t.Errorf("Classify = %+v, want %+v", got, want)
	}
	if !errors.Is(err, ErrUniqueViolation) || !errors.Is(err, ErrTxAborted) || IsUniqueViolation(err) {
		t.Error("errors.Is through TxAbortedError with *Error cause")
	}
	// Wrapping a TxAbortedError keeps it a TxAbortedError.
	if got := Classify(wrapError(err)); got != want {
		t.Errorf("Classify(wrapError) = %+v, want %+v", got, want)
	}

	nilCause := &TxAbortedError{}
	if got := Classify(nilCause); got != (Class{Kind: KindTxAborted, Scope: ScopeTransaction}) {
		t.Errorf("Classify(nil cause) = %+v", got)
	}
	if !errors.Is(nilCause, ErrTxAborted) || nilCause.Error() != "sqlconflict: transaction aborted by an earlier error" {
		t.Error("nil cause")
	}
}

func TestStrings(t *testing.T) {
	kinds := []struct {
		k    Kind
		want string
		err  error
	}{
		{KindUnknown, "unknown", nil},
		{KindUniqueViolation, "unique violation", ErrUniqueViolation},
		{KindForeignKeyViolation, "foreign key violation", ErrForeignKeyViolation},
		{KindNotNullViolation, "not null violation", ErrNotNullViolation},
		{KindCheckViolation, "check violation", ErrCheckViolation},
		{KindExclusionViolation, "exclusion violation", ErrExclusionViolation},
		{KindIntegrityViolation, "integrity violation", ErrIntegrityViolation},
		{KindDeadlock, "deadlock", ErrDeadlock},
		{KindSerializationFailure, "serialization failure", ErrSerializationFailure},
		{KindTransactionRollback, "transaction rollback", ErrTransactionRollback},
		{KindLockTimeout, "lock timeout", ErrLockTimeout},
		{KindQueryCanceled, "query canceled", ErrQueryCanceled},
		{KindTxAborted, "transaction aborted", ErrTxAborted},
		{KindConnectionLost, "connection lost", ErrConnectionLost},
		{KindUnavailable, "server unavailable", ErrUnavailable},
		{KindReadOnly, "read only", ErrReadOnly},
		{Kind(99), "Kind(99)", nil},
		{Kind(-1), "Kind(-1)", nil},
	}
	for _, tt := range kinds {
		if got := tt.k.String(); got != tt.want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(tt.k), got, tt.want)
		}
		if got := tt.k.Err(); got != tt.err {
			t.Errorf("Kind(%d).Err() = %v, want %v", int(tt.k), got, tt.err)
		}
		if tt.err != nil && tt.err.Error() != "sqlconflict: "+tt.want {
			t.Errorf("sentinel %q does not match %q", tt.err, tt.want)
		}
	}
	if (&Error{Class: Class{Kind: KindDeadlock}}).Error() != "sqlconflict: deadlock" {
		t.Error("Error with nil Err")
	}

	for s, want := range map[Scope]string{
		ScopeNone: "none", ScopeStatement: "statement", ScopeTransaction: "transaction",
		ScopeUnknownOutcome: "unknown outcome", Scope(7): "Scope(7)",
	} {
		if got := s.String(); got != want {
			t.Errorf("Scope(%d).String() = %q, want %q", int(s), got, want)
		}
	}
	for d, want := range map[Dialect]string{
		DialectUnknown: "unknown", DialectPostgres: "postgres", DialectMySQL: "mysql", DialectSQLite: "sqlite",
		Dialect(7): "Dialect(7)",
	} {
		if got := d.String(); got != want {
			t.Errorf("Dialect(%d).String() = %q, want %q", int(d), got, want)
		}
	}
	if !strings.HasPrefix(ErrBlindReread.Error(), "sqlconflict: blind re-read: ") {
		t.Errorf("ErrBlindReread = %q", ErrBlindReread)
	}
}

// dialErr returns net's own error for a dial that a context ended: past
// its deadline, or canceled.
func dialErr(t *testing.T, canceled bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	want := context.Canceled
	if !canceled {
		cancel()
		ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		want = context.DeadlineExceeded
	}
	cancel()
	err := endedDial(ctx)
	if !errors.Is(err, want) || !isDialError(err) {
		t.Fatalf("dial error %v (%T) does not match %v and a dial *net.OpError", err, err, want)
	}
	return err
}

// endedDial dials with ctx, which has ended, and returns net's error.
func endedDial(ctx context.Context) error {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:1")
	if err == nil {
		c.Close()
		return errors.New("a dial with an ended context connected")
	}
	return err
}
