// Package itest is what the integration tests of every package share: which
// servers to run against, read from the environment, and opening them so
// that a configured server that does not answer fails the test instead of
// skipping it. Only tests import it, including those of the nested modules
// (pgx, sqlite, cmd/sqlconflict-race, clienttest): Go's internal rule is by
// import path, so they may.
//
// It knows the root module's base drivers, lib/pq and go-sql-driver/mysql,
// and nothing else, so that the root module does not depend on pgx: a
// package testing another base driver describes it with a [Server] of its
// own in [Drivers.Others].
package itest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
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
	Name   string // "postgres" (lib/pq), "mysql", or another's name ("pgx")
	Driver string // the wrapped driver's name
	Raw    string // the base driver's name
	DSN    string // filled in by Servers
	Env    string // the variable that names the server: EnvPG or EnvMySQL

	// IsDriverError reports whether errors.As finds the base driver's error
	// type in err (see [As]).
	IsDriverError func(err error) bool
}

// PG reports a PostgreSQL server, through lib/pq or another driver.
func (s Server) PG() bool { return s.Env == EnvPG }

// Drivers names the wrapped drivers to test. An empty name leaves that
// server out.
type Drivers struct {
	Postgres string // over lib/pq
	MySQL    string // over go-sql-driver/mysql

	// Others are wrapped drivers over base drivers this package does not
	// know, such as pgx's stdlib; each runs on the server its Env names,
	// after Postgres on that server.
	Others []Server
}

// As reports whether errors.As finds an E in err: a [Server.IsDriverError].
func As[E error](err error) bool {
	var e E
	return errors.As(err, &e)
}

// Servers returns the configured servers for the drivers d names, skipping
// the test if none is configured.
func Servers(t testing.TB, d Drivers) []Server {
	t.Helper()
	var out []Server
	add := func(env string, known Server) {
		dsn := os.Getenv(env)
		if dsn == "" {
			return
		}
		if known.Driver != "" {
			known.DSN = dsn
			out = append(out, known)
		}
		for _, s := range d.Others {
			if s.Env == env {
				s.DSN = dsn
				out = append(out, s)
			}
		}
	}
	add(EnvPG, Server{Name: "postgres", Driver: d.Postgres, Raw: "postgres", Env: EnvPG, IsDriverError: As[*pq.Error]})
	add(EnvMySQL, Server{Name: "mysql", Driver: d.MySQL, Raw: "mysql", Env: EnvMySQL, IsDriverError: As[*mysql.MySQLError]})
	if len(out) == 0 {
		t.Skipf("integration test: set %s and/or %s (see .ci/run)", EnvPG, EnvMySQL)
	}
	return out
}

// DSNWith returns the server's DSN with query parameters appended.
func (s Server) DSNWith(params ...string) string { return WithParams(s.DSN, params...) }

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
func (s Server) AsDriverError(err error) bool { return s.IsDriverError(err) }
