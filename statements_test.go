package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	"os"
	"strings"
	"testing"
	"time"
)

// The attacker's tests of statement shapes and session boundaries: texts
// whose meaning depends on the session's sql_mode, XA and prepared
// transactions, strings that begin with BEGIN, a RunTx function that panics
// or commits itself, and statements whose side effects a rollback does not
// undo. Each runs through the raw driver and through the wrapper and checks
// that the wrapper does what the raw driver does (one execution), or better.

// lockHeldFor is how long the tests hold a row: longer than one lock wait
// (lockTimeoutParams: 300ms on PostgreSQL, 1s on MariaDB), so that the first
// attempt always times out, and short enough that a retry would succeed.
const lockHeldFor = 1200 * time.Millisecond

// holdRowFor is holdRow, released after d.
func (s server) holdRowFor(t *testing.T, raw *sql.DB, tbl string, id int, d time.Duration) {
	t.Helper()
	time.AfterFunc(d, s.holdRow(t, raw, tbl, id))
}

// openMode opens the raw driver or the wrapper (safetyDB) with params, and
// with the wrapper's own options only when wrapped: the raw driver would
// send a conflict_* parameter to the server as a setting.
func (s server) openMode(t *testing.T, wrapped bool, params []string, conflict ...string) (*sql.DB, *retryCounter) {
	t.Helper()
	all := append([]string(nil), params...)
	if wrapped {
		all = append(all, conflict...)
	}
	return s.safetyDB(t, wrapped, all...)
}

// hotTable creates a table of rows (id, v) with ids 1..n and v = 0.
func (s server) hotTable(t *testing.T, raw *sql.DB, suffix string, n int) string {
	t.Helper()
	tbl := s.table(t, raw, suffix, "id INT PRIMARY KEY, v INT NOT NULL")
	for id := 1; id <= n; id++ {
		mustExec(t, raw, s.q("INSERT INTO "+tbl+" (id, v) VALUES ($1, 0)"), id)
	}
	return tbl
}

// errCode is what a run's error is compared by: the server's code, "" for
// success, and the wrapper's refusal spelled out (a TxAbortedError
// classifies as its cause).
func errCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTxAborted):
		return "refused: " + err.Error()
	case Classify(err).Code != "":
		return Classify(err).Code
	}
	return err.Error()
}

// retries returns the wrapper's retries so far, 0 for the raw driver.
func retries(rc *retryCounter) int64 {
	if rc == nil {
		return 0
	}
	return rc.retries.Load()
}

// execConn runs q on conn.
func execConn(conn *sql.Conn, q string, args ...any) error {
	_, err := conn.ExecContext(context.Background(), q, args...)
	return err
}

// holds counts how many times conn's session holds a re-entrant lock
// (PostgreSQL's session advisory lock, MariaDB's named lock) by releasing
// it until release no longer answers 1. release takes the lock's key.
func holds(t *testing.T, conn *sql.Conn, release string, key any) int {
	t.Helper()
	for n := 0; n < 50; n++ {
		var ok sql.NullInt64
		if err := conn.QueryRowContext(context.Background(), release, key).Scan(&ok); err != nil {
			t.Fatalf("%s: %v", release, err)
		}
		if !ok.Valid || ok.Int64 != 1 {
			return n
		}
	}
	t.Fatalf("%s: still held after 50 releases", release)
	return 0
}

// lockWaitUpdate holds row id of tbl for lockHeldFor and, meanwhile, runs
// an autocommit UPDATE of it through exec, on a session whose lock wait
// (1s) ends first. It checks what the caller's session state must allow:
// the raw driver meets the lock wait timeout, and the wrapper retries the
// UPDATE as any autocommit statement, which succeeds once the lock is gone.
func (s server) lockWaitUpdate(t *testing.T, raw *sql.DB, tbl string, id int, rc *retryCounter, exec func(q string) error) {
	t.Helper()
	before := retries(rc)
	s.holdRowFor(t, raw, tbl, id, lockHeldFor)
	err := exec(fmt.Sprintf("UPDATE %s SET v = v + 1 WHERE id = %d", tbl, id))
	n := retries(rc) - before
	t.Logf("autocommit UPDATE under a held lock: err %v, %d retries", err, n)
	if rc == nil {
		if Classify(err).Kind != KindLockTimeout {
			t.Errorf("raw: err = %v, want the lock wait timeout", err)
		}
		return
	}
	if err != nil || n < 1 {
		t.Errorf("err = %v after %d retries; want success after at least one retry, as in autocommit", err, n)
	}
}

// TestIntegrationStmtAnsiQuotesMultiStatement attacks the lexer's readings
// of a MariaDB text under sql_mode=ANSI_QUOTES: there "\" is an identifier
// (a column named \), so 'a\' ' is one string and the text is two
// statements, an INSERT that commits and an UPDATE that meets a held lock.
// Read as without ANSI_QUOTES it is one statement in every escape reading.
// Raw: one log row and 1205. The wrapper must do the same, with no retry
// (which would log the row again).
func TestIntegrationStmtAnsiQuotesMultiStatement(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	setup := s.openRaw(t)
	logTbl := s.table(t, setup, "_aq_log", "`\\` TEXT")
	hot := s.hotTable(t, setup, "_aq_hot", 1)
	stmt := "INSERT INTO " + logTbl + " SET \"\\\" = 'a\\' '; UPDATE " + hot + " SET v = v + 1 WHERE id = 1 -- \" -- '\nAND 1 = 1"
	params := append(s.lockTimeoutParams(), "multiStatements=true", "sql_mode=%27ANSI_QUOTES%27")
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		mustExec(t, setup, "DELETE FROM "+logTbl)
		db, rc := s.safetyDB(t, wrapped, params...)
		s.holdRowFor(t, setup, hot, 1, lockHeldFor)
		_, err := db.Exec(stmt)
		n := count(t, setup, "SELECT COUNT(*) FROM "+logTbl)
		var logged string
		if n > 0 {
			// The server read 'a\' ' with backslash escapes: a, a quote, a blank.
			if err := setup.QueryRow("SELECT MIN(`\\`) FROM " + logTbl).Scan(&logged); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("err %v; %d log rows (%q); %d retries", err, n, logged, retries(rc))
		if errCode(err) != "1205" || n != 1 || retries(rc) != 0 {
			t.Errorf("err %q, %d log rows, %d retries; want 1205, 1, 0: the text ran more than once", errCode(err), n, retries(rc))
		}
		if n > 0 && logged != "a' " {
			t.Errorf("logged %q, want %q: the server did not read the text as this test says", logged, "a' ")
		}
	})
}

// TestIntegrationStmtXABranch attacks MariaDB's XA transactions, which
// begin and end without BEGIN or COMMIT. (a) A deadlock inside the XA
// branch: the error is the deadlock, as raw, never a retry that the server
// refuses (1399 XAER_RMFAIL, the branch is ROLLBACK ONLY); XA END and
// XA ROLLBACK then answer as raw, never the wrapper's ErrTxAborted. (b) Once
// the branch is over the session is in autocommit again: a lock wait
// timeout is retried and the next INSERT runs.
func TestIntegrationStmtXABranch(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	var rawEnd, rawRollback string
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		tbl := s.deadlockTable(t, raw)
		hot := s.hotTable(t, raw, "_hot", 1)
		logTbl := s.table(t, raw, "_log", "n INT")
		db, rc := s.safetyDB(t, wrapped, s.lockTimeoutParams()...)
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		xid := fmt.Sprintf("'sqlc%s_%t'", runID, wrapped)
		mustExecConn(t, conn, "XA START "+xid)
		mustExecConn(t, conn, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		finish, dlErr := s.victimOfDeadlock(t, raw, tbl, func(q string) error { return execConn(conn, q) })
		n := retries(rc)
		endErr := execConn(conn, "XA END "+xid)
		rbErr := execConn(conn, "XA ROLLBACK "+xid)
		finish()
		t.Logf("in the XA branch: %v (%d retries); XA END: %v; XA ROLLBACK: %v", dlErr, n, endErr, rbErr)
		if errCode(dlErr) != "1213" || n != 0 {
			t.Errorf("in the XA branch: %q after %d retries; want the deadlock 1213, no retry", errCode(dlErr), n)
		}
		if !wrapped {
			rawEnd, rawRollback = errCode(endErr), errCode(rbErr)
		} else if errCode(endErr) != rawEnd || errCode(rbErr) != rawRollback {
			t.Errorf("XA END %q, XA ROLLBACK %q; want %q, %q as raw", errCode(endErr), errCode(rbErr), rawEnd, rawRollback)
		}

		s.lockWaitUpdate(t, raw, hot, 1, rc, func(q string) error { return execConn(conn, q) })
		if err := execConn(conn, "INSERT INTO "+logTbl+" (n) VALUES (1)"); err != nil {
			t.Errorf("INSERT after the XA branch: %v", err)
		}
		if n := count(t, raw, "SELECT COUNT(*) FROM "+logTbl); n != 1 {
			t.Errorf("%d rows committed, want 1", n)
		}
	})
}

// TestIntegrationStmtPrepareTransaction attacks PostgreSQL's PREPARE
// TRANSACTION, which ends the session's transaction as COMMIT does: the
// autocommit UPDATE that follows, with conflict_savepoints=writes, must not
// be given a SAVEPOINT (25P01 outside a transaction); it succeeds, as raw.
func TestIntegrationStmtPrepareTransaction(t *testing.T) {
	// The shared server has max_prepared_transactions = 0: a private one
	// that allows them.
	inst := itest.StartPG(t, 5471, "max_prepared_transactions = 10")
	s := server{itest.Server{Name: "postgres", Driver: DriverPostgres, Raw: "postgres", DSN: inst.DSN(), Env: itest.EnvPG}}
	raw := s.openRaw(t)
	if n := count(t, raw, "SELECT current_setting('max_prepared_transactions')::int"); n == 0 {
		t.Fatal("the private server was started with max_prepared_transactions = 10 but reports 0")
	}
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		tbl := s.hotTable(t, raw, "", 1)
		db, _ := s.openMode(t, wrapped, nil, "conflict_savepoints=writes")
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		gid := fmt.Sprintf("sqlc_%s_%t", runID, wrapped)
		t.Cleanup(func() { raw.Exec("ROLLBACK PREPARED '" + gid + "'") })
		mustExecConn(t, conn, "BEGIN")
		mustExecConn(t, conn, "INSERT INTO "+tbl+" (id, v) VALUES (2, 0)")
		mustExecConn(t, conn, "PREPARE TRANSACTION '"+gid+"'")
		err = execConn(conn, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		t.Logf("UPDATE after PREPARE TRANSACTION: %v", err)
		if err != nil {
			t.Errorf("UPDATE after PREPARE TRANSACTION: %v, want success in autocommit", err)
		}
		mustExec(t, raw, "ROLLBACK PREPARED '"+gid+"'")
		if v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1"); v != 1 {
			t.Errorf("v = %d, want 1", v)
		}
	})
}

// runRecovered calls f and returns what it panicked with, as net/http's
// recovery of a handler's panic would.
func runRecovered(f func()) (p any) {
	defer func() { p = recover() }()
	f()
	return nil
}

// TestIntegrationStmtRunTxPanic attacks RunTx with a function that panics
// after taking a row lock: once the panic is recovered (as net/http does),
// the transaction must be rolled back, its lock released (another
// session's NOWAIT locking read succeeds) and its connection back in the
// pool. RunTx runs over the raw driver and over the wrapper.
func TestIntegrationStmtRunTxPanic(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			tbl := s.hotTable(t, raw, "", 1)
			db, _ := s.safetyDB(t, wrapped)
			// A transaction left open ends with its context: the bound if
			// RunTx leaves it, so that the table can be dropped.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			p := runRecovered(func() {
				RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					mustExec(t, tx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
					panic("handler bug")
				})
			})
			inUse := db.Stats().InUse
			var v int
			lockErr := raw.QueryRow("SELECT v FROM " + tbl + " WHERE id = 1 FOR UPDATE NOWAIT").Scan(&v)
			t.Logf("recovered %v; %d connections in use; NOWAIT read: v %d, %v", p, inUse, v, lockErr)
			if p != "handler bug" {
				t.Errorf("recovered %v, want the function's panic", p)
			}
			if inUse != 0 || lockErr != nil || v != 0 {
				t.Errorf("after the panic: %d connections in use, NOWAIT read %v, v = %d; want 0, the row free, 0 (rolled back)", inUse, lockErr, v)
			}
		})
	})
}

// TestIntegrationStmtRunTxFnCommits attacks RunTx with a function that
// commits the transaction itself and returns nil: RunTx cannot commit it
// and cannot know what the function's Commit did, so it returns
// ErrTxEnded (which matches sql.ErrTxDone), and the OnCommit hooks
// registered in it do not run.
func TestIntegrationStmtRunTxFnCommits(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			tbl := s.hotTable(t, raw, "", 1)
			db, _ := s.safetyDB(t, wrapped)
			hookRan := false
			err := RunTx(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
				mustExec(t, tx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
				if err := OnCommit(ctx, func() { hookRan = true }); err != nil {
					return err
				}
				return tx.Commit()
			})
			v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1")
			t.Logf("RunTx: %v; hook ran: %t; v = %d", err, hookRan, v)
			if !errors.Is(err, ErrTxEnded) || !errors.Is(err, sql.ErrTxDone) || hookRan {
				t.Errorf("RunTx: %v, hook ran %t; want ErrTxEnded matching sql.ErrTxDone, no hook", err, hookRan)
			}
			if v != 1 {
				t.Errorf("v = %d, want 1 (the function's own Commit)", v)
			}
		})
	})
}

// TestIntegrationStmtBeginInString attacks texts that begin with BEGIN but
// are not a BEGIN statement. PostgreSQL: "BEGIN; UPDATE; COMMIT;" leaves no
// transaction open, so the next statement on the pooled connection (with
// conflict_savepoints=writes) runs in autocommit, not behind a SAVEPOINT
// that the server refuses (25P01). MariaDB: BEGIN NOT ATOMIC ... END is a
// compound statement that opens no transaction: a lock wait timeout after
// it is retried as in autocommit and the next INSERT runs.
func TestIntegrationStmtBeginInString(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			tbl := s.hotTable(t, raw, "", 2)
			if s.PG() {
				db, _ := s.openMode(t, wrapped, nil, "conflict_savepoints=writes")
				db.SetMaxOpenConns(1)
				mustExec(t, db, "BEGIN; UPDATE "+tbl+" SET v = 10 WHERE id = 1; COMMIT;")
				_, err := db.Exec("UPDATE " + tbl + " SET v = v + 1 WHERE id = 1")
				v := count(t, raw, "SELECT v FROM "+tbl+" WHERE id = 1")
				t.Logf("UPDATE after the string: %v; v = %d", err, v)
				if err != nil || v != 11 {
					t.Errorf("UPDATE after the string: %v, v = %d; want success, 11", err, v)
				}
				return
			}
			logTbl := s.table(t, raw, "_log", "n INT")
			db, rc := s.safetyDB(t, wrapped, append(s.lockTimeoutParams(), "multiStatements=true")...)
			db.SetMaxOpenConns(1)
			mustExec(t, db, "BEGIN NOT ATOMIC UPDATE "+tbl+" SET v = v + 1 WHERE id = 1; UPDATE "+tbl+" SET v = v + 1 WHERE id = 2; END")
			s.lockWaitUpdate(t, raw, tbl, 1, rc, func(q string) error { _, err := db.Exec(q); return err })
			if _, err := db.Exec("INSERT INTO " + logTbl + " (n) VALUES (1)"); err != nil {
				t.Errorf("INSERT after the compound statement: %v", err)
			}
			if n := count(t, raw, "SELECT COUNT(*) FROM "+logTbl); n != 1 {
				t.Errorf("%d rows committed, want 1", n)
			}
		})
	})
}

// TestIntegrationStmtLeftoverTransaction attacks a PostgreSQL string that
// leaves a transaction open, "BEGIN; INSERT ...", on a pool of one
// connection. The next user's autocommit INSERT must not silently join that
// transaction: it is committed on its own (a raw session sees it) or
// refused. And nothing of the leftover may commit later by accident: here
// a third user's self-contained "BEGIN; INSERT; COMMIT;" string, whose
// BEGIN PostgreSQL only warns about inside an open transaction, would
// commit it. Only "next" and "third" may survive the pool. (The raw driver
// falls into both; its run is logged.)
func TestIntegrationStmtLeftoverTransaction(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		tbl := s.table(t, raw, "", "w TEXT")
		ins := func(w string) string { return "INSERT INTO " + tbl + " (w) VALUES ('" + w + "')" }
		db, _ := s.openMode(t, wrapped, nil, "conflict_savepoints=writes")
		db.SetMaxOpenConns(1)
		mustExec(t, db, "BEGIN; "+ins("leftover"))
		_, nextErr := db.Exec(ins("next"))
		seen := logRows(t, raw, tbl)
		_, thirdErr := db.Exec("BEGIN; " + ins("third") + "; COMMIT;")
		db.Close()
		final := logRows(t, raw, tbl)
		t.Logf("next user's INSERT: %v, then a raw session sees %q; third user's string: %v; after the pool closed: %q", nextErr, seen, thirdErr, final)
		if !wrapped {
			return // lib/pq hands the open transaction on: the trap
		}
		if nextErr == nil && seen != "next" {
			t.Errorf("after the next user's autocommit INSERT a raw session sees %q, want %q: it ran inside the leftover transaction", seen, "next")
		}
		if strings.Contains(final, "leftover") {
			t.Errorf("rows %q after the pool closed: the leftover transaction was committed by a later user", final)
		}
	})
}

// TestIntegrationStmtAdvisoryLockFunction attacks a PostgreSQL function
// that takes a session advisory lock, which no rollback releases, before
// an UPDATE that meets a held row: SELECT f() must not be retried (each
// attempt would take the lock once more). Raw and wrapped: 55P03, the lock
// held once.
func TestIntegrationStmtAdvisoryLockFunction(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	key := int64(0x5c000000) + int64(os.Getpid())
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		hot := s.hotTable(t, raw, "", 1)
		f := s.function(t, raw, hot+"_f", fmt.Sprintf("PERFORM pg_advisory_lock(%d); UPDATE %s SET v = v + 1 WHERE id = 1;", key, hot))
		db, rc := s.safetyDB(t, wrapped, s.lockTimeoutParams()...)
		s.advisoryRun(t, raw, db, rc, hot, key, "SELECT "+f+"()")
	})
}

// function creates a plpgsql function name() returning 1 after body, and
// drops it afterwards. It returns name.
func (s server) function(t *testing.T, raw *sql.DB, name, body string) string {
	t.Helper()
	mustExec(t, raw, "CREATE OR REPLACE FUNCTION "+name+"() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "+body+" RETURN 1; END $$")
	t.Cleanup(func() { raw.Exec("DROP FUNCTION IF EXISTS " + name + "()") })
	return name
}

// advisoryRun runs stmt, which takes advisory lock key and meets row 1 of
// hot held by raw, on a connection of db, and checks that it ran once: the lock
// timeout, no retry, the lock held once by the session.
func (s server) advisoryRun(t *testing.T, raw, db *sql.DB, rc *retryCounter, hot string, key int64, stmt string) {
	t.Helper()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer execConn(conn, "SELECT pg_advisory_unlock_all()")
	s.holdRowFor(t, raw, hot, 1, lockHeldFor)
	err = execConn(conn, stmt)
	n := holds(t, conn, "SELECT pg_advisory_unlock($1)::int", key)
	t.Logf("%s: %v; %d retries; the session held the advisory lock %d times", stmt, err, retries(rc), n)
	if errCode(err) != "55P03" || retries(rc) != 0 || n != 1 {
		t.Errorf("err %q, %d retries, lock held %d times; want 55P03, 0, 1", errCode(err), retries(rc), n)
	}
}

// TestIntegrationStmtRetryFunctionsOptIn: with conflict_retry_functions=true
// the application vouches for its functions, so SELECT of a plpgsql
// function that only UPDATEs a held row is retried and succeeds once the
// lock is gone (raw: the lock timeout). But pg_advisory_lock called in the
// statement's own text is a side effect the wrapper sees: never retried.
func TestIntegrationStmtRetryFunctionsOptIn(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	key := int64(0x5d000000) + int64(os.Getpid())
	t.Run("pure function", func(t *testing.T) {
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			hot := s.hotTable(t, raw, "", 1)
			g := s.function(t, raw, hot+"_g", "UPDATE "+hot+" SET v = v + 1 WHERE id = 1;")
			db, rc := s.openMode(t, wrapped, s.lockTimeoutParams(), "conflict_retry_functions=true")
			s.holdRowFor(t, raw, hot, 1, lockHeldFor)
			_, err := db.Exec("SELECT " + g + "()")
			v := count(t, raw, "SELECT v FROM "+hot+" WHERE id = 1")
			t.Logf("SELECT g(): %v; %d retries; v = %d", err, retries(rc), v)
			switch {
			case !wrapped && (Classify(err).Kind != KindLockTimeout || v != 0):
				t.Errorf("raw: %v, v = %d; want the lock timeout, 0", err, v)
			case wrapped && (err != nil || retries(rc) < 1 || v != 1):
				t.Errorf("err %v, %d retries, v = %d; want success after a retry, 1", err, retries(rc), v)
			}
		})
	})
	t.Run("advisory lock in the text", func(t *testing.T) {
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			hot := s.hotTable(t, raw, "", 1)
			g := s.function(t, raw, hot+"_g", "UPDATE "+hot+" SET v = v + 1 WHERE id = 1;")
			db, rc := s.openMode(t, wrapped, s.lockTimeoutParams(), "conflict_retry_functions=true")
			s.advisoryRun(t, raw, db, rc, hot, key, fmt.Sprintf("SELECT pg_advisory_lock(%d), %s()", key, g))
		})
	})
}

// TestIntegrationStmtUserVarAndNamedLock attacks a MariaDB UPDATE that
// assigns a user variable and takes a named lock, neither of which a
// rollback undoes, and meets a held row after its first: it must not be
// retried, and @x and the lock must be as after one execution, as raw.
func TestIntegrationStmtUserVarAndNamedLock(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		hot := s.hotTable(t, raw, "", 2)
		name := fmt.Sprintf("sqlc_%s_%t", runID, wrapped)
		db, rc := s.safetyDB(t, wrapped, s.lockTimeoutParams()...)
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		defer execConn(conn, "SELECT RELEASE_ALL_LOCKS()")
		mustExecConn(t, conn, "SET @x = 0")
		s.holdRowFor(t, raw, hot, 2, lockHeldFor)
		err = execConn(conn, "UPDATE "+hot+" SET v = (@x := @x + 1) + GET_LOCK('"+name+"', 0) * 0 WHERE id IN (1, 2)")
		var x int
		if err := conn.QueryRowContext(context.Background(), "SELECT @x").Scan(&x); err != nil {
			t.Fatal(err)
		}
		n := holds(t, conn, "SELECT RELEASE_LOCK(?)", name)
		t.Logf("UPDATE: %v; %d retries; @x = %d; the named lock held %d times", err, retries(rc), x, n)
		if errCode(err) != "1205" || retries(rc) != 0 || x != 1 || n != 1 {
			t.Errorf("err %q, %d retries, @x = %d, lock held %d times; want 1205, 0, 1, 1", errCode(err), retries(rc), x, n)
		}
	})
}

// TestIntegrationStmtTriggerNonTransactional attacks a MariaDB UPDATE of an
// InnoDB table whose trigger writes a MyISAM log, which keeps
// what a failed statement wrote: meeting a held row after the first, it
// must not be retried, even with conflict_retry_functions=true (a
// non-transactional table is never vouched for). Raw: one log row and
// 1205. The control, the same UPDATE of a table without the trigger, is
// retried and succeeds.
func TestIntegrationStmtTriggerNonTransactional(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	cases := []struct {
		name    string
		wrapped bool
		trigger bool
		params  []string
	}{
		{"raw", false, true, nil},
		{"wrapped", true, true, nil},
		{"wrapped retry functions", true, true, []string{"conflict_retry_functions=true"}},
		{"control without trigger", true, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hot := s.hotTable(t, raw, "", 2)
			logTbl := s.table(t, raw, "_log", "n INT")
			mustExec(t, raw, "ALTER TABLE "+logTbl+" ENGINE=MyISAM")
			if tc.trigger {
				// AFTER, not BEFORE: MariaDB reads and locks every row of an
				// UPDATE of a table with a BEFORE UPDATE trigger first
				// ("Using buffer"), so that trigger would fire for no row
				// before the wait.
				mustExec(t, raw, "CREATE TRIGGER "+hot+"_tr AFTER UPDATE ON "+hot+" FOR EACH ROW INSERT INTO "+logTbl+" (n) VALUES (NEW.id)")
			}
			db, rc := s.safetyDB(t, tc.wrapped, append(s.lockTimeoutParams(), tc.params...)...)
			s.holdRowFor(t, raw, hot, 2, lockHeldFor)
			mustExec(t, raw, "DELETE FROM "+logTbl) // what the holder's UPDATE logged
			_, err := db.Exec("UPDATE " + hot + " SET v = v + 1 WHERE id IN (1, 2)")
			n := count(t, raw, "SELECT COUNT(*) FROM "+logTbl)
			t.Logf("UPDATE: %v; %d retries; %d log rows", err, retries(rc), n)
			switch {
			case !tc.trigger && (err != nil || retries(rc) < 1):
				t.Errorf("control: %v after %d retries; want success after a retry", err, retries(rc))
			case tc.trigger && (errCode(err) != "1205" || retries(rc) != 0 || n != 1):
				t.Errorf("err %q, %d retries, %d log rows; want 1205, 0, 1 (row 1's, once)", errCode(err), retries(rc), n)
			}
		})
	}
}
