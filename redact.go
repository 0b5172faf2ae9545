package sqlconflict

import (
	"errors"
	"net/url"
	"strings"
	"unicode"

	"github.com/go-sql-driver/mysql"
)

// redact keeps a DSN's password out of an error from a base driver's DSN
// parser or Connect. net/url's errors, which lib/pq passes on, quote the
// whole URL; pgx quotes a key=value DSN with its own redaction, which ends
// at the first blank of a quoted password. secrets are the password's
// forms (dsnSecrets). Other errors are returned as they are, to stay
// drop-in.
func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		// The URL quoted is the DSN itself; its parse error is the useful part.
		return &redactedError{msg: "sqlconflict: invalid DSN: " + redactString(uerr.Err.Error(), secrets)}
	}
	msg := err.Error()
	if r := redactString(msg, secrets); r != msg {
		return &redactedError{msg: r}
	}
	return err
}

// redactString replaces every secret in s, longest first so that a shorter
// one inside a longer one leaves no tail.
func redactString(s string, secrets []string) string {
	for _, pw := range secrets {
		s = strings.ReplaceAll(s, pw, "xxxxx")
	}
	return s
}

// redactedError replaces an error whose text held a password. It does not
// unwrap: the original would hand the password back.
type redactedError struct{ msg string }

func (e *redactedError) Error() string { return e.msg }

// minFragment is the shortest part of a password with blanks that is
// redacted on its own: a shorter one would mangle the words of a message.
const minFragment = 3

// dsnSecrets returns the forms the DSN's password may take in an error, in
// any of the three DSN forms, longest first: the value as the driver reads
// it (libpq's quoting and backslash escapes, percent-encoding), the text as
// written, and each blank-separated part of either, since a library that
// redacts up to a blank leaves the rest.
func dsnSecrets(dsn string) []string {
	var forms []string
	if isPostgresURL(dsn) {
		forms = urlPasswords(dsn)
	} else if cfg, err := mysql.ParseDSN(dsn); err == nil && cfg.Passwd != "" && !strings.Contains(dsn, "password=") {
		forms = []string{cfg.Passwd}
	} else {
		forms = kvPasswords(dsn)
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if len(s) >= minFragment && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, f := range forms {
		if f == "" {
			continue
		}
		seen[f] = true
		out = append(out, f)
		for _, part := range strings.FieldsFunc(f, unicode.IsSpace) {
			add(part)
			add(strings.Trim(part, `'"`))
		}
	}
	// Longest first: a fragment replaced before the whole would split it.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && len(out[j]) > len(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// urlPasswords returns a postgres:// URL's password, as written and
// percent-decoded, from the user info or a password query parameter.
func urlPasswords(dsn string) []string {
	rest := dsn[strings.Index(dsn, "://")+3:]
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	var out []string
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
			out = append(out, pw)
			if dec, err := url.PathUnescape(pw); err == nil {
				out = append(out, dec)
			}
		}
	}
	if _, q, ok := strings.Cut(dsn, "?"); ok {
		for _, seg := range strings.Split(q, "&") {
			if k, v, _ := strings.Cut(seg, "="); k == "password" {
				out = append(out, v)
				if dec, err := url.QueryUnescape(v); err == nil {
					out = append(out, dec)
				}
			}
		}
	}
	return out
}

// kvPasswords returns a key=value DSN's password, as libpq reads it and as
// written. A DSN that does not scan (a misquoted value) yields the text
// after "password=" up to the end, best effort.
func kvPasswords(dsn string) []string {
	var out []string
	err := scanPostgresKV(dsn, func(key, val string, start, end int) error {
		if key == "password" {
			written := strings.TrimLeftFunc(dsn[start+len(key):end], unicode.IsSpace)
			out = append(out, val, strings.TrimLeftFunc(strings.TrimPrefix(written, "="), unicode.IsSpace))
		}
		return nil
	})
	if err != nil {
		if i := strings.Index(dsn, "password"); i >= 0 {
			if _, v, ok := strings.Cut(dsn[i:], "="); ok {
				out = append(out, strings.TrimSpace(v))
			}
		}
	}
	return out
}
