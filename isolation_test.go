package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// logCapture is a slog.Handler that keeps the records, for asserting which
// warnings the wrapper logged.
type logCapture struct {
	mu   sync.Mutex
	recs []capturedLog
}

type capturedLog struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCapture) WithGroup(string) slog.Handler            { return h }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	rec := capturedLog{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, rec)
	h.mu.Unlock()
	return nil
}

// warnings returns and forgets the WARN records logged so far.
func (h *logCapture) warnings() []capturedLog {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []capturedLog
	for _, r := range h.recs {
		if r.level >= slog.LevelWarn {
			out = append(out, r)
		}
	}
	h.recs = nil
	return out
}

const (
	msgConflictPrefix = "sqlconflict: unique violation in a transaction whose snapshot predates"
	msgBlindPrefix    = "sqlconflict: blind re-read:"
)

// unitIC returns an interceptor for hook-level tests, its log and a
// session default.
func unitIC(d Dialect, mode BlindRereadMode, session isoLevel) (*interceptor, *logCapture) {
	logs := &logCapture{}
	o := DefaultOptions()
	o.Dialect, o.BlindReread, o.Logger = d, mode, slog.New(logs)
	ic := &interceptor{cfg: &config{Options: o}}
	ic.iso.session, ic.iso.initial = session, session
	return ic, logs
}

// stmt feeds the interceptor a statement that succeeded, as run does.
func (ic *interceptor) stmtForTest(q string) {
	ic.afterStmt(parseStmt(q), q)
}

func TestParseIsoValue(t *testing.T) {
	for _, tc := range []struct {
		v    string
		d    Dialect
		want isoLevel
	}{
		{"read committed", DialectPostgres, isoReadCommitted},
		{"repeatable read", DialectPostgres, isoRepeatableRead},
		{"'serializable'", DialectPostgres, isoSerializable},
		{"read uncommitted", DialectPostgres, isoReadUncommitted},
		{"REPEATABLE-READ", DialectMySQL, isoRepeatableRead},
		{"'READ-COMMITTED'", DialectMySQL, isoReadCommitted},
		{`"SERIALIZABLE"`, DialectMySQL, isoSerializable},
		{"1", DialectMySQL, isoReadCommitted},
		{"2", DialectMySQL, isoRepeatableRead},
		{"2", DialectPostgres, isoUnset},
		{"4", DialectMySQL, isoUnset},
		{"", DialectMySQL, isoUnset},
		{"repeatable", DialectMySQL, isoUnset},
		{"repeatable reads", DialectMySQL, isoUnset},
		{"@x", DialectMySQL, isoUnset},
	} {
		if got := parseIsoValue(tc.v, tc.d); got != tc.want {
			t.Errorf("parseIsoValue(%q, %v) = %v, want %v", tc.v, tc.d, got, tc.want)
		}
	}
}

// TestIsolationTracking: which SET, BEGIN and TxOptions change which level,
// per dialect. Facts marked "seen" in docs/isolation.md were checked on
// MariaDB 10.11 and PostgreSQL 15.
func TestIsolationTracking(t *testing.T) {
	type step struct {
		q    string // a statement that succeeded; "" = nothing
		sess isoLevel
		next isoLevel
		tx   isoLevel // level of the current transaction, if one is open
	}
	RU, RC, RR, SER, unset := isoReadUncommitted, isoReadCommitted, isoRepeatableRead, isoSerializable, isoUnset
	for _, tc := range []struct {
		name  string
		d     Dialect
		start isoLevel
		steps []step
	}{
		{"mysql/set transaction is next only", DialectMySQL, RR, []step{
			{q: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", sess: RR, next: RC},
			{q: "START TRANSACTION", sess: RR, next: RC, tx: RC},
			{q: "COMMIT", sess: RR, next: unset},
			{q: "BEGIN", sess: RR, tx: RR},
			{q: "ROLLBACK", sess: RR},
		}},
		{"mysql/autocommit statement on a table consumes next", DialectMySQL, RR, []step{
			{q: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", sess: RR, next: SER},
			{q: "SELECT 1", sess: RR, next: SER},
			{q: "SELECT * FROM t", sess: RR, next: unset},
			{q: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", sess: RR, next: SER},
			{q: "INSERT INTO t VALUES (1)", sess: RR, next: unset},
		}},
		{"mysql/session", DialectMySQL, RR, []step{
			{q: "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", sess: RC},
			{q: "set local transaction isolation level serializable", sess: SER}, // LOCAL = SESSION (seen)
			{q: "SET tx_isolation = 'READ-COMMITTED'", sess: RC},
			{q: "SET tx_isolation = 'SERIALIZABLE'", sess: SER},
			{q: "SET SESSION transaction_isolation='READ-UNCOMMITTED'", sess: RU},
			{q: "SET @@SESSION.tx_isolation = 'REPEATABLE-READ'", sess: RR},
			{q: "SET @@local.transaction_isolation := \"READ-COMMITTED\"", sess: RC},
			{q: "SET LOCAL tx_isolation = 'SERIALIZABLE'", sess: SER},
			{q: "SET tx_isolation = 1", sess: RC},
			{q: "SET SESSION tx_isolation = DEFAULT", sess: RR},
			{q: "SET /* c */ SESSION -- x\n TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED", sess: RC},
			{q: "SET NAMES utf8mb4, sql_mode = 'A,B', SESSION tx_isolation = 'SERIALIZABLE'", sess: SER},
			{q: "SET autocommit = (1), @@tx_isolation = 'READ-COMMITTED'", sess: SER, next: RC},
			{q: "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", sess: RR}, // cancels next (seen)
		}},
		{"mysql/@@var is next only", DialectMySQL, RR, []step{
			{q: "SET @@transaction_isolation = 'READ-COMMITTED'", sess: RR, next: RC},
			{q: "SET @@tx_isolation = DEFAULT", sess: RR},
		}},
		{"mysql/global and others ignored", DialectMySQL, RR, []step{
			{q: "SET GLOBAL TRANSACTION ISOLATION LEVEL READ COMMITTED", sess: RR},
			{q: "SET @@GLOBAL.tx_isolation = 'READ-COMMITTED'", sess: RR},
			{q: "SET PERSIST transaction_isolation = 'READ-COMMITTED'", sess: RR},
			{q: "SET @isolation = 'READ-COMMITTED'", sess: RR},
			{q: "SET @x = 'tx_isolation', sql_mode = ''", sess: RR},
			{q: "SET NAMES utf8mb4", sess: RR},
			{q: "SET tx_isolation = @lvl", sess: unset}, // unknown from here on
		}},
		{"mysql/begin", DialectMySQL, RC, []step{
			{q: "START TRANSACTION WITH CONSISTENT SNAPSHOT", sess: RC, tx: RC},
		}},
		{"postgres/set transaction in a transaction", DialectPostgres, RC, []step{
			{q: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", sess: RC}, // outside: ignored
			{q: "BEGIN", sess: RC, tx: RC},
			{q: "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", sess: RC, tx: RR},
			{q: "COMMIT", sess: RC},
			{q: "BEGIN", sess: RC, tx: RC},
			{q: "SET transaction_isolation = 'serializable'", sess: RC, tx: SER},
			{q: "ROLLBACK", sess: RC},
			{q: "SET SESSION transaction_isolation TO 'serializable'", sess: RC}, // outside: ignored (seen)
		}},
		{"postgres/session", DialectPostgres, RC, []step{
			{q: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ", sess: RR},
			{q: "BEGIN", sess: RR, tx: RR},
			{q: "COMMIT", sess: RR},
			{q: "RESET ALL", sess: RC},
			{q: "SET default_transaction_isolation TO 'serializable'", sess: SER},
			{q: "SET default_transaction_isolation = DEFAULT", sess: RC},
			{q: "SET SESSION default_transaction_isolation = serializable", sess: SER},
			{q: "RESET default_transaction_isolation", sess: RC},
			{q: "SET LOCAL default_transaction_isolation = 'serializable'", sess: RC},
			{q: "SET search_path = isolation", sess: RC},
			{q: "RESET search_path", sess: RC},
		}},
		{"postgres/begin", DialectPostgres, RC, []step{
			{q: "BEGIN ISOLATION LEVEL SERIALIZABLE", sess: RC, tx: SER},
			{q: "COMMIT", sess: RC},
			{q: "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ", sess: RC, tx: RR},
			{q: "COMMIT", sess: RC},
			{q: "begin transaction isolation level read committed", sess: RC, tx: RC},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic, _ := unitIC(tc.d, BlindRereadWarn, tc.start)
			for _, st := range tc.steps {
				ic.stmtForTest(st.q)
				var tx isoLevel
				if ic.tx.active {
					tx = ic.tx.iso.level
				}
				if ic.iso.session != st.sess || ic.iso.next != st.next || tx != st.tx {
					t.Errorf("after %q: session %v next %v tx %v, want %v %v %v",
						st.q, ic.iso.session, ic.iso.next, tx, st.sess, st.next, st.tx)
				}
			}
		})
	}
}

func TestTxIsolationOptions(t *testing.T) {
	ic, _ := unitIC(DialectMySQL, BlindRereadWarn, isoRepeatableRead)
	for _, tc := range []struct {
		level sql.IsolationLevel
		want  isoLevel
	}{
		{sql.LevelDefault, isoRepeatableRead},
		{sql.LevelReadUncommitted, isoReadUncommitted},
		{sql.LevelReadCommitted, isoReadCommitted},
		{sql.LevelRepeatableRead, isoRepeatableRead},
		{sql.LevelSerializable, isoSerializable},
		{sql.LevelSnapshot, isoUnset},
		{sql.LevelLinearizable, isoUnset},
	} {
		if got := ic.txIsolation(driver.TxOptions{Isolation: driver.IsolationLevel(tc.level)}).level; got != tc.want {
			t.Errorf("txIsolation(%v) = %v, want %v", tc.level, got, tc.want)
		}
	}
	ic.stmtForTest("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
	if got := ic.txIsolation(driver.TxOptions{}).level; got != isoReadCommitted {
		t.Errorf("LevelDefault after SET TRANSACTION = %v, want READ COMMITTED", got)
	}
	if got := ic.txIsolation(driver.TxOptions{Isolation: driver.IsolationLevel(sql.LevelSerializable)}).level; got != isoSerializable {
		t.Errorf("LevelSerializable after SET TRANSACTION = %v, want SERIALIZABLE", got)
	}
}

var (
	clUnique   = Class{Kind: KindUniqueViolation, Scope: ScopeStatement, Constraint: "uq_k", Code: "1062"}
	clDeadlock = Class{Kind: KindDeadlock, Scope: ScopeTransaction, Code: "1213"}
	clSerial   = Class{Kind: KindSerializationFailure, Scope: ScopeTransaction, Code: "40001"}
)

// TestBlindRereadHooks drives the hooks as run and rows.go do and counts the
// warnings: conflict is the first, blind the second (or the error).
func TestBlindRereadHooks(t *testing.T) {
	const plain, locking = "SELECT id FROM t WHERE k = 'a'", "SELECT id FROM t WHERE k = 'a' LOCK IN SHARE MODE"
	for _, tc := range []struct {
		name    string
		d       Dialect
		mode    BlindRereadMode
		session isoLevel
		before  []string // statements after BEGIN
		cl      Class
		reread  string
		// want: the first warning, whether the re-read is checked, the
		// second warning (warn mode) or error (error mode).
		conflict, checked bool
	}{
		{"mysql rr read first", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{plain}, clUnique, plain, true, true},
		{"mysql rr error mode", DialectMySQL, BlindRereadError, isoRepeatableRead, []string{plain}, clUnique, plain, true, true},
		{"mysql rr off", DialectMySQL, BlindRereadOff, isoRepeatableRead, []string{plain}, clUnique, plain, false, false},
		{"mysql rr consistent snapshot", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{"-"}, clUnique, plain, true, true},
		{"mysql rr with-select read", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{"WITH x AS (SELECT 1) SELECT * FROM x"}, clUnique, plain, true, true},
		{"mysql rr insert first", DialectMySQL, BlindRereadWarn, isoRepeatableRead, nil, clUnique, plain, false, false},
		{"mysql rr read without table", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{"SELECT 1"}, clUnique, plain, false, false},
		{"mysql rr locking read first", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{plain + " FOR UPDATE"}, clUnique, plain, false, false},
		{"mysql rr locking re-read", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{plain}, clUnique, locking, true, false},
		{"mysql rr deadlock", DialectMySQL, BlindRereadWarn, isoRepeatableRead, []string{plain}, clDeadlock, plain, false, false},
		{"mysql rc", DialectMySQL, BlindRereadWarn, isoReadCommitted, []string{plain}, clUnique, plain, false, false},
		{"mysql serializable", DialectMySQL, BlindRereadWarn, isoSerializable, []string{plain}, clUnique, plain, false, false},
		{"mysql unknown level", DialectMySQL, BlindRereadWarn, isoUnset, []string{plain}, clUnique, plain, false, false},
		{"postgres rr", DialectPostgres, BlindRereadWarn, isoRepeatableRead, []string{plain}, clUnique, plain, true, true},
		{"postgres rr write first", DialectPostgres, BlindRereadWarn, isoRepeatableRead, []string{"UPDATE u SET n = 1"}, clUnique, plain, true, true},
		{"postgres rr insert first", DialectPostgres, BlindRereadWarn, isoRepeatableRead, nil, clUnique, plain, false, true},
		{"postgres rr locking re-read", DialectPostgres, BlindRereadWarn, isoRepeatableRead, []string{plain}, clUnique, plain + " FOR SHARE", true, true},
		{"postgres serializable", DialectPostgres, BlindRereadWarn, isoSerializable, []string{plain}, clUnique, plain, true, true},
		{"postgres serialization failure", DialectPostgres, BlindRereadWarn, isoSerializable, []string{plain}, clSerial, plain, false, false},
		{"postgres rc", DialectPostgres, BlindRereadWarn, isoReadCommitted, []string{plain}, clUnique, plain, false, false},
		{"postgres error mode insert first", DialectPostgres, BlindRereadError, isoRepeatableRead, nil, clUnique, plain, false, true},
		{"unknown dialect rr", DialectUnknown, BlindRereadWarn, isoRepeatableRead, []string{plain}, clUnique, plain, true, true},
		{"unknown dialect serializable", DialectUnknown, BlindRereadWarn, isoSerializable, []string{plain}, clUnique, plain, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic, logs := unitIC(tc.d, tc.mode, tc.session)
			if len(tc.before) == 1 && tc.before[0] == "-" {
				ic.stmtForTest("START TRANSACTION WITH CONSISTENT SNAPSHOT")
			} else {
				ic.stmtForTest("BEGIN")
				for _, q := range tc.before {
					ic.stmtForTest(q)
				}
			}
			ic.onConflict(context.Background(), tc.cl)
			w := logs.warnings()
			if got := len(w) == 1; got != tc.conflict || len(w) > 1 {
				t.Fatalf("conflict warnings %d, want %v: %+v", len(w), tc.conflict, w)
			}
			if tc.conflict {
				checkIsoWarning(t, w[0], msgConflictPrefix, tc.cl.Constraint, tc.session, tc.d)
			}
			ic.stmtForTest("INSERT INTO other VALUES (1)") // not a SELECT: the check stays armed
			ic.stmtForTest(tc.reread)
			checked := ic.rereadMayBeBlind(parseStmt(tc.reread), tc.reread)
			if checked != tc.checked {
				t.Fatalf("rereadMayBeBlind = %v, want %v", checked, tc.checked)
			}
			if ic.rereadMayBeBlind(stmtSelect, plain) {
				t.Error("second SELECT checked too; want the check disarmed")
			}
			if !checked {
				return
			}
			err := ic.blindReread(context.Background())
			w = logs.warnings()
			switch tc.mode {
			case BlindRereadWarn:
				if err != io.EOF || len(w) != 1 {
					t.Fatalf("blindReread = %v with %d warnings, want io.EOF and 1", err, len(w))
				}
				checkIsoWarning(t, w[0], msgBlindPrefix, tc.cl.Constraint, tc.session, tc.d)
			case BlindRereadError:
				if !errors.Is(err, ErrBlindReread) || len(w) != 0 {
					t.Fatalf("blindReread = %v with %d warnings, want ErrBlindReread and none", err, len(w))
				}
				if !strings.Contains(err.Error(), tc.cl.Constraint) || !strings.Contains(err.Error(), tc.session.String()) {
					t.Errorf("error %q does not name the constraint and level", err)
				}
			}
		})
	}
}

func checkIsoWarning(t *testing.T, w capturedLog, prefix, constraint string, level isoLevel, d Dialect) {
	t.Helper()
	if w.level != slog.LevelWarn || !strings.HasPrefix(w.msg, prefix) {
		t.Errorf("warning %v %q, want WARN %q...", w.level, w.msg, prefix)
	}
	remedy := remedyMySQL
	if d == DialectPostgres {
		remedy = remedyPostgres
	}
	want := map[string]string{"constraint": constraint, "isolation": level.String(), "dialect": d.String(), "remedy": remedy}
	for k, v := range want {
		if w.attrs[k] != v {
			t.Errorf("warning attribute %s = %q, want %q", k, w.attrs[k], v)
		}
	}
}

// TestBlindRereadOncePerTx: a second conflict in the same transaction re-arms
// the check without a second warning; a new transaction starts clean.
func TestBlindRereadOncePerTx(t *testing.T) {
	ic, logs := unitIC(DialectMySQL, BlindRereadWarn, isoRepeatableRead)
	ic.stmtForTest("BEGIN")
	ic.stmtForTest("SELECT * FROM t")
	ic.onConflict(context.Background(), clUnique)
	ic.onConflict(context.Background(), clUnique)
	if n := len(logs.warnings()); n != 1 {
		t.Errorf("%d warnings for two conflicts, want 1", n)
	}
	ic.stmtForTest("ROLLBACK")
	if ic.rereadMayBeBlind(stmtSelect, "SELECT * FROM t") {
		t.Error("check armed after ROLLBACK")
	}
	ic.onConflict(context.Background(), clUnique) // autocommit
	ic.stmtForTest("BEGIN")
	ic.stmtForTest("SELECT * FROM t")
	ic.onConflict(context.Background(), clUnique)
	if n := len(logs.warnings()); n != 1 {
		t.Errorf("%d warnings in the next transaction, want 1", n)
	}
}

// TestIsolationHooksNoAlloc: the hooks on the statement path allocate
// nothing when no conflict happened, SET statements included.
func TestIsolationHooksNoAlloc(t *testing.T) {
	for _, d := range []Dialect{DialectMySQL, DialectPostgres} {
		ic, _ := unitIC(d, BlindRereadWarn, isoRepeatableRead)
		for _, q := range []string{
			"SET NAMES utf8mb4",
			"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
			"SET @@SESSION.tx_isolation = 'READ-COMMITTED', autocommit = 0",
			"SET default_transaction_isolation TO 'repeatable read'",
			"RESET ALL",
			"BEGIN ISOLATION LEVEL SERIALIZABLE",
			"START TRANSACTION WITH CONSISTENT SNAPSHOT",
			"SELECT * FROM t WHERE id = 1",
			"INSERT INTO t VALUES (1)",
			"WITH x AS (SELECT 1) SELECT * FROM x",
			"COMMIT",
		} {
			k := parseStmt(q)
			if n := testing.AllocsPerRun(100, func() {
				ic.afterStmt(k, q)
				ic.rereadMayBeBlind(k, q)
			}); n != 0 {
				t.Errorf("%v: %q: %v allocations, want 0", d, q, n)
			}
		}
		if n := testing.AllocsPerRun(100, func() { ic.txIsolation(driver.TxOptions{}) }); n != 0 {
			t.Errorf("%v: txIsolation: %v allocations, want 0", d, n)
		}
	}
}

// TestInitIsolationMock: the session default is read once per connection,
// with the dialect's query, and a blind re-read is found through
// database/sql, rows.go and the savepoint guard.
func TestInitIsolationMock(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    Dialect
		cols []string
		rows [][]string
		want isoLevel
	}{
		{"postgres", DialectPostgres, []string{"transaction_isolation"}, [][]string{{"repeatable read"}}, isoRepeatableRead},
		{"mariadb 10", DialectMySQL, []string{"Variable_name", "Value"}, [][]string{{"tx_isolation", "REPEATABLE-READ"}}, isoRepeatableRead},
		{"mysql 8", DialectMySQL, []string{"Variable_name", "Value"}, [][]string{{"transaction_isolation", "READ-COMMITTED"}}, isoReadCommitted},
		{"mariadb 11", DialectMySQL, []string{"Variable_name", "Value"}, [][]string{{"transaction_isolation", "SERIALIZABLE"}, {"tx_isolation", "SERIALIZABLE"}}, isoSerializable},
		{"mariadb 11 other order", DialectMySQL, []string{"Variable_name", "Value"}, [][]string{{"tx_isolation", "READ-UNCOMMITTED"}, {"transaction_isolation", "READ-UNCOMMITTED"}}, isoReadUncommitted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := "mock_" + t.Name()
			raw, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			q := sqlIsolationMySQL
			if tc.d == DialectPostgres {
				q = sqlIsolationPostgres
			}
			rows := sqlmock.NewRows(tc.cols)
			for _, r := range tc.rows {
				vals := make([]driver.Value, len(r))
				for i, v := range r {
					vals[i] = []byte(v)
				}
				rows.AddRow(vals...)
			}
			mock.ExpectQuery(q).WillReturnRows(rows)
			conn, err := raw.Driver().Open(dsn)
			if err != nil {
				t.Fatal(err)
			}
			ic, _ := unitIC(tc.d, BlindRereadWarn, isoUnset)
			if err := ic.init(context.Background(), conn); err != nil {
				t.Fatal(err)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Error(err)
			}
			if ic.iso.session != tc.want || ic.iso.initial != tc.want {
				t.Errorf("session %v initial %v, want %v", ic.iso.session, ic.iso.initial, tc.want)
			}
		})
	}
}

// TestBlindRereadMockFlow: get-or-create on PostgreSQL REPEATABLE READ with
// conflict_savepoints=writes, through database/sql and sqlmock.
func TestBlindRereadMockFlow(t *testing.T) {
	for _, mode := range []BlindRereadMode{BlindRereadWarn, BlindRereadError} {
		t.Run(mode.String(), func(t *testing.T) {
			logs := &logCapture{}
			opts := fastOptions(DialectPostgres)
			opts.BlindReread, opts.Logger = mode, slog.New(logs)
			sel := "SELECT id FROM t WHERE k = 'a'"
			ins := "INSERT INTO t (k) VALUES ('a')"
			db, mock := mockDB(t, opts)
			mock.ExpectQuery(sqlIsolationPostgres).WillReturnRows(sqlmock.NewRows([]string{"transaction_isolation"}).AddRow("repeatable read"))
			mock.ExpectBegin()
			mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
			mock.ExpectExec(sqlSavepoint).WillReturnResult(sqlmock.NewResult(0, 0))
			mock.ExpectExec(ins).WillReturnError(errPGUnique)
			mock.ExpectExec(sqlRollbackSavepoint).WillReturnResult(sqlmock.NewResult(0, 0))
			mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
			mock.ExpectRollback()

			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			var id int
			if err := tx.QueryRow(sel).Scan(&id); err != sql.ErrNoRows {
				t.Fatalf("first read: %v, want sql.ErrNoRows", err)
			}
			if _, err := tx.Exec(ins); !IsUniqueViolation(err) {
				t.Fatalf("insert: %v, want a unique violation", err)
			}
			err = tx.QueryRow(sel).Scan(&id)
			w := logs.warnings()
			switch mode {
			case BlindRereadWarn:
				if err != sql.ErrNoRows || len(w) != 2 {
					t.Fatalf("re-read: %v with %d warnings, want sql.ErrNoRows and 2", err, len(w))
				}
				checkIsoWarning(t, w[0], msgConflictPrefix, "t_pkey", isoRepeatableRead, DialectPostgres)
				checkIsoWarning(t, w[1], msgBlindPrefix, "t_pkey", isoRepeatableRead, DialectPostgres)
			case BlindRereadError:
				if !errors.Is(err, ErrBlindReread) || len(w) != 1 {
					t.Fatalf("re-read: %v with %d warnings, want ErrBlindReread and 1", err, len(w))
				}
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestInitIsolationFailure: a server error on the session-default query
// leaves the connection usable without warnings; a lost connection fails it;
// with conflict_blind_reread=off or an unknown dialect nothing is sent.
func TestInitIsolationFailure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		d       Dialect
		mode    BlindRereadMode
		err     error
		sent    int
		wantErr bool
	}{
		{"server error", DialectMySQL, BlindRereadWarn, &mysql.MySQLError{Number: 1193, Message: "Unknown system variable"}, 1, false},
		{"postgres server error", DialectPostgres, BlindRereadWarn, &pq.Error{Code: "42704", Message: "unrecognized configuration parameter"}, 1, false},
		{"lost", DialectPostgres, BlindRereadWarn, driver.ErrBadConn, 1, true},
		{"off", DialectPostgres, BlindRereadOff, nil, 0, false},
		{"unknown dialect", DialectUnknown, BlindRereadWarn, nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent int
			d := &fakeDriver{errs: func(q string) error {
				if q == sqlIsolationMySQL || q == sqlIsolationPostgres {
					sent++
					return tc.err
				}
				return nil
			}}
			conn, _ := d.Open("")
			ic, logs := unitIC(tc.d, tc.mode, isoUnset)
			err := ic.init(context.Background(), conn)
			if (err != nil) != tc.wantErr {
				t.Fatalf("init: %v, want error %v", err, tc.wantErr)
			}
			if ic.iso.session != isoUnset {
				t.Errorf("session level %v, want unknown", ic.iso.session)
			}
			if w := logs.warnings(); len(w) > 1 || len(w) == 1 && !strings.Contains(w[0].msg, "cannot read the session isolation level") {
				t.Errorf("warnings %+v, want at most the one about the query", w)
			}
			if sent != tc.sent {
				t.Errorf("session-default query sent %d times, want %d", sent, tc.sent)
			}
		})
	}
}

// --- Integration: the race, on real servers ---

// openLogged opens the wrapped driver with a capturing logger.
func (s server) openLogged(t testing.TB, params ...string) (*sql.DB, *logCapture) {
	t.Helper()
	raw, err := sql.Open(s.Raw, s.DSN)
	if err != nil {
		t.Fatal(err)
	}
	base := raw.Driver()
	raw.Close()
	logs := &logCapture{}
	opts := DefaultOptions()
	opts.Dialect = DialectMySQL
	if s.PG() {
		opts.Dialect = DialectPostgres
	}
	opts.Logger = slog.New(logs)
	c, err := Wrap(base, opts).OpenConnector(s.DSNWith(params...))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("%s: ping: %v", s.Name, err)
	}
	return db, logs
}

// isoHow is a way of setting the transaction's isolation level.
type isoHow string

const (
	howDSN       isoHow = "dsn"         // a session variable in the DSN
	howSession   isoHow = "set-session" // SET SESSION TRANSACTION / SESSION CHARACTERISTICS
	howVariable  isoHow = "set-var"     // SET [SESSION] tx_isolation / default_transaction_isolation
	howNext      isoHow = "set-tx"      // SET TRANSACTION (MySQL: before BEGIN; PostgreSQL: after)
	howTxOptions isoHow = "txoptions"   // sql.TxOptions.Isolation
)

var isoHows = []isoHow{howDSN, howSession, howVariable, howNext, howTxOptions}

// sqlWords returns the level as SET TRANSACTION spells it, as MySQL's
// variables spell it, and as database/sql names it.
func (l isoLevel) sqlWords() (string, string, sql.IsolationLevel) {
	switch l {
	case isoReadCommitted:
		return "READ COMMITTED", "READ-COMMITTED", sql.LevelReadCommitted
	case isoRepeatableRead:
		return "REPEATABLE READ", "REPEATABLE-READ", sql.LevelRepeatableRead
	case isoSerializable:
		return "SERIALIZABLE", "SERIALIZABLE", sql.LevelSerializable
	}
	panic("level")
}

// mysqlIsoVar returns the server's name for the isolation variable:
// transaction_isolation (MySQL 8, MariaDB >= 11.1) or tx_isolation.
func mysqlIsoVar(t *testing.T, db *sql.DB) string {
	t.Helper()
	var name, v string
	err := db.QueryRow("SHOW VARIABLES LIKE 'transaction_isolation'").Scan(&name, &v)
	if err == sql.ErrNoRows {
		return "tx_isolation"
	}
	if err != nil {
		t.Fatal(err)
	}
	return "transaction_isolation"
}

// isoParams returns the DSN parameters that set the session's level.
func isoParams(t *testing.T, s server, raw *sql.DB, l isoLevel) []string {
	words, dashed, _ := l.sqlWords()
	if s.PG() {
		return []string{"default_transaction_isolation=" + url.PathEscape(strings.ToLower(words))}
	}
	return []string{mysqlIsoVar(t, raw) + "=" + url.PathEscape("'"+dashed+"'")}
}

// beginIso begins a transaction on conn at level l, set the way how says.
func beginIso(ctx context.Context, t *testing.T, s server, conn *sql.Conn, varName string, l isoLevel, how isoHow) *sql.Tx {
	t.Helper()
	words, dashed, level := l.sqlWords()
	exec := func(q string) {
		t.Helper()
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var opts *sql.TxOptions
	switch how {
	case howSession:
		if s.PG() {
			exec("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL " + words)
		} else {
			exec("SET SESSION TRANSACTION ISOLATION LEVEL " + words)
		}
	case howVariable:
		if s.PG() {
			exec("SET default_transaction_isolation TO '" + strings.ToLower(words) + "'")
		} else {
			exec("SET SESSION " + varName + " = '" + dashed + "'")
		}
	case howNext:
		if !s.PG() {
			exec("SET TRANSACTION ISOLATION LEVEL " + words)
		}
	case howTxOptions:
		opts = &sql.TxOptions{Isolation: level}
	}
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if how == howNext && s.PG() {
		if _, err := tx.ExecContext(ctx, "SET TRANSACTION ISOLATION LEVEL "+words); err != nil {
			t.Fatal(err)
		}
	}
	return tx
}

// raceResult is what the application saw in one get-or-create race.
type raceResult struct {
	winnerErr, insertErr, rereadErr error
	warnings                        []capturedLog
}

// getOrCreateRace runs get-or-create written the obvious way in tx, while
// winner inserts the same key between the read and the insert:
//
//	app: SELECT (no row) | winner: INSERT, commit | app: INSERT (duplicate) | app: SELECT
//
// The application's transaction is rolled back at the end.
func getOrCreateRace(ctx context.Context, t *testing.T, s server, tx *sql.Tx, winner *sql.Conn, logs *logCapture, tbl, key, reread string) raceResult {
	t.Helper()
	var r raceResult
	sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")
	ins := s.q("INSERT INTO " + tbl + " (id, k) VALUES ($1, $2)")
	var id int
	if err := tx.QueryRowContext(ctx, sel, key).Scan(&id); err != sql.ErrNoRows {
		t.Fatalf("first read: %v, want sql.ErrNoRows", err)
	}
	_, r.winnerErr = winner.ExecContext(ctx, ins, nextID(), key)
	_, r.insertErr = tx.ExecContext(ctx, ins, nextID(), key)
	if reread == "" {
		reread = sel
	}
	r.rereadErr = tx.QueryRowContext(ctx, s.q(reread), key).Scan(&id)
	if err := tx.Rollback(); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	r.warnings = logs.warnings()
	return r
}

var idSeq struct {
	sync.Mutex
	n int
}

func nextID() int {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return idSeq.n
}

// winnerConn returns a raw connection that gives up on locks at once (MySQL
// SERIALIZABLE makes the application's read lock the key's gap).
func winnerConn(ctx context.Context, t *testing.T, s server, raw *sql.DB) *sql.Conn {
	t.Helper()
	c, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	q := "SET SESSION innodb_lock_wait_timeout = 0" // MySQL 8 rounds it up to 1
	if s.PG() {
		q = "SET lock_timeout = '200ms'"
	}
	if _, err := c.ExecContext(ctx, q); err != nil {
		t.Fatal(err)
	}
	return c
}

// uniqueName is the name the servers give the UNIQUE constraint on k.
func (s server) uniqueName(tbl string) string {
	if s.PG() {
		return tbl + "_k_key"
	}
	return "k"
}

// TestIntegrationIsolationRace reproduces the get-or-create race for each
// isolation level and each way of setting it, and asserts exactly which
// warnings appear:
//
//   - READ COMMITTED: none; the re-read finds the row.
//   - REPEATABLE READ, and PostgreSQL SERIALIZABLE: the conflict warning;
//     then, if the re-read runs (MySQL, or PostgreSQL with savepoints), no
//     row and the blind re-read warning.
//   - MySQL SERIALIZABLE: the read locks the gap, so the winner times out,
//     the application's INSERT succeeds, and nothing is logged.
//
// PostgreSQL runs with and without conflict_savepoints=writes: without, the
// unique violation aborts the transaction and the re-read fails with
// ErrTxAborted, after the first warning only.
func TestIntegrationIsolationRace(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		varName := ""
		if !s.PG() {
			varName = mysqlIsoVar(t, raw)
		}
		winner := winnerConn(ctx, t, s, raw)
		savepoints := []string{"off", "writes"}
		for _, sp := range savepoints {
			for _, l := range []isoLevel{isoReadCommitted, isoRepeatableRead, isoSerializable} {
				for _, how := range isoHows {
					name := fmt.Sprintf("savepoints=%s/%s/%s", sp, strings.ReplaceAll(l.String(), " ", "_"), how)
					t.Run(name, func(t *testing.T) {
						params := []string{"conflict_savepoints=" + sp}
						if how == howDSN {
							params = append(params, isoParams(t, s, raw, l)...)
						}
						db, logs := s.openLogged(t, params...)
						conn, err := db.Conn(ctx)
						if err != nil {
							t.Fatal(err)
						}
						defer conn.Close()
						tx := beginIso(ctx, t, s, conn, varName, l, how)
						r := getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "k-"+name, "")
						checkRace(t, s, r, tbl, l, sp == "writes", BlindRereadWarn)
					})
				}
			}
		}
	})
}

// checkRace asserts the outcome of getOrCreateRace.
func checkRace(t *testing.T, s server, r raceResult, tbl string, l isoLevel, savepoints bool, mode BlindRereadMode) {
	t.Helper()
	d := DialectMySQL
	if s.PG() {
		d = DialectPostgres
	}
	if !s.PG() && l == isoSerializable {
		if Classify(r.winnerErr).Kind != KindLockTimeout || r.insertErr != nil || r.rereadErr != nil || len(r.warnings) != 0 {
			t.Fatalf("MySQL SERIALIZABLE: winner %v, insert %v, re-read %v, %d warnings; want lock timeout, nil, nil, 0",
				r.winnerErr, r.insertErr, r.rereadErr, len(r.warnings))
		}
		return
	}
	if r.winnerErr != nil {
		t.Fatalf("winner: %v", r.winnerErr)
	}
	if !IsUniqueViolation(r.insertErr) {
		t.Fatalf("insert: %v, want a unique violation", r.insertErr)
	}
	blind := l == isoRepeatableRead || s.PG() && l == isoSerializable
	aborted := s.PG() && !savepoints // the re-read does not run
	var want []string
	switch {
	case !blind || mode == BlindRereadOff:
	case aborted || mode == BlindRereadError:
		want = []string{msgConflictPrefix}
	default:
		want = []string{msgConflictPrefix, msgBlindPrefix}
	}
	if len(r.warnings) != len(want) {
		t.Fatalf("%d warnings, want %d (%v): %+v", len(r.warnings), len(want), want, r.warnings)
	}
	for i, p := range want {
		checkIsoWarning(t, r.warnings[i], p, s.uniqueName(tbl), l, d)
	}
	switch {
	case aborted:
		if !errors.Is(r.rereadErr, ErrTxAborted) {
			t.Errorf("re-read: %v, want ErrTxAborted", r.rereadErr)
		}
	case !blind:
		if r.rereadErr != nil {
			t.Errorf("re-read: %v, want the winner's row", r.rereadErr)
		}
	case mode == BlindRereadError:
		if !errors.Is(r.rereadErr, ErrBlindReread) {
			t.Errorf("re-read: %v, want ErrBlindReread", r.rereadErr)
		}
	default:
		if r.rereadErr != sql.ErrNoRows {
			t.Errorf("re-read: %v, want sql.ErrNoRows (blind)", r.rereadErr)
		}
	}
}

// TestIntegrationBlindRereadModes: conflict_blind_reread=error makes the
// blind re-read fail with ErrBlindReread; off logs nothing; the server's
// default level (REPEATABLE READ on MariaDB/MySQL, READ COMMITTED on
// PostgreSQL) is what applies without any setting.
func TestIntegrationBlindRereadModes(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		winner := winnerConn(ctx, t, s, raw)
		for _, mode := range []BlindRereadMode{BlindRereadWarn, BlindRereadError, BlindRereadOff} {
			for _, sp := range []string{"off", "writes"} {
				name := fmt.Sprintf("%s/savepoints=%s", mode, sp)
				t.Run(name, func(t *testing.T) {
					db, logs := s.openLogged(t, "conflict_blind_reread="+mode.String(), "conflict_savepoints="+sp)
					conn, err := db.Conn(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					tx := beginIso(ctx, t, s, conn, "", isoRepeatableRead, howTxOptions)
					r := getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "m-"+name, "")
					checkRace(t, s, r, tbl, isoRepeatableRead, sp == "writes", mode)
				})
			}
		}
		t.Run("server default", func(t *testing.T) {
			db, logs := s.openLogged(t, "conflict_savepoints=writes")
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			r := getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "default", "")
			l := isoRepeatableRead
			if s.PG() {
				l = isoReadCommitted
			}
			checkRace(t, s, r, tbl, l, true, BlindRereadWarn)
		})
	})
}

// TestIntegrationBlindRereadRemedies: the fixes the warning names work, and
// silence it. A locking re-read sees the row on MySQL (no second warning)
// but not on PostgreSQL (second warning); RunTx with RetryUniqueViolation
// finds the row on the next attempt everywhere.
func TestIntegrationBlindRereadRemedies(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		winner := winnerConn(ctx, t, s, raw)

		t.Run("locking re-read", func(t *testing.T) {
			db, logs := s.openLogged(t, "conflict_savepoints=writes")
			tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
			if err != nil {
				t.Fatal(err)
			}
			lock := " LOCK IN SHARE MODE"
			if s.PG() {
				lock = " FOR SHARE"
			}
			r := getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "lock", "SELECT id FROM "+tbl+" WHERE k = $1"+lock)
			if !IsUniqueViolation(r.insertErr) {
				t.Fatalf("insert: %v", r.insertErr)
			}
			wantErr, want := error(nil), 1
			if s.PG() {
				wantErr, want = sql.ErrNoRows, 2 // still the transaction's snapshot (seen)
			}
			if r.rereadErr != wantErr || len(r.warnings) != want {
				t.Fatalf("re-read %v with %d warnings, want %v and %d: %+v", r.rereadErr, len(r.warnings), wantErr, want, r.warnings)
			}
		})

		t.Run("RunTx", func(t *testing.T) {
			db, logs := s.openLogged(t)
			sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")
			ins := s.q("INSERT INTO " + tbl + " (id, k) VALUES ($1, $2)")
			attempts, winnerID := 0, nextID()
			var got int
			err := TxRunner{RetryUniqueViolation: true, Backoff: time.Millisecond}.Run(ctx, db,
				&sql.TxOptions{Isolation: sql.LevelRepeatableRead}, func(ctx context.Context, tx *sql.Tx) error {
					attempts++
					err := tx.QueryRowContext(ctx, sel, "runtx").Scan(&got)
					if err != sql.ErrNoRows {
						return err
					}
					if attempts == 1 {
						if _, err := winner.ExecContext(ctx, ins, winnerID, "runtx"); err != nil {
							t.Fatal(err)
						}
					}
					got = nextID()
					_, err = tx.ExecContext(ctx, ins, got, "runtx")
					return err
				})
			if err != nil || attempts != 2 || got != winnerID {
				t.Fatalf("RunTx: %v after %d attempts, id %d; want nil, 2, %d", err, attempts, got, winnerID)
			}
			// The rerun with a fresh snapshot is the remedy: no warning.
			if w := logs.warnings(); len(w) != 0 {
				t.Errorf("warnings %+v, want none inside RunTx with RetryUniqueViolation", w)
			}
		})
	})
}

// TestIntegrationBlindRereadInsertFirst: no read before the INSERT. On MySQL
// the re-read takes the transaction's first read view and sees the row: no
// warning. On PostgreSQL the INSERT took the snapshot while it waited for
// the winner to commit: no conflict warning (the snapshot was not held
// before), but the re-read is blind and says so.
func TestIntegrationBlindRereadInsertFirst(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		db, logs := s.openLogged(t, "conflict_savepoints=writes")
		ins := s.q("INSERT INTO " + tbl + " (id, k) VALUES ($1, $2)")
		sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")

		// The winner's row is uncommitted when the application inserts.
		wtx, err := raw.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer wtx.Rollback()
		if _, err := wtx.ExecContext(ctx, ins, nextID(), "first"); err != nil {
			t.Fatal(err)
		}
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		done := make(chan error, 1)
		go func() {
			_, err := tx.ExecContext(ctx, ins, nextID(), "first")
			done <- err
		}()
		time.Sleep(200 * time.Millisecond) // let the INSERT wait for the winner's lock
		if err := wtx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !IsUniqueViolation(err) {
			t.Fatalf("insert: %v, want a unique violation", err)
		}
		if w := logs.warnings(); len(w) != 0 {
			t.Fatalf("warnings after the INSERT: %+v, want none", w)
		}
		var id int
		err = tx.QueryRowContext(ctx, sel, "first").Scan(&id)
		w := logs.warnings()
		if s.PG() {
			if err != sql.ErrNoRows || len(w) != 1 {
				t.Fatalf("re-read %v with warnings %+v, want sql.ErrNoRows and the blind re-read warning", err, w)
			}
			checkIsoWarning(t, w[0], msgBlindPrefix, s.uniqueName(tbl), isoRepeatableRead, DialectPostgres)
		} else if err != nil || len(w) != 0 {
			t.Fatalf("re-read %v with warnings %+v, want the row and none", err, w)
		}
	})
}

// TestIntegrationPostgresSerializableConflict: when both sides run
// SERIALIZABLE, PostgreSQL reports the race as a serialization failure
// (40001), which RunTx retries, and no warning is logged.
func TestIntegrationPostgresSerializableConflict(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		if !s.PG() {
			t.Skip("PostgreSQL only")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		db, logs := s.openLogged(t, "conflict_savepoints=writes")
		sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")
		ins := s.q("INSERT INTO " + tbl + " (id, k) VALUES ($1, $2)")
		ser := &sql.TxOptions{Isolation: sql.LevelSerializable}
		tx, err := db.BeginTx(ctx, ser)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		var id int
		if err := tx.QueryRowContext(ctx, sel, "ser").Scan(&id); err != sql.ErrNoRows {
			t.Fatal(err)
		}
		wtx, err := raw.BeginTx(ctx, ser)
		if err != nil {
			t.Fatal(err)
		}
		if err := wtx.QueryRowContext(ctx, sel, "ser").Scan(&id); err != sql.ErrNoRows {
			t.Fatal(err)
		}
		if _, err := wtx.ExecContext(ctx, ins, nextID(), "ser"); err != nil {
			t.Fatal(err)
		}
		if err := wtx.Commit(); err != nil {
			t.Fatal(err)
		}
		_, err = tx.ExecContext(ctx, ins, nextID(), "ser")
		if Classify(err).Kind != KindSerializationFailure {
			t.Fatalf("insert: %v, want a serialization failure", err)
		}
		if w := logs.warnings(); len(w) != 0 {
			t.Fatalf("warnings %+v, want none", w)
		}
	})
}

// TestIntegrationIsolationNoWarning: no warning in autocommit, and a
// MySQL SET TRANSACTION applies to the next transaction only.
func TestIntegrationIsolationNoWarning(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		winner := winnerConn(ctx, t, s, raw)
		t.Run("autocommit", func(t *testing.T) {
			db, logs := s.openLogged(t, isoParams(t, s, raw, isoRepeatableRead)...)
			ins := s.q("INSERT INTO " + tbl + " (id, k) VALUES ($1, $2)")
			mustExec(t, db, ins, nextID(), "auto")
			if _, err := db.ExecContext(ctx, ins, nextID(), "auto"); !IsUniqueViolation(err) {
				t.Fatalf("insert: %v", err)
			}
			if w := logs.warnings(); len(w) != 0 {
				t.Fatalf("warnings %+v, want none", w)
			}
		})
		if s.PG() {
			return
		}
		t.Run("set transaction is next only", func(t *testing.T) {
			db, logs := s.openLogged(t)
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tx := beginIso(ctx, t, s, conn, "", isoReadCommitted, howNext)
			r := getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "next-1", "")
			checkRace(t, s, r, tbl, isoReadCommitted, false, BlindRereadWarn)
			tx, err = conn.BeginTx(ctx, nil) // back to the session's REPEATABLE READ
			if err != nil {
				t.Fatal(err)
			}
			r = getOrCreateRace(ctx, t, s, tx, winner, logs, tbl, "next-2", "")
			checkRace(t, s, r, tbl, isoRepeatableRead, false, BlindRereadWarn)
		})
	})
}
