package sqlconflict

import (
	"database/sql/driver"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// runWith returns the options a connector made from opts runs with.
func runWith(t *testing.T, opts Options) Options {
	t.Helper()
	c, err := NewConnector(dsnConnector{drv: &fakeDriver{}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*connector).cfg.Options
}

// TestZeroOptions: the zero Options means the defaults, as TxRunner's zero
// value does; a negative count or duration means none; a set one stays.
// Row by row, one field at a time.
func TestZeroOptions(t *testing.T) {
	d := DefaultOptions()
	d.Dialect = DialectUnknown
	got := runWith(t, Options{})
	got.Dialect = DialectUnknown
	if got.Observer != nil || got.NetConn != nil || got.Logger != nil {
		t.Fatal("funcs set")
	}
	if !reflect.DeepEqual(got, d) {
		t.Errorf("Options{} runs with\n%+v\nwant DefaultOptions()\n%+v", got, d)
	}
	if got := runWith(t, DefaultOptions()); got.Retries != 50 || got.BlindReread != BlindRereadFix || got.Replay != ReplayOn {
		t.Errorf("DefaultOptions() runs with %+v", got)
	}

	type field struct {
		name string
		set  func(*Options, int64)
		get  func(Options) int64
		def  int64
	}
	ms := int64(time.Millisecond)
	for _, f := range []field{
		{"Retries", func(o *Options, v int64) { o.Retries = int(v) }, func(o Options) int64 { return int64(o.Retries) }, 50},
		{"RetryTimeout", func(o *Options, v int64) { o.RetryTimeout = time.Duration(v) }, func(o Options) int64 { return int64(o.RetryTimeout) }, 10000 * ms},
		{"Backoff", func(o *Options, v int64) { o.Backoff = time.Duration(v) }, func(o Options) int64 { return int64(o.Backoff) }, 5 * ms},
		{"MaxBackoff", func(o *Options, v int64) { o.MaxBackoff = time.Duration(v) }, func(o Options) int64 { return int64(o.MaxBackoff) }, 1000 * ms},
		{"SavepointBudget", func(o *Options, v int64) { o.SavepointBudget = int(v) }, func(o Options) int64 { return int64(o.SavepointBudget) }, 32},
		{"CancelGrace", func(o *Options, v int64) { o.CancelGrace = time.Duration(v) }, func(o Options) int64 { return int64(o.CancelGrace) }, 80 * ms},
		{"ReplayStatements", func(o *Options, v int64) { o.ReplayStatements = int(v) }, func(o Options) int64 { return int64(o.ReplayStatements) }, 1000},
		{"ReplayBytes", func(o *Options, v int64) { o.ReplayBytes = int(v) }, func(o Options) int64 { return int64(o.ReplayBytes) }, 1 << 20},
	} {
		for _, tt := range []struct{ in, want int64 }{{0, f.def}, {-1, 0}, {-5, 0}, {7, 7}} {
			var o Options
			f.set(&o, tt.in)
			if f.name == "MaxBackoff" && tt.in != 0 {
				o.Backoff = -1 // MaxBackoff must not be below it
			}
			if got := f.get(runWith(t, o)); got != tt.want {
				t.Errorf("%s %d: runs with %d, want %d", f.name, tt.in, got, tt.want)
			}
		}
		// The DSN's 0 is none, its other values themselves.
		dsn := "postgres://h/db?" + dsnName(f.name) + "=0"
		if f.name == "MaxBackoff" {
			dsn += "&conflict_backoff=0"
		}
		o, _, err := SplitDSN(dsn, DSNPostgresURL, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := f.get(runWith(t, o)); got != 0 {
			t.Errorf("%s=0 in a DSN runs with %d, want 0", dsnName(f.name), got)
		}
	}
	// The modes' zero values are their defaults.
	if BlindRereadMode(0) != BlindRereadFix || ReplayMode(0) != ReplayOn || SavepointMode(0) != SavepointsOff {
		t.Error("a mode's zero value is not its default")
	}
}

// dsnName is the DSN option that sets an Options field.
func dsnName(field string) string {
	for _, o := range dsnOptions {
		if o.field == field {
			return o.name
		}
	}
	return ""
}

// TestDSNOptionTable: every option in the table is one SplitDSN reads,
// under the name of its field, and the list in errors is the table's.
func TestDSNOptionTable(t *testing.T) {
	vals := map[string]string{"Savepoints": "writes", "BlindReread": "warn", "Replay": "off",
		"WrapErrors": "true", "RetryFunctions": "true", "VerifyCommit": "true"}
	for _, o := range dsnOptions {
		v := vals[o.field]
		if v == "" {
			v = "3"
			if strings.Contains(o.name, "timeout") || strings.Contains(o.name, "backoff") || strings.Contains(o.name, "grace") {
				v = "3s"
				if o.name == "conflict_backoff" {
					v = "3ms" // not past the default MaxBackoff, 1s
				}
			}
		}
		opts, _, err := SplitDSN("postgres://h/db?"+o.name+"="+v, DSNPostgresURL, Options{})
		if err != nil {
			t.Errorf("%s=%s: %v", o.name, v, err)
			continue
		}
		if reflect.DeepEqual(opts, Options{}) {
			t.Errorf("%s=%s set nothing", o.name, v)
		}
		if optionField(strings.ToUpper(o.name)) != o.field {
			t.Errorf("optionField(%s) = %q", o.name, optionField(o.name))
		}
	}
	if _, _, err := SplitDSN("postgres://h/db?conflict_retrys=3", DSNPostgresURL, Options{}); err == nil ||
		!strings.Contains(err.Error(), "known: "+dsnOptionList()) {
		t.Errorf("unknown option: %v", err)
	}
}

// TestNewConnectorStrayOptions: a conflict_* parameter left in the DSN given
// to the base driver's own connector fails NewConnector, naming it (and the
// field to set), and never the password; the base drivers would send it to
// the server at the first query.
func TestNewConnectorStrayOptions(t *testing.T) {
	const pw = "s3cret-pw"
	pqConn := func(dsn string) *pq.Connector {
		c, err := pq.NewConnector(dsn)
		if err != nil {
			t.Fatalf("pq.NewConnector: %v", err)
		}
		return c
	}
	myConn := func(dsn string) driver.Connector {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			t.Fatalf("mysql.ParseDSN: %v", err)
		}
		c, err := mysql.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tt := range []struct {
		name string
		base func() driver.Connector
		want string // "" for none
	}{
		{"pq url", func() driver.Connector {
			return pqConn("postgres://u:" + pw + "@127.0.0.1/db?conflict_retries=3&sslmode=disable")
		},
			`"conflict_retries", which the base driver would send to the server: NewConnector takes Options (set Options.Retries)`},
		{"pq kv", func() driver.Connector { return pqConn("host=127.0.0.1 password=" + pw + " conflict_replay=off") }, `"conflict_replay"`},
		{"pq case", func() driver.Connector { return pqConn("postgres://127.0.0.1/db?Conflict_Backoff=1s") }, "Options.Backoff"},
		{"pq misspelled", func() driver.Connector { return pqConn("postgres://127.0.0.1/db?conflict_retrys=3") },
			`"conflict_retrys", an unknown DSN option (known: conflict_retries,`},
		{"pq clean", func() driver.Connector {
			return pqConn("postgres://u:" + pw + "@127.0.0.1/db?sslmode=disable&application_name=x")
		}, ""},
		{"mysql", func() driver.Connector {
			return myConn("u:" + pw + "@tcp(127.0.0.1:3306)/db?conflict_savepoints=writes")
		}, "Options.Savepoints"},
		{"mysql misspelled", func() driver.Connector {
			return myConn("u:" + pw + "@tcp(127.0.0.1:3306)/db?parseTime=true&conflict_retrys=3")
		}, "unknown DSN option"},
		{"mysql clean", func() driver.Connector { return myConn("u:" + pw + "@tcp(127.0.0.1:3306)/db?parseTime=true") }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewConnector(tt.base(), DefaultOptions())
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("NewConnector: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("NewConnector: %v, want an error containing %s", err, tt.want)
			case err != nil && strings.Contains(err.Error(), pw):
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}
