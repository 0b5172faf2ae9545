package pgx_test

// The names stdlib.RegisterConnConfig returns, given to sqlconflict-pgx as
// DSNs.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/sqlconflict/sqlconflict"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// TestUnregisteredName: a name that looks registered but is not fails as
// it does with pgx alone, with pgx's error when the first connection is
// opened; a DSN holding '=' is read as a DSN whatever its first characters.
func TestUnregisteredName(t *testing.T) {
	const name = "registeredConnConfigNope"
	ping := func(driverName string) error {
		db, err := sql.Open(driverName, name)
		if err != nil {
			t.Fatalf("sql.Open(%q, %q): %v", driverName, name, err)
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return db.PingContext(ctx)
	}
	rawErr := ping("pgx")
	t0 := time.Now()
	err := ping(sqlconflictpgx.DriverName)
	var parseErr *pgconn.ParseConfigError
	switch {
	case rawErr == nil || err == nil:
		t.Fatalf("ping: raw %v, wrapped %v; want both to fail", rawErr, err)
	case err.Error() != rawErr.Error():
		t.Errorf("wrapped error %q, want pgx's %q", err, rawErr)
	case !errors.As(err, &parseErr):
		t.Errorf("wrapped error %T %v, want pgx's *pgconn.ParseConfigError", err, err)
	case time.Since(t0) > 2*time.Second:
		t.Errorf("the wrapper took %v to fail: it retried a name pgx cannot parse", time.Since(t0))
	}

	_, err = sql.Open(sqlconflictpgx.DriverName, "registeredConnConfig0=x conflict_retries=x")
	if err == nil || !strings.Contains(err.Error(), "conflict_retries") {
		t.Errorf("a key=value DSN beginning %q: %v, want conflict_retries refused", "registeredConnConfig", err)
	}
}

// TestIntegrationRegisteredConnConfig: a name from stdlib.RegisterConnConfig
// opens pgx's registered config through the wrapper. The config's
// lock_timeout shows that it is the one used; Conn.Raw is given the
// wrapper's connection, whose base is pgx's; db.Driver() opens the name as
// sql.Open did; and an autocommit UPDATE that meets a lock timeout is
// retried until the lock is released, where pgx alone returns the 55P03.
func TestIntegrationRegisteredConnConfig(t *testing.T) {
	srv := pgServer(t)
	config, err := pgx.ParseConfig(srv.DSN)
	if err != nil {
		t.Fatal(err)
	}
	config.RuntimeParams["lock_timeout"] = "50ms"
	name := stdlib.RegisterConnConfig(config)
	t.Cleanup(func() { stdlib.UnregisterConnConfig(name) })
	if !strings.HasPrefix(name, "registeredConnConfig") {
		t.Fatalf("pgx registered %q: the prefix the wrapper recognises has changed", name)
	}
	openName := func(driverName string) *sql.DB {
		db, err := sql.Open(driverName, name)
		if err != nil {
			t.Fatalf("sql.Open(%q, %q): %v", driverName, name, err)
		}
		t.Cleanup(func() { db.Close() })
		srv.Ping(t, db)
		return db
	}
	db, raw := openName(sqlconflictpgx.DriverName), openName("pgx")

	var lockTimeout string
	if err := db.QueryRow("SHOW lock_timeout").Scan(&lockTimeout); err != nil || lockTimeout != "50ms" {
		t.Fatalf("SHOW lock_timeout: %q, %v; want the registered config's 50ms", lockTimeout, err)
	}

	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = conn.Raw(func(dc any) error {
		if _, ok := dc.(*stdlib.Conn); ok {
			return errors.New("Raw was given pgx's *stdlib.Conn itself: the wrapper is not in the path")
		}
		if _, ok := sqlconflict.BaseConn(dc).(*stdlib.Conn); !ok {
			return errors.New("BaseConn did not give pgx's *stdlib.Conn")
		}
		return nil
	})
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}

	c, err := db.Driver().(driver.DriverContext).OpenConnector(name)
	if err != nil {
		t.Fatalf("db.Driver() (%T) refused the name: %v", db.Driver(), err)
	}
	if c.Driver() != db.Driver() {
		t.Errorf("a connector's Driver() is %T, not the registered driver", c.Driver())
	}

	tbl := table(t, db, "", "id INT PRIMARY KEY, v INT NOT NULL")
	mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
	holder, err := srv.Open(t, "pgx").Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	mustExec(t, holder, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")

	_, err = raw.Exec("UPDATE "+tbl+" SET v = v + 100 WHERE id = $1", 1)
	checkPgError(t, err, "55P03", sqlconflict.KindLockTimeout, "")

	const hold = 300 * time.Millisecond
	released := make(chan error, 1)
	t0 := time.Now()
	go func() {
		time.Sleep(hold)
		released <- holder.Commit()
	}()
	if _, err := db.Exec("UPDATE "+tbl+" SET v = v + 10 WHERE id = $1", 1); err != nil {
		t.Fatalf("UPDATE through the wrapper: %T %v, want it retried until the lock was released", err, err)
	}
	if d := time.Since(t0); d < hold {
		t.Errorf("the UPDATE returned after %v, before the lock was released", d)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "SELECT v FROM "+tbl+" WHERE id = 1"); n != 11 {
		t.Errorf("v = %d, want 11 (the holder's +1 and the retried +10, once)", n)
	}
}
