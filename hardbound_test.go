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

// boundedOp is one kind of call, on a connection taken from the pool
// before the fault (conn) or on a new one (db).
type boundedOp struct {
	name string
	run  func(ctx context.Context, db *sql.DB, conn *sql.Conn, tbl string) error
}

func boundedOps(s server) []boundedOp {
	update := func(tbl string) string { return "UPDATE " + tbl + " SET v = v + 1 WHERE id = 1" }
	return []boundedOp{
		{"exec", func(ctx context.Context, _ *sql.DB, c *sql.Conn, tbl string) error {
			_, err := c.ExecContext(ctx, update(tbl))
			return err
		}},
		{"exec with args", func(ctx context.Context, _ *sql.DB, c *sql.Conn, tbl string) error {
			_, err := c.ExecContext(ctx, s.q("UPDATE "+tbl+" SET v = v + 1 WHERE id = $1"), 1)
			return err
		}},
		{"query", func(ctx context.Context, _ *sql.DB, c *sql.Conn, tbl string) error {
			var v int
			return c.QueryRowContext(ctx, "SELECT v FROM "+tbl+" WHERE id = 1").Scan(&v)
		}},
		{"transaction", func(ctx context.Context, _ *sql.DB, c *sql.Conn, tbl string) error {
			tx, err := c.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, update(tbl)); err != nil {
				return err
			}
			return tx.Commit()
		}},
		{"ping", func(ctx context.Context, _ *sql.DB, c *sql.Conn, _ string) error {
			return c.PingContext(ctx)
		}},
		{"new connection", func(ctx context.Context, db *sql.DB, _ *sql.Conn, _ string) error {
			return db.PingContext(ctx)
		}},
	}
}

// boundedFault measures every op against one fault, raw and wrapped. open
// returns a fresh *sql.DB on the faulty path for the driver named; fault
// starts the fault and returns the function that ends it.
func boundedFault(t *testing.T, s server, tbl string, open func(t *testing.T, driver string) *sql.DB, fault func() (end func())) {
	const deadline, patience = 500 * time.Millisecond, 3 * time.Second
	ops := boundedOps(s)
	type side struct {
		db    *sql.DB
		conns []*sql.Conn
	}
	sides := map[bool]*side{}
	for _, wrapped := range []bool{false, true} {
		drv := s.Raw
		if wrapped {
			drv = s.Driver
		}
		sd := &side{db: open(t, drv)}
		for range ops {
			c, err := sd.db.Conn(context.Background())
			if err != nil {
				t.Fatalf("%s: %v", drv, err)
			}
			t.Cleanup(func() { c.Close() })
			if err := c.PingContext(context.Background()); err != nil {
				t.Fatalf("%s: %v", drv, err)
			}
			sd.conns = append(sd.conns, c)
		}
		sides[wrapped] = sd
	}
	end := fault()
	ended := false
	defer func() {
		if !ended {
			end()
		}
	}()
	results := map[bool][]*itest.Late{}
	for _, wrapped := range []bool{true, false} {
		sd := sides[wrapped]
		for i, op := range ops {
			db := sd.db
			if op.name == "new connection" {
				db = open(t, map[bool]string{false: s.Raw, true: s.Driver}[wrapped])
			}
			r := itest.CallLate(deadline, patience, func(ctx context.Context) error { return op.run(ctx, db, sd.conns[i], tbl) })
			results[wrapped] = append(results[wrapped], r)
		}
	}
	end()
	ended = true
	for i, op := range ops {
		raw, wr := results[false][i], results[true][i]
		t.Logf("%-14s raw: %-60s wrapped: %v", op.name, raw, wr)
		switch {
		case !wr.Returned || wr.Late > itest.MaxLate:
			t.Errorf("%s: wrapped %v, want within %v of the deadline", op.name, wr, itest.MaxLate)
		case wr.Err == nil:
			t.Errorf("%s: wrapped call succeeded against the fault", op.name)
		case !errors.Is(wr.Err, context.DeadlineExceeded):
			t.Errorf("%s: wrapped error %v does not match context.DeadlineExceeded", op.name, wr.Err)
		case Classify(wr.Err).Scope != ScopeUnknownOutcome && op.name != "new connection":
			t.Errorf("%s: wrapped error %v classified %+v, want an unknown outcome", op.name, wr.Err, Classify(wr.Err))
		}
	}
	// Every call the fault held returns once it ends.
	for _, rs := range results {
		for _, r := range rs {
			select {
			case <-r.Done:
			case <-time.After(30 * time.Second):
				t.Errorf("a call was still blocked 30 s after the fault ended")
			}
		}
	}
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
		boundedFault(t, s, tbl, open, func() func() {
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
			boundedFault(t, s, tbl, open, func() func() {
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
