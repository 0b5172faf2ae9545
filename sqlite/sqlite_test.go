package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictsqlite "github.com/sqlconflict/sqlconflict/sqlite"
	msqlite "modernc.org/sqlite"
)

// dsn returns a file: URI for a fresh database in the test's temporary
// directory, with params.
func dsn(t testing.TB, params ...string) string {
	t.Helper()
	d := "file:" + filepath.Join(t.TempDir(), "test.db")
	if len(params) > 0 {
		d += "?" + strings.Join(params, "&")
	}
	return d
}

func open(t testing.TB, driverName, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", driverName, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func openDB(t testing.TB, dsn string, opts sqlconflict.Options) *sql.DB {
	t.Helper()
	db, err := sqlconflictsqlite.OpenDB(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t testing.TB, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func conn(t testing.TB, db *sql.DB) *sql.Conn {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// observer counts the events it is told of.
type observer struct {
	mu  sync.Mutex
	obs []sqlconflict.Observation
}

func (o *observer) observe(_ context.Context, ob sqlconflict.Observation) {
	o.mu.Lock()
	o.obs = append(o.obs, ob)
	o.mu.Unlock()
}

func (o *observer) count(ev sqlconflict.Event) (n int, classes []sqlconflict.Class) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ob := range o.obs {
		if ob.Event == ev {
			n++
			classes = append(classes, ob.Class)
		}
	}
	return n, classes
}

// fastOptions retries often and quickly, reporting to o.
func fastOptions(o *observer) sqlconflict.Options {
	opts := sqlconflict.DefaultOptions()
	opts.Retries, opts.Backoff, opts.MaxBackoff = 200, time.Millisecond, 5*time.Millisecond
	opts.Observer = o.observe
	return opts
}

// TestClassifyRealErrors provokes each SQLite error sqlconflict classifies
// and checks the classification of modernc.org/sqlite's own error, reached
// through the raw driver and unchanged through the wrapped one.
func TestClassifyRealErrors(t *testing.T) {
	ctx := context.Background()
	d := dsn(t, "_pragma=foreign_keys(1)", "_pragma=busy_timeout(0)", "_pragma=journal_mode(WAL)")
	raw := open(t, "sqlite", d)
	wrapped := open(t, sqlconflictsqlite.DriverName, d+"&conflict_retries=0")
	mustExec(t, raw, "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT UNIQUE, code TEXT, n INTEGER NOT NULL DEFAULT 0,"+
		" CONSTRAINT chk_pos CHECK (n >= 0), UNIQUE (code, n))")
	mustExec(t, raw, "CREATE TABLE c (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p (id))")
	mustExec(t, raw, "CREATE TABLE s (k TEXT PRIMARY KEY) WITHOUT ROWID")
	mustExec(t, raw, "CREATE TABLE st (k INTEGER) STRICT")
	mustExec(t, raw, "INSERT INTO p (id, name, code) VALUES (1, 'a', 'x')")
	mustExec(t, raw, "INSERT INTO s VALUES ('a')")

	type want struct {
		code                      int
		kind                      sqlconflict.Kind
		scope                     sqlconflict.Scope
		retry                     bool
		constraint, table, column string
	}
	check := func(t *testing.T, err error, w want) {
		t.Helper()
		var se *msqlite.Error
		if !errors.As(err, &se) {
			t.Fatalf("err = %T %v, want a *sqlite.Error", err, err)
		}
		if se.Code() != w.code {
			t.Errorf("Code() = %d (%v), want %d", se.Code(), err, w.code)
		}
		got := sqlconflict.Classify(err)
		wantClass := sqlconflict.Class{Kind: w.kind, Scope: w.scope, Retryable: w.retry, Dialect: sqlconflict.DialectSQLite,
			Code: strconv.Itoa(w.code), Constraint: w.constraint, Table: w.table, Column: w.column}
		if got != wantClass {
			t.Errorf("Classify(%v) = %+v, want %+v", err, got, wantClass)
		}
	}
	for _, db := range []struct {
		name string
		db   *sql.DB
	}{{"raw", raw}, {"wrapped", wrapped}} {
		t.Run(db.name, func(t *testing.T) {
			for _, tc := range []struct {
				name, stmt string
				want       want
			}{
				{"unique", "INSERT INTO p (name) VALUES ('a')",
					want{2067, sqlconflict.KindUniqueViolation, sqlconflict.ScopeStatement, false, "", "p", "name"}},
				{"composite unique", "INSERT INTO p (code) VALUES ('x')",
					want{2067, sqlconflict.KindUniqueViolation, sqlconflict.ScopeStatement, false, "", "p", ""}},
				{"integer primary key", "INSERT INTO p (id, name) VALUES (1, 'b')",
					want{1555, sqlconflict.KindUniqueViolation, sqlconflict.ScopeStatement, false, "", "p", "id"}},
				{"text primary key", "INSERT INTO s VALUES ('a')",
					want{1555, sqlconflict.KindUniqueViolation, sqlconflict.ScopeStatement, false, "", "s", "k"}},
				{"foreign key", "INSERT INTO c (pid) VALUES (99)",
					want{787, sqlconflict.KindForeignKeyViolation, sqlconflict.ScopeStatement, false, "", "", ""}},
				{"not null", "INSERT INTO p (name, n) VALUES ('c', NULL)",
					want{1299, sqlconflict.KindNotNullViolation, sqlconflict.ScopeStatement, false, "", "p", "n"}},
				{"check", "INSERT INTO p (name, n) VALUES ('d', -1)",
					want{275, sqlconflict.KindCheckViolation, sqlconflict.ScopeStatement, false, "chk_pos", "", ""}},
				{"datatype", "INSERT INTO st VALUES ('abc')",
					want{3091, sqlconflict.KindIntegrityViolation, sqlconflict.ScopeStatement, false, "", "", ""}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					_, err := db.db.ExecContext(ctx, tc.stmt)
					check(t, err, tc.want)
				})
			}

			t.Run("busy", func(t *testing.T) {
				holder := conn(t, raw)
				mustExec(t, holder, "BEGIN IMMEDIATE")
				defer mustExec(t, holder, "ROLLBACK")
				_, err := db.db.ExecContext(ctx, "INSERT INTO p (name) VALUES ('busy')")
				check(t, err, want{5, sqlconflict.KindLockTimeout, sqlconflict.ScopeStatement, true, "", "", ""})
			})

			t.Run("busy snapshot", func(t *testing.T) {
				reader := conn(t, db.db)
				mustExec(t, reader, "BEGIN")
				var n int
				if err := reader.QueryRowContext(ctx, "SELECT count(*) FROM p").Scan(&n); err != nil {
					t.Fatal(err)
				}
				mustExec(t, raw, "INSERT INTO p (name) VALUES ('snap-"+db.name+"')")
				_, err := reader.ExecContext(ctx, "INSERT INTO p (name) VALUES ('stale-"+db.name+"')")
				check(t, err, want{517, sqlconflict.KindSerializationFailure, sqlconflict.ScopeTransaction, true, "", "", ""})
				mustExec(t, reader, "ROLLBACK")
			})

			t.Run("locked", func(t *testing.T) {
				c := conn(t, db.db)
				mustExec(t, c, "CREATE TABLE IF NOT EXISTS dropme_"+db.name+" (x)")
				rows, err := c.QueryContext(ctx, "SELECT id FROM p")
				if err != nil {
					t.Fatal(err)
				}
				rows.Next()
				_, err = c.ExecContext(ctx, "DROP TABLE dropme_"+db.name)
				rows.Close()
				check(t, err, want{6, sqlconflict.KindLockTimeout, sqlconflict.ScopeStatement, true, "", "", ""})
			})
		})
	}
}

// TestAutocommitBusyRetried: a statement in autocommit that meets
// SQLITE_BUSY is retried until the lock is free, where the raw driver fails.
func TestAutocommitBusyRetried(t *testing.T) {
	ctx := context.Background()
	d := dsn(t, "_pragma=busy_timeout(0)")
	raw := open(t, "sqlite", d)
	mustExec(t, raw, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	var o observer
	db := openDB(t, d, fastOptions(&o))
	mustExec(t, db, "SELECT 1") // open the connection before the lock is taken

	holder := conn(t, raw)
	mustExec(t, holder, "BEGIN IMMEDIATE")
	if _, err := raw.ExecContext(ctx, "INSERT INTO t (v) VALUES ('raw')"); !sqlconflict.IsRetryable(err) {
		t.Fatalf("raw driver under a held lock: err = %v, want SQLITE_BUSY", err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		holder.ExecContext(ctx, "COMMIT")
		close(released)
	}()
	if _, err := db.ExecContext(ctx, "INSERT INTO t (v) VALUES ('wrapped')"); err != nil {
		t.Fatalf("wrapped insert: %v", err)
	}
	<-released
	n, classes := o.count(sqlconflict.EventRetry)
	if n == 0 {
		t.Fatal("no retry observed")
	}
	for _, cl := range classes {
		if cl.Kind != sqlconflict.KindLockTimeout || cl.Dialect != sqlconflict.DialectSQLite || cl.Code != "5" {
			t.Errorf("retry of %+v, want SQLITE_BUSY", cl)
		}
	}
	var rows int
	if err := raw.QueryRow("SELECT count(*) FROM t").Scan(&rows); err != nil || rows != 1 {
		t.Errorf("rows = %d, %v; want 1", rows, err)
	}
}

// TestUniqueViolationNotRetried: a duplicate is classified, not retried, and
// returned as modernc.org/sqlite's error.
func TestUniqueViolationNotRetried(t *testing.T) {
	var o observer
	db := openDB(t, dsn(t), fastOptions(&o))
	mustExec(t, db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
	mustExec(t, db, "INSERT INTO users (email) VALUES ('a@example.com')")
	_, err := db.Exec("INSERT INTO users (email) VALUES ('a@example.com')")
	if !sqlconflict.IsUniqueViolation(err) {
		t.Fatalf("err = %v, want a unique violation", err)
	}
	var se *msqlite.Error
	if !errors.As(err, &se) {
		t.Errorf("err is %T, want *sqlite.Error", err)
	}
	if cl := sqlconflict.Classify(err); cl.Table != "users" || cl.Column != "email" {
		t.Errorf("Classify = %+v, want table users, column email", cl)
	}
	if n, _ := o.count(sqlconflict.EventRetry); n != 0 {
		t.Errorf("%d retries of a unique violation", n)
	}
	// conflict_wrap_errors=true: the sentinel matches, the original is reachable.
	wdb := open(t, sqlconflictsqlite.DriverName, dsn(t, "conflict_wrap_errors=true"))
	mustExec(t, wdb, "CREATE TABLE u (k TEXT PRIMARY KEY)")
	mustExec(t, wdb, "INSERT INTO u VALUES ('x')")
	_, err = wdb.Exec("INSERT INTO u VALUES ('x')")
	if !errors.Is(err, sqlconflict.ErrUniqueViolation) {
		t.Errorf("wrapped: err = %v, want ErrUniqueViolation", err)
	}
	if !errors.As(err, &se) {
		t.Errorf("wrapped: *sqlite.Error not reachable from %T", err)
	}
}

// TestRunTxBusy: RunTx reruns a transaction that met SQLITE_BUSY, and one
// that met SQLITE_BUSY_SNAPSHOT, which the wrapper dooms first.
func TestRunTxBusy(t *testing.T) {
	ctx := context.Background()
	d := dsn(t, "_pragma=busy_timeout(0)", "_pragma=journal_mode(WAL)")
	raw := open(t, "sqlite", d)
	mustExec(t, raw, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	var o observer
	opts := fastOptions(&o)
	opts.Retries = -1 // no statement retries (zero is the default): the transaction is rerun
	db := openDB(t, d, opts)
	runner := sqlconflict.TxRunner{MaxAttempts: 1000, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}

	t.Run("busy", func(t *testing.T) {
		holder := conn(t, raw)
		mustExec(t, holder, "BEGIN IMMEDIATE")
		go func() {
			time.Sleep(100 * time.Millisecond)
			holder.ExecContext(ctx, "COMMIT")
		}()
		attempts := 0
		var firstErr error
		err := runner.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			_, err := tx.ExecContext(ctx, "INSERT INTO t (v) VALUES ('busy')")
			if attempts == 1 {
				firstErr = err
			}
			return err
		})
		if err != nil {
			t.Fatalf("RunTx: %v", err)
		}
		if attempts < 2 || sqlconflict.Classify(firstErr).Code != "5" {
			t.Errorf("attempts = %d, first error %v; want a rerun after SQLITE_BUSY", attempts, firstErr)
		}
	})

	t.Run("busy snapshot", func(t *testing.T) {
		attempts := 0
		var stale, after error
		err := runner.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
				return err
			}
			if attempts == 1 {
				mustExec(t, raw, "INSERT INTO t (v) VALUES ('other')") // commits after our snapshot
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO t (v) VALUES ('mine')")
			if attempts == 1 {
				stale = err
				// The wrapper doomed the transaction: nothing more runs in it.
				_, after = tx.ExecContext(ctx, "INSERT INTO t (v) VALUES ('half')")
			}
			return err
		})
		if err != nil {
			t.Fatalf("RunTx: %v", err)
		}
		if cl := sqlconflict.Classify(stale); cl.Code != "517" || cl.Kind != sqlconflict.KindSerializationFailure {
			t.Errorf("first attempt: %v (%+v), want SQLITE_BUSY_SNAPSHOT", stale, cl)
		}
		if !errors.Is(after, sqlconflict.ErrTxAborted) {
			t.Errorf("statement after SQLITE_BUSY_SNAPSHOT: %v, want ErrTxAborted", after)
		}
		if attempts != 2 {
			t.Errorf("attempts = %d, want 2", attempts)
		}
		if n, _ := o.count(sqlconflict.EventTxDoomed); n == 0 {
			t.Error("no EventTxDoomed observed")
		}
		var half int
		raw.QueryRow("SELECT count(*) FROM t WHERE v = 'half'").Scan(&half)
		if half != 0 {
			t.Error("a statement of the doomed transaction was committed")
		}
	})
}

// TestSavepoints: with conflict_savepoints=writes a failed write in a
// transaction is rolled back alone and the transaction goes on.
func TestSavepoints(t *testing.T) {
	ctx := context.Background()
	var o observer
	opts := fastOptions(&o)
	opts.Savepoints = sqlconflict.SavepointsWrites
	db := openDB(t, dsn(t), opts)
	mustExec(t, db, "CREATE TABLE t (k TEXT PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO t VALUES ('dup')")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t VALUES ('a')")
	if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES ('dup')"); !sqlconflict.IsUniqueViolation(err) {
		t.Fatalf("err = %v, want a unique violation", err)
	}
	mustExec(t, tx, "INSERT INTO t VALUES ('b')")
	// The application's own savepoints still work beside the wrapper's.
	mustExec(t, tx, "SAVEPOINT mine")
	mustExec(t, tx, "INSERT INTO t VALUES ('c')")
	mustExec(t, tx, "ROLLBACK TO SAVEPOINT mine")
	mustExec(t, tx, "RELEASE SAVEPOINT mine")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var got []string
	rows, err := db.Query("SELECT k FROM t ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		rows.Scan(&k)
		got = append(got, k)
	}
	if strings.Join(got, ",") != "a,b,dup" {
		t.Errorf("rows = %v, want a, b, dup", got)
	}
	if n, _ := o.count(sqlconflict.EventSavepointRollback); n != 1 {
		t.Errorf("%d savepoint rollbacks, want 1", n)
	}
}

// TestDSN: the conflict_* options are read and removed, the driver's own
// parameters reach it, and a bad option fails sql.Open, named.
func TestDSN(t *testing.T) {
	db := open(t, sqlconflictsqlite.DriverName, dsn(t, "_pragma=busy_timeout(1234)", "conflict_retries=0", "_pragma=foreign_keys(1)"))
	var timeout, fk int
	if err := db.QueryRow("PRAGMA busy_timeout").Scan(&timeout); err != nil || timeout != 1234 {
		t.Errorf("busy_timeout = %d, %v; want 1234", timeout, err)
	}
	if err := db.QueryRow("PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
	// A plain file name, not a URI.
	plain := open(t, sqlconflictsqlite.DriverName, filepath.Join(t.TempDir(), "plain.db")+"?conflict_savepoints=writes&_pragma=busy_timeout(77)")
	if err := plain.QueryRow("PRAGMA busy_timeout").Scan(&timeout); err != nil || timeout != 77 {
		t.Errorf("plain name: busy_timeout = %d, %v; want 77", timeout, err)
	}

	for _, bad := range []string{"conflict_retries=x", "conflict_nope=1"} {
		_, err := sql.Open(sqlconflictsqlite.DriverName, dsn(t, bad))
		if err == nil || !strings.Contains(err.Error(), strings.Split(bad, "=")[0]) {
			t.Errorf("%s: err = %v, want one naming the option", bad, err)
		}
	}
	// Parameter names are unescaped, as modernc.org/sqlite unescapes them:
	// this is conflict_retries, and its value is bad.
	if _, err := sql.Open(sqlconflictsqlite.DriverName, filepath.Join(t.TempDir(), "x.db")+"?conflict%5Fretries=bogus"); err == nil ||
		!strings.Contains(err.Error(), "conflict_retries") {
		t.Errorf("escaped name: err = %v, want one naming conflict_retries", err)
	}
	if _, err := sqlconflictsqlite.OpenDB(dsn(t, "conflict_backoff=fast"), sqlconflict.DefaultOptions()); err == nil {
		t.Error("OpenDB accepted conflict_backoff=fast")
	}

	// The DSN's options override OpenDB's.
	d := dsn(t, "_pragma=busy_timeout(0)", "conflict_retries=0")
	raw := open(t, "sqlite", d)
	mustExec(t, raw, "CREATE TABLE t (x)")
	var o observer
	wdb := openDB(t, d, fastOptions(&o))
	mustExec(t, wdb, "SELECT 1")
	holder := conn(t, raw)
	mustExec(t, holder, "BEGIN IMMEDIATE")
	defer mustExec(t, holder, "ROLLBACK")
	if _, err := wdb.Exec("INSERT INTO t VALUES (1)"); !sqlconflict.IsRetryable(err) {
		t.Fatalf("err = %v, want SQLITE_BUSY", err)
	}
	if n, _ := o.count(sqlconflict.EventRetry); n != 0 {
		t.Errorf("%d retries with conflict_retries=0 in the DSN", n)
	}
}
