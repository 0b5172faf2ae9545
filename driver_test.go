package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"slices"
	"strings"
	"testing"

	"github.com/sqlconflict/sqlconflict/internal/sqlitefake"
)

// openFake opens a wrapped fakeDriver.
func openFake(t testing.TB, d *fakeDriver, opts Options) *sql.DB {
	t.Helper()
	c, err := NewConnector(dsnConnector{drv: d}, opts)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestOptionalInterfaces: the base connection's optional interfaces are
// reached through the wrapper.
func TestOptionalInterfaces(t *testing.T) {
	d := &fakeDriver{}
	db := openFake(t, d, DefaultOptions())
	db.SetMaxOpenConns(1)
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if d.count("Ping") == 0 {
		t.Error("Pinger not forwarded")
	}
	// database/sql's default converter refuses a uint64 with the high bit set;
	// only the base conn's NamedValueChecker accepts it.
	if _, err := db.Exec("INSERT INTO t VALUES (?)", uint64(1<<63+5)); err != nil {
		t.Fatalf("NamedValueChecker not forwarded: %v", err)
	}
	if d.count("CheckNamedValue") == 0 {
		t.Error("CheckNamedValue not called")
	}
	// The pool resets and validates a connection it hands out again.
	for range 3 {
		if _, err := db.Exec("SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if d.count("ResetSession") == 0 {
		t.Error("SessionResetter not forwarded")
	}
	if d.count("IsValid") == 0 {
		t.Error("Validator not forwarded")
	}
}

// TestIntegrationOptionalInterfaces checks the same against the real drivers.
func TestIntegrationOptionalInterfaces(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t)
		ctx := context.Background()
		big := uint64(1<<63 + 5)
		if s.PG() {
			// lib/pq's checker (v1.11 on) sends a large uint64 as text and a
			// slice as an array; without one (v1.10, the oldest go.mod
			// allows) database/sql's default converter refuses both.
			// Whichever lib/pq is linked, the wrapped driver must answer as
			// the raw one does.
			raw := s.openRaw(t)
			rawConn, err := raw.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var checker bool
			_ = rawConn.Raw(func(dc any) error { _, checker = dc.(driver.NamedValueChecker); return nil })
			rawConn.Close()
			read := func(db *sql.DB, q string, arg any) string {
				var got string
				if err := db.QueryRow(q, arg).Scan(&got); err != nil {
					return "error: " + err.Error()
				}
				return got
			}
			for _, c := range []struct {
				what, q string
				arg     any
				want    string // with lib/pq's checker
				refusal string // database/sql's, without it
			}{
				{"uint64", "SELECT $1::numeric::text", big, "9223372036854775813", "uint64 values with high bit set are not supported"},
				{"slice", "SELECT cardinality($1::int[])::text", []int64{1, 2, 3}, "3", "unsupported type []int64"},
			} {
				got, rawGot := read(db, c.q, c.arg), read(raw, c.q, c.arg)
				if got != rawGot {
					t.Errorf("%s: wrapped %q, raw lib/pq %q", c.what, got, rawGot)
				}
				if checker && got != c.want || !checker && !strings.Contains(got, c.refusal) {
					t.Errorf("%s through NamedValueChecker (lib/pq has one: %v): %q", c.what, checker, got)
				}
			}
		} else {
			tbl := s.table(t, db, "", "id INT PRIMARY KEY, u BIGINT UNSIGNED")
			mustExec(t, db, "INSERT INTO "+tbl+" (id, u) VALUES (?, ?)", 1, big)
			var got uint64
			if err := db.QueryRow("SELECT u FROM " + tbl + " WHERE id = 1").Scan(&got); err != nil || got != big {
				t.Errorf("uint64 through NamedValueChecker: %d, %v", got, err)
			}
		}
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		err = conn.Raw(func(dc any) error {
			if p, ok := dc.(driver.Pinger); !ok || p.Ping(ctx) != nil {
				t.Errorf("Pinger missing or failing on %T", dc)
			}
			if r, ok := dc.(driver.SessionResetter); !ok || r.ResetSession(ctx) != nil {
				t.Errorf("SessionResetter missing or failing on %T", dc)
			}
			if v, ok := dc.(driver.Validator); !ok || !v.IsValid() {
				t.Errorf("Validator missing or false on %T", dc)
			}
			if _, ok := dc.(driver.NamedValueChecker); !ok {
				t.Errorf("NamedValueChecker missing on %T", dc)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpenBadOption: sql.Open fails on a bad conflict_* option, naming it,
// and never shows the password.
func TestOpenBadOption(t *testing.T) {
	for _, tc := range []struct{ driver, dsn, option string }{
		{DriverPostgres, "postgres://u:s3cretpw@localhost/db?conflict_retries=x", "conflict_retries"},
		{DriverPostgres, "postgres://u:s3cretpw@localhost/db?conflict_nope=1", "conflict_nope"},
		{DriverPostgres, "host=localhost password=s3cretpw conflict_backoff=fast", "conflict_backoff"},
		{DriverMySQL, "u:s3cretpw@tcp(localhost:3306)/db?conflict_savepoints=all", "conflict_savepoints"},
		{DriverMySQL, "u:s3cretpw@tcp(localhost:3306)/db?conflict_blind_reread=loud", "conflict_blind_reread"},
	} {
		_, err := sql.Open(tc.driver, tc.dsn)
		if err == nil {
			t.Errorf("%s: Open succeeded", tc.dsn)
			continue
		}
		if !strings.Contains(err.Error(), tc.option) {
			t.Errorf("%s: error %q does not name %s", tc.dsn, err, tc.option)
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("%s: error %q shows the password", tc.dsn, err)
		}
	}
}

// TestOpenBaseDSNErrorRedacted: a base driver's DSN error that would quote
// the password does not.
func TestOpenBaseDSNErrorRedacted(t *testing.T) {
	for _, dsn := range []string{
		"postgres://u:s3cretpw@localhost:badport/db",
		"postgres://u:s3cretpw@local host/db?conflict_retries=1",
		"u:s3cretpw@tcp(localhost:3306)/db?tls=nonexistent-tls-config",
	} {
		name := DriverPostgres
		if !strings.HasPrefix(dsn, "postgres") {
			name = DriverMySQL
		}
		db, err := sql.Open(name, dsn)
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			t.Errorf("%s: no error", dsn)
			continue
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestDetectDialect(t *testing.T) {
	for _, tc := range []struct {
		d    driver.Driver
		want Dialect
	}{
		{&fakeDriver{}, DialectUnknown},
		{sqlitefake.Driver{}, DialectSQLite},  // any package path containing "sqlite"
		{&sqlitefake.Driver{}, DialectSQLite}, // modernc.org/sqlite's is a pointer
	} {
		if got := detectDialect(tc.d); got != tc.want {
			t.Errorf("detectDialect(%T) = %v, want %v", tc.d, got, tc.want)
		}
	}
	for _, name := range []string{"postgres", "mysql"} {
		db, _ := sql.Open(name, "")
		got := detectDialect(db.Driver())
		want := map[string]Dialect{"postgres": DialectPostgres, "mysql": DialectMySQL}[name]
		if got != want {
			t.Errorf("detectDialect(%s) = %v, want %v", name, got, want)
		}
	}
}

// TestDSNSecrets: every form a password can take in an error, as each DSN
// form writes it and as the driver reads it.
func TestDSNSecrets(t *testing.T) {
	for _, tc := range []struct {
		dsn  string
		want []string
	}{
		{`host=h password='O\'Brien horse battery staple' sslmode=bogus`,
			[]string{`'O\'Brien horse battery staple'`, "O'Brien horse battery staple", `'O\'Brien`, "O'Brien", "horse", "battery", "staple", "staple'"}},
		{`host=h password=O\'Brien\ horse sslmode=bogus`,
			[]string{`O\'Brien\ horse`, "O'Brien horse", `O\'Brien\`, "O'Brien", "horse"}},
		{"postgres://u:O%27Brien%20horse@h/db", []string{"O%27Brien%20horse", "O'Brien horse", "O'Brien", "horse"}},
		{"postgres://u@h/db?password=s%20ecret", []string{"s%20ecret", "s ecret", "ecret"}},
		{"u:s3cret@tcp(h:3306)/db", []string{"s3cret"}},
		{"host=h user=u", nil},
		{`host=h password='unterminated`, []string{`'unterminated`, "unterminated"}},
	} {
		got := dsnSecrets(tc.dsn)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("dsnSecrets(%q) = %q, missing %q", tc.dsn, got, w)
			}
		}
		if len(tc.want) == 0 && len(got) != 0 {
			t.Errorf("dsnSecrets(%q) = %q, want none", tc.dsn, got)
		}
		for i := 1; i < len(got); i++ {
			if len(got[i]) > len(got[i-1]) {
				t.Errorf("dsnSecrets(%q) = %q: not longest first", tc.dsn, got)
			}
		}
	}
	// pgx quotes the DSN with its own redaction, which stops at a blank.
	pgxMsg := "cannot parse `host=h password=xxxxx horse battery staple' sslmode=bogus`: failed to configure TLS"
	got := redactString(pgxMsg, dsnSecrets(`host=h password='O\'Brien horse battery staple' sslmode=bogus`))
	for _, w := range []string{"horse", "battery", "staple", "Brien"} {
		if strings.Contains(got, w) {
			t.Errorf("redacted %q still holds %q", got, w)
		}
	}
}

// TestOpenWrongForm: a DSN plainly in the other driver's form is refused
// at Open, saying which form it looks like, without quoting the password.
func TestOpenWrongForm(t *testing.T) {
	for _, tc := range []struct{ driver, dsn, want string }{
		{DriverPostgres, "app:s3cretpw@tcp(127.0.0.1:3306)/app?parseTime=true", "go-sql-driver/mysql's form"},
		{DriverPostgres, "app:s3cretpw@/app", "go-sql-driver/mysql's form"},
		{DriverMySQL, "postgres://app:s3cretpw@db/app?sslmode=disable", "postgres:// URL"},
	} {
		_, err := sql.Open(tc.driver, tc.dsn)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("%s %q: %v, want an error naming %s without the password", tc.driver, tc.dsn, err, tc.want)
		}
	}
	// key=value DSNs that hold '/' and '@' stay PostgreSQL's.
	for _, dsn := range []string{"host=/var/run/postgresql user=a@b", "host=db dbname=app password=p/w@x"} {
		if _, err := sql.Open(DriverPostgres, dsn); err != nil {
			t.Errorf("%q: %v", dsn, err)
		}
	}
}
