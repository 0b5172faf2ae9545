package pgx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sqlconflict/sqlconflict"
	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

func TestRegistered(t *testing.T) {
	if !slices.Contains(sql.Drivers(), sqlconflictpgx.DriverName) {
		t.Fatalf("%s not registered: %v", sqlconflictpgx.DriverName, sql.Drivers())
	}
}

// TestOpenBadOption: sql.Open reads the conflict_* options of both pgx DSN
// forms, including a key=value DSN holding '/' and '@', which SplitDSN's
// DSNAuto would take for MySQL's form.
func TestOpenBadOption(t *testing.T) {
	for _, tc := range []struct{ dsn, option string }{
		{"postgres://u:s3cretpw@localhost/db?conflict_retries=x", "conflict_retries"},
		{"postgresql://u:s3cretpw@localhost/db?sslmode=disable&conflict_nope=1", "conflict_nope"},
		{"host=localhost password=s3cretpw conflict_backoff=fast", "conflict_backoff"},
		{"host=/var/run/postgresql user=a@b password=s3cretpw conflict_savepoints=all", "conflict_savepoints"},
	} {
		_, err := sql.Open(sqlconflictpgx.DriverName, tc.dsn)
		switch {
		case err == nil:
			t.Errorf("%s: Open succeeded", tc.dsn)
		case !strings.Contains(err.Error(), tc.option):
			t.Errorf("%s: error %q does not name %s", tc.dsn, err, tc.option)
		case strings.Contains(err.Error(), "s3cretpw"):
			t.Errorf("%s: error %q shows the password", tc.dsn, err)
		}
	}
}

// TestPasswordRedactedEscaped: pgx quotes a DSN it cannot parse with its
// own redaction of the password, which ends at the first blank of a quoted
// or backslash-escaped password; the wrapper redacts the whole value, as
// libpq reads it.
func TestPasswordRedactedEscaped(t *testing.T) {
	for _, dsn := range []string{
		`host=127.0.0.1 password='O\'Brien horse battery staple' sslmode=bogus`,
		`host=127.0.0.1 password=O\'Brien\ horse\ battery\ staple sslmode=bogus`,
		`postgres://u:O%27Brien%20horse%20battery%20staple@127.0.0.1/db?sslmode=bogus`,
	} {
		db, err := sql.Open(sqlconflictpgx.DriverName, dsn)
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			t.Fatalf("%s: no error", dsn)
		}
		for _, w := range []string{"Brien", "horse", "battery", "staple"} {
			if strings.Contains(err.Error(), w) {
				t.Errorf("error %q shows the password's %q", err, w)
			}
		}
	}
}

func TestOpenDBOptions(t *testing.T) {
	config, err := pgx.ParseConfig("postgres://u@localhost/db?conflict_retries=x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlconflictpgx.OpenDB(*config, sqlconflict.DefaultOptions()); err == nil || !strings.Contains(err.Error(), "conflict_retries") {
		t.Errorf("OpenDB with conflict_retries=x: %v", err)
	}

	bad := sqlconflict.DefaultOptions()
	bad.BlindReread = 99
	config, _ = pgx.ParseConfig("postgres://u@localhost/db")
	if _, err := sqlconflictpgx.OpenDB(*config, bad); err == nil || !strings.Contains(err.Error(), "Options.BlindReread") {
		t.Errorf("OpenDB with BlindReread 99: %v", err)
	}

	config, _ = pgx.ParseConfig("postgres://u@localhost/db?conflict_retries=1&application_name=x")
	db, err := sqlconflictpgx.OpenDB(*config, sqlconflict.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if config.RuntimeParams["conflict_retries"] != "1" || config.RuntimeParams["application_name"] != "x" {
		t.Errorf("OpenDB changed the caller's RuntimeParams: %v", config.RuntimeParams)
	}
}

// pgServer returns the integration server, skipping the test if it is not
// configured.
func pgServer(t testing.TB) itest.Server {
	t.Helper()
	pgx := itest.Server{Name: "pgx", Driver: sqlconflictpgx.DriverName, Raw: "pgx", Env: itest.EnvPG, IsDriverError: itest.As[*pgconn.PgError]}
	return itest.Servers(t, itest.Drivers{Others: []itest.Server{pgx}})[0]
}

// kvDSN rewrites a URL DSN in key=value form, adding an application_name
// with '/' and '@'.
func kvDSN(t *testing.T, dsn string) string {
	t.Helper()
	config, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	kv := fmt.Sprintf("host=%s port=%d user=%s dbname=%s application_name='sqlconflict@pgx/test'",
		config.Host, config.Port, config.User, config.Database)
	if config.Password != "" {
		kv += fmt.Sprintf(" password='%s'", strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(config.Password))
	}
	if u, err := url.Parse(dsn); err == nil && u.Query().Get("sslmode") != "" {
		kv += " sslmode=" + u.Query().Get("sslmode")
	}
	return kv
}

// TestIntegrationOptionsApplied opens the server every way the package
// offers, with conflict_savepoints=writes given the way each takes options.
// The server refuses a connection carrying a conflict_* run-time parameter,
// and without the savepoint a unique violation would abort the transaction.
func TestIntegrationOptionsApplied(t *testing.T) {
	srv := pgServer(t)
	dsn := srv.DSN
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	open := map[string]func(t *testing.T) *sql.DB{
		"url": func(t *testing.T) *sql.DB {
			db, err := sql.Open(sqlconflictpgx.DriverName, dsn+sep+"conflict_savepoints=writes")
			if err != nil {
				t.Fatal(err)
			}
			return db
		},
		"keyvalue": func(t *testing.T) *sql.DB {
			db, err := sql.Open(sqlconflictpgx.DriverName, kvDSN(t, dsn)+" conflict_savepoints=writes")
			if err != nil {
				t.Fatal(err)
			}
			return db
		},
		"OpenDB/RuntimeParams": func(t *testing.T) *sql.DB {
			config, err := pgx.ParseConfig(dsn + sep + "conflict_savepoints=writes")
			if err != nil {
				t.Fatal(err)
			}
			db, err := sqlconflictpgx.OpenDB(*config, sqlconflict.DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			return db
		},
		"OpenDB/Options": func(t *testing.T) *sql.DB {
			config, err := pgx.ParseConfig(dsn)
			if err != nil {
				t.Fatal(err)
			}
			opts := sqlconflict.DefaultOptions()
			opts.Savepoints = sqlconflict.SavepointsWrites
			db, err := sqlconflictpgx.OpenDB(*config, opts)
			if err != nil {
				t.Fatal(err)
			}
			return db
		},
	}
	for _, name := range []string{"url", "keyvalue", "OpenDB/RuntimeParams", "OpenDB/Options"} {
		t.Run(name, func(t *testing.T) {
			db := open[name](t)
			t.Cleanup(func() { db.Close() })
			srv.Ping(t, db)
			tbl := fmt.Sprintf("pgx_opts_%x_%s", os.Getpid(), strings.NewReplacer("/", "_").Replace(strings.ToLower(name)))
			if _, err := db.Exec("DROP TABLE IF EXISTS " + tbl + "; CREATE TABLE " + tbl + " (id INT PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + tbl) })
			if _, err := db.Exec("INSERT INTO "+tbl+" VALUES ($1)", 1); err != nil {
				t.Fatal(err)
			}

			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			_, err = tx.Exec("INSERT INTO "+tbl+" VALUES ($1)", 1)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || !sqlconflict.IsUniqueViolation(err) {
				t.Fatalf("duplicate insert: %T %v, want a unique violation as *pgconn.PgError", err, err)
			}
			if cl := sqlconflict.Classify(err); cl.Constraint != tbl+"_pkey" || cl.Table != tbl {
				t.Errorf("Classify: constraint %q, table %q", cl.Constraint, cl.Table)
			}
			var n int
			if err := tx.QueryRow("SELECT COUNT(*) FROM " + tbl).Scan(&n); err != nil || n != 1 {
				t.Fatalf("re-read after the violation: %d, %v (savepoints not applied?)", n, err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestClassifyConnectError: Classify, which does not import pgx, recognises
// pgx's *pgconn.ConnectError from a refused connection as an unavailable
// server.
func TestClassifyConnectError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, "postgres://u@"+addr+"/db?sslmode=disable&connect_timeout=5")
	var connectErr *pgconn.ConnectError
	if !errors.As(err, &connectErr) {
		t.Fatalf("connect to %s: %T %v, want a *pgconn.ConnectError", addr, err, err)
	}
	// Nothing was sent: the server could not be reached.
	if cl := sqlconflict.Classify(err); cl.Kind != sqlconflict.KindUnavailable || !cl.Retryable {
		t.Errorf("Classify(%v) = %+v, want a retryable unavailable server", err, cl)
	}
}

// TestIntegrationClassifyConnClosed: Classify recognises pgx's "conn closed",
// the error of a statement on a connection pgx has closed.
func TestIntegrationClassifyConnClosed(t *testing.T) {
	srv := pgServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.DSN)
	if err != nil {
		srv.Unreachable(t, err)
	}
	conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT 1")
	if err == nil || err.Error() != "conn closed" {
		t.Fatalf("Exec on a closed conn: %v, want conn closed", err)
	}
	if cl := sqlconflict.Classify(err); cl.Kind != sqlconflict.KindConnectionLost {
		t.Errorf("Classify(%v) = %+v, want a lost connection", err, cl)
	}
}
