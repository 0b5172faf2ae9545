// Package itest is what the integration tests of every package share: which
// servers to run against, read from the environment, and opening them so
// that a configured server that does not answer fails the test instead of
// skipping it. Only tests import it.
package itest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
)

// The variables naming the integration servers (.ci/run sets both). Unset,
// the tests skip; set, an unreachable server fails them.
const (
	EnvPG    = "SQLCONFLICT_PG_DSN"
	EnvMySQL = "SQLCONFLICT_MYSQL_DSN"
)

// Server is one wrapped driver on one integration server.
type Server struct {
	Name   string // "postgres" (lib/pq), "pgx" (pgx's stdlib) or "mysql"
	Driver string // the wrapped driver's name
	Raw    string // the base driver's name
	DSN    string
	Env    string // the variable that named the server
}

// PG reports a PostgreSQL server, through lib/pq or pgx.
func (s Server) PG() bool { return s.Env == EnvPG }

// Drivers names the wrapped drivers to test. An empty name leaves that
// server out.
type Drivers struct {
	Postgres string // over lib/pq
	Pgx      string // over pgx's stdlib
	MySQL    string // over go-sql-driver/mysql
}

// Servers returns the configured servers for the drivers d names, skipping
// the test if none is configured.
func Servers(t testing.TB, d Drivers) []Server {
	t.Helper()
	var out []Server
	if dsn := os.Getenv(EnvPG); dsn != "" {
		if d.Postgres != "" {
			out = append(out, Server{"postgres", d.Postgres, "postgres", dsn, EnvPG})
		}
		if d.Pgx != "" {
			out = append(out, Server{"pgx", d.Pgx, "pgx", dsn, EnvPG})
		}
	}
	if dsn := os.Getenv(EnvMySQL); dsn != "" && d.MySQL != "" {
		out = append(out, Server{"mysql", d.MySQL, "mysql", dsn, EnvMySQL})
	}
	if len(out) == 0 {
		t.Skipf("integration test: set %s and/or %s (see .ci/run)", EnvPG, EnvMySQL)
	}
	return out
}

// DSNWith returns the server's DSN with query parameters appended.
func (s Server) DSNWith(params ...string) string {
	if len(params) == 0 {
		return s.DSN
	}
	sep := "?"
	if strings.Contains(s.DSN[strings.LastIndex(s.DSN, "/")+1:], "?") {
		sep = "&"
	}
	return s.DSN + sep + strings.Join(params, "&")
}

// Open opens the driver named driver (the wrapped one or the base one) on
// the server's DSN with params appended, closes it when t ends, and fails
// t if the server does not answer.
func (s Server) Open(t testing.TB, driver string, params ...string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, s.DSNWith(params...))
	if err != nil {
		t.Fatalf("open %s: %v", driver, err)
	}
	t.Cleanup(func() { db.Close() })
	s.Ping(t, db)
	return db
}

// Ping fails t if db does not answer within 10 seconds.
func (s Server) Ping(t testing.TB, db *sql.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		s.Unreachable(t, err)
	}
}

// Unreachable fails t for a server that did not answer.
func (s Server) Unreachable(t testing.TB, err error) {
	t.Helper()
	t.Fatalf("%s server unreachable (%s is set): %v", s.Name, s.Env, err)
}

// AsDriverError reports whether errors.As finds the base driver's error type
// in err.
func (s Server) AsDriverError(err error) bool {
	switch s.Name {
	case "postgres":
		_, ok := errors.AsType[*pq.Error](err)
		return ok
	case "pgx":
		_, ok := errors.AsType[*pgconn.PgError](err)
		return ok
	}
	_, ok := errors.AsType[*mysql.MySQLError](err)
	return ok
}
