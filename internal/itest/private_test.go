package itest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// Ports of the fixtures' own tests, in the ranges the fault tests use
// (5460-5479, 3430-3449).
const (
	testPGPrimary, testPGStandby       = 5460, 5461
	testMariaPrimary, testMariaReplica = 3430, 3431
)

// openRaw opens the base driver on dsn, one connection at most so that a
// test knows which one a statement uses, closed when t ends.
func openRaw(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("ping %s: %v", dsn, err)
	}
	return db
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// waitCount waits up to 10 s until q (a count) returns want on db.
func waitCount(t *testing.T, db *sql.DB, q string, want int) {
	t.Helper()
	var got int
	err := poll(10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := db.QueryRowContext(ctx, q).Scan(&got); err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%d rows, want %d", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// checkFrozen runs a query with a 1 s deadline on db, whose server is
// frozen, and checks that it has not returned after 500 ms. It logs
// whether the driver gave up at its deadline (a frozen server cannot
// answer a cancel) and returns the channel the query's error comes on,
// nil if it has come already.
func checkFrozen(t *testing.T, db *sql.DB, q string) <-chan error {
	t.Helper()
	res := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var v int
		res <- db.QueryRowContext(ctx, q).Scan(&v)
	}()
	select {
	case err := <-res:
		t.Fatalf("frozen server: %s returned after %v: %v", q, time.Since(start), err)
	case <-time.After(500 * time.Millisecond):
	}
	select {
	case err := <-res:
		t.Logf("frozen server: %s with a 1s deadline returned after %v: %v", q, time.Since(start).Round(time.Millisecond), err)
		return nil
	case <-time.After(2 * time.Second):
		t.Logf("frozen server: %s with a 1s deadline still blocked after %v", q, time.Since(start).Round(time.Millisecond))
	}
	return res
}

// afterThaw waits for the query checkFrozen started, if it is still
// blocked, to return once the server is thawed.
func afterThaw(t *testing.T, res <-chan error) {
	t.Helper()
	if res == nil {
		return
	}
	start := time.Now()
	select {
	case err := <-res:
		t.Logf("after the thaw the query returned in %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the query had not returned 10s after the thaw")
	}
}

// checkKilled fails t unless db's connection and a new one fail.
func checkKilled(t *testing.T, db *sql.DB, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err == nil {
		t.Fatal("ping after Kill: no error")
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %d still accepts after Kill", port)
	}
}

func timed(t *testing.T, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
}

func TestPrivatePG(t *testing.T) {
	var primary, standby *PGInstance
	timed(t, "StartPG", func() { primary = StartPG(t, testPGPrimary) })
	timed(t, "StartStandby", func() { standby = primary.StartStandby(t, testPGStandby) })
	if primary.DSN() != "postgres://postgres@127.0.0.1:5460/test?sslmode=disable" {
		t.Errorf("DSN %s", primary.DSN())
	}

	pdb := openRaw(t, "postgres", primary.DSN())
	sdb := openRaw(t, "postgres", standby.DSN())
	mustExec(t, pdb, "CREATE TABLE t (id int PRIMARY KEY)")
	mustExec(t, pdb, "INSERT INTO t VALUES (1)")
	waitCount(t, sdb, "SELECT count(*) FROM t", 1)
	_, err := sdb.Exec("INSERT INTO t VALUES (2)")
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "25006" {
		t.Fatalf("write on the standby: %v, want read_only_sql_transaction (25006)", err)
	}

	t.Run("Freeze", func(t *testing.T) {
		primary.Freeze(t)
		primary.Freeze(t) // idempotent
		res := checkFrozen(t, pdb, "SELECT 1")
		primary.Thaw(t)
		afterThaw(t, res)
		mustExec(t, pdb, "INSERT INTO t VALUES (2)")
	})

	t.Run("KillRestart", func(t *testing.T) {
		oldPID := primary.PID
		timed(t, "Kill", func() { primary.Kill(t) })
		checkKilled(t, pdb, primary.Port)
		timed(t, "Restart after Kill", func() { primary.Restart(t) })
		if primary.PID == oldPID {
			t.Errorf("PID unchanged by Restart: %d", oldPID)
		}
		waitCount(t, pdb, "SELECT count(*) FROM t", 2) // what committed survived
		mustExec(t, pdb, "INSERT INTO t VALUES (3)")
		waitCount(t, sdb, "SELECT count(*) FROM t", 3) // the standby reconnected
	})

	t.Run("StopRestart", func(t *testing.T) {
		timed(t, "Stop", func() { primary.Stop(t) })
		timed(t, "Restart after Stop", func() { primary.Restart(t) })
		waitCount(t, pdb, "SELECT count(*) FROM t", 3)
	})

	t.Run("Promote", func(t *testing.T) {
		primary.Freeze(t) // the cleanup thaws and stops it
		timed(t, "Promote", func() { standby.Promote(t) })
		mustExec(t, sdb, "INSERT INTO t VALUES (4)")
		waitCount(t, sdb, "SELECT count(*) FROM t", 4)
	})
}

func TestPrivateMariaDB(t *testing.T) {
	var primary, replica *MariaDBInstance
	timed(t, "StartMariaDB", func() { primary = StartMariaDB(t, testMariaPrimary) })
	timed(t, "StartReplica", func() { replica = primary.StartReplica(t, testMariaReplica) })
	if primary.DSN() != "root@tcp(127.0.0.1:3430)/test" {
		t.Errorf("DSN %s", primary.DSN())
	}

	pdb := openRaw(t, "mysql", primary.DSN())
	rdb := openRaw(t, "mysql", replica.DSN())
	mustExec(t, pdb, "CREATE TABLE t (id int PRIMARY KEY)")
	mustExec(t, pdb, "INSERT INTO t VALUES (1)")
	waitCount(t, rdb, "SELECT count(*) FROM t", 1)
	_, err := rdb.Exec("INSERT INTO t VALUES (2)")
	var myErr *mysql.MySQLError
	if !errors.As(err, &myErr) || myErr.Number != 1290 {
		t.Fatalf("write on the replica: %v, want read_only (1290)", err)
	}

	t.Run("Freeze", func(t *testing.T) {
		primary.Freeze(t)
		res := checkFrozen(t, pdb, "SELECT 1")
		primary.Thaw(t)
		afterThaw(t, res)
		mustExec(t, pdb, "INSERT INTO t VALUES (2)")
	})

	t.Run("KillRestart", func(t *testing.T) {
		timed(t, "Kill", func() { primary.Kill(t) })
		checkKilled(t, pdb, primary.Port)
		timed(t, "Restart after Kill", func() { primary.Restart(t) })
		waitCount(t, pdb, "SELECT count(*) FROM t", 2)
		mustExec(t, pdb, "INSERT INTO t VALUES (3)")
		waitCount(t, rdb, "SELECT count(*) FROM t", 3) // the replica reconnected
	})

	t.Run("StopRestart", func(t *testing.T) {
		timed(t, "Stop", func() { primary.Stop(t) })
		timed(t, "Restart after Stop", func() { primary.Restart(t) })
		waitCount(t, pdb, "SELECT count(*) FROM t", 3)
	})

	t.Run("Promote", func(t *testing.T) {
		mustExec(t, pdb, "INSERT INTO t VALUES (4)")
		waitCount(t, rdb, "SELECT count(*) FROM t", 4)
		primary.Freeze(t) // the cleanup thaws and stops it
		timed(t, "Promote", func() { replica.Promote(t) })
		mustExec(t, rdb, "INSERT INTO t VALUES (5)")
		waitCount(t, rdb, "SELECT count(*) FROM t", 5)
	})
}

// TestPrivateSkips checks the gate: unset, the fixtures skip.
func TestPrivateSkips(t *testing.T) {
	t.Setenv(EnvPrivate, "")
	ran := false
	t.Run("inner", func(t *testing.T) {
		StartPG(t, testPGPrimary)
		ran = true
	})
	if ran {
		t.Fatal("StartPG did not skip with " + EnvPrivate + " unset")
	}
}
