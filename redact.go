package sqlconflict

import (
	"errors"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// redact keeps a DSN's password pw out of an error from a base driver's
// DSN parser or Connect. net/url's errors, which lib/pq passes on, quote the
// whole URL. Other errors are returned as they are, to stay drop-in.
func redact(err error, pw string) error {
	if err == nil {
		return nil
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		// The URL quoted is the DSN itself; its parse error is the useful part.
		return &redactedError{msg: "sqlconflict: invalid DSN: " + redactString(uerr.Err.Error(), pw)}
	}
	if pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return &redactedError{msg: redactString(err.Error(), pw)}
}

func redactString(s, pw string) string {
	if pw == "" {
		return s
	}
	return strings.ReplaceAll(s, pw, "xxxxx")
}

// redactedError replaces an error whose text held a password. It does not
// unwrap: the original would hand the password back.
type redactedError struct{ msg string }

func (e *redactedError) Error() string { return e.msg }

// dsnPassword finds the password in any of the three DSN forms, best effort:
// it only decides what to hide.
func dsnPassword(dsn string) string {
	lower := strings.ToLower(dsn)
	if strings.HasPrefix(lower, "postgres://") || strings.HasPrefix(lower, "postgresql://") {
		rest := dsn[strings.Index(dsn, "://")+3:]
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			rest = rest[:i]
		}
		at := strings.LastIndex(rest, "@")
		if at < 0 {
			return kvPassword(dsn)
		}
		userinfo := rest[:at]
		if c := strings.Index(userinfo, ":"); c >= 0 {
			pw := userinfo[c+1:]
			if dec, err := url.PathUnescape(pw); err == nil && dec != pw && strings.Contains(dsn, dec) {
				return dec
			}
			return pw
		}
		return kvPassword(dsn) // ?password=...
	}
	if cfg, err := mysql.ParseDSN(dsn); err == nil && cfg.Passwd != "" {
		return cfg.Passwd
	}
	return kvPassword(dsn)
}

// kvPassword returns the value after "password=" (URL query or key=value
// form), up to the next separator.
func kvPassword(dsn string) string {
	i := strings.Index(dsn, "password")
	if i < 0 {
		return ""
	}
	rest := strings.TrimLeft(dsn[i+len("password"):], " ")
	if !strings.HasPrefix(rest, "=") {
		return ""
	}
	rest = strings.TrimLeft(rest[1:], " ")
	if strings.HasPrefix(rest, "'") {
		rest = rest[1:]
		if j := strings.Index(rest, "'"); j >= 0 {
			return rest[:j]
		}
		return rest
	}
	if j := strings.IndexAny(rest, " &"); j >= 0 {
		return rest[:j]
	}
	return rest
}
