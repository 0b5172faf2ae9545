package pgx_test

// Fault tests of sqlconflict-pgx: the root package's fault tests
// (hardbound_test.go, availability_test.go, restart_test.go) run over
// lib/pq and go-sql-driver/mysql; these put pgx's stdlib under the same
// faults, raw "pgx" beside the wrapped "sqlconflict-pgx", and log both.
// The proxy tests run on the shared server (SQLCONFLICT_PG_DSN); the
// others on private PostgreSQL instances on 127.0.0.1:5474-5478, which
// start only with SQLCONFLICT_PRIVATE_SERVERS=1 (see internal/itest).

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// Private PostgreSQL ports of these tests.
const (
	portFrozen   = 5474
	portPrimary  = 5475
	portStandby  = 5476
	portDown     = 5477
	portStalePgx = 5478
)

// faultClass formats a classification for the logs.
func faultClass(err error) string {
	cl := sqlconflict.Classify(err)
	return fmt.Sprintf("%v/%v/retryable=%v", cl.Kind, cl.Scope, cl.Retryable)
}

// faultOpen opens driver on dsn without connecting, closed when t ends.
func faultOpen(t testing.TB, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", driver, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// faultViaProxy returns the shared server's host:port, for a proxy's
// target, and the server's DSN with the proxy's address in its place.
func faultViaProxy(t *testing.T, srv itest.Server) (target string, dsnVia func(addr string) string) {
	t.Helper()
	u, err := url.Parse(srv.DSN)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" || strings.Contains(u.Host, ",") {
		t.Skipf("fault tests need %s as a single-host postgres:// URL", itest.EnvPG)
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	return u.Hostname() + ":" + port, func(addr string) string {
		v := *u
		v.Host = addr
		return v.String()
	}
}

// faultBounded is the hard-bound measurement (itest.Bounded) for pgx:
// raw pgx's stdlib against sqlconflict-pgx on dsn, the faulty path.
func faultBounded(t *testing.T, dsn, tbl string, fault func() (end func())) {
	itest.Bounded{Raw: "pgx", Wrapped: sqlconflictpgx.DriverName, Table: tbl,
		Open: func(t *testing.T, driver string) *sql.DB { return faultOpen(t, driver, dsn) },
		UnknownOutcome: func(err error) bool {
			return sqlconflict.Classify(err).Scope == sqlconflict.ScopeUnknownOutcome
		}}.Run(t, fault)
}

// TestIntegrationPgxFaultHardBound: the caller's context bounds every call
// through sqlconflict-pgx, within 100 ms of its deadline, against a
// network path that stops delivering (a proxy that holds every byte,
// sockets open, in front of the shared server) and against a frozen
// server (SIGSTOP, private, on 5474).
func TestIntegrationPgxFaultHardBound(t *testing.T) {
	t.Run("partition", func(t *testing.T) {
		srv := pgServer(t)
		direct := srv.Open(t, "pgx")
		tbl := table(t, direct, "", "id INT PRIMARY KEY, v INT NOT NULL")
		mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
		target, dsnVia := faultViaProxy(t, srv)
		proxy := itest.NewProxy(t, target)
		faultBounded(t, dsnVia(proxy.Addr()), tbl, func() func() {
			proxy.Stall()
			return func() { proxy.Resume(); proxy.CutAll() }
		})
	})
	t.Run("frozen", func(t *testing.T) {
		inst := itest.StartPG(t, portFrozen)
		direct := faultOpen(t, "pgx", inst.DSN())
		tbl := table(t, direct, "", "id INT PRIMARY KEY, v INT NOT NULL")
		mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
		faultBounded(t, inst.DSN(), tbl, func() func() {
			inst.Freeze(t)
			return func() { inst.Thaw(t) }
		})
	})
}

// faultAsync runs f on a goroutine of its own; the returned function waits
// for it and returns how long it took and its error. The test's goroutine
// stays free for the fixtures' calls, which may fail t.
func faultAsync(f func() error) func() (time.Duration, error) {
	start := time.Now()
	var err error
	var took time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = f()
		took = time.Since(start)
	}()
	return func() (time.Duration, error) { <-done; return took, err }
}

// faultRows counts the rows of tbl whose token is tok, through db.
func faultRows(t *testing.T, db *sql.DB, tbl, tok string) int {
	t.Helper()
	return count(t, db, "SELECT COUNT(*) FROM "+tbl+" WHERE token = $1", tok)
}

// TestIntegrationPgxFaultReadOnlyHosts: a multi-host DSN with
// target_session_attrs=read-write whose every host is read-only (a standby
// and a primary with default_transaction_read_only on, as during a
// failover). pgx refuses the connection ("ValidateConnect failed: read
// only connection"), which sent nothing of the application's: it is a
// read-only refusal, retryable, and RunTx rides it out until the primary
// takes writes again.
func TestIntegrationPgxFaultReadOnlyHosts(t *testing.T) {
	primary := itest.StartPG(t, portPrimary)
	standby := primary.StartStandby(t, portStandby)
	admin := faultOpen(t, "pgx", primary.DSN())
	tbl := table(t, admin, "", "id SERIAL PRIMARY KEY, token TEXT NOT NULL")
	setRO := func(on bool) {
		t.Helper()
		q := "ALTER SYSTEM RESET default_transaction_read_only"
		if on {
			q = "ALTER SYSTEM SET default_transaction_read_only = on"
		}
		mustExec(t, admin, q)
		mustExec(t, admin, "SELECT pg_reload_conf()")
		// A new session sees the reload once the postmaster has read it.
		want := map[bool]string{true: "on", false: "off"}[on]
		probe := faultOpen(t, "pgx", primary.DSN())
		probe.SetMaxIdleConns(0)
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got string
			err := probe.QueryRow("SHOW transaction_read_only").Scan(&got)
			if err == nil && got == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("primary: transaction_read_only %q (%v), want %s", got, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		probe.Close()
	}
	// The table has reached the standby before the hosts go read-only.
	onStandby := faultOpen(t, "pgx", standby.DSN())
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ok bool
		err := onStandby.QueryRow("SELECT to_regclass($1) IS NOT NULL", tbl).Scan(&ok)
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby: table %s not replicated: %v", tbl, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	setRO(true)
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/test?sslmode=disable&target_session_attrs=read-write", portStandby, portPrimary)

	ping := func(driver, d string, timeout time.Duration) (time.Duration, error) {
		db := faultOpen(t, driver, d)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := db.PingContext(ctx)
		return time.Since(start), err
	}
	checkRO := func(what string, err error) {
		t.Helper()
		cl := sqlconflict.Classify(err)
		switch {
		case err == nil:
			t.Errorf("%s: Ping succeeded on read-only hosts", what)
		case !strings.Contains(err.Error(), "ValidateConnect failed: read only connection"):
			t.Errorf("%s: %v, want pgx's ValidateConnect failed: read only connection", what, err)
		case cl.Kind != sqlconflict.KindReadOnly || cl.Scope != sqlconflict.ScopeStatement || !cl.Retryable:
			t.Errorf("%s: %v classified %+v, want read only, statement, retryable", what, err, cl)
		}
	}
	rawTook, rawErr := ping("pgx", dsn, 5*time.Second)
	t.Logf("raw Ping: %v after %v, class %s", rawErr, rawTook.Round(time.Millisecond), faultClass(rawErr))
	noRetryTook, noRetryErr := ping(sqlconflictpgx.DriverName, itest.WithParams(dsn, "conflict_retries=0"), 5*time.Second)
	t.Logf("wrapped Ping, conflict_retries=0: %v after %v, class %s", noRetryErr, noRetryTook.Round(time.Millisecond), faultClass(noRetryErr))
	checkRO("wrapped Ping, conflict_retries=0", noRetryErr)
	wrTook, wrErr := ping(sqlconflictpgx.DriverName, dsn, 1500*time.Millisecond)
	t.Logf("wrapped Ping, defaults, 1.5 s context: %v after %v, class %s", wrErr, wrTook.Round(time.Millisecond), faultClass(wrErr))
	checkRO("wrapped Ping, defaults", wrErr)

	// RunTx while every host refuses; the primary takes writes again 1 s
	// later.
	db := faultOpen(t, sqlconflictpgx.DriverName, dsn)
	const tok = "ro-runtx"
	attempts := 0
	wait := faultAsync(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return sqlconflict.TxRunner{MaxElapsed: 15 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			attempts++
			_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", tok)
			return err
		})
	})
	time.Sleep(time.Second)
	setRO(false)
	took, err := wait()
	rows := faultRows(t, admin, tbl, tok)
	t.Logf("wrapped RunTx: %v after %v, fn ran %d times, %d row(s)", err, took.Round(time.Millisecond), attempts, rows)
	if err != nil {
		t.Errorf("RunTx across the read-only episode: %v (class %s), want success", err, faultClass(err))
	}
	if rows != 1 {
		t.Errorf("RunTx wrote %d rows, want exactly 1", rows)
	}
	if err == nil && took < time.Second {
		t.Errorf("RunTx succeeded after %v, before the primary took writes again", took)
	}
}

// TestIntegrationPgxFaultRefused: a proxy in front of the shared server
// that accepts connections and closes them at once (FIN) or resets them
// (RST), as a load balancer in front of a dead server does. Nothing was
// sent: the wrapped error is an unavailable server, statement scope,
// retryable; RunTx started during the fault gets through once the proxy
// forwards again, its row written once.
func TestIntegrationPgxFaultRefused(t *testing.T) {
	srv := pgServer(t)
	direct := srv.Open(t, "pgx")
	tbl := table(t, direct, "", "id SERIAL PRIMARY KEY, token TEXT NOT NULL")
	target, dsnVia := faultViaProxy(t, srv)
	for _, mode := range []string{"refuse", "reset"} {
		t.Run(mode, func(t *testing.T) {
			proxy := itest.NewProxy(t, target)
			if mode == "refuse" {
				proxy.Refuse()
			} else {
				proxy.ResetNew()
			}
			dsn := dsnVia(proxy.Addr())
			type attempt struct {
				what, driver string
				params       []string
				timeout      time.Duration
			}
			for _, a := range []attempt{
				{"raw", "pgx", nil, 5 * time.Second},
				{"wrapped, conflict_retries=0", sqlconflictpgx.DriverName, []string{"conflict_retries=0"}, 5 * time.Second},
				{"wrapped, defaults, 1 s context", sqlconflictpgx.DriverName, nil, time.Second},
			} {
				for _, op := range []string{"Ping", "Exec"} {
					db := faultOpen(t, a.driver, itest.WithParams(dsn, a.params...))
					ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
					start := time.Now()
					var err error
					if op == "Ping" {
						err = db.PingContext(ctx)
					} else {
						_, err = db.ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", "refused-"+mode)
					}
					took := time.Since(start)
					cancel()
					t.Logf("%-31s %-4s %v after %v, class %s", a.what, op, err, took.Round(time.Millisecond), faultClass(err))
					if a.driver == "pgx" {
						continue
					}
					cl := sqlconflict.Classify(err)
					if err == nil || cl.Kind != sqlconflict.KindUnavailable || cl.Scope != sqlconflict.ScopeStatement || !cl.Retryable {
						t.Errorf("%s %s: %v classified %+v, want unavailable, statement, retryable", a.what, op, err, cl)
					}
				}
			}
			if n := count(t, direct, "SELECT COUNT(*) FROM "+tbl+" WHERE token = $1", "refused-"+mode); n != 0 {
				t.Errorf("%d refused INSERTs reached the table", n)
			}

			// RunTx during the fault; the proxy forwards again 800 ms later.
			db := faultOpen(t, sqlconflictpgx.DriverName, dsn)
			tok := "runtx-" + mode
			attempts := 0
			wait := faultAsync(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				return sqlconflict.TxRunner{MaxElapsed: 10 * time.Second}.Run(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					attempts++
					_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", tok)
					return err
				})
			})
			time.Sleep(800 * time.Millisecond)
			proxy.Normal()
			took, err := wait()
			rows := faultRows(t, direct, tbl, tok)
			t.Logf("wrapped RunTx: %v after %v, fn ran %d times, %d row(s); proxy accepted %d connections", err, took.Round(time.Millisecond), attempts, rows, proxy.Accepted())
			if err != nil {
				t.Errorf("RunTx across the %s episode: %v (class %s), want success", mode, err, faultClass(err))
			}
			if rows != 1 {
				t.Errorf("RunTx wrote %d rows, want exactly 1", rows)
			}
		})
	}
}

// TestIntegrationPgxFaultServerDown: a statement through sqlconflict-pgx
// while the server is down (stopped, connections refused) waits for it,
// within conflict_retry_timeout and its context, and runs once it is back
// 1.5 s later; raw pgx fails at once.
func TestIntegrationPgxFaultServerDown(t *testing.T) {
	inst := itest.StartPG(t, portDown)
	direct := faultOpen(t, "pgx", inst.DSN())
	tbl := table(t, direct, "", "id SERIAL PRIMARY KEY, token TEXT NOT NULL")
	direct.Close() // its connection would not survive the stop
	inst.Stop(t)

	raw := faultOpen(t, "pgx", inst.DSN())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	start := time.Now()
	_, rawErr := raw.ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", "raw")
	rawTook := time.Since(start)
	cancel()
	t.Logf("raw pgx INSERT, server down: %v after %v, class %s", rawErr, rawTook.Round(time.Millisecond), faultClass(rawErr))

	db := faultOpen(t, sqlconflictpgx.DriverName, itest.WithParams(inst.DSN(), "conflict_retry_timeout=10s"))
	wait := faultAsync(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err := db.ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", "wrapped")
		return err
	})
	time.Sleep(1500 * time.Millisecond)
	restartAt := time.Now()
	inst.Restart(t)
	upAfter := time.Since(restartAt)
	took, err := wait()
	check := faultOpen(t, "pgx", inst.DSN())
	rows := faultRows(t, check, tbl, "wrapped")
	rawRows := faultRows(t, check, tbl, "raw")
	t.Logf("wrapped INSERT: %v after %v (server restarted at 1.5 s, up %v later); %d row(s); raw rows %d",
		err, took.Round(time.Millisecond), upAfter.Round(time.Millisecond), rows, rawRows)
	if rawErr == nil {
		t.Errorf("raw pgx INSERT succeeded with the server down")
	}
	if err != nil {
		t.Errorf("wrapped INSERT across the restart: %v (class %s), want success", err, faultClass(err))
	}
	if rows != 1 {
		t.Errorf("wrapped INSERT wrote %d rows, want exactly 1", rows)
	}
}

// TestIntegrationPgxFaultStalePool: a pool of four warm idle connections
// that a server restart (stop, start) has killed. The next statements find
// them dead; through sqlconflict-pgx none fails and each writes its row
// once. "reused": the connections have been handed out again since they
// opened, as in a pool in use; pgx's stdlib pings in ResetSession only a
// connection idle over a second since its last reset, and the private
// server restarts in well under that. "never reused": each was handed out
// once only, and pgx's stdlib pings it at its first reuse (its last reset
// time is zero), finding it dead before sending anything.
func TestIntegrationPgxFaultStalePool(t *testing.T) {
	inst := itest.StartPG(t, portStalePgx)
	for _, rounds := range []int{2, 1} {
		t.Run(map[int]string{2: "reused", 1: "never reused"}[rounds], func(t *testing.T) {
			faultStalePool(t, inst, rounds)
		})
	}
}

// faultStalePool warms the pools (rounds times four connections in use at
// once), restarts inst, and writes.
func faultStalePool(t *testing.T, inst *itest.PGInstance, rounds int) {
	admin := faultOpen(t, "pgx", inst.DSN())
	tbl := table(t, admin, "", "id SERIAL PRIMARY KEY, token TEXT NOT NULL")
	admin.Close()
	const pool, writes = 4, 8
	drivers := map[bool]string{false: "pgx", true: sqlconflictpgx.DriverName}
	dbs := map[bool]*sql.DB{}
	for _, wrapped := range []bool{false, true} {
		db := faultOpen(t, drivers[wrapped], inst.DSN())
		db.SetMaxOpenConns(pool)
		db.SetMaxIdleConns(pool)
		for range rounds {
			var conns []*sql.Conn
			for range pool {
				c, err := db.Conn(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if err := c.PingContext(context.Background()); err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			for _, c := range conns {
				c.Close()
			}
		}
		if st := db.Stats(); st.Idle != pool || st.OpenConnections != pool {
			t.Fatalf("%s: %d idle of %d open connections, want %d", drivers[wrapped], st.Idle, st.OpenConnections, pool)
		}
		dbs[wrapped] = db
	}
	warmAt := time.Now()
	inst.Stop(t)
	inst.Restart(t)
	restarted := time.Since(warmAt)

	// Alternately, so that both pools meet the same idle times.
	errs := map[bool][]string{}
	for i := range writes {
		for _, wrapped := range []bool{true, false} {
			tok := fmt.Sprintf("%s-%d", map[bool]string{false: "raw", true: "wrapped"}[wrapped], i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := dbs[wrapped].ExecContext(ctx, "INSERT INTO "+tbl+" (token) VALUES ($1)", tok)
			cancel()
			if err != nil {
				errs[wrapped] = append(errs[wrapped], fmt.Sprintf("#%d: %v (class %s)", i, err, faultClass(err)))
			}
		}
	}
	check := faultOpen(t, "pgx", inst.DSN())
	for _, wrapped := range []bool{false, true} {
		prefix := map[bool]string{false: "raw-", true: "wrapped-"}[wrapped]
		rows := count(t, check, "SELECT COUNT(*) FROM "+tbl+" WHERE token LIKE $1", prefix+"%")
		distinct := count(t, check, "SELECT COUNT(DISTINCT token) FROM "+tbl+" WHERE token LIKE $1", prefix+"%")
		t.Logf("%-15s %d errors, %d rows (%d distinct) of %d writes; stop+restart took %v after the warm-up; %v",
			drivers[wrapped], len(errs[wrapped]), rows, distinct, writes, restarted.Round(time.Millisecond), errs[wrapped])
		if !wrapped {
			continue
		}
		if len(errs[wrapped]) != 0 {
			t.Errorf("wrapped: %d writes failed after the restart: %v", len(errs[wrapped]), errs[wrapped])
		}
		if rows != writes || distinct != writes {
			t.Errorf("wrapped: %d rows (%d distinct), want %d, each once", rows, distinct, writes)
		}
	}
}
