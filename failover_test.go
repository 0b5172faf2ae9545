package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// Failovers, restarts and refused handshakes, as the failover issue put
// them: each test runs the raw driver beside the wrapper where that says
// something, logs both, and asserts what the wrapper promises: an error that
// sent nothing is classified so (retryable, nothing applied), RunTx rides
// the fault out, and no write is applied twice.
//
// The private servers (internal/itest/private.go) run only with
// SQLCONFLICT_PRIVATE_SERVERS=1, on this file's own ports: PostgreSQL
// 5462-5469, MariaDB 3432-3439. Tests run one after another, and each
// test's cleanup stops its servers.

const (
	foPGStandbyPrimary, foPGStandby = 5462, 5463 // TestIntegrationFailoverPGStandby
	foPGStale                       = 5464       // TestIntegrationFailoverStalePool
	foPGDown                        = 5465       // TestIntegrationFailoverServerDown
	foPGChurnPrimary, foPGChurn     = 5466, 5467 // TestIntegrationFailoverReadOnlyChurn
	foPGWorkPrimary, foPGWorkStby   = 5468, 5469 // TestIntegrationFailoverWorkload
	foMariaPrimary, foMariaReplica  = 3432, 3433 // TestIntegrationFailoverMariaDBReplica
	foMariaDown                     = 3434       // TestIntegrationFailoverServerDown
)

// foPG and foMaria describe a private instance as a server, so that the
// shared helpers (table, openRaw, q) work on it.
func foPG(inst *itest.PGInstance) server {
	return server{itest.Server{Name: "postgres", Driver: DriverPostgres, Raw: "postgres", DSN: inst.DSN(), Env: itest.EnvPG}}
}

func foMaria(inst *itest.MariaDBInstance) server {
	return server{itest.Server{Name: "mysql", Driver: DriverMySQL, Raw: "mysql", DSN: inst.DSN(), Env: itest.EnvMySQL}}
}

// foOpen opens driver on dsn without checking that anything answers,
// closed when t ends.
func foOpen(t testing.TB, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", driver, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// foDescribe names an error and its class, for the raw-versus-wrapped logs.
func foDescribe(err error) string {
	if err == nil {
		return "<nil>"
	}
	cl := Classify(err)
	msg := strings.ReplaceAll(err.Error(), "\n", " | ")
	if len(msg) > 160 {
		msg = msg[:160] + "..."
	}
	return fmt.Sprintf("%q [%s; %v/%v retryable=%v]", msg, errName(err), cl.Kind, cl.Scope, cl.Retryable)
}

// foRows counts the rows of tbl holding tok.
func foRows(t testing.TB, db *sql.DB, tbl, tok string) int {
	t.Helper()
	return count(t, db, "SELECT COUNT(*) FROM "+tbl+" WHERE token = '"+tok+"'")
}

// foTokenTable creates a table of tokens with no unique constraint on the
// token: a write applied twice shows as two rows.
func foTokenTable(t testing.TB, s server, db *sql.DB) string {
	t.Helper()
	cols := "id BIGSERIAL PRIMARY KEY, token VARCHAR(64) NOT NULL"
	if !s.PG() {
		cols = "id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL"
	}
	return s.table(t, db, "", cols)
}

// foInsert is the workload's write of tok into tbl.
func foInsert(s server, tbl string) string {
	return s.q("INSERT INTO " + tbl + " (token) VALUES ($1)")
}

// foTok makes a token unique to this process and test.
func foTok(kind string, i int) string { return fmt.Sprintf("fo%s%s%dx", runID, kind, i) }

// foClosedAddr returns a loopback address nobody listens on: a port just
// bound and released.
func foClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// foWaitTable waits up to 10 s until db (a standby, a replica) sees tbl.
func foWaitTable(t testing.TB, db *sql.DB, tbl string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var n int
		err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&n)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not replicated within 10s: %v", tbl, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// foAsync runs f on a goroutine of its own and returns its error on a
// channel; foWait waits for it, bounded.
func foAsync(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func foWait(t testing.TB, what string, ch <-chan error, patience time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(patience):
		t.Fatalf("%s: still running after %v", what, patience)
		return nil
	}
}

// TestIntegrationFailoverRunTxRefusedDeadline attacks the classification
// of a deadline that ends RunTx while the server refuses connections (a
// closed port): nothing was ever sent, so the error must say unavailable,
// nothing sent (KindUnavailable, ScopeStatement), and still match the
// context's deadline and *RetryError. Before the fix it read as a canceled
// query with an unknown outcome.
func TestIntegrationFailoverRunTxRefusedDeadline(t *testing.T) {
	addr := foClosedAddr(t)
	for _, d := range []struct{ name, wrapped, raw, dsn string }{
		{"postgres", DriverPostgres, "postgres", "postgres://postgres@" + addr + "/test?sslmode=disable"},
		{"mysql", DriverMySQL, "mysql", "root@tcp(" + addr + ")/test"},
	} {
		t.Run(d.name, func(t *testing.T) {
			run := func(drv string) (time.Duration, int, error) {
				db := foOpen(t, drv, d.dsn)
				ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
				defer cancel()
				start := time.Now()
				calls := 0
				err := RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					calls++
					_, err := tx.ExecContext(ctx, "SELECT 1")
					return err
				})
				return time.Since(start), calls, err
			}
			rawTook, _, rawErr := run(d.raw)
			took, calls, err := run(d.wrapped)
			t.Logf("raw:     after %v: %s", rawTook.Round(time.Millisecond), foDescribe(rawErr))
			t.Logf("wrapped: after %v: %s", took.Round(time.Millisecond), foDescribe(err))
			var re *RetryError
			cl := Classify(err)
			switch {
			case err == nil:
				t.Fatal("RunTx against a closed port succeeded")
			case calls != 0:
				t.Errorf("fn ran %d times without a connection", calls)
			case took > 600*time.Millisecond+500*time.Millisecond:
				t.Errorf("RunTx returned %v after its start, its deadline was 600ms", took)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("errors.Is(err, context.DeadlineExceeded) = false for %v", err)
			}
			if !errors.As(err, &re) {
				t.Errorf("errors.As(err, **RetryError) = false for %v (%T)", err, err)
			}
			if cl.Kind != KindUnavailable || cl.Scope != ScopeStatement || !cl.Retryable {
				t.Errorf("Classify = %v/%v retryable=%v, want %v/%v retryable (nothing was sent)",
					cl.Kind, cl.Scope, cl.Retryable, KindUnavailable, ScopeStatement)
			}
		})
	}
}

// foSetReadOnly makes a private primary read-only for new sessions (and
// writable again), as an operator fencing it does, and waits until a new
// session sees it.
// pqMultiHost reports whether the linked lib/pq takes multi-host DSNs and
// target_session_attrs, as v1.11 on does; before, it dials "port=A,B" as one
// port. The tests run at both (.ci/check-versions).
func pqMultiHost(t testing.TB) bool {
	major, minor := itest.LinkedVersion(t, "github.com/lib/pq", pq.NewConnector)
	return major > 1 || minor >= 11
}

func foSetReadOnly(t testing.TB, inst *itest.PGInstance, on bool) {
	t.Helper()
	db := foOpen(t, "postgres", inst.DSN())
	db.SetMaxIdleConns(0) // every check is a new session
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := "ALTER SYSTEM RESET default_transaction_read_only"
	want := "off"
	if on {
		q, want = "ALTER SYSTEM SET default_transaction_read_only = on", "on"
	}
	for _, stmt := range []string{q, "SELECT pg_reload_conf()"} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	for {
		var v string
		if err := db.QueryRowContext(ctx, "SHOW default_transaction_read_only").Scan(&v); err != nil {
			t.Fatalf("SHOW default_transaction_read_only: %v", err)
		}
		if v == want {
			db.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIntegrationFailoverPGStandby attacks a DSN that leads to a hot
// standby. (a) lib/pq begins every transaction READ WRITE, which a standby
// refuses with 0A000: that must read as read-only and retryable, and the
// connection must go, so that the next attempt connects anew. (b) A
// multi-host DSN with target_session_attrs=read-write, both hosts
// read-only: lib/pq's refusal to connect ("session is read-only", "server
// is in hot standby mode") sent nothing of the application's and is
// retryable read-only; RunTx started then gets through once the primary
// is writable again, and its row is there once.
func TestIntegrationFailoverPGStandby(t *testing.T) {
	primary := itest.StartPG(t, foPGStandbyPrimary)
	standby := primary.StartStandby(t, foPGStandby)
	ps := foPG(primary)
	pdb := ps.openRaw(t)
	tbl := foTokenTable(t, ps, pdb)
	foWaitTable(t, foOpen(t, "postgres", standby.DSN()), tbl)

	t.Run("begin on the standby", func(t *testing.T) {
		for _, drv := range []string{"postgres", DriverPostgres} {
			db := foOpen(t, drv, standby.DSN())
			db.SetMaxOpenConns(1)
			before := ps.backendID(t, db)
			tx, err := db.BeginTx(context.Background(), nil)
			if err == nil {
				tx.Rollback()
			}
			after := ps.backendID(t, db)
			t.Logf("%-20s BeginTx: %s; backend %d, then %d", drv, foDescribe(err), before, after)
			if drv != DriverPostgres {
				continue
			}
			cl := Classify(err)
			if err == nil || cl.Code != "0A000" || cl.Kind != KindReadOnly || !cl.Retryable {
				t.Errorf("wrapped BeginTx on a standby: %s, want 0A000 read only, retryable", foDescribe(err))
			}
			if after == before {
				t.Errorf("the connection the standby refused was reused (backend %d)", after)
			}
		}
	})

	t.Run("multi-host, both read-only", func(t *testing.T) {
		foSetReadOnly(t, primary, true)
		t.Cleanup(func() { foSetReadOnly(t, primary, false) })
		multi := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=test sslmode=disable target_session_attrs=read-write connect_timeout=5",
			standby.Port, primary.Port)
		multiHost := pqMultiHost(t)
		if !multiHost {
			// lib/pq before v1.11 knows one host and no
			// target_session_attrs: the same read-only spell through the
			// read-only primary alone, whose refusal of the write (25006)
			// is as read only, retryable and unapplied.
			multi = fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=test sslmode=disable connect_timeout=5", primary.Port)
		}

		rawDB := foOpen(t, "postgres", multi)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rawErr := rawDB.PingContext(ctx)
		cancel()
		t.Logf("raw:     Ping: %s", foDescribe(rawErr))

		db := foOpen(t, DriverPostgres, multi+" conflict_retries=0")
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		tok := foTok("ro", 0)
		_, err := db.ExecContext(ctx, foInsert(ps, tbl), tok)
		cancel()
		t.Logf("wrapped: Exec: %s", foDescribe(err))
		cl := Classify(err)
		if err == nil || cl.Kind != KindReadOnly || !cl.Retryable || cl.Scope != ScopeStatement {
			t.Errorf("connect to read-only hosts: %s, want read only, retryable, nothing sent (statement)", foDescribe(err))
		}
		if multiHost && (!strings.Contains(fmt.Sprint(err), "session is read-only") || !strings.Contains(fmt.Sprint(err), "hot standby")) {
			t.Errorf("error %v does not name both refusals", err)
		}
		if n := foRows(t, pdb, tbl, tok); n != 0 {
			t.Errorf("a refused connection's write is there %d times", n)
		}

		// RunTx while both are read-only; the primary is writable again a
		// second later.
		db = foOpen(t, DriverPostgres, multi+" conflict_retry_timeout=10s")
		tok = foTok("ro", 1)
		start := time.Now()
		attempts := 0
		res := foAsync(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return TxRunner{MaxElapsed: 15 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
				attempts++
				_, err := tx.ExecContext(ctx, foInsert(ps, tbl), tok)
				return err
			})
		})
		time.Sleep(time.Second)
		rawCtx, rawCancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, rawErr = rawDB.ExecContext(rawCtx, foInsert(ps, tbl), foTok("ro", 2))
		rawCancel()
		t.Logf("raw:     Exec while both are read-only: %s", foDescribe(rawErr))
		foSetReadOnly(t, primary, false)
		writable := time.Since(start)
		err = foWait(t, "RunTx", res, 25*time.Second)
		t.Logf("wrapped: RunTx: %s after %v (primary writable at %v), fn ran %d times",
			foDescribe(err), time.Since(start).Round(time.Millisecond), writable.Round(time.Millisecond), attempts)
		if err != nil {
			t.Errorf("RunTx across the read-only spell: %s", foDescribe(err))
		}
		if n := foRows(t, pdb, tbl, tok); n != 1 {
			t.Errorf("RunTx's row is there %d times, want 1", n)
		}
	})
}

// TestIntegrationFailoverMariaDBReplica attacks go-sql-driver/mysql's
// rejectReadOnly failover on a GTID replica (read_only, error 1290): in a
// transaction the driver answers driver.ErrBadConn for a write it did not
// apply, which must read as retryable with the whole transaction to rerun
// (ScopeTransaction), not as a lost connection of unknown outcome. RunTx
// on the replica, promoted a second after it starts, gets through, its row
// there once; the raw driver's plain transaction fails.
func TestIntegrationFailoverMariaDBReplica(t *testing.T) {
	primary := itest.StartMariaDB(t, foMariaPrimary)
	replica := primary.StartReplica(t, foMariaReplica)
	ps := foMaria(primary)
	pdb := ps.openRaw(t)
	tbl := foTokenTable(t, ps, pdb)
	rdb := foOpen(t, "mysql", replica.DSN())
	foWaitTable(t, rdb, tbl)
	dsn := itest.WithParams(replica.DSN(), "rejectReadOnly=true")

	// One write in a transaction, raw and wrapped.
	tryTx := func(db *sql.DB, tok string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, foInsert(ps, tbl), tok); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	rawDB := foOpen(t, "mysql", dsn)
	rawErr := tryTx(rawDB, foTok("rr", 0))
	t.Logf("raw:     tx INSERT on the replica: %s", foDescribe(rawErr))
	db := foOpen(t, DriverMySQL, dsn)
	tok := foTok("rr", 1)
	err := tryTx(db, tok)
	t.Logf("wrapped: tx INSERT on the replica: %s", foDescribe(err))
	cl := Classify(err)
	if !errors.Is(err, driver.ErrBadConn) {
		t.Errorf("wrapped: %v does not match driver.ErrBadConn", err)
	}
	if err == nil || !cl.Retryable || cl.Scope != ScopeTransaction {
		t.Errorf("wrapped: %s, want retryable, scope transaction (nothing applied)", foDescribe(err))
	}
	if n := foRows(t, rdb, tbl, tok) + foRows(t, pdb, tbl, tok); n != 0 {
		t.Errorf("the refused write is there %d times", n)
	}

	// RunTx on the replica, promoted a second later.
	tok = foTok("rr", 2)
	attempts := 0
	start := time.Now()
	res := foAsync(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
		defer cancel()
		return TxRunner{MaxElapsed: 20 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			_, err := tx.ExecContext(ctx, foInsert(ps, tbl), tok)
			return err
		})
	})
	time.Sleep(time.Second)
	rawErr = tryTx(rawDB, foTok("rr", 3))
	t.Logf("raw:     tx INSERT during the failover (no RunTx): %s", foDescribe(rawErr))
	if rawErr == nil {
		t.Errorf("raw: the replica took a write before its promotion")
	}
	replica.Promote(t)
	promoted := time.Since(start)
	err = foWait(t, "RunTx", res, 30*time.Second)
	t.Logf("wrapped: RunTx: %s after %v (promoted at %v), fn ran %d times",
		foDescribe(err), time.Since(start).Round(time.Millisecond), promoted.Round(time.Millisecond), attempts)
	if err != nil {
		t.Errorf("RunTx across the promotion: %s", foDescribe(err))
	}
	if n := foRows(t, rdb, tbl, tok); n != 1 {
		t.Errorf("RunTx's row is there %d times on the promoted replica, want 1", n)
	}
}

// TestIntegrationFailoverHandshakeRefused attacks connections that a load
// balancer in front of a dead server accepts and closes (FIN) or resets
// (RST) before the handshake ends: nothing of the application's was sent.
// Ping and Exec fail with the base driver's own error object (an io.EOF or
// a reset from lib/pq and go-sql-driver/mysql carries no mark of where it
// happened, so Classify may read it as unknown outcome), and with
// conflict_wrap_errors=true as unavailable, retryable, scope statement;
// RunTx started then, which knows its BeginTx sent nothing, must get
// through once connections are forwarded again, its row there once.
func TestIntegrationFailoverHandshakeRefused(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		direct := s.openRaw(t)
		tbl := foTokenTable(t, s, direct)
		target, dsnVia := s.viaProxy(t)
		for _, mode := range []string{"refuse", "reset"} {
			t.Run(mode, func(t *testing.T) {
				proxy := itest.NewProxy(t, target)
				fault := proxy.Refuse
				if mode == "reset" {
					fault = proxy.ResetNew
				}
				dsn := dsnVia(proxy.Addr())
				fault()
				rawDB := foOpen(t, s.Raw, dsn)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				rawPing := rawDB.PingContext(ctx)
				_, rawExec := rawDB.ExecContext(ctx, foInsert(s, tbl), foTok(mode, 0))
				cancel()
				t.Logf("raw:     Ping: %s", foDescribe(rawPing))
				t.Logf("raw:     Exec: %s", foDescribe(rawExec))

				tok := foTok(mode, 1)
				for _, wrapErrors := range []bool{false, true} {
					db := foOpen(t, s.Driver, itest.WithParams(dsn, "conflict_retry_timeout=300ms", fmt.Sprintf("conflict_wrap_errors=%v", wrapErrors)))
					ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
					ping := db.PingContext(ctx)
					_, exec := db.ExecContext(ctx, foInsert(s, tbl), tok)
					cancel()
					for _, c := range []struct {
						what string
						err  error
					}{{"Ping", ping}, {"Exec", exec}} {
						t.Logf("wrapped (conflict_wrap_errors=%v): %s: %s", wrapErrors, c.what, foDescribe(c.err))
						cl := Classify(c.err)
						var own *Error
						switch {
						case c.err == nil:
							t.Errorf("wrapped %s succeeded against a refusing endpoint", c.what)
						case wrapErrors && (cl.Kind != KindUnavailable || cl.Scope != ScopeStatement || !cl.Retryable):
							t.Errorf("wrapped %s: %s, want unavailable, statement, retryable", c.what, foDescribe(c.err))
						case !wrapErrors && errors.As(c.err, &own):
							t.Errorf("wrapped %s: %s, want the base driver's own error object", c.what, foDescribe(c.err))
						}
					}
				}
				if n := foRows(t, direct, tbl, tok); n != 0 {
					t.Errorf("a write that never got a connection is there %d times", n)
				}

				// RunTx while refusing; forwarding again 800 ms later.
				db := foOpen(t, s.Driver, itest.WithParams(dsn, "conflict_retry_timeout=10s"))
				tok = foTok(mode, 2)
				attempts := 0
				start := time.Now()
				res := foAsync(func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					defer cancel()
					return TxRunner{MaxElapsed: 12 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
						attempts++
						_, err := tx.ExecContext(ctx, foInsert(s, tbl), tok)
						return err
					})
				})
				time.Sleep(800 * time.Millisecond)
				proxy.Normal()
				err := foWait(t, "RunTx", res, 20*time.Second)
				t.Logf("wrapped: RunTx: %s after %v, fn ran %d times, proxy accepted %d connections",
					foDescribe(err), time.Since(start).Round(time.Millisecond), attempts, proxy.Accepted())
				if err != nil {
					t.Errorf("RunTx across the refusals: %s", foDescribe(err))
				}
				if n := foRows(t, direct, tbl, tok); n != 1 {
					t.Errorf("RunTx's row is there %d times, want 1", n)
				}
			})
		}
	})
}

// foWarm makes n connections of db's pool used and idle: all held at once,
// each used, then all released.
func foWarm(t testing.TB, db *sql.DB, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("warm connection %d: %v", i, err)
		}
		if _, err := c.ExecContext(ctx, "SELECT 1"); err != nil {
			t.Fatalf("warm connection %d: %v", i, err)
		}
		conns[i] = c
	}
	for _, c := range conns {
		c.Close()
	}
	if idle := db.Stats().Idle; idle != n {
		t.Fatalf("%d idle connections after warming, want %d", idle, n)
	}
}

// TestIntegrationFailoverStalePool attacks a pool whose idle connections a
// restart killed: a fast shutdown sends 57P01 to every idle session and
// closes it. The wrapper refuses such a connection before it sends
// anything on it (ResetSession), so that 8 autocommit INSERTs after the
// restart all succeed, each once. The raw driver's failures are logged.
func TestIntegrationFailoverStalePool(t *testing.T) {
	inst := itest.StartPG(t, foPGStale)
	s := foPG(inst)
	direct := s.openRaw(t)
	tbl := foTokenTable(t, s, direct)
	const pool, writes = 4, 8
	dbs := map[string]*sql.DB{}
	for _, mode := range []string{"raw", "wrapped"} {
		drv := s.Raw
		if mode == "wrapped" {
			drv = s.Driver
		}
		db := foOpen(t, drv, s.DSN)
		db.SetMaxOpenConns(pool)
		db.SetMaxIdleConns(pool)
		foWarm(t, db, pool)
		dbs[mode] = db
	}
	direct.Close()
	inst.Stop(t)
	inst.Restart(t)
	direct = s.openRaw(t)

	for _, mode := range []string{"raw", "wrapped"} {
		db := dbs[mode]
		var failed []string
		for i := range writes {
			tok := foTok("st"+mode, i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := db.ExecContext(ctx, foInsert(s, tbl), tok)
			cancel()
			if err != nil {
				failed = append(failed, fmt.Sprintf("#%d %s", i, foDescribe(err)))
			}
		}
		rows, dups := 0, 0
		for i := range writes {
			n := foRows(t, direct, tbl, foTok("st"+mode, i))
			rows += n
			if n > 1 {
				dups++
			}
		}
		t.Logf("%-7s %d INSERTs after the restart: %d failed, %d rows, %d tokens duplicated; failures: %v",
			mode, writes, len(failed), rows, dups, failed)
		if dups != 0 {
			t.Errorf("%s: %d tokens written twice", mode, dups)
		}
		if mode == "wrapped" && (len(failed) != 0 || rows != writes) {
			t.Errorf("wrapped: %d of %d INSERTs failed on the stale pool, %d rows, want none failed and %d rows",
				len(failed), writes, rows, writes)
		}
	}
}

// TestIntegrationFailoverServerDown attacks an autocommit statement issued
// while the server is down and back 1.5 s later: the wrapper retries the
// refused connection (it sent nothing) within conflict_retry_timeout and
// the context, and the INSERT runs once. The raw driver fails at once.
func TestIntegrationFailoverServerDown(t *testing.T) {
	for _, pg := range []bool{true, false} {
		t.Run(map[bool]string{true: "postgres", false: "mysql"}[pg], func(t *testing.T) {
			var s server
			var stop, restart func(testing.TB)
			if pg {
				inst := itest.StartPG(t, foPGDown)
				s, stop, restart = foPG(inst), inst.Stop, inst.Restart
			} else {
				inst := itest.StartMariaDB(t, foMariaDown)
				s, stop, restart = foMaria(inst), inst.Stop, inst.Restart
			}
			direct := s.openRaw(t)
			tbl := foTokenTable(t, s, direct)
			direct.Close()
			stop(t)

			rawDB := foOpen(t, s.Raw, s.DSN)
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, rawErr := rawDB.ExecContext(ctx, foInsert(s, tbl), foTok("dn", 0))
			cancel()
			t.Logf("raw:     Exec with the server down: %s after %v", foDescribe(rawErr), time.Since(start).Round(time.Millisecond))

			db := foOpen(t, s.Driver, itest.WithParams(s.DSN, "conflict_retry_timeout=10s"))
			tok := foTok("dn", 1)
			start = time.Now()
			res := foAsync(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				_, err := db.ExecContext(ctx, foInsert(s, tbl), tok)
				return err
			})
			time.Sleep(1500 * time.Millisecond)
			restart(t)
			up := time.Since(start)
			err := foWait(t, "Exec", res, 20*time.Second)
			t.Logf("wrapped: Exec: %s after %v (server up at %v)", foDescribe(err), time.Since(start).Round(time.Millisecond), up.Round(time.Millisecond))
			direct = s.openRaw(t)
			n := foRows(t, direct, tbl, tok)
			if err != nil || n != 1 {
				t.Errorf("wrapped Exec across the restart: %s, row there %d times; want success, once", foDescribe(err), n)
			}
		})
	}
}

// TestIntegrationFailoverReadOnlyChurn attacks the reconnects of a DSN
// that leads only to a standby: every write is refused read-only, and the
// wrapper discards refused connections so that a multi-host DSN finds the
// new primary, but paced (readonly.go): 8 writers for 5 s must not open a
// session per refusal. The sessions opened are counted at a proxy in front
// of the standby, raw and wrapped.
func TestIntegrationFailoverReadOnlyChurn(t *testing.T) {
	primary := itest.StartPG(t, foPGChurnPrimary)
	standby := primary.StartStandby(t, foPGChurn)
	ps := foPG(primary)
	tbl := foTokenTable(t, ps, ps.openRaw(t))
	foWaitTable(t, foOpen(t, "postgres", standby.DSN()), tbl)
	const writers, spell = 8, 5 * time.Second

	churn := func(drv string) (sessions, ops, refused int, other []string) {
		proxy := itest.NewProxy(t, fmt.Sprintf("127.0.0.1:%d", standby.Port))
		dsn := fmt.Sprintf("postgres://postgres@%s/test?sslmode=disable", proxy.Addr())
		db := foOpen(t, drv, dsn)
		db.SetMaxOpenConns(writers)
		db.SetMaxIdleConns(writers)
		var nOps, nRefused atomic.Int64
		var mu sync.Mutex
		var wg sync.WaitGroup
		end := time.Now().Add(spell)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(end); i++ {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := db.ExecContext(ctx, foInsert(ps, tbl), foTok(fmt.Sprintf("ch%dw", w), i))
					cancel()
					nOps.Add(1)
					if cl := Classify(err); cl.Kind == KindReadOnly {
						nRefused.Add(1)
					} else {
						mu.Lock()
						if len(other) < 5 {
							other = append(other, foDescribe(err))
						}
						mu.Unlock()
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
		wg.Wait()
		db.Close()
		return proxy.Accepted(), int(nOps.Load()), int(nRefused.Load()), other
	}
	rawSessions, rawOps, rawRefused, rawOther := churn("postgres")
	t.Logf("raw:     %d sessions opened for %d writes (%d refused read-only; others: %v)", rawSessions, rawOps, rawRefused, rawOther)
	sessions, ops, refused, other := churn(DriverPostgres)
	t.Logf("wrapped: %d sessions opened for %d writes (%d refused read-only; others: %v)", sessions, ops, refused, other)
	if len(other) != 0 {
		t.Errorf("wrapped: writes on the standby failed otherwise than read-only: %v", other)
	}
	if limit := 4*rawSessions + 40; sessions > limit {
		t.Errorf("wrapped opened %d sessions against the standby in %v, raw %d: want at most %d", sessions, spell, rawSessions, limit)
	}
}

// TestIntegrationFailoverVerifyCommit attacks conflict_verify_commit on the
// shared PostgreSQL through the fault proxy: the connection is cut (a)
// after the server ran COMMIT, and (b) before COMMIT reached it. With the
// option the wrapper asks the server: (a) Commit returns nil, the row is
// there; (b) Commit's error is retryable with the whole transaction to
// rerun, the row absent, and RunTx around such a cut ends with the row
// there once. Without it both are unknown outcomes. (c) The identity query
// before COMMIT goes only with a transaction that wrote.
func TestIntegrationFailoverVerifyCommit(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	direct := s.openRaw(t)
	tbl := foTokenTable(t, s, direct)
	target, dsnVia := s.viaProxy(t)
	const identity = "txid_current_if_assigned"
	proxy := newFaultProxy(t, target, regexp.MustCompile(identity))
	dsn := dsnVia(proxy.addr())
	dbs := map[string]*sql.DB{
		"raw":                   foOpen(t, s.Raw, dsn),
		"wrapped":               foOpen(t, s.Driver, dsn),
		"wrapped+verify_commit": foOpen(t, s.Driver, itest.WithParams(dsn, "conflict_verify_commit=true")),
	}
	modes := []string{"raw", "wrapped", "wrapped+verify_commit"}
	seq := 0

	// commitCut writes a token in a transaction, arms the cut on COMMIT and
	// commits.
	commitCut := func(t *testing.T, db *sql.DB, mode cutMode) (string, error) {
		t.Helper()
		seq++
		tok := foTok("vc", seq)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, foInsert(s, tbl), tok); err != nil {
			t.Fatal(err)
		}
		f := &fault{mode: mode, match: []byte("COMMIT")}
		proxy.arm(f)
		err = tx.Commit()
		proxy.disarm()
		if !f.fired.Load() {
			t.Fatalf("the %v cut on COMMIT did not fire", mode)
		}
		return tok, err
	}
	for _, cut := range []cutMode{cutOnReply, cutOnSend} {
		t.Run(cut.String(), func(t *testing.T) {
			for _, m := range modes {
				tok, err := commitCut(t, dbs[m], cut)
				n := foRows(t, direct, tbl, tok)
				t.Logf("%-22s Commit: %s; row there %d times", m, foDescribe(err), n)
				cl := Classify(err)
				switch {
				case m != "wrapped+verify_commit":
					if m == "wrapped" && (err == nil || cl.Scope != ScopeUnknownOutcome) {
						t.Errorf("%s: Commit cut %v: %s, want an unknown outcome", m, cut, foDescribe(err))
					}
				case cut == cutOnReply:
					if err != nil || n != 1 {
						t.Errorf("%s: Commit cut after the server ran it: %s, row there %d times; want nil and 1", m, foDescribe(err), n)
					}
				default:
					if err == nil || !cl.Retryable || cl.Scope != ScopeTransaction || n != 0 {
						t.Errorf("%s: Commit cut before it reached the server: %s, row there %d times; want retryable, scope transaction, 0",
							m, foDescribe(err), n)
					}
				}
			}
		})
	}

	t.Run("RunTx", func(t *testing.T) {
		for _, m := range modes {
			seq++
			tok := foTok("vc", seq)
			f := &fault{mode: cutOnSend, match: []byte("COMMIT")}
			attempts := 0
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := TxRunner{MaxElapsed: 15 * time.Second}.Run(ctx, dbs[m], nil, func(ctx context.Context, tx *sql.Tx) error {
				attempts++
				_, err := tx.ExecContext(ctx, foInsert(s, tbl), tok)
				if attempts == 1 {
					proxy.arm(f)
				}
				return err
			})
			cancel()
			proxy.disarm()
			n := foRows(t, direct, tbl, tok)
			t.Logf("%-22s RunTx with COMMIT cut before the server: %s; fn ran %d times; row there %d times", m, foDescribe(err), attempts, n)
			if m == "wrapped+verify_commit" && (err != nil || n != 1 || !f.fired.Load()) {
				t.Errorf("%s: RunTx: %s, cut fired %v, row there %d times; want nil and 1", m, foDescribe(err), f.fired.Load(), n)
			}
			if n > 1 {
				t.Errorf("%s: RunTx's row is there %d times", m, n)
			}
		}
	})

	t.Run("identity query only after a write", func(t *testing.T) {
		db := dbs["wrapped+verify_commit"]
		for _, write := range []bool{false, true} {
			before := proxy.sentCount(identity)
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			var n int
			if err := tx.QueryRow("SELECT COUNT(*) FROM " + tbl).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if write {
				seq++
				mustExec(t, tx, foInsert(s, tbl), foTok("vc", seq))
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			got, want := proxy.sentCount(identity)-before, 0
			if write {
				want = 1
			}
			t.Logf("transaction that wrote %v: %d identity queries sent", write, got)
			if got != want {
				t.Errorf("transaction that wrote %v: %d identity queries sent, want %d", write, got, want)
			}
		}
	})
}

// foOutcome is what a client of the failover workload learnt of one write.
type foOutcome int

const (
	foAcked   foOutcome = iota // nil error: the row must be there once
	foUnknown                  // unknown outcome: 0 or 1 row
	foFailed                   // a definite failure: no row
)

// foRecord is one write of the failover workload.
type foRecord struct {
	tok string
	out foOutcome
	err error
}

// foHistory checks a workload's records against the table and returns its
// figures; problems is what a wrapper must never show.
func foHistory(t *testing.T, db *sql.DB, tbl string, recs []foRecord) (figures string, problems []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	found, rows := tokenRows(t, ctx, db, tbl)
	var acked, unknown, unknownApplied, failed, dups int
	kinds := map[string]int{}
	for _, r := range recs {
		n := found[r.tok]
		delete(found, r.tok)
		if n > 1 {
			dups++
			problems = append(problems, fmt.Sprintf("%s is there %d times (%s)", r.tok, n, foDescribe(r.err)))
		}
		if r.err != nil {
			kinds[errName(r.err)+" "+Classify(r.err).Kind.String()+"/"+Classify(r.err).Scope.String()]++
		}
		switch r.out {
		case foAcked:
			acked++
			if n != 1 {
				problems = append(problems, fmt.Sprintf("acknowledged %s is there %d times", r.tok, n))
			}
		case foUnknown:
			unknown++
			if n == 1 {
				unknownApplied++
			}
		case foFailed:
			failed++
			if n != 0 {
				problems = append(problems, fmt.Sprintf("%s failed definitely (%s) but is there %d times", r.tok, foDescribe(r.err), n))
			}
		}
	}
	for tok := range found {
		problems = append(problems, "unexpected token "+tok)
	}
	return fmt.Sprintf("writes=%d acked=%d unknown=%d (applied %d) failed=%d rows=%d duplicated=%d errors=%v",
		len(recs), acked, unknown, unknownApplied, failed, rows, dups, kinds), problems
}

// TestIntegrationFailoverWorkload is the history check: a primary
// with a synchronous standby, 4 writers through a multi-host DSN
// (target_session_attrs=read-write) each running RunTx INSERTs of unique
// tokens into a table without a unique constraint, for about 8 s; at 2 s
// the primary is killed (SIGKILL), and the standby promoted a second
// later. No token may be there twice, every acknowledged one must be there
// once, and none whose error Classify calls a definite failure; RunTx,
// with 12 s to ride out a 1 s outage, gives up on none. 4 raw writers
// (plain transactions) run beside on a table of their own, logged.
func TestIntegrationFailoverWorkload(t *testing.T) {
	primary := itest.StartPG(t, foPGWorkPrimary)
	// The standby keeps no synchronous standby of its own once promoted.
	standby := primary.StartStandby(t, foPGWorkStby, "synchronous_standby_names = ''")
	ps := foPG(primary)
	pdb := ps.openRaw(t)
	// Synchronous: an acknowledged commit is on the standby, so that the
	// history check tests the clients, not asynchronous replication.
	mustExec(t, pdb, "ALTER SYSTEM SET synchronous_standby_names = '*'")
	mustExec(t, pdb, "SELECT pg_reload_conf()")
	for deadline := time.Now().Add(10 * time.Second); ; {
		var st string
		pdb.QueryRow("SELECT coalesce(max(sync_state), '') FROM pg_stat_replication").Scan(&st)
		if st == "sync" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby is not synchronous (sync_state %q)", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tables := map[bool]string{}
	ss := foPG(standby)
	sdb := foOpen(t, "postgres", standby.DSN())
	for _, wrapped := range []bool{false, true} {
		tables[wrapped] = ps.table(t, pdb, map[bool]string{false: "_raw", true: "_wr"}[wrapped],
			"id BIGSERIAL PRIMARY KEY, token VARCHAR(64) NOT NULL")
		foWaitTable(t, sdb, tables[wrapped])
	}
	pdb.Close() // its cleanup's DROP TABLE would go to the dead primary
	multi := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=test sslmode=disable target_session_attrs=read-write connect_timeout=2",
		primary.Port, standby.Port)
	var vip *itest.Proxy
	if !pqMultiHost(t) {
		// lib/pq before v1.11 knows one host: the writers follow the
		// failover through a virtual IP instead, a proxy moved from the
		// primary to the standby once it is promoted.
		vip = itest.NewProxy(t, fmt.Sprintf("127.0.0.1:%d", primary.Port))
		host, port, _ := net.SplitHostPort(vip.Addr())
		multi = fmt.Sprintf("host=%s port=%s user=postgres dbname=test sslmode=disable connect_timeout=2", host, port)
	}

	const writers = 4
	const runFor, failAt = 8 * time.Second, 2 * time.Second
	var mu sync.Mutex
	recs := map[bool][]foRecord{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, wrapped := range []bool{false, true} {
		drv, dsn := ss.Raw, multi
		if wrapped {
			drv, dsn = ss.Driver, multi+" conflict_retry_timeout=10s"
		}
		db := foOpen(t, drv, dsn)
		db.SetMaxOpenConns(writers)
		db.SetMaxIdleConns(writers)
		ins := foInsert(ss, tables[wrapped])
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					tok := foTok(fmt.Sprintf("wk%vw%di", wrapped, w), i)
					var r foRecord
					if wrapped {
						r = foRunTxWrite(db, ins, tok)
					} else {
						r = foPlainTxWrite(db, ins, tok)
					}
					mu.Lock()
					recs[wrapped] = append(recs[wrapped], r)
					mu.Unlock()
					pause := 2 * time.Millisecond // a workload, not a benchmark: the machine is shared
					if r.err != nil {
						pause = 20 * time.Millisecond
					}
					time.Sleep(pause)
				}
			}()
		}
	}
	start := time.Now()
	time.Sleep(failAt)
	primary.Kill(t)
	killed := time.Since(start)
	time.Sleep(time.Second) // a failover manager takes a moment to decide
	standby.Promote(t)
	if vip != nil {
		vip.Retarget(fmt.Sprintf("127.0.0.1:%d", standby.Port))
	}
	promoted := time.Since(start)
	time.Sleep(max(0, runFor-time.Since(start)))
	close(stop)
	done := foAsync(func() error { wg.Wait(); return nil })
	foWait(t, "the writers", done, 30*time.Second)
	t.Logf("primary killed at %v, standby promoted at %v, writers stopped at %v",
		killed.Round(time.Millisecond), promoted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	for _, wrapped := range []bool{false, true} {
		figures, problems := foHistory(t, sdb, tables[wrapped], recs[wrapped])
		name := map[bool]string{false: "raw (plain tx)", true: "wrapped (RunTx)"}[wrapped]
		t.Logf("%-16s %s", name, figures)
		if wrapped {
			for _, r := range recs[wrapped] {
				if r.out == foFailed {
					problems = append(problems, fmt.Sprintf("RunTx gave up on %s during a failover it had 12 s to ride out: %s", r.tok, foDescribe(r.err)))
				}
			}
		}
		for _, p := range problems {
			if wrapped {
				t.Errorf("wrapped: %s", p)
			} else {
				t.Logf("raw: %s", p)
			}
		}
	}
}

// foRunTxWrite writes tok with RunTx and judges the outcome by Classify.
func foRunTxWrite(db *sql.DB, ins, tok string) foRecord {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := TxRunner{MaxElapsed: 12 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, ins, tok)
		return err
	})
	switch {
	case err == nil:
		return foRecord{tok: tok, out: foAcked}
	case Classify(err).Scope == ScopeUnknownOutcome:
		return foRecord{tok: tok, out: foUnknown, err: err}
	}
	return foRecord{tok: tok, out: foFailed, err: err}
}

// foPlainTxWrite writes tok in a plain transaction: a failure before
// COMMIT is definite, COMMIT's own is unknown.
func foPlainTxWrite(db *sql.DB, ins, tok string) foRecord {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return foRecord{tok: tok, out: foFailed, err: err}
	}
	if _, err := tx.ExecContext(ctx, ins, tok); err != nil {
		tx.Rollback()
		return foRecord{tok: tok, out: foFailed, err: err}
	}
	if err := tx.Commit(); err != nil {
		return foRecord{tok: tok, out: foUnknown, err: err}
	}
	return foRecord{tok: tok, out: foAcked}
}
