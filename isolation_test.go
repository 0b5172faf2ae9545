package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
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

const msgBlindPrefix = "sqlconflict: blind re-read:"

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

func TestParseIsoValue(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want isoLevel
	}{
		{"read committed", isoReadCommitted},
		{"repeatable read", isoRepeatableRead},
		{"'serializable'", isoSerializable},
		{"read uncommitted", isoReadUncommitted},
		{"REPEATABLE-READ", isoRepeatableRead},
		{"REPEATABLE READ", isoRepeatableRead}, // information_schema.innodb_trx
		{"'READ-COMMITTED'", isoReadCommitted},
		{`"SERIALIZABLE"`, isoSerializable},
		{"", isoOther},
		{"repeatable", isoOther},
		{"repeatable reads", isoOther},
		{"SNAPSHOT", isoOther},
	} {
		if got := parseIsoValue(tc.v); got != tc.want {
			t.Errorf("parseIsoValue(%q) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

func TestBeginIsolation(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want txIso
	}{
		{"BEGIN", txIso{}},
		{"BEGIN ISOLATION LEVEL REPEATABLE READ", txIso{level: isoRepeatableRead}},
		{"begin transaction isolation level serializable, read only", txIso{level: isoSerializable}},
		{"START TRANSACTION ISOLATION LEVEL READ COMMITTED", txIso{level: isoReadCommitted}},
		{"START TRANSACTION ISOLATION LEVEL SNAPSHOT", txIso{level: isoOther}},
		{"START TRANSACTION WITH CONSISTENT SNAPSHOT", txIso{read: true}},
		{"START TRANSACTION READ WRITE", txIso{}},
	} {
		if got := beginIsolation(tc.q); got != tc.want {
			t.Errorf("beginIsolation(%q) = %+v, want %+v", tc.q, got, tc.want)
		}
	}
	for l, want := range map[sql.IsolationLevel]isoLevel{
		sql.LevelDefault: isoUnset, sql.LevelReadUncommitted: isoReadUncommitted, sql.LevelReadCommitted: isoReadCommitted,
		sql.LevelRepeatableRead: isoRepeatableRead, sql.LevelSerializable: isoSerializable, sql.LevelSnapshot: isoOther,
	} {
		if got := txIsolation(driver.TxOptions{Isolation: driver.IsolationLevel(l)}); got.level != want {
			t.Errorf("txIsolation(%v) = %v, want %v", l, got.level, want)
		}
	}
}

// isoMock returns the rows a server answers to the isolation queries.
func isoMock(cols []string, vals ...string) *sqlmock.Rows {
	rows := sqlmock.NewRows(cols)
	for i := 0; i < len(vals); i += len(cols) {
		r := make([]driver.Value, len(cols))
		for j := range cols {
			r[j] = []byte(vals[i+j])
		}
		rows.AddRow(r...)
	}
	return rows
}

// TestBlindRereadMockFlow: get-or-create in a MySQL transaction whose level
// nobody said, through database/sql and sqlmock with exact statements: the
// wrapper asks the server for the level only once the re-read found
// nothing, and then warns, fails the read, or re-reads with a lock, per
// conflict_blind_reread. Under READ COMMITTED it does nothing more.
func TestBlindRereadMockFlow(t *testing.T) {
	sel := "SELECT id FROM t WHERE k = 'a'"
	ins := "INSERT INTO t (k) VALUES ('a')"
	for _, tc := range []struct {
		mode  BlindRereadMode
		level string // what innodb_trx answers; "" for no row
	}{
		{BlindRereadWarn, "REPEATABLE READ"},
		{BlindRereadError, "REPEATABLE READ"},
		{BlindRereadFix, "REPEATABLE READ"},
		{BlindRereadFix, "READ COMMITTED"},
		{BlindRereadFix, ""},
		{BlindRereadOff, "REPEATABLE READ"},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.mode, tc.level), func(t *testing.T) {
			logs := &logCapture{}
			opts := fastOptions(DialectMySQL)
			opts.Savepoints = SavepointsOff
			opts.BlindReread, opts.Logger = tc.mode, slog.New(logs)
			db, mock := mockDB(t, opts)
			mock.ExpectBegin()
			mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
			mock.ExpectExec(ins).WillReturnError(errMyUnique)
			mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
			blind := tc.mode != BlindRereadOff
			if blind {
				trx := sqlmock.NewRows([]string{"trx_isolation_level"})
				if tc.level != "" {
					trx.AddRow([]byte(tc.level))
				}
				mock.ExpectQuery(sqlIsolationMySQLTx).WillReturnRows(trx)
				if tc.level == "" {
					mock.ExpectQuery(sqlIsolationMySQL).WillReturnRows(isoMock([]string{"Variable_name", "Value"}, "tx_isolation", "REPEATABLE-READ"))
				}
			}
			fixed := tc.mode == BlindRereadFix && tc.level != "READ COMMITTED"
			if fixed {
				expectSchema(mock, DialectMySQL)
				mock.ExpectQuery(sel + " LOCK IN SHARE MODE").WillReturnRows(sqlmock.NewRows([]string{"id"}).AddRow(42))
			}
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
			switch {
			case fixed:
				if err != nil || id != 42 || len(w) != 0 {
					t.Fatalf("re-read: id %d, %v with %d warnings; want the locking read's row 42 and none", id, err, len(w))
				}
			case tc.mode == BlindRereadError:
				if !errors.Is(err, ErrBlindReread) || !IsRetryable(err) || len(w) != 0 {
					t.Fatalf("re-read: %v with %d warnings, want a retryable ErrBlindReread and none", err, len(w))
				}
			case tc.mode == BlindRereadWarn:
				if err != sql.ErrNoRows || len(w) != 1 {
					t.Fatalf("re-read: %v with %d warnings, want sql.ErrNoRows and 1", err, len(w))
				}
				checkIsoWarning(t, w[0], msgBlindPrefix, "PRIMARY", isoRepeatableRead, DialectMySQL)
			default:
				if err != sql.ErrNoRows || len(w) != 0 {
					t.Fatalf("re-read: %v with %d warnings, want sql.ErrNoRows and none", err, len(w))
				}
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBlindRereadNotArmed: no read before the INSERT (MySQL's re-read takes
// a fresh view), a locking re-read, autocommit: nothing is asked, nothing
// logged.
func TestBlindRereadNotArmed(t *testing.T) {
	sel := "SELECT id FROM t WHERE k = 'a'"
	ins := "INSERT INTO t (k) VALUES ('a')"
	logs := &logCapture{}
	opts := fastOptions(DialectMySQL)
	opts.Savepoints, opts.Logger = SavepointsOff, slog.New(logs)
	db, mock := mockDB(t, opts)
	// Insert first, then re-read.
	mock.ExpectBegin()
	mock.ExpectExec(ins).WillReturnError(errMyUnique)
	mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
	mock.ExpectRollback()
	// A locking re-read.
	mock.ExpectBegin()
	mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
	mock.ExpectExec(ins).WillReturnError(errMyUnique)
	mock.ExpectQuery(sel + " FOR UPDATE").WillReturnRows(sqlmock.NewRows([]string{"id"}))
	mock.ExpectRollback()
	// Autocommit.
	mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))
	mock.ExpectExec(ins).WillReturnError(errMyUnique)
	mock.ExpectQuery(sel).WillReturnRows(sqlmock.NewRows([]string{"id"}))

	var id int
	tx, _ := db.Begin()
	tx.Exec(ins)
	if err := tx.QueryRow(sel).Scan(&id); err != sql.ErrNoRows {
		t.Fatal(err)
	}
	tx.Rollback()
	tx, _ = db.Begin()
	tx.QueryRow(sel).Scan(&id)
	tx.Exec(ins)
	if err := tx.QueryRow(sel + " FOR UPDATE").Scan(&id); err != sql.ErrNoRows {
		t.Fatal(err)
	}
	tx.Rollback()
	db.QueryRow(sel).Scan(&id)
	db.Exec(ins)
	if err := db.QueryRow(sel).Scan(&id); err != sql.ErrNoRows {
		t.Fatal(err)
	}
	if w := logs.warnings(); len(w) != 0 {
		t.Fatalf("warnings %+v, want none", w)
	}
}

// TestIsolationHooksNoAlloc: the bookkeeping on the statement path
// allocates nothing when no conflict happened.
func TestIsolationHooksNoAlloc(t *testing.T) {
	for _, d := range []Dialect{DialectMySQL, DialectPostgres} {
		o := DefaultOptions()
		o.Dialect = d
		ic := &interceptor{cfg: &config{Options: o}}
		for _, q := range []string{
			"SET NAMES utf8mb4",
			"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
			"SET @@SESSION.tx_isolation = 'READ-COMMITTED', autocommit = 0",
			"SET autocommit = 1",
			"BEGIN ISOLATION LEVEL SERIALIZABLE",
			"START TRANSACTION WITH CONSISTENT SNAPSHOT",
			"SELECT * FROM t WHERE id = 1",
			"INSERT INTO t VALUES (1)",
			"WITH x AS (SELECT 1) SELECT * FROM x",
			"COMMIT AND CHAIN",
			"COMMIT",
		} {
			k := parseStmt(q)
			c := call{query: q, kind: k}
			if n := testing.AllocsPerRun(100, func() {
				c.several = 0
				ic.afterStmt(&c)
				ic.rereadCheck(&c)
			}); n != 0 {
				t.Errorf("%v: %q: %v allocations, want 0", d, q, n)
			}
		}
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
	howFunction  isoHow = "function"    // PostgreSQL: SELECT set_config(...), which no SQL parser sees
)

var isoHows = []isoHow{howDSN, howSession, howVariable, howNext, howTxOptions, howFunction}

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
	case howFunction:
		if s.PG() {
			if _, err := conn.ExecContext(ctx, "SELECT set_config('default_transaction_isolation', $1, false)", strings.ToLower(words)); err != nil {
				t.Fatal(err)
			}
		} else {
			exec("SET @@SESSION." + varName + " = '" + dashed + "'")
		}
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
	winnerID, rereadID              int
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
	r.winnerID = nextID()
	_, r.winnerErr = winner.ExecContext(ctx, ins, r.winnerID, key)
	_, r.insertErr = tx.ExecContext(ctx, ins, nextID(), key)
	if reread == "" {
		reread = sel
	}
	r.rereadErr = tx.QueryRowContext(ctx, s.q(reread), key).Scan(&r.rereadID)
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
// isolation level and each way of setting it (none of which but TxOptions
// the wrapper reads: it asks the server when it matters), and asserts
// exactly which warnings appear:
//
//   - READ COMMITTED: none; the re-read finds the row.
//   - REPEATABLE READ, and PostgreSQL SERIALIZABLE: if the re-read runs
//     (MySQL, or PostgreSQL with savepoints), no row and the blind re-read
//     warning.
//   - MySQL SERIALIZABLE: the read locks the gap, so the winner times out,
//     the application's INSERT succeeds, and nothing is logged.
//
// PostgreSQL runs with and without conflict_savepoints=writes: without, the
// unique violation aborts the transaction and the re-read fails with the
// server's 25P02, without a warning.
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
		for _, sp := range []string{"off", "writes"} {
			for _, l := range []isoLevel{isoReadCommitted, isoRepeatableRead, isoSerializable} {
				for _, how := range isoHows {
					name := fmt.Sprintf("savepoints=%s/%s/%s", sp, strings.ReplaceAll(l.String(), " ", "_"), how)
					t.Run(name, func(t *testing.T) {
						params := []string{"conflict_savepoints=" + sp, "conflict_blind_reread=warn"}
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
	wantWarning := blind && !aborted && mode == BlindRereadWarn
	if len(r.warnings) != map[bool]int{true: 1}[wantWarning] {
		t.Fatalf("%d warnings, want %v: %+v", len(r.warnings), wantWarning, r.warnings)
	}
	if wantWarning {
		checkIsoWarning(t, r.warnings[0], msgBlindPrefix, s.uniqueName(tbl), l, d)
	}
	switch {
	case aborted:
		if Classify(r.rereadErr).Code != "25P02" {
			t.Errorf("re-read: %v, want the server's 25P02", r.rereadErr)
		}
	case !blind || mode == BlindRereadFix && !s.PG():
		if r.rereadErr != nil || r.rereadID != r.winnerID {
			t.Errorf("re-read: id %d, %v; want the winner's row %d", r.rereadID, r.rereadErr, r.winnerID)
		}
	case mode == BlindRereadError || mode == BlindRereadFix:
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
// blind re-read fail with ErrBlindReread; fix hands the winner's row to the
// re-read on MySQL and fails it with ErrBlindReread on PostgreSQL; off logs
// nothing. The server's default level (REPEATABLE READ on MariaDB/MySQL,
// READ COMMITTED on PostgreSQL) is what applies without any setting.
func TestIntegrationBlindRereadModes(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		winner := winnerConn(ctx, t, s, raw)
		for _, mode := range []BlindRereadMode{BlindRereadWarn, BlindRereadError, BlindRereadFix, BlindRereadOff} {
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
			checkRace(t, s, r, tbl, l, true, DefaultOptions().BlindReread)
		})
	})
}

// TestIntegrationBlindRereadRemedies: the fixes the warning names work, and
// silence it. A locking re-read sees the row on MySQL (no warning) but not
// on PostgreSQL (the warning); RunTx with RetryUniqueViolation finds the
// row on the next attempt everywhere, without a warning.
func TestIntegrationBlindRereadRemedies(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		winner := winnerConn(ctx, t, s, raw)

		t.Run("locking re-read", func(t *testing.T) {
			db, logs := s.openLogged(t, "conflict_savepoints=writes", "conflict_blind_reread=warn")
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
			wantErr, want := error(nil), 0
			if s.PG() {
				wantErr, want = sql.ErrNoRows, 1 // still the transaction's snapshot (seen)
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
			// The rerun with a fresh snapshot is the remedy: no re-read was
			// blind, so no warning.
			if w := logs.warnings(); len(w) != 0 {
				t.Errorf("warnings %+v, want none", w)
			}
		})
	})
}

// TestIntegrationBlindRereadInsertFirst: no read before the INSERT. On MySQL
// the re-read takes the transaction's first read view and sees the row: no
// warning. On PostgreSQL the INSERT took the snapshot while it waited for
// the winner to commit: the re-read is blind and says so.
func TestIntegrationBlindRereadInsertFirst(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := s.openRaw(t)
		tbl := s.table(t, raw, "", "id INT PRIMARY KEY, k VARCHAR(100) UNIQUE")
		db, logs := s.openLogged(t, "conflict_savepoints=writes", "conflict_blind_reread=warn")
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
	s, ok := pgServer(t)
	if !ok {
		return
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
}

// TestIntegrationIsolationNoWarning: no warning in autocommit, and a
// MySQL SET TRANSACTION applies to the next transaction only, as the
// server says when asked.
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
			sel := s.q("SELECT id FROM " + tbl + " WHERE k = $1")
			mustExec(t, db, ins, nextID(), "auto")
			if _, err := db.ExecContext(ctx, ins, nextID(), "auto"); !IsUniqueViolation(err) {
				t.Fatalf("insert: %v", err)
			}
			var id int
			if err := db.QueryRowContext(ctx, sel, "auto").Scan(&id); err != nil {
				t.Fatal(err)
			}
			if w := logs.warnings(); len(w) != 0 {
				t.Fatalf("warnings %+v, want none", w)
			}
		})
		if s.PG() {
			return
		}
		t.Run("set transaction is next only", func(t *testing.T) {
			db, logs := s.openLogged(t, "conflict_blind_reread=warn")
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
