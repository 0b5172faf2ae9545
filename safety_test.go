package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// The attacker's tests of the retry and doom rules (docs/retry.md): each
// does what an application may do and checks, on the real servers, that the
// wrapper neither applies a write twice nor commits half a transaction, and
// that where the raw driver answers, the wrapper answers the same. Where it
// shows the trap, the raw driver runs too.

// safetyDB opens the wrapped driver with an Observer counting its retries,
// or the raw driver (counter nil).
func (s server) safetyDB(t *testing.T, wrapped bool, params ...string) (*sql.DB, *retryCounter) {
	t.Helper()
	if !wrapped {
		return s.openRaw(t, params...), nil
	}
	var rc retryCounter
	return s.openWith(t, func(o *Options) {
		o.Observer = rc.observe
		o.Backoff, o.MaxBackoff = time.Millisecond, 5*time.Millisecond
	}, append([]string{"conflict_retries=3"}, params...)...), &rc
}

// rawAndWrapped runs f as a subtest through the raw driver and through the
// wrapper.
func rawAndWrapped(t *testing.T, f func(t *testing.T, wrapped bool)) {
	runModes(t, []bool{false, true}, f)
}

// runModes runs f as a subtest for each of wrapped.
func runModes(t *testing.T, modes []bool, f func(t *testing.T, wrapped bool)) {
	for _, wrapped := range modes {
		t.Run(map[bool]string{false: "raw", true: "wrapped"}[wrapped], func(t *testing.T) { f(t, wrapped) })
	}
}

// lockTimeoutParams makes the session give up on a row lock quickly.
func (s server) lockTimeoutParams() []string {
	if s.PG() {
		return []string{"lock_timeout=300ms"}
	}
	return []string{"innodb_lock_wait_timeout=1"}
}

// holdRow locks row id of tbl in a transaction of its own until the
// returned function is called.
func (s server) holdRow(t *testing.T, raw *sql.DB, tbl string, id int) func() {
	t.Helper()
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, s.q("UPDATE "+tbl+" SET v = v + 1 WHERE id = $1"), id)
	var once atomic.Bool
	release := func() {
		if once.CompareAndSwap(false, true) {
			tx.Rollback()
		}
	}
	t.Cleanup(release)
	return release
}

// TestIntegrationNotAtomicNeverRetried: a text that is not one atomic
// statement is never run again alone, even on an error that undid its
// last part: what came before may have committed. A PostgreSQL procedure,
// a DO block and a simple-protocol string that COMMIT between an INSERT and
// an UPDATE that times out; a MySQL multi-statement string and a stored
// procedure. Each must leave exactly one logged row and the lock timeout,
// as the raw driver does, and no retry. A single UPDATE under the same lock
// is retried, and succeeds once the lock is gone.
func TestIntegrationNotAtomicNeverRetried(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		setup := s.openRaw(t)
		hot := s.table(t, setup, "", "id INT PRIMARY KEY, v INT NOT NULL")
		logTbl := s.table(t, setup, "_log", "n INT")
		mustExec(t, setup, "INSERT INTO "+hot+" (id, v) VALUES (1, 0)")
		proc := hot + "_p"
		var cases []struct{ name, setup, stmt string }
		params := s.lockTimeoutParams()
		if s.PG() {
			body := "INSERT INTO " + logTbl + " VALUES (1); COMMIT; UPDATE " + hot + " SET v = v + 1 WHERE id = 1;"
			cases = []struct{ name, setup, stmt string }{
				{"procedure", "CREATE PROCEDURE " + proc + "() LANGUAGE plpgsql AS $$ BEGIN " + body + " END $$", "CALL " + proc + "()"},
				{"do", "", "DO $$ BEGIN " + body + " END $$"},
				{"simple protocol string", "", body},
			}
			t.Cleanup(func() { setup.Exec("DROP PROCEDURE IF EXISTS " + proc) })
		} else {
			body := "INSERT INTO " + logTbl + " VALUES (1); UPDATE " + hot + " SET v = v + 1 WHERE id = 1;"
			cases = []struct{ name, setup, stmt string }{
				{"multi-statement string", "", body},
				{"procedure", "CREATE PROCEDURE " + proc + "() BEGIN " + body + " END", "CALL " + proc + "()"},
			}
			params = append(params, "multiStatements=true")
			t.Cleanup(func() { setup.Exec("DROP PROCEDURE IF EXISTS " + proc) })
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if tc.setup != "" {
					setup.Exec("DROP PROCEDURE IF EXISTS " + proc)
					mustExec(t, setup, tc.setup)
				}
				rawAndWrapped(t, func(t *testing.T, wrapped bool) {
					mustExec(t, setup, "DELETE FROM "+logTbl)
					db, rc := s.safetyDB(t, wrapped, params...)
					s.holdRow(t, setup, hot, 1)
					_, err := db.Exec(tc.stmt)
					if Classify(err).Kind != KindLockTimeout {
						t.Fatalf("err = %v, want the lock timeout", err)
					}
					if n := count(t, setup, "SELECT COUNT(*) FROM "+logTbl); n != 1 {
						t.Errorf("%d rows logged, want 1: the text ran %d times", n, n)
					}
					if rc != nil && rc.retries.Load() != 0 {
						t.Errorf("%d retries, want none", rc.retries.Load())
					}
				})
			})
		}
		t.Run("one statement", func(t *testing.T) {
			db, rc := s.safetyDB(t, true, params...)
			release := s.holdRow(t, setup, hot, 1)
			go func() {
				time.Sleep(1200 * time.Millisecond) // past the first lock timeout
				release()
			}()
			if _, err := db.Exec("UPDATE " + hot + " SET v = v + 1 WHERE id = 1"); err != nil {
				t.Fatalf("err = %v, want success after a retry", err)
			}
			if rc.retries.Load() == 0 {
				t.Error("no retry: the test did not provoke a lock timeout")
			}
		})
	})
}

// deadlockTable creates a table of rows 1..10 for victimOfDeadlock.
func (s server) deadlockTable(t *testing.T, raw *sql.DB) string {
	t.Helper()
	tbl := s.table(t, raw, "_dl", "id INT PRIMARY KEY, v INT NOT NULL")
	mustExec(t, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1,0),(2,0),(3,0),(4,0),(5,0),(6,0),(7,0),(8,0),(9,0),(10,0)")
	return tbl
}

// deadlockParams makes PostgreSQL look for deadlocks soon.
func (s server) deadlockParams() []string {
	if s.PG() {
		return []string{"deadlock_timeout=100ms"}
	}
	return nil
}

// victimOfDeadlock makes the statement run runs the victim of a deadlock.
// The session of run must already hold row 1 of tbl (a deadlockTable). Another
// transaction locks rows 2 to 10 (the heavier one, which InnoDB spares;
// on PostgreSQL it also looks for deadlocks last) and waits for row 1; run
// is then given a statement that waits for row 2. It returns a function
// that ends the other transaction, to call once the victim's transaction is
// over (PostgreSQL keeps an aborted transaction's locks until then), and
// run's error.
func (s server) victimOfDeadlock(t *testing.T, raw *sql.DB, tbl string, run func(stmt string) error) (func(), error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	other, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.PG() {
		mustExec(t, other, "SET LOCAL deadlock_timeout = '10s'")
	}
	mustExec(t, other, "UPDATE "+tbl+" SET v = v + 1 WHERE id >= 2")
	done := make(chan error, 1)
	go func() {
		_, err := other.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // the other transaction waits for row 1
	err = run("UPDATE " + tbl + " SET v = v + 1 WHERE id = 2")
	var finished atomic.Bool
	finish := func() {
		if finished.CompareAndSwap(false, true) {
			if werr := <-done; werr != nil {
				t.Errorf("the other transaction: %v", werr)
			}
			other.Rollback()
			cancel()
		}
	}
	t.Cleanup(finish)
	return finish, err
}

// logRows returns the log table's rows, in order.
func logRows(t *testing.T, db *sql.DB, logTbl string) string {
	t.Helper()
	rows, err := db.Query("SELECT w FROM " + logTbl + " ORDER BY w")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var w string
		if err := rows.Scan(&w); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, ",")
}

// TestIntegrationUnseenTransactions: transactions opened otherwise than by
// BeginTx or BEGIN. With autocommit off (every spelling of SET, the DSN
// parameter, and a base connector the wrapper could not read) and after
// COMMIT AND CHAIN / ROLLBACK AND CHAIN / completion_type=CHAIN, a deadlock
// rolls back everything since the transaction began. The statement that
// met it must not be run again alone as if in autocommit, and what the
// application runs next must not commit: only the rows committed before
// the transaction stay. The raw MariaDB driver commits the half after the
// deadlock.
func TestIntegrationUnseenTransactions(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		logTbl := s.table(t, raw, "_log", "w VARCHAR(8)")
		ins := func(w string) string { return "INSERT INTO " + logTbl + " (w) VALUES ('" + w + "')" }
		type scenario struct {
			name   string
			params []string
			base   bool     // open through NewConnector over the base driver's connector
			before []string // statements before the transaction's work
			want   string   // the log rows that must survive, wrapped
		}
		var cases []scenario
		chainCases := []scenario{
			{name: "commit and chain", before: []string{"BEGIN", ins("a"), "COMMIT AND CHAIN"}, want: "a"},
			{name: "rollback and chain", before: []string{"BEGIN", ins("x"), "ROLLBACK AND CHAIN"}, want: ""},
		}
		if s.PG() {
			cases = chainCases
		} else {
			cases = append(chainCases,
				scenario{name: "completion_type chain", before: []string{"SET completion_type = 'CHAIN'", "BEGIN", ins("a"), "COMMIT"}, want: "a"},
				scenario{name: "set autocommit=0", before: []string{"SET autocommit=0"}},
				scenario{name: "set @@autocommit", before: []string{"SET @@autocommit = OFF"}},
				scenario{name: "set session autocommit", before: []string{"set session autocommit = false, sql_mode = DEFAULT"}},
				scenario{name: "dsn autocommit", params: []string{"autocommit=0"}},
				scenario{name: "connector autocommit", params: []string{"autocommit=0"}, base: true},
			)
		}
		for _, tc := range cases {
			modes := []bool{false, true}
			if tc.base {
				modes = modes[1:] // the raw driver is the dsn case
			}
			t.Run(tc.name, func(t *testing.T) {
				runModes(t, modes, func(t *testing.T, wrapped bool) {
					mustExec(t, raw, "DELETE FROM "+logTbl)
					tbl := s.deadlockTable(t, raw)
					params := append(s.deadlockParams(), tc.params...)
					var db *sql.DB
					var rc *retryCounter
					if tc.base {
						rc = &retryCounter{}
						opts := DefaultOptions()
						opts.Observer = rc.observe
						c, err := NewConnector(s.baseConnector(t, params...), opts)
						if err != nil {
							t.Fatal(err)
						}
						db = sql.OpenDB(c)
						t.Cleanup(func() { db.Close() })
					} else {
						db, rc = s.safetyDB(t, wrapped, params...)
					}
					ctx := context.Background()
					conn, err := db.Conn(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					for _, q := range tc.before {
						if _, err := conn.ExecContext(ctx, q); err != nil {
							t.Fatalf("%s: %v", q, err)
						}
					}
					mustExecConn(t, conn, ins("b"))
					mustExecConn(t, conn, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
					finish, dlErr := s.victimOfDeadlock(t, raw, tbl, func(q string) error {
						_, err := conn.ExecContext(ctx, q)
						return err
					})
					if Classify(dlErr).Kind != KindDeadlock {
						t.Fatalf("victim statement: %v, want the deadlock", dlErr)
					}
					// Careless code carries on and commits.
					_, afterErr := conn.ExecContext(ctx, ins("c"))
					_, commitErr := conn.ExecContext(ctx, "COMMIT")
					if !s.PG() {
						conn.ExecContext(ctx, "SET autocommit = 1")
					}
					conn.Close()
					finish()
					got := logRows(t, raw, logTbl)
					if !wrapped {
						t.Logf("raw: after the deadlock %v, COMMIT %v; rows %q", afterErr, commitErr, got)
						return
					}
					if got != tc.want {
						t.Errorf("rows %q, want %q: half of the transaction was committed", got, tc.want)
					}
					if rc.retries.Load() != 0 {
						t.Errorf("%d retries, want none", rc.retries.Load())
					}
					if s.PG() {
						if Classify(afterErr).Code != "25P02" {
							t.Errorf("after the deadlock: %v, want the server's 25P02", afterErr)
						}
					} else if !errors.Is(afterErr, ErrTxAborted) || !errors.Is(commitErr, ErrTxAborted) {
						t.Errorf("after the deadlock: %v; COMMIT: %v; want ErrTxAborted", afterErr, commitErr)
					}
				})
			})
		}
	})
}

// baseConnector returns the base driver's connector for the server's DSN
// with params appended, for NewConnector: the wrapper never sees the DSN.
func (s server) baseConnector(t *testing.T, params ...string) driver.Connector {
	t.Helper()
	if s.PG() {
		c, err := pq.NewConnector(s.DSNWith(params...))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cfg, err := mysql.ParseDSN(s.DSNWith(params...))
	if err != nil {
		t.Fatal(err)
	}
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIntegrationDeadlockAtRows: MySQL reports a deadlock of a locking read
// after its first rows, so the application meets it at rows.Next, at
// rows.Close or in Row.Scan (which closes the rows). On every path the
// transaction is doomed: careless code that carries on and commits commits
// nothing. The raw driver commits the half after the deadlock. The guard
// alone, with conflict_replay=off (the replay at rows: TestIntegrationReplayAtClose,
// TestIntegrationReplayRowsPartlyRead).
func TestIntegrationDeadlockAtRows(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	logTbl := s.table(t, raw, "_log", "w VARCHAR(8)")
	ins := func(w string) string { return "INSERT INTO " + logTbl + " (w) VALUES ('" + w + "')" }
	type read func(tx *sql.Tx, q string) error
	reads := map[string]read{
		"row scan": func(tx *sql.Tx, q string) error {
			var id int
			return tx.QueryRow(q).Scan(&id)
		},
		"rows next": func(tx *sql.Tx, q string) error {
			rows, err := tx.Query(q)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
			}
			return rows.Err()
		},
		"rows close": func(tx *sql.Tx, q string) error {
			rows, err := tx.Query(q)
			if err != nil {
				return err
			}
			if !rows.Next() {
				rows.Close()
				return fmt.Errorf("no first row: %v", rows.Err())
			}
			return rows.Close()
		},
	}
	for name, rd := range reads {
		t.Run(name, func(t *testing.T) {
			rawAndWrapped(t, func(t *testing.T, wrapped bool) {
				mustExec(t, raw, "DELETE FROM "+logTbl)
				tbl := s.deadlockTable(t, raw)
				var params []string
				if wrapped {
					params = []string{"conflict_replay=off"}
				}
				db, _ := s.safetyDB(t, wrapped, params...)
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				mustExec(t, tx, ins("a"))
				mustExec(t, tx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
				finish, dlErr := s.victimOfDeadlock(t, raw, tbl, func(string) error {
					// Row 1 is this transaction's already; row 2 closes the cycle.
					return rd(tx, "SELECT id FROM "+tbl+" WHERE id IN (1, 2) ORDER BY id FOR UPDATE")
				})
				if Classify(dlErr).Kind != KindDeadlock {
					t.Fatalf("read: %v, want the deadlock", dlErr)
				}
				_, afterErr := tx.Exec(ins("b"))
				commitErr := tx.Commit()
				finish()
				got := logRows(t, raw, logTbl)
				if !wrapped {
					t.Logf("raw: after the deadlock %v, Commit %v; rows %q", afterErr, commitErr, got)
					return
				}
				if got != "" || !errors.Is(afterErr, ErrTxAborted) || !errors.Is(commitErr, ErrTxAborted) {
					t.Errorf("rows %q, after the deadlock %v, Commit %v; want none, ErrTxAborted, ErrTxAborted", got, afterErr, commitErr)
				}
			})
		})
	}
}

// TestIntegrationDoomEndsWithTheTransaction: a doom lasts exactly as long
// as the transaction. A COMMIT sent as a statement that fails (PostgreSQL's
// deferred unique constraint: the server rolled back) ends the transaction:
// the same connection then runs in autocommit, and so does the next user
// of the pooled connection. A connection returned to the pool inside a
// doomed transaction (MySQL) is not handed to the next user: the server's
// transaction ends with it.
func TestIntegrationDoomEndsWithTheTransaction(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		ctx := context.Background()
		db, _ := s.safetyDB(t, true, s.deadlockParams()...)
		db.SetMaxOpenConns(1) // the next user gets the same pooled connection
		if s.PG() {
			tbl := s.table(t, raw, "", "k INT UNIQUE DEFERRABLE INITIALLY DEFERRED")
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"BEGIN", "INSERT INTO " + tbl + " VALUES (1)", "INSERT INTO " + tbl + " VALUES (1)"} {
				mustExecConn(t, conn, q)
			}
			if _, err := conn.ExecContext(ctx, "COMMIT"); !IsUniqueViolation(err) {
				t.Fatalf("COMMIT: %v, want the deferred unique violation", err)
			}
			mustExecConn(t, conn, "INSERT INTO "+tbl+" VALUES (2)")
			conn.Close()
			mustExec(t, db, "INSERT INTO "+tbl+" VALUES (3)")
			if n := count(t, raw, "SELECT COUNT(*) FROM "+tbl); n != 2 {
				t.Errorf("%d rows, want 2 (2 and 3, in autocommit)", n)
			}
			return
		}
		logTbl := s.table(t, raw, "_log", "w VARCHAR(8)")
		tbl := s.deadlockTable(t, raw)
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustExecConn(t, conn, "BEGIN")
		mustExecConn(t, conn, "INSERT INTO "+logTbl+" (w) VALUES ('a')")
		mustExecConn(t, conn, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		finish, dlErr := s.victimOfDeadlock(t, raw, tbl, func(q string) error {
			_, err := conn.ExecContext(ctx, q)
			return err
		})
		if Classify(dlErr).Kind != KindDeadlock {
			t.Fatalf("victim: %v, want the deadlock", dlErr)
		}
		finish()
		conn.Close() // back to the pool, doomed, without ROLLBACK
		if _, err := db.Exec("INSERT INTO " + logTbl + " (w) VALUES ('z')"); err != nil {
			t.Fatalf("next user of the pool: %v", err)
		}
		if got := logRows(t, raw, logTbl); got != "z" {
			t.Errorf("rows %q, want %q: the next user's autocommit write committed alone", got, "z")
		}
	})
}

// TestIntegrationPostgresRecoversLikeRaw: PostgreSQL refuses the rest of an
// aborted transaction itself, so the wrapper lets it: after an error of any
// SQLSTATE (these are not in the wrapper's tables) the application's own
// ROLLBACK TO SAVEPOINT recovers the transaction, as with the raw driver,
// with and without the wrapper's savepoints; and Commit of an aborted
// transaction returns lib/pq's own ErrInFailedTransaction.
func TestIntegrationPostgresRecoversLikeRaw(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	logTbl := s.table(t, raw, "_log", "w VARCHAR(8), c VARCHAR(2)")
	failing := map[string]string{
		"22012": "SELECT 1/0",
		"22P02": "SELECT 'x'::int",
		"22001": "INSERT INTO " + logTbl + " (w, c) VALUES ('x', 'abc')",
		"P0001": "DO $$ BEGIN RAISE EXCEPTION 'no'; END $$",
		"42703": "SELECT nocolumn FROM " + logTbl,
	}
	for _, sp := range []string{"off", "writes"} {
		for code, q := range failing {
			t.Run(sp+"/"+code, func(t *testing.T) {
				rawAndWrapped(t, func(t *testing.T, wrapped bool) {
					mustExec(t, raw, "DELETE FROM "+logTbl)
					db := raw
					if wrapped {
						db, _ = s.safetyDB(t, true, "conflict_savepoints="+sp)
					}
					tx, err := db.Begin()
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback()
					mustExec(t, tx, "INSERT INTO "+logTbl+" (w) VALUES ('a')")
					mustExec(t, tx, "SAVEPOINT app_sp")
					if _, err := tx.Exec(q); Classify(err).Code != code {
						t.Fatalf("%s: %v, want SQLSTATE %s", q, err, code)
					}
					mustExec(t, tx, "ROLLBACK TO SAVEPOINT app_sp")
					mustExec(t, tx, "INSERT INTO "+logTbl+" (w) VALUES ('b')")
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
					if got := logRows(t, raw, logTbl); got != "a,b" {
						t.Errorf("rows %q, want a,b", got)
					}
				})
			})
		}
	}
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		db, _ := s.safetyDB(t, wrapped)
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("SELECT 1/0"); err == nil {
			t.Fatal("no error")
		}
		if err := tx.Commit(); !errors.Is(err, pq.ErrInFailedTransaction) {
			t.Errorf("Commit: %v, want pq.ErrInFailedTransaction", err)
		}
	})
}

// TestIntegrationSavepointDeadlockWholeTx: with conflict_savepoints=writes
// a deadlock inside a transaction is not retried behind the savepoint:
// rolling back to it keeps the locks taken before, so the cycle would form
// again. It goes to the whole transaction: the wrapper's replay (the
// default) or RunTx's rerun, and two opposite transfers meet one deadlock,
// not a chain of them.
func TestIntegrationSavepointDeadlockWholeTx(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		var statementRetries, savepointRollbacks, replays atomic.Int64
		db := s.openWith(t, func(o *Options) {
			o.Observer = func(_ context.Context, ob Observation) {
				if ob.Class.Kind != KindDeadlock {
					return
				}
				switch ob.Event {
				case EventRetry:
					statementRetries.Add(1)
				case EventSavepointRollback:
					savepointRollbacks.Add(1)
				case EventReplay:
					replays.Add(1)
				}
			}
		}, append(s.deadlockParams(), "conflict_savepoints=writes")...)
		acc := s.table(t, db, "", "id INT PRIMARY KEY, bal INT NOT NULL")
		mustExec(t, db, "INSERT INTO "+acc+" (id, bal) VALUES (1, 100), (2, 100)")
		var deadlocks atomic.Int64
		transfer := func(from, to int) error {
			return TxRunner{Backoff: time.Millisecond}.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, s.q("UPDATE "+acc+" SET bal = bal - 1 WHERE id = $1"), from); err != nil {
					return err
				}
				time.Sleep(200 * time.Millisecond)
				_, err := tx.ExecContext(ctx, s.q("UPDATE "+acc+" SET bal = bal + 1 WHERE id = $1"), to)
				if Classify(err).Kind == KindDeadlock {
					deadlocks.Add(1)
				}
				return err
			})
		}
		start := time.Now()
		errs := make(chan error, 2)
		go func() { errs <- transfer(1, 2) }()
		go func() { errs <- transfer(2, 1) }()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("transfer: %v", err)
			}
		}
		if deadlocks.Load()+replays.Load() != 1 || statementRetries.Load() != 0 || savepointRollbacks.Load() != 0 {
			t.Errorf("%d deadlocks reached RunTx's function, %d replays, %d statement retries and %d savepoint rollbacks of a deadlock; want 1 deadlock (reran or replayed), 0, 0",
				deadlocks.Load(), replays.Load(), statementRetries.Load(), savepointRollbacks.Load())
		}
		if n := count(t, db, "SELECT SUM(bal) FROM "+acc); n != 200 {
			t.Errorf("total %d, want 200", n)
		}
		t.Logf("%s: %d deadlock(s) reached RunTx's function, %d replayed, both transfers done in %v", s.Name, deadlocks.Load(), replays.Load(), time.Since(start).Round(time.Millisecond))
	})
}

// TestIntegrationReadThatWritesNotResent: lib/pq answers driver.ErrBadConn
// when a connection breaks after the server received a statement, and
// database/sql then sends it again. Whether a SELECT writes cannot be
// known (this one calls a function that inserts), so through the wrapper
// it is not sent again: the error says the outcome is unknown. The raw
// driver runs it twice.
func TestIntegrationReadThatWritesNotResent(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	direct := s.openRaw(t)
	logTbl := s.table(t, direct, "_log", "w VARCHAR(64)")
	fn := logTbl + "_f"
	mustExec(t, direct, "CREATE OR REPLACE FUNCTION "+fn+"(w text) RETURNS int LANGUAGE sql AS $$ INSERT INTO "+logTbl+" (w) VALUES (w) RETURNING 1 $$")
	t.Cleanup(func() { direct.Exec("DROP FUNCTION IF EXISTS " + fn + "(text)") })
	target, dsnVia := s.viaProxy(t)
	prefix := "rw" + runID
	proxy := newFaultProxy(t, target, regexp.MustCompile(prefix+`[a-z]+[0-9]`))
	for i, q := range []string{"SELECT " + fn + "('%s')", "WITH x AS (SELECT " + fn + "('%s') AS n) SELECT n FROM x"} {
		rawAndWrapped(t, func(t *testing.T, wrapped bool) {
			tok := fmt.Sprintf("%s%s%d", prefix, map[bool]string{false: "raw", true: "wrapped"}[wrapped], i)
			var db *sql.DB
			if wrapped {
				db = s.openObservedDSN(t, dsnVia(proxy.addr()), nil)
			} else {
				var err error
				if db, err = sql.Open(s.Raw, dsnVia(proxy.addr())); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
			}
			f := &fault{mode: cutOnReply, match: []byte(tok)}
			proxy.arm(f)
			var n int
			err := db.QueryRow(fmt.Sprintf(q, tok)).Scan(&n)
			proxy.disarm()
			if !f.fired.Load() {
				t.Fatal("the cut did not fire")
			}
			ran := count(t, direct, s.q("SELECT COUNT(*) FROM "+logTbl+" WHERE w = $1"), tok)
			if !wrapped {
				t.Logf("raw: err %v; the function ran %d times", err, ran)
				return
			}
			if !errors.Is(err, ErrConnectionLost) || Classify(err).Scope != ScopeUnknownOutcome {
				t.Errorf("err = %v, want an unknown outcome", err)
			}
			if ran > 1 || proxy.sentCount(tok) != 1 {
				t.Errorf("the function ran %d times, sent %d times; want at most once, once", ran, proxy.sentCount(tok))
			}
		})
	}
}

// TestIntegrationRejectReadOnly: go-sql-driver/mysql's rejectReadOnly
// failover: a write refused by a read-only session (here, as after a
// failover to a replica) closes the connection and returns
// driver.ErrBadConn, promising nothing ran, and database/sql runs the write
// again on a new connection. Through the wrapper as through the raw driver.
func TestIntegrationRejectReadOnly(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	raw := s.openRaw(t)
	tbl := s.table(t, raw, "", "n INT")
	rawAndWrapped(t, func(t *testing.T, wrapped bool) {
		mustExec(t, raw, "DELETE FROM "+tbl)
		db, _ := s.safetyDB(t, wrapped, "rejectReadOnly=true")
		db.SetMaxIdleConns(1)
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		mustExecConn(t, conn, "SET SESSION TRANSACTION READ ONLY")
		conn.Close() // the read-only connection is the pool's idle one
		if _, err := db.Exec("INSERT INTO " + tbl + " (n) VALUES (1)"); err != nil {
			t.Fatalf("insert: %v, want success on a new connection", err)
		}
		if n := count(t, raw, "SELECT COUNT(*) FROM "+tbl); n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
	})
}

// TestIntegrationAppSavepointName: an application savepoint named like the
// wrapper's own (sqlconflict_sp, its fixed name until it got a random
// part) is the application's alone: ROLLBACK TO it undoes everything after
// it, the wrapper's guarded writes included. MySQL would otherwise replace
// one savepoint by the other silently.
func TestIntegrationAppSavepointName(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t, "conflict_savepoints=writes")
		tbl := s.table(t, db, "", "k INT PRIMARY KEY")
		mustExec(t, db, "INSERT INTO "+tbl+" (k) VALUES (0)")
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		mustExec(t, tx, "SAVEPOINT sqlconflict_sp")
		mustExec(t, tx, "INSERT INTO "+tbl+" (k) VALUES (1)")
		if _, err := tx.Exec("INSERT INTO " + tbl + " (k) VALUES (0)"); !IsUniqueViolation(err) {
			t.Fatalf("duplicate: %v", err)
		}
		mustExec(t, tx, "ROLLBACK TO SAVEPOINT sqlconflict_sp")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "SELECT COUNT(*) FROM "+tbl); n != 1 {
			t.Errorf("%d rows, want 1: the application's ROLLBACK TO did not undo its INSERT", n)
		}
	})
}
