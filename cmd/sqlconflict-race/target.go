package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictsqlite "github.com/sqlconflict/sqlconflict/sqlite"
)

// Database kinds, named after their raw drivers' registered names.
const (
	kindSQLite   = "sqlite"   // modernc.org/sqlite
	kindPostgres = "postgres" // github.com/lib/pq
	kindMySQL    = "mysql"    // github.com/go-sql-driver/mysql
)

// defaultSQLiteParams configure the default database as an application
// would: WAL, the journal mode SQLite recommends for concurrent use, with
// synchronous=NORMAL as WAL allows, and a busy timeout of 5s, so that a
// writer that finds the database locked waits for the lock instead of
// failing at once. Both runs use them; the sqlconflict run adds no
// conflict_* option.
const defaultSQLiteParams = "_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)"

// target is the database the races run on.
type target struct {
	kind    string
	dsn     string // as given: the sqlconflict run reads its conflict_* options
	rawDSN  string // without the conflict_* options, for the raw driver
	display string // dsn with its password hidden
	secret  string // the password, kept out of everything printed
	tmpDir  string // the default SQLite database's directory, removed by close
}

// newTarget reads dsn; an empty dsn makes a SQLite database in a new
// temporary directory.
func newTarget(dsn string) (*target, error) {
	t := &target{dsn: dsn}
	if dsn == "" {
		dir, err := os.MkdirTemp("", "sqlconflict-race-")
		if err != nil {
			return nil, err
		}
		t.tmpDir = dir
		t.dsn = "file:" + filepath.Join(dir, "race.db") + "?" + defaultSQLiteParams
	}
	t.kind = detectKind(t.dsn)
	t.secret = dsnPassword(t.kind, t.dsn)
	t.display = t.redact(t.dsn)
	_, raw, err := sqlconflict.SplitDSN(t.dsn, t.form(), sqlconflict.DefaultOptions())
	if err != nil {
		t.close()
		return nil, err // SplitDSN's errors never quote the password
	}
	t.rawDSN = raw
	return t, nil
}

// close removes the default SQLite database.
func (t *target) close() {
	if t.tmpDir != "" {
		os.RemoveAll(t.tmpDir)
	}
}

var kvStart = regexp.MustCompile(`^\s*[A-Za-z_]+\s*=`)

// detectKind tells a PostgreSQL DSN (URL or key=value) from a MySQL one
// (user:pass@tcp(host:3306)/db) and from a SQLite file name or file: URI.
func detectKind(dsn string) string {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return kindPostgres
	case strings.HasPrefix(dsn, "file:"), strings.HasPrefix(dsn, ":memory:"):
		return kindSQLite
	case strings.Contains(dsn, "tcp("), strings.Contains(dsn, "unix("), strings.Contains(dsn, "@/"):
		return kindMySQL
	case kvStart.MatchString(dsn):
		return kindPostgres
	}
	return kindSQLite
}

// form is the DSN form of the target's driver.
func (t *target) form() sqlconflict.DSNForm {
	switch t.kind {
	case kindPostgres:
		if strings.Contains(strings.ToLower(t.dsn), "://") {
			return sqlconflict.DSNPostgresURL
		}
		return sqlconflict.DSNPostgresKV
	case kindMySQL:
		return sqlconflict.DSNMySQL
	}
	return sqlconflict.DSNQuery
}

func (t *target) dialect() sqlconflict.Dialect {
	switch t.kind {
	case kindPostgres:
		return sqlconflict.DialectPostgres
	case kindMySQL:
		return sqlconflict.DialectMySQL
	}
	return sqlconflict.DialectSQLite
}

var kvPassword = regexp.MustCompile(`password\s*=\s*('((?:[^'\\]|\\.)*)'|[^\s&]+)`)

// dsnPassword finds the password of dsn, to hide it: best effort, erring on
// the side of hiding.
func dsnPassword(kind, dsn string) string {
	switch kind {
	case kindMySQL:
		if cfg, err := mysql.ParseDSN(dsn); err == nil {
			return cfg.Passwd
		}
		// Unparsable: hide what sits between the first ':' and the last '@'.
		if at := strings.LastIndex(dsn, "@"); at > 0 {
			if c := strings.Index(dsn[:at], ":"); c >= 0 {
				return dsn[c+1 : at]
			}
		}
	case kindPostgres:
		if i := strings.Index(dsn, "://"); i >= 0 {
			rest := dsn[i+3:]
			if j := strings.IndexAny(rest, "/?#"); j >= 0 {
				rest = rest[:j]
			}
			if at := strings.LastIndex(rest, "@"); at >= 0 {
				if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
					return pw
				}
			}
		}
		if m := kvPassword.FindStringSubmatch(dsn); m != nil {
			if m[2] != "" {
				return m[2]
			}
			return strings.Trim(m[1], "'")
		}
	}
	return ""
}

// redact hides the target's password in s, as typed and as escaped.
func (t *target) redact(s string) string {
	if t.secret == "" {
		return s
	}
	forms := []string{t.secret, url.QueryEscape(t.secret), url.PathEscape(t.secret)}
	if p, err := url.PathUnescape(t.secret); err == nil {
		forms = append(forms, p) // a URL's password, as a driver may quote it decoded
	}
	for _, f := range forms {
		if f != "" {
			s = strings.ReplaceAll(s, f, "xxxxx")
		}
	}
	return s
}

// redactErr is err's text without the password.
func (t *target) redactErr(err error) string {
	if err == nil {
		return ""
	}
	return t.redact(err.Error())
}

// openRaw opens the base driver, as the application did before sqlconflict.
func (t *target) openRaw(ctx context.Context, workers int) (*sql.DB, error) {
	db, err := sql.Open(t.kind, t.rawDSN)
	if err != nil {
		return nil, err
	}
	return t.ready(ctx, db, workers)
}

// openWrapped opens the same database through sqlconflict with opts; the
// conflict_* options of the DSN override them.
func (t *target) openWrapped(ctx context.Context, workers int, opts sqlconflict.Options) (*sql.DB, error) {
	opts.Dialect = t.dialect()
	var db *sql.DB
	switch t.kind {
	case kindSQLite:
		var err error
		if db, err = sqlconflictsqlite.OpenDB(t.dsn, opts); err != nil {
			return nil, err
		}
	default:
		var drv *sqlconflict.Driver
		if t.kind == kindPostgres {
			drv = sqlconflict.Wrap(&pq.Driver{}, opts)
		} else {
			drv = sqlconflict.Wrap(&mysql.MySQLDriver{}, opts)
		}
		c, err := drv.OpenConnector(t.dsn)
		if err != nil {
			return nil, err
		}
		db = sql.OpenDB(c)
	}
	return t.ready(ctx, db, workers)
}

// ready sizes db's pool for the workers, so that connections are reused
// rather than reopened, and checks that the server answers.
func (t *target) ready(ctx context.Context, db *sql.DB, workers int) (*sql.DB, error) {
	db.SetMaxIdleConns(workers + 1)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot reach the %s database: %w", t.kind, err)
	}
	return db, nil
}

// q rewrites the $n placeholders of query for MySQL and SQLite, so that one
// text serves every database.
func (t *target) q(query string) string {
	if t.kind == kindPostgres {
		return query
	}
	for n := 9; n >= 1; n-- {
		query = strings.ReplaceAll(query, fmt.Sprintf("$%d", n), "?")
	}
	return query
}

// idColumn is an auto-generated primary key column.
func (t *target) idColumn() string {
	switch t.kind {
	case kindPostgres:
		return "id BIGSERIAL PRIMARY KEY"
	case kindMySQL:
		return "id BIGINT AUTO_INCREMENT PRIMARY KEY"
	}
	return "id INTEGER PRIMARY KEY"
}

// text is a short indexed string column type.
func (t *target) text() string {
	if t.kind == kindMySQL {
		return "VARCHAR(100)"
	}
	return "TEXT"
}
