package sqlconflict

import (
	"cmp"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// SavepointMode says when statements in a transaction are guarded by
// savepoints (DSN option conflict_savepoints).
type SavepointMode int

const (
	// SavepointsOff sets no savepoints: a conflict inside a transaction is
	// left to the application. DSN value "off".
	SavepointsOff SavepointMode = iota
	// SavepointsWrites sets a savepoint before each write in a transaction,
	// so that a conflicting write can be undone without losing the
	// transaction. DSN value "writes".
	SavepointsWrites
)

// String returns the mode's DSN value.
func (m SavepointMode) String() string {
	switch m {
	case SavepointsOff:
		return "off"
	case SavepointsWrites:
		return "writes"
	}
	return "SavepointMode(" + strconv.Itoa(int(m)) + ")"
}

// ReplayMode says whether a transaction that a conflict aborted is replayed
// (DSN option conflict_replay; see docs/retry.md).
type ReplayMode int

const (
	// ReplayOn replays a transaction begun with BeginTx that the server
	// aborted for a conflict a fresh attempt can clear: its statements are
	// sent again in a new transaction, and the failing statement (or the
	// COMMIT) runs again only if everything the application had seen is
	// the same; otherwise the application gets the original error. DSN
	// value "on"; the default, and the zero value.
	ReplayOn ReplayMode = iota
	// ReplayOff leaves an aborted transaction to the application (or to
	// RunTx). DSN value "off".
	ReplayOff
)

// String returns the DSN value: "on" or "off".
func (m ReplayMode) String() string {
	switch m {
	case ReplayOn:
		return "on"
	case ReplayOff:
		return "off"
	}
	return "ReplayMode(" + strconv.Itoa(int(m)) + ")"
}

// BlindRereadMode says what happens when a retry inside a REPEATABLE READ
// transaction would re-read its own stale snapshot (DSN option
// conflict_blind_reread).
type BlindRereadMode int

const (
	// BlindRereadFix mends the re-read: on MySQL and MariaDB it runs the
	// read again as a locking read, which sees the latest committed row,
	// and hands the caller those rows; where that cannot be done (on
	// PostgreSQL no read in the transaction can see the row) it fails the
	// read with ErrBlindReread, which RunTx reruns. DSN value "fix"; the
	// default, and the zero value.
	BlindRereadFix BlindRereadMode = iota
	// BlindRereadWarn logs a warning. DSN value "warn".
	BlindRereadWarn
	// BlindRereadError fails the statement. DSN value "error".
	BlindRereadError
	// BlindRereadOff does nothing. DSN value "off".
	BlindRereadOff
)

// String returns the mode's DSN value.
func (m BlindRereadMode) String() string {
	switch m {
	case BlindRereadFix:
		return "fix"
	case BlindRereadWarn:
		return "warn"
	case BlindRereadError:
		return "error"
	case BlindRereadOff:
		return "off"
	}
	return "BlindRereadMode(" + strconv.Itoa(int(m)) + ")"
}

// Options configures the wrapper. Each field but the last four has a DSN
// option, named in its comment; [SplitDSN] reads them.
//
// The zero value means the defaults, which [DefaultOptions] spells out and
// each field's comment states: a zero count or duration is its default, and
// the modes' zero values are their defaults. A negative count or duration
// means none: no retries, no wait, no limit, as the DSN's 0 does
// (conflict_retries=0 reads as Retries -1).
type Options struct {
	// Retries (conflict_retries) bounds the retries of a statement that
	// had no effect, and the replays of a transaction. Default 50.
	Retries int
	// RetryTimeout (conflict_retry_timeout) bounds how long, from its first
	// failure, a statement keeps being retried or a transaction replayed.
	// Default 10s; negative (the DSN's 0): no limit but Retries.
	RetryTimeout time.Duration
	// Backoff (conflict_backoff) is the wait before the first retry; it
	// doubles, with jitter, up to MaxBackoff (conflict_max_backoff).
	// Defaults 5ms and 1s; MaxBackoff must not be below Backoff.
	Backoff, MaxBackoff time.Duration
	// Savepoints (conflict_savepoints): when to guard statements in a
	// transaction with savepoints. Default SavepointsOff.
	Savepoints SavepointMode
	// SavepointBudget (conflict_savepoint_budget) bounds the wrapper's
	// savepoints per transaction. Default 32.
	SavepointBudget int
	// BlindReread (conflict_blind_reread): what to do about a re-read that
	// REPEATABLE READ makes blind. Default BlindRereadFix.
	BlindReread BlindRereadMode
	// WrapErrors (conflict_wrap_errors, any strconv.ParseBool value)
	// returns base driver errors wrapped in *Error. Default false: the
	// application gets the base driver's own error objects.
	WrapErrors bool
	// RetryFunctions (conflict_retry_functions) lets a statement be run
	// again when it calls a function the wrapper does not know, or touches
	// a table whose triggers or view definition do: the application vouches
	// that its functions take no advisory or named locks, set no session
	// state and write only transactional tables. Default false: such a
	// statement is never retried (docs/retry.md). Known side effects (user
	// variables, pg_advisory_lock, GET_LOCK, set_config, non-transactional
	// tables) are never retried either way.
	RetryFunctions bool
	// CancelGrace (conflict_cancel_grace) is how long a call may go on
	// after its context ended, for the base driver's own cancellation to
	// answer (lib/pq sends a cancel request and waits for the server's
	// reply). Past it the wrapper cuts the connection's socket, reports the
	// outcome as unknown and discards the connection, so that a frozen
	// server or a partition cannot hold a call past its deadline. A server
	// that answers lib/pq's cancel request in that time is alive and gets
	// twice the grace. Applies to connections whose socket the wrapper
	// dials (docs/reliability.md). Default 80ms, which keeps a frozen
	// server's calls within 100 ms of their deadline while a loaded but
	// live PostgreSQL has time to answer the cancel request (its postmaster
	// forks a process for it); negative (the DSN's 0): cut at once.
	CancelGrace time.Duration
	// VerifyCommit (conflict_verify_commit, PostgreSQL) settles a COMMIT
	// whose answer was lost: the wrapper learns a writing transaction's id
	// before committing it (one round trip) and, if the connection breaks
	// during COMMIT, asks the server on a fresh connection whether it
	// committed (pg_xact_status). Commit then returns nil, or an error
	// that says the transaction rolled back and may be run again, instead
	// of an unknown outcome. Default false.
	VerifyCommit bool
	// Replay (conflict_replay) replays a transaction the server aborted for
	// a conflict (a deadlock, a serialization or Galera certification
	// failure, a lock timeout or, on PostgreSQL, a unique violation that
	// ended it), verifying that everything the application saw is the same
	// (replay.go, docs/retry.md), and one whose connection was lost before
	// its COMMIT was sent, on a new connection (move.go). Its attempts and
	// time are bounded by Retries and RetryTimeout, with Backoff between
	// them. Default ReplayOn.
	Replay ReplayMode
	// ReplayStatements (conflict_replay_statements) and ReplayBytes
	// (conflict_replay_bytes) bound what is recorded of one transaction
	// for a replay: its statements, and the bytes of their text and
	// arguments. A transaction past either is not replayed. Defaults 1000
	// and 1 MiB.
	ReplayStatements int
	ReplayBytes      int
	// Logger receives the wrapper's warnings (and its events at debug
	// level). Not a DSN option; nil, the default, means slog.Default().
	Logger *slog.Logger

	// Observer, when set, is told of every retry, savepoint rollback,
	// doomed transaction, replay and settled commit, synchronously, on the
	// goroutine using the connection, with the caller's context: it must be
	// quick and must not use the database. RunTx reports its reruns of a
	// transaction begun on the connection to it too. Not a DSN option;
	// nil, the default, reports nothing. See docs/reliability.md for
	// exporting the events as metrics, and the otel module.
	Observer Observer
	// Dialect selects the SQL the wrapper sends itself; zero, the default,
	// means detect it from the base driver's package. Not a DSN option.
	Dialect Dialect
	// NetConn, when set, returns the network connection under a base
	// connection whose socket the wrapper did not dial (the pgx module sets
	// it), or nil. The wrapper only looks at it, without reading, before it
	// hands a pooled connection out again: one the server closed meanwhile
	// (a restart) is refused then, before anything is sent on it, and
	// database/sql takes another. Not a DSN option; nil by default.
	NetConn func(driver.Conn) net.Conn
}

// DefaultOptions returns the defaults spelled out: what the zero Options
// and a DSN with no conflict_* option mean.
func DefaultOptions() Options {
	return Options{
		Retries:          50,
		RetryTimeout:     10 * time.Second,
		Backoff:          5 * time.Millisecond,
		MaxBackoff:       time.Second,
		Savepoints:       SavepointsOff,
		SavepointBudget:  32,
		BlindReread:      BlindRereadFix,
		CancelGrace:      80 * time.Millisecond,
		Replay:           ReplayOn,
		ReplayStatements: 1000,
		ReplayBytes:      1 << 20,
	}
}

// Validate reports the first invalid field. Its errors name both the field
// and its DSN option, as options come from either. A count or duration is
// valid at any value (zero: the default; negative: none); the modes must be
// ones this package defines, and MaxBackoff, as the wrapper will use it, no
// less than Backoff.
func (o Options) Validate() error {
	r := o.resolved()
	switch {
	case r.MaxBackoff < r.Backoff:
		return fmt.Errorf("sqlconflict: Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, %v), got %v", r.Backoff, r.MaxBackoff)
	case o.Savepoints < SavepointsOff || o.Savepoints > SavepointsWrites:
		return fmt.Errorf("sqlconflict: Options.Savepoints (conflict_savepoints) must be SavepointsOff or SavepointsWrites, got %d", int(o.Savepoints))
	case o.Replay < ReplayOn || o.Replay > ReplayOff:
		return fmt.Errorf("sqlconflict: Options.Replay (conflict_replay) must be ReplayOn or ReplayOff, got %d", int(o.Replay))
	case o.BlindReread < BlindRereadFix || o.BlindReread > BlindRereadOff:
		return fmt.Errorf("sqlconflict: Options.BlindReread (conflict_blind_reread) must be BlindRereadFix, BlindRereadWarn, BlindRereadError or BlindRereadOff, got %d", int(o.BlindReread))
	}
	return nil
}

// resolved returns the options the wrapper runs with: each zero count or
// duration replaced by its default, each negative one by zero (none). It is
// applied once, when a connector is made; resolving twice would read a
// resolved zero as the default.
func (o Options) resolved() Options {
	d := DefaultOptions()
	resolve(&o.Retries, d.Retries)
	resolve(&o.RetryTimeout, d.RetryTimeout)
	resolve(&o.Backoff, d.Backoff)
	resolve(&o.MaxBackoff, d.MaxBackoff)
	resolve(&o.SavepointBudget, d.SavepointBudget)
	resolve(&o.CancelGrace, d.CancelGrace)
	resolve(&o.ReplayStatements, d.ReplayStatements)
	resolve(&o.ReplayBytes, d.ReplayBytes)
	return o
}

// resolve sets a zero *v to def and a negative one to zero.
func resolve[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	} else if *v < 0 {
		*v = 0
	}
}

// DSNForm says which DSN syntax to read.
type DSNForm int

const (
	// DSNAuto guesses the form; see [SplitDSN].
	DSNAuto DSNForm = iota
	// DSNPostgresURL is lib/pq's URL form:
	// postgres://user:pass@host:5432/db?sslmode=disable.
	DSNPostgresURL
	// DSNPostgresKV is lib/pq's key=value form:
	// host=h dbname=db password='a b'.
	DSNPostgresKV
	// DSNMySQL is go-sql-driver/mysql's form:
	// user:pass@tcp(host:3306)/db?parseTime=true.
	DSNMySQL
	// DSNQuery is a file name or URI whose parameters follow its first '?',
	// read as net/url reads a query: the SQLite drivers' form
	// (modernc.org/sqlite, mattn/go-sqlite3), as in
	// file:/tmp/app.db?_pragma=busy_timeout(5000) or /tmp/app.db?_txlock=immediate.
	DSNQuery
)

const dsnOptionPrefix = "conflict_"

// dsnOptions are the DSN options, each with the Options field it sets.
var dsnOptions = [...]struct{ name, field string }{
	{"conflict_retries", "Retries"},
	{"conflict_retry_timeout", "RetryTimeout"},
	{"conflict_backoff", "Backoff"},
	{"conflict_max_backoff", "MaxBackoff"},
	{"conflict_savepoints", "Savepoints"},
	{"conflict_savepoint_budget", "SavepointBudget"},
	{"conflict_blind_reread", "BlindReread"},
	{"conflict_wrap_errors", "WrapErrors"},
	{"conflict_retry_functions", "RetryFunctions"},
	{"conflict_cancel_grace", "CancelGrace"},
	{"conflict_verify_commit", "VerifyCommit"},
	{"conflict_replay", "Replay"},
	{"conflict_replay_statements", "ReplayStatements"},
	{"conflict_replay_bytes", "ReplayBytes"},
}

// dsnOptionList names the DSN options, for errors.
func dsnOptionList() string {
	var b strings.Builder
	for i, o := range dsnOptions {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(o.name)
	}
	return b.String()
}

// optionField returns the Options field a DSN option (in any case) sets,
// or "" for an unknown one.
func optionField(name string) string {
	for _, o := range dsnOptions {
		if strings.EqualFold(o.name, name) {
			return o.field
		}
	}
	return ""
}

// SplitDSN reads the conflict_* options out of dsn, starting from base
// (usually [DefaultOptions]), and returns the options and the DSN without
// them, everything else byte for byte unchanged. The base drivers must not
// see the options: both send parameters they do not know to the server.
//
// Option names are read without regard to case. An unknown or repeated
// conflict_* option, a bad value, or options that fail [Options.Validate]
// are errors. Errors
// quote no part of the DSN but an option's own name and value, so that they
// never hold the password.
//
// DSNAuto reads a DSN starting with postgres:// or postgresql:// (in any
// case) as a URL; one starting with file: as DSNQuery; else one that holds a
// '/' and an '@', "tcp(" or "unix(", or that starts with '/', as MySQL; else
// as key=value. Pass the form when a key=value DSN holds both '/' and '@', as
// in host=/tmp user=a@b, or for a SQLite file name (DSNQuery):
// /tmp/app.db?x=1 reads as MySQL, the same unless a '/' follows the '?' or
// a parameter name is percent-encoded.
func SplitDSN(dsn string, form DSNForm, base Options) (Options, string, error) {
	r := optionReader{opts: base, seen: map[string]bool{}}
	if form == DSNAuto {
		form = detectDSNForm(dsn)
	}
	var err error
	switch form {
	case DSNPostgresURL:
		dsn, err = r.postgresURL(dsn)
	case DSNPostgresKV:
		dsn, err = r.postgresKV(dsn)
	case DSNMySQL:
		dsn, err = r.mysql(dsn)
	case DSNQuery:
		dsn, err = r.fileQuery(dsn)
	default:
		err = fmt.Errorf("sqlconflict: unknown DSNForm %d", int(form))
	}
	if err == nil {
		err = r.opts.Validate()
	}
	if err != nil {
		return Options{}, "", err
	}
	return r.opts, dsn, nil
}

// detectDSNForm implements DSNAuto.
func detectDSNForm(dsn string) DSNForm {
	prefixed := func(p string) bool { return len(dsn) >= len(p) && strings.EqualFold(dsn[:len(p)], p) }
	switch {
	case prefixed("postgres://") || prefixed("postgresql://"):
		return DSNPostgresURL
	case strings.HasPrefix(dsn, "file:"):
		return DSNQuery
	case strings.HasPrefix(dsn, "/") || strings.Contains(dsn, "/") &&
		(strings.Contains(dsn, "@") || strings.Contains(dsn, "tcp(") || strings.Contains(dsn, "unix(")):
		return DSNMySQL
	}
	return DSNPostgresKV
}

// isOption reports a DSN parameter that is sqlconflict's: its name starts
// with conflict_ in any case. Option names are read without regard to case,
// so that Conflict_Retries=3 is an option and never reaches the server as a
// session variable.
func isOption(key string) bool {
	return len(key) >= len(dsnOptionPrefix) && strings.EqualFold(key[:len(dsnOptionPrefix)], dsnOptionPrefix)
}

// optionReader collects the conflict_* options of one DSN.
type optionReader struct {
	opts Options
	seen map[string]bool
	hide bool // quote no names or values in errors; see query
}

// postgresURL splits where net/url does (lib/pq parses URLs with it), but
// without net/url.Parse, whose errors quote the whole URL.
func (r *optionReader) postgresURL(dsn string) (string, error) {
	// The fragment starts at the first '#': a '?' after it starts no query.
	q := strings.IndexAny(dsn, "?#")
	if q < 0 || dsn[q] == '#' {
		return dsn, nil
	}
	end := len(dsn)
	if h := strings.IndexByte(dsn[q:], '#'); h >= 0 {
		end = q + h
	}
	return r.query(dsn, q, end, keysTrimmed)
}

// mysql splits where mysql.ParseDSN does: at the first '?' after the last
// '/', since the password and the address may hold '/' and '?'.
func (r *optionReader) mysql(dsn string) (string, error) {
	s := strings.LastIndexByte(dsn, '/')
	if s < 0 {
		return dsn, nil // mysql.ParseDSN rejects it, unless empty
	}
	q := strings.IndexByte(dsn[s:], '?')
	if q < 0 {
		return dsn, nil
	}
	return r.query(dsn, s+q, len(dsn), keysVerbatim)
}

// fileQuery splits where modernc.org/sqlite and mattn/go-sqlite3 do: at the
// first '?', unless the name starts with it. The query runs to the end: they
// read it whole with net/url.ParseQuery, '#' included.
func (r *optionReader) fileQuery(dsn string) (string, error) {
	q := strings.IndexByte(dsn, '?')
	if q < 1 {
		return dsn, nil
	}
	return r.query(dsn, q, len(dsn), keysUnescaped)
}

// keyMode says how a base driver reads the names of query parameters.
type keyMode int

const (
	keysVerbatim  keyMode = iota // go-sql-driver/mysql
	keysUnescaped                // net/url.ParseQuery: the SQLite drivers
	keysTrimmed                  // unescaped, then space trimmed: lib/pq
)

// query reads the conflict_* parameters of dsn[q+1:end], where dsn[q] is the
// '?', and returns dsn without them; the '?' goes too if no parameter is
// left. keys says how the base driver reads parameter names.
func (r *optionReader) query(dsn string, q, end int, keys keyMode) (string, error) {
	// An unescaped '?' in the password starts the query early, and the '@'
	// that ends the user info then follows it: the query may hold part of
	// the password.
	r.hide = strings.Contains(dsn[q:], "@")
	var kept []string
	for _, seg := range strings.Split(dsn[q+1:end], "&") {
		key, val, _ := strings.Cut(seg, "=")
		if keys != keysVerbatim {
			if k, err := url.QueryUnescape(key); err == nil {
				key = k
				if keys == keysTrimmed {
					// lib/pq rewrites the query as key=value text, unquoted
					// keys included, so space around a key vanishes.
					key = strings.TrimFunc(k, unicode.IsSpace)
				}
			} else if isOption(key) {
				return "", fmt.Errorf("sqlconflict: DSN option %s: malformed percent-encoding in its name", r.quote(key))
			}
		}
		if !isOption(key) {
			kept = append(kept, seg) // verbatim: the base driver judges it
			continue
		}
		val, err := url.QueryUnescape(val)
		if err := r.set(key, val, err); err != nil {
			return "", err
		}
	}
	if len(r.seen) == 0 {
		return dsn, nil
	}
	rest := strings.Join(kept, "&")
	if len(kept) > 0 {
		rest = "?" + rest
	}
	return dsn[:q] + rest + dsn[end:], nil
}

// postgresKV removes the conflict_* pairs by slicing the original text, so
// the other values keep their quoting. Two kept pairs stay apart by what
// followed the first; the DSN's leading and trailing space stay.
func (r *optionReader) postgresKV(dsn string) (string, error) {
	type span struct {
		start, end int
		drop       bool
	}
	var pairs []span
	err := scanPostgresKV(dsn, func(key, val string, start, end int) error {
		drop := isOption(key)
		pairs = append(pairs, span{start, end, drop})
		if drop {
			return r.set(key, val, nil)
		}
		return nil
	})
	if err != nil || len(r.seen) == 0 {
		return dsn, err
	}
	var b strings.Builder
	b.WriteString(dsn[:pairs[0].start])
	prev := -1
	for i, p := range pairs {
		if p.drop {
			continue
		}
		if prev >= 0 {
			b.WriteString(dsn[pairs[prev].end:pairs[prev+1].start])
		}
		b.WriteString(dsn[p.start:p.end])
		prev = i
	}
	b.WriteString(dsn[pairs[len(pairs)-1].end:])
	return b.String(), nil
}

// scanPostgresKV tokenizes a key=value DSN as lib/pq's Config.fromDSN does,
// calling fn with each key, unescaped value and byte span of the pair. Its
// own errors quote nothing: a misquoted password would show.
func scanPostgresKV(s string, fn func(key, val string, start, end int) error) error {
	i := 0
	peek := func() rune { r, _ := utf8.DecodeRuneInString(s[i:]); return r }
	next := func() rune { r, n := utf8.DecodeRuneInString(s[i:]); i += n; return r }
	skipSpaces := func() {
		for i < len(s) && unicode.IsSpace(peek()) {
			next()
		}
	}
	for {
		skipSpaces()
		if i == len(s) {
			return nil
		}
		start := i
		for i < len(s) && !unicode.IsSpace(peek()) && s[i] != '=' {
			next()
		}
		key := s[start:i]
		skipSpaces()
		if i == len(s) || s[i] != '=' {
			return errors.New(`sqlconflict: malformed key=value DSN: missing "=" after a key`)
		}
		i++
		skipSpaces()
		var val strings.Builder
		switch {
		case i == len(s): // "key=" at the end: empty value
		case s[i] == '\'':
			i++
			for {
				if i == len(s) {
					return errors.New("sqlconflict: malformed key=value DSN: unterminated quoted value")
				}
				r := next()
				if r == '\'' {
					break
				}
				if r == '\\' && i < len(s) {
					r = next()
				}
				val.WriteRune(r)
			}
		default:
			for i < len(s) && !unicode.IsSpace(peek()) {
				r := next()
				if r == '\\' {
					if i == len(s) {
						return errors.New("sqlconflict: malformed key=value DSN: missing character after backslash")
					}
					r = next()
				}
				val.WriteRune(r)
			}
		}
		if err := fn(key, val.String(), start, i); err != nil {
			return err
		}
	}
}

// set applies one option. valErr is the value's unescaping error, reported
// only once the key is known to be valid.
func (r *optionReader) set(name, val string, valErr error) error {
	key := strings.ToLower(name)
	o := &r.opts
	var ok bool
	var want string
	// A DSN's 0 means none, which Options spells as a negative value (its
	// zero is the default).
	count := func() (int, bool) {
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 {
			return 0, false
		}
		return cmp.Or(n, -1), true
	}
	duration := func() (time.Duration, bool) {
		d, err := time.ParseDuration(val)
		if err != nil || d < 0 {
			return 0, false
		}
		return cmp.Or(d, -1), true
	}
	boolean := func() (bool, bool) { b, err := strconv.ParseBool(val); return b, err == nil }
	switch key {
	case "conflict_retries":
		o.Retries, ok = count()
		want = "an integer >= 0"
	case "conflict_retry_timeout":
		o.RetryTimeout, ok = duration()
		want = `a duration >= 0 such as "5s"`
	case "conflict_backoff":
		o.Backoff, ok = duration()
		want = `a duration >= 0 such as "5ms"`
	case "conflict_max_backoff":
		o.MaxBackoff, ok = duration()
		want = `a duration >= 0 such as "1s"`
	case "conflict_savepoints":
		o.Savepoints, ok = parseOptionEnum(val, SavepointsWrites)
		want = `"off" or "writes"`
	case "conflict_savepoint_budget":
		o.SavepointBudget, ok = count()
		want = "an integer >= 0"
	case "conflict_blind_reread":
		o.BlindReread, ok = parseOptionEnum(val, BlindRereadOff)
		want = `"warn", "error", "fix" or "off"`
	case "conflict_wrap_errors":
		o.WrapErrors, ok = boolean()
		want = `a boolean such as "true" or "false"`
	case "conflict_retry_functions":
		o.RetryFunctions, ok = boolean()
		want = `a boolean such as "true" or "false"`
	case "conflict_verify_commit":
		o.VerifyCommit, ok = boolean()
		want = `a boolean such as "true" or "false"`
	case "conflict_replay":
		o.Replay, ok = parseOptionEnum(val, ReplayOff)
		want = `"off" or "on"`
	case "conflict_replay_statements":
		o.ReplayStatements, ok = count()
		want = "an integer >= 0"
	case "conflict_replay_bytes":
		o.ReplayBytes, ok = count()
		want = "an integer >= 0"
	case "conflict_cancel_grace":
		o.CancelGrace, ok = duration()
		want = `a duration >= 0 such as "80ms"`
	default:
		return fmt.Errorf("sqlconflict: unknown DSN option %s (known: %s)", r.quote(name), dsnOptionList())
	}
	switch {
	case r.seen[key]:
		return fmt.Errorf("sqlconflict: DSN option %s given twice", key)
	case valErr != nil:
		return fmt.Errorf("sqlconflict: DSN option %s: malformed percent-encoding in its value", key)
	case !ok:
		return fmt.Errorf("sqlconflict: DSN option %s=%s: want %s", key, r.quote(val), want)
	}
	r.seen[key] = true
	return nil
}

// quote quotes a name or value for an error, unless it may be part of a
// password.
func (r *optionReader) quote(s string) string {
	if r.hide {
		return "<hidden: '@' after '?' suggests an unescaped password>"
	}
	return strconv.Quote(s)
}

// parseOptionEnum maps a DSN value to the mode whose String it is.
func parseOptionEnum[T interface {
	~int
	String() string
}](s string, last T) (T, bool) {
	for m := T(0); m <= last; m++ {
		if m.String() == s {
			return m, true
		}
	}
	return 0, false
}
