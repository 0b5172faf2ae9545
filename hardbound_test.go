package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// The caller's context as a hard bound (sock.go): with a frozen server or a
// stalled network path, every call through the wrapper returns within
// itest.MaxLate of its deadline, whatever the base driver does; the raw driver's
// figures are logged beside. docs/reliability.md has a run's table.

// bounded is the hard-bound measurement (itest.Bounded) for s.
func (s server) bounded(tbl string, open func(t *testing.T, driver string) *sql.DB) itest.Bounded {
	return itest.Bounded{Raw: s.Raw, Wrapped: s.Driver, Table: tbl, Q: s.q, Open: open,
		UnknownOutcome: func(err error) bool { return Classify(err).Scope == ScopeUnknownOutcome }}
}

// TestIntegrationHardBoundPartition: a network path that stops delivering
// (a proxy that holds every byte, sockets open), to the shared servers.
func TestIntegrationHardBoundPartition(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		direct := s.openRaw(t)
		tbl := s.table(t, direct, "", "id INT PRIMARY KEY, v INT NOT NULL")
		mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
		target, dsnVia := s.viaProxy(t)
		proxy := itest.NewProxy(t, target)
		open := func(t *testing.T, drv string) *sql.DB {
			db, err := sql.Open(drv, dsnVia(proxy.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db
		}
		s.bounded(tbl, open).Run(t, func() func() {
			proxy.Stall()
			return func() { proxy.Resume(); proxy.CutAll() }
		})
	})
}

// TestIntegrationHardBoundFrozen: a server stopped with SIGSTOP, its
// postmaster and backends (or mariadbd) frozen with their sockets open.
func TestIntegrationHardBoundFrozen(t *testing.T) {
	for _, pg := range []bool{true, false} {
		t.Run(map[bool]string{true: "postgres", false: "mysql"}[pg], func(t *testing.T) {
			var s server
			var freeze, thaw func(testing.TB)
			if pg {
				inst := itest.StartPG(t, 5470)
				s = server{itest.Server{Name: "postgres", Driver: DriverPostgres, Raw: "postgres", DSN: inst.DSN(), Env: itest.EnvPG}}
				freeze, thaw = inst.Freeze, inst.Thaw
			} else {
				inst := itest.StartMariaDB(t, 3440)
				s = server{itest.Server{Name: "mysql", Driver: DriverMySQL, Raw: "mysql", DSN: inst.DSN(), Env: itest.EnvMySQL}}
				freeze, thaw = inst.Freeze, inst.Thaw
			}
			direct := s.openRaw(t)
			tbl := s.table(t, direct, "", "id INT PRIMARY KEY, v INT NOT NULL")
			mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
			open := func(t *testing.T, drv string) *sql.DB {
				db, err := sql.Open(drv, s.DSN)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				return db
			}
			s.bounded(tbl, open).Run(t, func() func() {
				freeze(t)
				return func() { thaw(t) }
			})
		})
	}
}

// TestIntegrationOwnStatementsBounded: the wrapper's own statements obey
// the caller's context. The proxy stalls at the first byte of one of them:
// the SAVEPOINT of conflict_savepoints=writes, and the question the
// wrapper asks before retrying an autocommit statement after a lock
// timeout (MySQL's session check; PostgreSQL's schema query).
func TestIntegrationOwnStatementsBounded(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		direct := s.openRaw(t)
		tbl := s.table(t, direct, "", "id INT PRIMARY KEY, v INT NOT NULL")
		mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
		target, dsnVia := s.viaProxy(t)
		ask := "pg_catalog.pg_class"
		if !s.PG() {
			ask = "SHOW SESSION VARIABLES"
		}
		for _, tc := range []struct {
			name, stallOn string
			params        []string
			deadline      time.Duration
			op            func(ctx context.Context, db *sql.DB) error
		}{
			{"savepoint", "SAVEPOINT sqlconflict_sp", []string{"conflict_savepoints=writes"}, time.Second,
				func(ctx context.Context, db *sql.DB) error {
					tx, err := db.BeginTx(context.Background(), nil)
					if err != nil {
						return err
					}
					defer tx.Rollback()
					_, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
					return err
				}},
			{"question before a retry", ask, s.lockTimeoutParams(), 3 * time.Second,
				func(ctx context.Context, db *sql.DB) error {
					release := s.holdRow(t, direct, tbl, 1)
					defer release()
					_, err := db.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
					return err
				}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				proxy := itest.NewProxy(t, target)
				dsn := itest.WithParams(dsnVia(proxy.Addr()), tc.params...)
				db, err := sql.Open(s.Driver, dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				db.SetMaxOpenConns(1)
				if err := db.Ping(); err != nil {
					t.Fatal(err)
				}
				proxy.StallOn(tc.stallOn)
				r := itest.CallLate(tc.deadline, 5*time.Second, func(ctx context.Context) error { return tc.op(ctx, db) })
				proxy.Resume()
				proxy.CutAll()
				<-r.Done
				t.Logf("%s: %v", tc.name, r)
				if !r.Returned || r.Late > itest.MaxLate {
					t.Errorf("%s: %v, want within %v of the deadline", tc.name, r, itest.MaxLate)
				}
				// The savepoint never reached the server: the statement's
				// outcome is the context's. Before a retry the statement
				// had failed with the lock timeout and had no effect: the
				// call returns that, the driver's own error.
				want := errors.Is(r.Err, context.DeadlineExceeded)
				if tc.name != "savepoint" {
					ok, _ := s.driverError(r.Err)
					want = ok && Classify(r.Err).Kind == KindLockTimeout
				}
				if !want {
					t.Errorf("%s: %v (%s)", tc.name, r.Err, errName(r.Err))
				}
			})
		}
	})
}

// TestIntegrationHardBoundLiveServer: a PostgreSQL server that answers
// lib/pq's cancel request but is slow to deliver the statement's own answer
// (the proxy holds the session's link, new connections pass) is alive, not
// frozen: the caller gets the server's 57014, as raw lib/pq does, within two
// graces of its deadline, connect_timeout set or not (lib/pq then cancels
// the cancel request's dial context as soon as the dial returns). The same
// delay with the cancel request held too is cut after one grace (sock.go).
func TestIntegrationHardBoundLiveServer(t *testing.T) {
	s, _ := pgServer(t)
	target, dsnVia := s.viaProxy(t)
	const (
		deadline = 300 * time.Millisecond
		hold     = 120 * time.Millisecond // past one grace (80 ms), within two
	)
	for _, tc := range []struct {
		name      string
		stall     func(p *itest.Proxy)
		drv       string
		want57014 bool
		params    []string
	}{
		{"raw", (*itest.Proxy).StallExisting, s.Raw, true, nil},
		{"wrapped, cancel request answered", (*itest.Proxy).StallExisting, s.Driver, true, nil},
		{"wrapped, connect_timeout, cancel request answered", (*itest.Proxy).StallExisting, s.Driver, true, []string{"connect_timeout=20"}},
		{"wrapped, cancel request held", (*itest.Proxy).Stall, s.Driver, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := itest.NewProxy(t, target)
			db, err := sql.Open(tc.drv, itest.WithParams(dsnVia(proxy.Addr()), tc.params...))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel0()
			conn, err := db.Conn(ctx0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(ctx0, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			end, _ := ctx.Deadline()
			time.AfterFunc(deadline-30*time.Millisecond, func() { tc.stall(proxy) }) // the statement is running
			time.AfterFunc(deadline+hold, proxy.Resume)
			_, err = conn.ExecContext(ctx, "SELECT pg_sleep(5)")
			late := time.Since(end)
			got57014 := Classify(err).SQLState == "57014"
			t.Logf("%s: %v late: %v", tc.name, late.Round(time.Millisecond), err)
			if got57014 != tc.want57014 {
				t.Fatalf("err %v, want the server's 57014: %v", err, tc.want57014)
			}
			if !errors.Is(err, context.DeadlineExceeded) && !tc.want57014 {
				t.Errorf("a cut call's error does not match context.DeadlineExceeded: %v", err)
			}
			if late > 2*DefaultOptions().CancelGrace+itest.MaxLate/2 {
				t.Errorf("returned %v past the deadline", late)
			}
			conn.Close()
		})
	}
}
