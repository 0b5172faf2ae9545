package sqlconflict_test

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict"
)

// optsWith returns DefaultOptions changed by f.
func optsWith(f func(*sqlconflict.Options)) sqlconflict.Options {
	o := sqlconflict.DefaultOptions()
	if f != nil {
		f(&o)
	}
	return o
}

// isConflictKey reports a parameter that is sqlconflict's: conflict_ in any
// case.
func isConflictKey(k string) bool { return strings.HasPrefix(strings.ToLower(k), "conflict_") }

// pqView is lib/pq's reading of dsn, without the conflict_* options it would
// send to the server as run-time parameters; n counts those. The reading is
// the one its Connector keeps, unexported and in two layouts: opts, a map of
// every key (up to lib/pq v1.10), or cfg, a Config whose Runtime map holds
// the keys lib/pq does not know (v1.11 on). The tests run at both ends of
// the versions go.mod allows, so pqView copies whichever is there out as
// plain values, dropping the conflict_* keys of its string maps.
func pqView(dsn string) (view any, n int, err error) {
	c, err := pq.NewConnector(dsn)
	if err != nil {
		return nil, 0, err
	}
	v := reflect.ValueOf(c).Elem()
	read := v.FieldByName("cfg")
	if !read.IsValid() {
		read = v.FieldByName("opts")
	}
	if !read.IsValid() {
		// Not an error: fuzzSplit would take it for a DSN lib/pq rejects.
		panic(fmt.Sprintf("pqView: a lib/pq Connector with neither cfg nor opts: %s", v.Type()))
	}
	view = plainView(read, &n)
	return view, n, nil
}

// plainView copies v, unexported fields included, into maps, slices and
// basic values that reflect.DeepEqual compares, leaving out the conflict_*
// keys of string maps, which it counts in n.
func plainView(v reflect.Value, n *int) any {
	switch v.Kind() {
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		if v.Type().Key().Kind() != reflect.String || v.Type().Elem().Kind() != reflect.String {
			panic(fmt.Sprintf("plainView: a %s", v.Type()))
		}
		m := make(map[string]string, v.Len())
		for it := v.MapRange(); it.Next(); {
			if k := it.Key().String(); isConflictKey(k) {
				*n++
			} else {
				m[k] = it.Value().String()
			}
		}
		return m
	case reflect.Struct:
		m := make(map[string]any, v.NumField())
		for i := 0; i < v.NumField(); i++ {
			m[v.Type().Field(i).Name] = plainView(v.Field(i), n)
		}
		return m
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil
		}
		s := make([]any, v.Len())
		for i := range s {
			s[i] = plainView(v.Index(i), n)
		}
		return s
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return plainView(v.Elem(), n)
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint()
	case reflect.Float32, reflect.Float64:
		return v.Float()
	}
	panic(fmt.Sprintf("plainView: a %s", v.Type()))
}

// mysqlView is go-sql-driver/mysql's reading of dsn, without the conflict_*
// options it would send to the server as SET statements; n counts those.
func mysqlView(dsn string) (view any, n int, err error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, 0, err
	}
	for k := range cfg.Params {
		if isConflictKey(k) {
			delete(cfg.Params, k)
			n++
		}
	}
	return cfg.FormatDSN(), n, nil
}

// pqURLView is pqView for URLs whose parameter names lib/pq keeps intact.
// It writes names unquoted into key=value text, so that a name holding space,
// '=', a quote or a backslash turns into other keys, or swallows its neighbours.
func pqURLView(dsn string) (any, int, error) {
	query, _, _ := strings.Cut(dsn, "#")
	_, query, _ = strings.Cut(query, "?")
	params, _ := url.ParseQuery(query)
	for k := range params {
		if strings.ContainsAny(k, `='\`) || strings.ContainsFunc(strings.TrimFunc(k, unicode.IsSpace), unicode.IsSpace) {
			return nil, 0, fmt.Errorf("lib/pq misreads the parameter name %q", k)
		}
	}
	return pqView(dsn)
}

// queryView is how modernc.org/sqlite and mattn/go-sqlite3 read dsn: the
// name before its first '?' and the parameters after it, through
// url.ParseQuery, without the conflict_* parameters; n counts those.
func queryView(dsn string) (any, int, error) {
	name, query := dsn, ""
	if i := strings.IndexByte(dsn, '?'); i >= 1 {
		name, query = dsn[:i], dsn[i+1:]
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for k := range params {
		if isConflictKey(k) {
			delete(params, k)
			n++
		}
	}
	return struct {
		Name   string
		Params url.Values
	}{name, params}, n, nil
}

// compareViews checks that the base driver reads stripped as it reads dsn,
// but for the conflict_* options, of which it must see none in stripped.
func compareViews(view func(string) (any, int, error), dsn, stripped string) error {
	before, _, err := view(dsn)
	if err != nil {
		return fmt.Errorf("base driver rejects the original DSN %q: %v", dsn, err)
	}
	after, n, err := view(stripped)
	switch {
	case err != nil:
		return fmt.Errorf("base driver accepts %q but not its stripped %q: %v", dsn, stripped, err)
	case n > 0:
		return fmt.Errorf("base driver sees %d conflict_* options in the stripped %q", n, stripped)
	case !reflect.DeepEqual(before, after):
		return fmt.Errorf("base driver reads %q and its stripped %q differently:\n%+v\n%+v", dsn, stripped, before, after)
	}
	return nil
}

// checkBaseView checks that the base driver of form reads stripped as it
// reads dsn, conflict_* options aside.
func checkBaseView(t *testing.T, form sqlconflict.DSNForm, dsn, stripped string) {
	t.Helper()
	view := pqView
	switch form {
	case sqlconflict.DSNPostgresURL, sqlconflict.DSNPostgresKV:
		if _, err := pq.NewConnector(stripped); err != nil {
			t.Errorf("pq.NewConnector(stripped): %v", err)
		}
	case sqlconflict.DSNMySQL:
		view = mysqlView
	case sqlconflict.DSNQuery:
		view = queryView
	}
	if err := compareViews(view, dsn, stripped); err != nil {
		t.Error(err)
	}
}

const (
	formURL   = sqlconflict.DSNPostgresURL
	formKV    = sqlconflict.DSNPostgresKV
	formMySQL = sqlconflict.DSNMySQL
	formQuery = sqlconflict.DSNQuery
)

// setAllOptions sets every option away from its default: what the "all
// mixed" DSNs of TestSplitDSN ask for.
func setAllOptions(o *sqlconflict.Options) {
	*o = sqlconflict.Options{Retries: 7, RetryTimeout: 3 * time.Second, Backoff: time.Millisecond, MaxBackoff: 2 * time.Second,
		Savepoints: sqlconflict.SavepointsWrites, SavepointBudget: 4,
		BlindReread: sqlconflict.BlindRereadOff, WrapErrors: true,
		RetryFunctions: true, CancelGrace: 20 * time.Millisecond, VerifyCommit: true,
		Replay: sqlconflict.ReplayOn, ReplayStatements: 9, ReplayBytes: 4096}
}

func TestSplitDSN(t *testing.T) {
	tests := []struct {
		name        string
		form        sqlconflict.DSNForm
		dsn, want   string
		opts        func(*sqlconflict.Options) // changes to DefaultOptions
		baseRejects bool                       // the base driver rejects dsn itself
	}{
		// Postgres URL.
		{name: "url/none", form: formURL,
			dsn:  "postgres://alice:pw@db:5432/app?sslmode=disable",
			want: "postgres://alice:pw@db:5432/app?sslmode=disable"},
		{name: "url/no query", form: formURL, dsn: "postgres://db/app", want: "postgres://db/app"},
		{name: "url/empty query", form: formURL, dsn: "postgres://db/app?", want: "postgres://db/app?"},
		{name: "url/retries", form: formURL,
			dsn:  "postgres://db/app?conflict_retries=0",
			want: "postgres://db/app",
			opts: func(o *sqlconflict.Options) { o.Retries = -1 }}, // the DSN's 0: none
		{name: "url/backoff", form: formURL,
			dsn:  "postgres://db/app?sslmode=disable&conflict_backoff=250us",
			want: "postgres://db/app?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.Backoff = 250 * time.Microsecond }},
		{name: "url/max backoff", form: formURL,
			dsn:  "postgres://db/app?conflict_max_backoff=1m30s&sslmode=disable",
			want: "postgres://db/app?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.MaxBackoff = 90 * time.Second }},
		{name: "url/savepoints", form: formURL,
			dsn:  "postgres://db/app?sslmode=disable&conflict_savepoints=writes&application_name=x",
			want: "postgres://db/app?sslmode=disable&application_name=x",
			opts: func(o *sqlconflict.Options) { o.Savepoints = sqlconflict.SavepointsWrites }},
		{name: "url/savepoints off", form: formURL,
			dsn:  "postgres://db/app?conflict_savepoints=off",
			want: "postgres://db/app"},
		{name: "url/savepoint budget", form: formURL,
			dsn:  "postgres://db/app?conflict_savepoint_budget=0",
			want: "postgres://db/app",
			opts: func(o *sqlconflict.Options) { o.SavepointBudget = -1 }},
		{name: "url/blind reread", form: formURL,
			dsn:  "postgres://db/app?conflict_blind_reread=error",
			want: "postgres://db/app",
			opts: func(o *sqlconflict.Options) { o.BlindReread = sqlconflict.BlindRereadError }},
		{name: "url/blind reread off", form: formURL,
			dsn:  "postgres://db/app?conflict_blind_reread=off",
			want: "postgres://db/app",
			opts: func(o *sqlconflict.Options) { o.BlindReread = sqlconflict.BlindRereadOff }},
		{name: "url/wrap errors", form: formURL,
			dsn:  "postgres://db/app?conflict_wrap_errors=1",
			want: "postgres://db/app",
			opts: func(o *sqlconflict.Options) { o.WrapErrors = true }},
		{name: "url/all mixed", form: formURL,
			dsn: "postgresql://alice:pw@db:5432/app?conflict_retries=7&sslmode=disable&conflict_backoff=1ms&conflict_retry_timeout=3s&" +
				"application_name=a%26b&conflict_max_backoff=2s&conflict_savepoints=writes&connect_timeout=5&" +
				"conflict_savepoint_budget=4&conflict_blind_reread=off&conflict_wrap_errors=true&conflict_retry_functions=1&" +
				"conflict_cancel_grace=20ms&conflict_verify_commit=true&conflict_replay=on&conflict_replay_statements=9&conflict_replay_bytes=4096",
			want: "postgresql://alice:pw@db:5432/app?sslmode=disable&application_name=a%26b&connect_timeout=5",
			opts: setAllOptions},
		{name: "url/escaped password", form: formURL,
			dsn:  "postgres://alice:p%3F%40%2F%26conflict_retries%3D9@db/app?conflict_retries=2&sslmode=disable",
			want: "postgres://alice:p%3F%40%2F%26conflict_retries%3D9@db/app?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},
		{name: "url/escaped password only", form: formURL,
			dsn:  "postgres://alice:conflict_retries=9@db/app",
			want: "postgres://alice:conflict_retries=9@db/app"},
		{name: "url/escaped key and value", form: formURL,
			dsn:  "postgres://db/app?conflict%5Fbackoff=10%6Ds&sslmode=disable",
			want: "postgres://db/app?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.Backoff = 10 * time.Millisecond }},
		{name: "url/spaced key", form: formURL,
			dsn:  "postgres://db/app?sslmode=disable&%20conflict_retries+=4",
			want: "postgres://db/app?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.Retries = 4 }},
		{name: "url/malformed other segment kept", form: formURL,
			dsn:  "postgres://db/app?a%zz=1&conflict_retries=1&b=%zz",
			want: "postgres://db/app?a%zz=1&b=%zz",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "url/empty segments kept", form: formURL,
			dsn:  "postgres://db/app?&conflict_retries=1&",
			want: "postgres://db/app?&",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "url/fragment", form: formURL,
			dsn:  "postgres://db/app?conflict_retries=1#x?conflict_retries=2",
			want: "postgres://db/app#x?conflict_retries=2",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "url/query in fragment", form: formURL,
			dsn:  "postgres://db/app#x?conflict_retries=2",
			want: "postgres://db/app#x?conflict_retries=2"},
		{name: "url/no path", form: formURL,
			dsn:  "postgres://db?conflict_retries=1&sslmode=disable",
			want: "postgres://db?sslmode=disable",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "url/other prefix case", form: formURL,
			dsn:  "postgres://db/app?other_conflict_retries=1&Conflict_Retries=2",
			want: "postgres://db/app?other_conflict_retries=1",
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},

		// lib/pq key=value.
		{name: "kv/none", form: formKV, dsn: "host=db dbname=app", want: "host=db dbname=app"},
		{name: "kv/empty", form: formKV, dsn: "", want: ""},
		{name: "kv/first", form: formKV,
			dsn:  "conflict_retries=5 host=db dbname=app",
			want: "host=db dbname=app",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "kv/middle", form: formKV,
			dsn:  "host=db conflict_savepoints=writes dbname=app",
			want: "host=db dbname=app",
			opts: func(o *sqlconflict.Options) { o.Savepoints = sqlconflict.SavepointsWrites }},
		{name: "kv/last", form: formKV,
			dsn:  "host=db dbname=app conflict_wrap_errors=true",
			want: "host=db dbname=app",
			opts: func(o *sqlconflict.Options) { o.WrapErrors = true }},
		{name: "kv/only", form: formKV,
			dsn:  "conflict_retries=5 conflict_backoff=1ms",
			want: "",
			opts: func(o *sqlconflict.Options) { o.Retries, o.Backoff = 5, time.Millisecond }},
		{name: "kv/all mixed", form: formKV,
			dsn: "conflict_retries=7 host=db conflict_backoff=1ms conflict_max_backoff=2s dbname=app conflict_retry_timeout='3s' " +
				"conflict_savepoints=writes\tconflict_savepoint_budget=4\nsslmode=disable conflict_blind_reread=off conflict_wrap_errors=t " +
				"conflict_retry_functions=true conflict_cancel_grace='20ms' conflict_verify_commit=1 conflict_replay=on conflict_replay_statements=9 conflict_replay_bytes='4096'",
			want: "host=db dbname=app sslmode=disable",
			opts: setAllOptions},
		{name: "kv/spaces around =", form: formKV,
			dsn:  "host = db   conflict_retries =  5  dbname= app",
			want: "host = db   dbname= app",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "kv/leading and trailing space", form: formKV,
			dsn:  "  host=db conflict_retries=1  ",
			want: "  host=db  ",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "kv/quoted option", form: formKV,
			dsn:  "host=db conflict_blind_reread='error' dbname=app",
			want: "host=db dbname=app",
			opts: func(o *sqlconflict.Options) { o.BlindReread = sqlconflict.BlindRereadError }},
		{name: "kv/escaped option", form: formKV,
			dsn:  `conflict_max_backoff=1\0s host=db`,
			want: "host=db",
			opts: func(o *sqlconflict.Options) { o.MaxBackoff = 10 * time.Second }},
		{name: "kv/quoted password", form: formKV,
			dsn:  `host=db password='a b\'c conflict_retries=9 ?@/&' conflict_retries=2 dbname=app`,
			want: `host=db password='a b\'c conflict_retries=9 ?@/&' dbname=app`,
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},
		{name: "kv/escaped password", form: formKV,
			dsn:  `password=a\ conflict_retries=9 conflict_retries=2`,
			want: `password=a\ conflict_retries=9`,
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},
		{name: "kv/quote then option", form: formKV,
			dsn:  "password='x'conflict_retries=5 host=db",
			want: "password='x'host=db",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "kv/option quote then key", form: formKV,
			dsn:  "host=db conflict_retries='5'dbname=app",
			want: "host=db dbname=app",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "kv/empty values", form: formKV,
			dsn:  "password='' conflict_retries=1 options=",
			want: "password='' options=",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "kv/value with =", form: formKV,
			dsn:  "options='-c statement_timeout=5s' conflict_retries=1 application_name=a=b",
			want: "options='-c statement_timeout=5s' application_name=a=b",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "kv/unicode space", form: formKV,
			dsn:  "host=db\u00a0conflict_retries=1\u2003dbname=app",
			want: "host=db\u00a0dbname=app",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "kv/other prefix case", form: formKV,
			dsn:  "host=db CONFLICT_RETRIES=1 xconflict_retries=2",
			want: "host=db xconflict_retries=2",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},

		// go-sql-driver/mysql.
		{name: "mysql/none", form: formMySQL,
			dsn:  "alice:pw@tcp(db:3306)/app?parseTime=true",
			want: "alice:pw@tcp(db:3306)/app?parseTime=true"},
		{name: "mysql/empty", form: formMySQL, dsn: "", want: ""},
		{name: "mysql/no params", form: formMySQL, dsn: "alice@tcp(db)/app", want: "alice@tcp(db)/app"},
		{name: "mysql/first", form: formMySQL,
			dsn:  "alice:pw@tcp(db:3306)/app?conflict_retries=5&parseTime=true&loc=Local",
			want: "alice:pw@tcp(db:3306)/app?parseTime=true&loc=Local",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "mysql/middle", form: formMySQL,
			dsn:  "alice:pw@tcp(db:3306)/app?parseTime=true&conflict_savepoint_budget=8&loc=Local",
			want: "alice:pw@tcp(db:3306)/app?parseTime=true&loc=Local",
			opts: func(o *sqlconflict.Options) { o.SavepointBudget = 8 }},
		{name: "mysql/last", form: formMySQL,
			dsn:  "alice:pw@tcp(db:3306)/app?parseTime=true&conflict_blind_reread=warn",
			want: "alice:pw@tcp(db:3306)/app?parseTime=true",
			opts: func(o *sqlconflict.Options) { o.BlindReread = sqlconflict.BlindRereadWarn }},
		{name: "mysql/only", form: formMySQL,
			dsn:  "alice:pw@tcp(db:3306)/app?conflict_backoff=0s&conflict_max_backoff=0",
			want: "alice:pw@tcp(db:3306)/app",
			opts: func(o *sqlconflict.Options) { o.Backoff, o.MaxBackoff = -1, -1 }},
		{name: "mysql/all mixed", form: formMySQL,
			dsn: "alice:pw@tcp(db:3306)/app?conflict_retries=7&parseTime=true&conflict_backoff=1ms&conflict_retry_timeout=3000ms&" +
				"conflict_max_backoff=2s&conflict_savepoints=writes&loc=Europe%2FParis&" +
				"conflict_savepoint_budget=4&conflict_blind_reread=off&conflict_wrap_errors=TRUE&conflict_retry_functions=true&" +
				"conflict_cancel_grace=20ms&conflict_verify_commit=true&conflict_replay=on&conflict_replay_statements=9&conflict_replay_bytes=4096",
			want: "alice:pw@tcp(db:3306)/app?parseTime=true&loc=Europe%2FParis",
			opts: setAllOptions},
		{name: "mysql/password specials", form: formMySQL,
			dsn:  "alice:p?conflict_retries=9&x@y/z:w@tcp(db:3306)/app?conflict_retries=2&parseTime=true",
			want: "alice:p?conflict_retries=9&x@y/z:w@tcp(db:3306)/app?parseTime=true",
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},
		{name: "mysql/password only", form: formMySQL,
			dsn:  "alice:?conflict_retries=9&@tcp(db:3306)/app",
			want: "alice:?conflict_retries=9&@tcp(db:3306)/app"},
		{name: "mysql/unix socket", form: formMySQL,
			dsn:  "alice:pw@unix(/var/run/mysqld/mysqld.sock)/app?conflict_savepoints=writes",
			want: "alice:pw@unix(/var/run/mysqld/mysqld.sock)/app",
			opts: func(o *sqlconflict.Options) { o.Savepoints = sqlconflict.SavepointsWrites }},
		{name: "mysql/no user", form: formMySQL,
			dsn:  "/app?conflict_retries=1",
			want: "/app",
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "mysql/escaped value", form: formMySQL,
			dsn:  "tcp(db)/app?conflict_backoff=10%6Ds",
			want: "tcp(db)/app",
			opts: func(o *sqlconflict.Options) { o.Backoff = 10 * time.Millisecond }},
		{name: "mysql/escaped key is not an option", form: formMySQL, // mysql does not unescape keys
			dsn:  "tcp(db)/app?conflict%5Fretries=4",
			want: "tcp(db)/app?conflict%5Fretries=4"},
		{name: "mysql/odd segments kept", form: formMySQL,
			dsn:  "tcp(db)/app?&flag&conflict_retries=1&x=%zz",
			want: "tcp(db)/app?&flag&x=%zz", baseRejects: true,
			opts: func(o *sqlconflict.Options) { o.Retries = 1 }},
		{name: "mysql/no slash", form: formMySQL,
			dsn:  "alice@tcp(db)?conflict_retries=1",
			want: "alice@tcp(db)?conflict_retries=1", baseRejects: true},

		// SQLite file names and URIs (modernc.org/sqlite, mattn/go-sqlite3).
		{name: "query/none", form: formQuery,
			dsn:  "file:/tmp/app.db?_pragma=busy_timeout(5000)",
			want: "file:/tmp/app.db?_pragma=busy_timeout(5000)"},
		{name: "query/no query", form: formQuery, dsn: "/tmp/app.db", want: "/tmp/app.db"},
		{name: "query/memory", form: formQuery, dsn: ":memory:", want: ":memory:"},
		{name: "query/empty", form: formQuery, dsn: "", want: ""},
		{name: "query/empty query", form: formQuery, dsn: "app.db?", want: "app.db?"},
		{name: "query/first", form: formQuery,
			dsn:  "file:/tmp/app.db?conflict_retries=5&_pragma=foreign_keys(1)",
			want: "file:/tmp/app.db?_pragma=foreign_keys(1)",
			opts: func(o *sqlconflict.Options) { o.Retries = 5 }},
		{name: "query/middle", form: formQuery,
			dsn:  "file:/tmp/app.db?mode=rwc&conflict_backoff=1ms&_pragma=journal_mode(WAL)",
			want: "file:/tmp/app.db?mode=rwc&_pragma=journal_mode(WAL)",
			opts: func(o *sqlconflict.Options) { o.Backoff = time.Millisecond }},
		{name: "query/only", form: formQuery,
			dsn:  "/tmp/app.db?conflict_retries=0",
			want: "/tmp/app.db",
			opts: func(o *sqlconflict.Options) { o.Retries = -1 }},
		{name: "query/relative", form: formQuery,
			dsn:  "app.db?_txlock=immediate&conflict_savepoints=writes",
			want: "app.db?_txlock=immediate",
			opts: func(o *sqlconflict.Options) { o.Savepoints = sqlconflict.SavepointsWrites }},
		{name: "query/all mixed", form: formQuery,
			dsn: "file:/tmp/app.db?conflict_retries=7&_pragma=busy_timeout(0)&conflict_backoff=1ms&conflict_retry_timeout=3s&" +
				"conflict_max_backoff=2s&_pragma=journal_mode(WAL)&conflict_savepoints=writes&" +
				"conflict_savepoint_budget=4&conflict_blind_reread=off&conflict_wrap_errors=true&_time_format=sqlite&" +
				"conflict_retry_functions=true&conflict_cancel_grace=20ms&conflict_verify_commit=true&conflict_replay=on&conflict_replay_statements=9&conflict_replay_bytes=4096",
			want: "file:/tmp/app.db?_pragma=busy_timeout(0)&_pragma=journal_mode(WAL)&_time_format=sqlite",
			opts: setAllOptions},
		{name: "query/slash after ?", form: formQuery,
			dsn:  "/tmp/app.db?conflict_retries=2&vfs=my/vfs",
			want: "/tmp/app.db?vfs=my/vfs",
			opts: func(o *sqlconflict.Options) { o.Retries = 2 }},
		{name: "query/? in the path", form: formQuery, // the drivers split at the first '?' too
			dsn:  "/tmp/a?b/app.db?conflict_retries=1",
			want: "/tmp/a?b/app.db?conflict_retries=1"},
		{name: "query/escaped key and value", form: formQuery,
			dsn:  "file:app.db?conflict%5Fbackoff=10%6Ds&cache=shared",
			want: "file:app.db?cache=shared",
			opts: func(o *sqlconflict.Options) { o.Backoff = 10 * time.Millisecond }},
		{name: "query/spaced key is not an option", form: formQuery, // url.ParseQuery keeps the space
			dsn:  "app.db?%20conflict_retries=4",
			want: "app.db?%20conflict_retries=4"},
		{name: "query/leading ?", form: formQuery, // a name, not a query, to the drivers
			dsn:  "?conflict_retries=1",
			want: "?conflict_retries=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, got, err := sqlconflict.SplitDSN(tt.dsn, tt.form, sqlconflict.DefaultOptions())
			if err != nil {
				t.Fatalf("SplitDSN(%q): %v", tt.dsn, err)
			}
			if got != tt.want {
				t.Errorf("stripped DSN\n got %q\nwant %q", got, tt.want)
			}
			if want := optsWith(tt.opts); !reflect.DeepEqual(opts, want) {
				t.Errorf("options\n got %+v\nwant %+v", opts, want)
			}
			if !tt.baseRejects {
				checkBaseView(t, tt.form, tt.dsn, got)
			}
		})
	}
}

func TestSplitDSNKeepsBase(t *testing.T) {
	base := sqlconflict.Options{Retries: 9, MaxBackoff: time.Minute, SavepointBudget: 1, WrapErrors: true}
	want := base
	want.Retries = 2
	if opts, _, err := sqlconflict.SplitDSN("host=db conflict_retries=2", formKV, base); err != nil || !reflect.DeepEqual(opts, want) {
		t.Errorf("got %+v, %v; want %+v", opts, err, want)
	}
}

func TestSplitDSNAuto(t *testing.T) {
	tests := []struct {
		dsn  string
		want sqlconflict.DSNForm
	}{
		{"postgres://db/app?conflict_retries=5&sslmode=disable", formURL},
		{"file:/tmp/app.db?conflict_retries=5&_pragma=busy_timeout(0)", formQuery},
		{"file:app.db?mode=memory&conflict%5Fretries=5", formQuery},
		{"PostgreSQL://alice@db/app?conflict_retries=5", formURL},
		{"alice:pw@tcp(db:3306)/app?conflict_retries=5", formMySQL},
		{"tcp(db)/app?conflict_retries=5", formMySQL},
		{"unix(/tmp/x)/app?conflict_retries=5", formMySQL},
		{"/app?conflict_retries=5", formMySQL},
		{"host=db dbname=app conflict_retries=5", formKV},
		{"host=/tmp dbname=app conflict_retries=5", formKV},
		{"postgres:/db/app?conflict_retries=5", formKV},
		// Holds '/' and '@': read as MySQL. Pass DSNPostgresKV for it.
		{"host=/tmp user=a@b conflict_retries=5", formMySQL},
	}
	type result struct {
		opts sqlconflict.Options
		dsn  string
		err  string
	}
	split := func(dsn string, form sqlconflict.DSNForm) result {
		opts, s, err := sqlconflict.SplitDSN(dsn, form, sqlconflict.DefaultOptions())
		r := result{opts: opts, dsn: s}
		if err != nil {
			r.err = err.Error()
		}
		return r
	}
	for _, tt := range tests {
		got := split(tt.dsn, sqlconflict.DSNAuto)
		if want := split(tt.dsn, tt.want); !reflect.DeepEqual(got, want) {
			t.Errorf("SplitDSN(%q, DSNAuto) = %+v, want as form %d: %+v", tt.dsn, got, tt.want, want)
		}
		distinct := false
		for _, f := range []sqlconflict.DSNForm{formURL, formKV, formMySQL, formQuery} {
			distinct = distinct || f != tt.want && !reflect.DeepEqual(split(tt.dsn, f), got)
		}
		if !distinct {
			t.Errorf("bad test: %q reads the same in every form", tt.dsn)
		}
	}
}

func TestSplitDSNErrors(t *testing.T) {
	type errTest struct {
		name   string
		form   sqlconflict.DSNForm
		dsn    string
		secret string   // must not show in the error
		want   []string // must show in the error
	}
	tests := []errTest{
		{name: "url/unknown", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict_retry=1",
			secret: "s3cr3t", want: []string{`unknown DSN option "conflict_retry"`, "known: conflict_retries, conflict_retry_timeout, conflict_backoff"}},
		{name: "url/unknown escaped", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict%5Fretry=1",
			secret: "s3cr3t", want: []string{`"conflict_retry"`}},
		{name: "url/duplicate", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict_retries=1&sslmode=disable&conflict%5Fretries=1",
			secret: "s3cr3t", want: []string{"conflict_retries given twice"}},
		{name: "url/malformed value", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?sslmode=%zz&conflict_backoff=1%zzms",
			secret: "s3cr3t", want: []string{"conflict_backoff: malformed percent-encoding"}},
		{name: "url/malformed name", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict_retries%zz=1",
			secret: "s3cr3t", want: []string{`"conflict_retries%zz": malformed percent-encoding`}},
		{name: "url/bad retry timeout", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict_retry_timeout=-1s",
			secret: "s3cr3t", want: []string{`conflict_retry_timeout="-1s": want a duration >= 0`}},
		{name: "url/validate", form: formURL,
			dsn:    "postgres://alice:s3cr3t@db/app?conflict_backoff=2s",
			secret: "s3cr3t", want: []string{"Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, 2s), got 1s"}},
		{name: "url/spaced unknown key", form: formURL, // found by FuzzSplitDSNPostgresURL
			dsn:    "postgres://alice:s3cr3t@0? conflict_=0",
			secret: "s3cr3t", want: []string{`unknown DSN option "conflict_"`}},
		{name: "url/unescaped password value", form: formURL,
			dsn:    "postgres://alice:pa?conflict_retries=Zq9&s@db/app",
			secret: "Zq9", want: []string{"conflict_retries=<hidden", "want an integer"}},
		{name: "url/unescaped password name", form: formURL,
			dsn:    "postgres://alice:pa?conflict_Zq9@db/app",
			secret: "Zq9", want: []string{"unknown DSN option <hidden"}},
		{name: "kv/unknown", form: formKV,
			dsn:    `password='s3 cr\'3t' conflict_retry=1`,
			secret: `s3 cr`, want: []string{`unknown DSN option "conflict_retry"`}},
		{name: "kv/duplicate", form: formKV,
			dsn:    "password=s3cr3t conflict_retries=1 conflict_retries = '1'",
			secret: "s3cr3t", want: []string{"conflict_retries given twice"}},
		{name: "kv/validate", form: formKV,
			dsn:    "password=s3cr3t conflict_max_backoff=1ms",
			secret: "s3cr3t", want: []string{"Options.MaxBackoff (conflict_max_backoff)", "got 1ms"}},
		{name: "kv/unterminated quote", form: formKV,
			dsn:    "conflict_retries=1 password='s3cr3t host=db",
			secret: "s3cr3t", want: []string{"unterminated quoted value"}},
		{name: "kv/unquoted space", form: formKV,
			dsn:    "conflict_retries=1 password=s3 cr3t host=db",
			secret: "cr3t", want: []string{`missing "=" after a key`}},
		{name: "kv/trailing backslash", form: formKV,
			dsn:    `conflict_retries=1 password=s3cr3t\`,
			secret: "s3cr3t", want: []string{"missing character after backslash"}},
		{name: "mysql/unknown", form: formMySQL,
			dsn:    "alice:s3cr3t@tcp(db)/app?conflict_retry=1",
			secret: "s3cr3t", want: []string{`unknown DSN option "conflict_retry"`}},
		{name: "mysql/duplicate", form: formMySQL,
			dsn:    "alice:s3cr3t@tcp(db)/app?conflict_retries=1&conflict_retries=2",
			secret: "s3cr3t", want: []string{"conflict_retries given twice"}},
		{name: "mysql/missing =", form: formMySQL,
			dsn:    "alice:s3cr3t@tcp(db)/app?conflict_wrap_errors",
			secret: "s3cr3t", want: []string{`conflict_wrap_errors="": want a boolean`}},
		{name: "mysql/malformed value", form: formMySQL,
			dsn:    "alice:s3cr3t@tcp(db)/app?conflict_savepoints=%w",
			secret: "s3cr3t", want: []string{"conflict_savepoints: malformed percent-encoding"}},
		{name: "mysql/validate", form: formMySQL,
			dsn:    "alice:s3cr3t@tcp(db)/app?conflict_backoff=1s&conflict_max_backoff=999ms",
			secret: "s3cr3t", want: []string{"Options.MaxBackoff (conflict_max_backoff)"}},
		{name: "mysql/unescaped password", form: formMySQL,
			dsn:    "alice:pa/x?conflict_retries=Zq9@tcp(db:3306)",
			secret: "Zq9", want: []string{"conflict_retries=<hidden"}},
		{name: "query/unknown", form: formQuery,
			dsn:    "file:/tmp/app.db?_pragma=key('s3cr3t')&conflict_retry=1",
			secret: "s3cr3t", want: []string{`unknown DSN option "conflict_retry"`}},
		{name: "query/duplicate", form: formQuery,
			dsn:    "/tmp/app.db?_pragma=key('s3cr3t')&conflict_retries=1&conflict%5Fretries=1",
			secret: "s3cr3t", want: []string{"conflict_retries given twice"}},
		{name: "query/malformed name", form: formQuery,
			dsn:    "file:app.db?_pragma=key('s3cr3t')&conflict_retries%zz=1",
			secret: "s3cr3t", want: []string{`"conflict_retries%zz": malformed percent-encoding`}},
		{name: "query/validate", form: formQuery,
			dsn:    "file:app.db?_pragma=key('s3cr3t')&conflict_backoff=2s",
			secret: "s3cr3t", want: []string{"Options.MaxBackoff (conflict_max_backoff)"}},
		{name: "bad form", form: 42, dsn: "postgres://alice:s3cr3t@db/app",
			secret: "s3cr3t", want: []string{"unknown DSNForm 42"}},
	}
	// A bad value for every option in every form.
	templates := []struct {
		form   sqlconflict.DSNForm
		secret string
		dsn    func(key, val string) string
	}{
		{formURL, "p?@/&conflict_retries=9", func(key, val string) string {
			return "postgres://alice:p%3F%40%2F%26conflict_retries%3D9@db:5432/app?sslmode=disable&" +
				key + "=" + url.QueryEscape(val) + "&application_name=x"
		}},
		{formKV, `p?@/& conflict_retries=9`, func(key, val string) string {
			return `host=db password='p?@/& conflict_retries=9' ` + key + "='" + val + "' dbname=app"
		}},
		{formMySQL, "p?@/&conflict_retries=9", func(key, val string) string {
			return "alice:p?@/&conflict_retries=9@tcp(db:3306)/app?parseTime=true&" + key + "=" + url.QueryEscape(val)
		}},
		// A SQLite DSN holds no password, but may hold an encryption key.
		{formQuery, "k3y-s3cr3t", func(key, val string) string {
			return "file:/tmp/app.db?_pragma=key('k3y-s3cr3t')&" + key + "=" + url.QueryEscape(val) + "&_pragma=busy_timeout(0)"
		}},
	}
	bad := map[string][]string{
		"conflict_retries":           {"abc", "-1", "1.5", "", "99999999999999999999"},
		"conflict_backoff":           {"5", "-1ms", "fast"},
		"conflict_max_backoff":       {"1", "-1s"},
		"conflict_savepoints":        {"on", "WRITES", ""},
		"conflict_savepoint_budget":  {"-3", "x"},
		"conflict_blind_reread":      {"warning", "ERROR"},
		"conflict_wrap_errors":       {"yes", "2"},
		"conflict_replay":            {"true", "ON", "writes", ""},
		"conflict_replay_statements": {"-1", "many"},
		"conflict_replay_bytes":      {"1MB", "-5"},
	}
	for _, tmpl := range templates {
		for key, vals := range bad {
			for _, val := range vals {
				tests = append(tests, errTest{
					name: key + "=" + val, form: tmpl.form, dsn: tmpl.dsn(key, val),
					secret: tmpl.secret, want: []string{"sqlconflict: DSN option " + key + "=" + strconv.Quote(val) + ": want "},
				})
			}
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, dsn, err := sqlconflict.SplitDSN(tt.dsn, tt.form, sqlconflict.DefaultOptions())
			if err == nil {
				t.Fatalf("SplitDSN(%q) = %+v, %q, want an error", tt.dsn, opts, dsn)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not hold %q", msg, w)
				}
			}
			if strings.Contains(msg, tt.secret) || strings.Contains(msg, url.QueryEscape(tt.secret)) {
				t.Errorf("error %q holds the password %q", msg, tt.secret)
			}
			if dsn != "" {
				t.Errorf("stripped DSN %q returned with an error", dsn)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		change func(*sqlconflict.Options)
		want   string // "" for valid
	}{
		{nil, ""},
		{func(o *sqlconflict.Options) { *o = sqlconflict.Options{} }, ""},
		// Negative counts and durations mean none.
		{func(o *sqlconflict.Options) { o.Retries = -1 }, ""},
		{func(o *sqlconflict.Options) { o.Backoff = -time.Second }, ""},
		{func(o *sqlconflict.Options) { o.Backoff, o.MaxBackoff = -1, -1 }, ""},
		{func(o *sqlconflict.Options) {
			o.RetryTimeout, o.CancelGrace, o.ReplayStatements, o.ReplayBytes = -1, -1, -1, -1
		}, ""},
		// MaxBackoff as the wrapper would use it: zero is the default, 1s.
		{func(o *sqlconflict.Options) { o.Backoff, o.MaxBackoff = 2*time.Second, 0 },
			"sqlconflict: Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, 2s), got 1s"},
		{func(o *sqlconflict.Options) { o.Backoff, o.MaxBackoff = 0, 5*time.Millisecond }, ""},
		{func(o *sqlconflict.Options) { o.MaxBackoff = -1 },
			"sqlconflict: Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, 5ms), got 0s"},
		{func(o *sqlconflict.Options) { o.MaxBackoff = time.Millisecond },
			"sqlconflict: Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, 5ms), got 1ms"},
		{func(o *sqlconflict.Options) { o.MaxBackoff = o.Backoff }, ""},
		{func(o *sqlconflict.Options) { o.Savepoints = 2 },
			"sqlconflict: Options.Savepoints (conflict_savepoints) must be SavepointsOff or SavepointsWrites, got 2"},
		{func(o *sqlconflict.Options) { o.Savepoints = -1 }, "Options.Savepoints (conflict_savepoints)"},
		{func(o *sqlconflict.Options) { o.SavepointBudget = -1 }, ""},
		{func(o *sqlconflict.Options) { o.BlindReread = 4 },
			"sqlconflict: Options.BlindReread (conflict_blind_reread) must be BlindRereadFix, BlindRereadWarn, BlindRereadError or BlindRereadOff, got 4"},
		{func(o *sqlconflict.Options) { o.BlindReread = -1 }, "Options.BlindReread (conflict_blind_reread)"},
		{func(o *sqlconflict.Options) { o.Replay = 2 },
			"sqlconflict: Options.Replay (conflict_replay) must be ReplayOn or ReplayOff, got 2"},
	}
	for i, tt := range tests {
		err := optsWith(tt.change).Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%d: unexpected error %v", i, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%d: error %v, want %q", i, err, tt.want)
		}
	}
}

func TestDefaultOptions(t *testing.T) {
	want := sqlconflict.Options{Retries: 50, RetryTimeout: 10 * time.Second, Backoff: 5 * time.Millisecond, MaxBackoff: time.Second,
		Savepoints: sqlconflict.SavepointsOff, SavepointBudget: 32, BlindReread: sqlconflict.BlindRereadFix,
		CancelGrace: 80 * time.Millisecond, Replay: sqlconflict.ReplayOn, ReplayStatements: 1000, ReplayBytes: 1 << 20}
	if got := sqlconflict.DefaultOptions(); !reflect.DeepEqual(got, want) {
		t.Errorf("DefaultOptions() = %+v, want %+v", got, want)
	}
}

func TestModeStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{sqlconflict.SavepointsOff.String(), "off"},
		{sqlconflict.SavepointsWrites.String(), "writes"},
		{sqlconflict.SavepointMode(5).String(), "SavepointMode(5)"},
		{sqlconflict.BlindRereadWarn.String(), "warn"},
		{sqlconflict.BlindRereadError.String(), "error"},
		{sqlconflict.BlindRereadOff.String(), "off"},
		{sqlconflict.BlindRereadFix.String(), "fix"},
		{sqlconflict.BlindRereadMode(-1).String(), "BlindRereadMode(-1)"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// fuzzSecret is the password of every fuzzed DSN. It sits before the fuzzed
// pieces, so that only the pieces can put it in an error.
const fuzzSecret = "s3cr3tPW"

// mayYieldSecret reports whether the fuzzed text can spell fuzzSecret in an
// error by itself, possibly after unescaping.
func mayYieldSecret(s string) bool {
	unescape := func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			if s[i] == '%' && i+2 < len(s) {
				if c, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
					b.WriteByte(byte(c))
					i += 2
					continue
				}
			}
			b.WriteByte(s[i])
		}
		return b.String()
	}
	noBackslash := strings.ReplaceAll(s, `\`, "")
	for _, c := range []string{s, noBackslash, unescape(s), unescape(noBackslash)} {
		if strings.Contains(c, fuzzSecret) {
			return true
		}
	}
	return false
}

// fuzzSplit checks SplitDSN on dsn, whose fuzzed part is fuzzed.
func fuzzSplit(t *testing.T, form sqlconflict.DSNForm, dsn, fuzzed string, view func(string) (any, int, error)) {
	opts, stripped, err := sqlconflict.SplitDSN(dsn, form, sqlconflict.DefaultOptions())
	if err != nil {
		if strings.Contains(err.Error(), fuzzSecret) && !mayYieldSecret(fuzzed) {
			t.Fatalf("SplitDSN(%q): error %q holds the password", dsn, err)
		}
		return
	}
	if opts.Validate() != nil {
		t.Fatalf("SplitDSN(%q) returned invalid options %+v", dsn, opts)
	}
	again, stripped2, err := sqlconflict.SplitDSN(stripped, form, sqlconflict.DefaultOptions())
	if err != nil || stripped2 != stripped || !reflect.DeepEqual(again, sqlconflict.DefaultOptions()) {
		t.Fatalf("SplitDSN(%q) = %q, which still holds options: %+v, %q, %v", dsn, stripped, again, stripped2, err)
	}
	if _, _, err := view(dsn); err == nil {
		if err := compareViews(view, dsn, stripped); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzSplitDSNPostgresURL(f *testing.F) {
	f.Add("db.example:5432/app", "sslmode=disable&", "conflict_retries=5", "&application_name=x")
	f.Add("db/app", "", "conflict%5Fbackoff=1%6Ds", "&conflict_max_backoff=2s#frag")
	f.Add("db", "a=%zz&", "conflict_savepoints=writes&conflict_wrap_errors=true", "&")
	f.Add("db/app#x", "", "conflict_retries=1", "")
	f.Add("h1,h2/app", "port=5432,5433&", "conflict_blind_reread=off", "&conflict_savepoint_budget=0")
	f.Add("db/app", "", "conflict_retries=x", "")
	f.Add("db/app", "", "%20conflict_retries+=1", "")
	f.Fuzz(func(t *testing.T, rest, pre, opt, post string) {
		fuzzed := rest + "?" + pre + opt + post
		fuzzSplit(t, sqlconflict.DSNPostgresURL, "postgres://alice:"+fuzzSecret+"@"+fuzzed, fuzzed, pqURLView)
	})
}

func FuzzSplitDSNPostgresKV(f *testing.F) {
	f.Add("sslmode=disable ", "conflict_retries=5", " dbname=app")
	f.Add("options='-c x=y'", "conflict_backoff = '1ms'", "")
	f.Add(`application_name=a\ b `, `conflict_savepoints=writes`, "\tconflict_wrap_errors=1")
	f.Add("dbname='x'", "conflict_retries='1'", "port=5432")
	f.Add("", "conflict_retries=", "")
	f.Add("dbname='unterminated ", "conflict_retries=1", "")
	f.Fuzz(func(t *testing.T, pre, opt, post string) {
		fuzzed := pre + opt + post
		dsn := "host=db.example password='" + fuzzSecret + "' " + fuzzed
		fuzzSplit(t, sqlconflict.DSNPostgresKV, dsn, fuzzed, pqView)

		// Tokenize as pq does: fail where it fails, on syntax.
		_, _, err := sqlconflict.SplitDSN(dsn, formKV, sqlconflict.DefaultOptions())
		_, pqErr := pq.NewConnector(dsn)
		pqSyntax := pqErr != nil && (strings.HasPrefix(pqErr.Error(), `missing "=" after`) ||
			strings.HasPrefix(pqErr.Error(), "missing character after backslash") ||
			strings.HasPrefix(pqErr.Error(), "unterminated quoted string"))
		ourSyntax := err != nil && strings.HasPrefix(err.Error(), "sqlconflict: malformed key=value DSN")
		if pqSyntax && err == nil || ourSyntax && !pqSyntax {
			t.Fatalf("%q: pq says %v, SplitDSN says %v", dsn, pqErr, err)
		}
	})
}

func FuzzSplitDSNQuery(f *testing.F) {
	f.Add("_pragma=busy_timeout(0)&", "conflict_retries=5", "&_pragma=journal_mode(WAL)")
	f.Add("", "conflict%5Fbackoff=1%6Ds", "&conflict_max_backoff=2s#frag")
	f.Add("a=%zz&", "conflict_savepoints=writes&conflict_wrap_errors=true", "&")
	f.Add("vfs=a/b&", "conflict_blind_reread=off", "&conflict_savepoint_budget=0")
	f.Add("", "conflict_retries=x", "")
	f.Add("", "%20conflict_retries+=1", "")
	f.Fuzz(func(t *testing.T, pre, opt, post string) {
		fuzzed := pre + opt + post
		fuzzSplit(t, sqlconflict.DSNQuery, "file:/tmp/app.db?_pragma=key('"+fuzzSecret+"')&"+fuzzed, fuzzed, queryView)
	})
}

func FuzzSplitDSNMySQL(f *testing.F) {
	f.Add("tcp(db.example:3306)", "app", "parseTime=true&", "conflict_retries=5", "&loc=Local")
	f.Add("unix(/tmp/mysql.sock)", "app", "", "conflict_savepoints=writes&conflict_backoff=1%6Ds", "")
	f.Add("", "", "x&", "conflict_wrap_errors=true", "&")
	f.Add("tcp(db)", "app", "loc=Europe%2FParis&", "conflict_blind_reread=error", "")
	f.Add("tcp(db)", "a?b", "", "conflict_retries=x", "")
	f.Fuzz(func(t *testing.T, addr, db, pre, opt, post string) {
		fuzzed := addr + "/" + db + "?" + pre + opt + post
		fuzzSplit(t, sqlconflict.DSNMySQL, "alice:"+fuzzSecret+"@"+fuzzed, fuzzed, mysqlView)
	})
}
