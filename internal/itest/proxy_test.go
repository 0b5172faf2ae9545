package itest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// checkNoGoroutineLeak fails t if, once t's subtests and their cleanups
// are done, more goroutines run than before.
func checkNoGoroutineLeak(t *testing.T, subtests func()) {
	t.Helper()
	before := runtime.NumGoroutine()
	subtests()
	err := poll(3*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return errors.New("leak")
		}
		return nil
	})
	if err != nil {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
	}
}

// pgTarget returns EnvPG's DSN and its host:port, skipping t if unset.
func pgTarget(t *testing.T) (*url.URL, string) {
	t.Helper()
	dsn := os.Getenv(EnvPG)
	if dsn == "" {
		t.Skipf("proxy test: set %s", EnvPG)
	}
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Skipf("proxy test: %s is not a postgres:// URL with a host", EnvPG)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5432")
	}
	return u, host
}

// viaProxy is the URL u with its host replaced by the proxy's.
func viaProxy(u *url.URL, p *Proxy) string {
	v := *u
	v.Host = p.Addr()
	return v.String()
}

// ping opens driver on dsn afresh and pings it within 5 s.
func ping(driver, dsn string) error {
	return withDB(driver, dsn, 5*time.Second, func(ctx context.Context, db *sql.DB) error {
		return db.PingContext(ctx)
	})
}

// sslRequest is PostgreSQL's SSLRequest message; the server answers one
// byte, 'S' or 'N', a round trip without a login.
var sslRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)

// readWithin reads n bytes from c within d.
func readWithin(c net.Conn, n int, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	return buf, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connectFailed reports whether err is a failed connect of the kinds a
// closed or reset socket gives.
func connectFailed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, mysql.ErrInvalidConn)
}

// mysqlConnectFailed is connectFailed for go-sql-driver/mysql's connect,
// which before v1.9.0 turns a handshake cut short into driver.ErrBadConn
// (database/sql then retries, and returns that; a failed dial it returns
// as is); v1.9.0 on returns the read's error. The check is the linked
// version's (LinkedVersion).
func mysqlConnectFailed(t *testing.T, err error) bool {
	t.Helper()
	if major, minor := LinkedVersion(t, "github.com/go-sql-driver/mysql", mysql.NewConnector); major == 1 && minor < 9 &&
		errors.Is(err, driver.ErrBadConn) {
		return true
	}
	return connectFailed(err)
}

func TestProxyPG(t *testing.T) {
	u, target := pgTarget(t)
	checkNoGoroutineLeak(t, func() {
		t.Run("Faults", func(t *testing.T) { testProxyPG(t, u, target) })
	})
}

func testProxyPG(t *testing.T, u *url.URL, target string) {
	p := NewProxy(t, target)
	dsn := viaProxy(u, p)
	if err := ping("postgres", dsn); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	db := openRaw(t, "postgres", dsn)
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 through the proxy: %d, %v", one, err)
	}

	t.Run("Stall", func(t *testing.T) {
		old, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		time.Sleep(50 * time.Millisecond) // linked before the stall
		p.Stall()
		young, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatalf("dial while stalled: %v", err)
		}
		defer young.Close()
		for _, c := range []net.Conn{old, young} {
			if _, err := c.Write(sslRequest); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range []net.Conn{old, young} {
			if b, err := readWithin(c, 1, 300*time.Millisecond); !isTimeout(err) {
				t.Fatalf("link %d while stalled: read %q, %v; want a timeout", i, b, err)
			}
		}
		p.Resume()
		for i, c := range []net.Conn{old, young} {
			b, err := readWithin(c, 1, 2*time.Second)
			if err != nil || (b[0] != 'N' && b[0] != 'S') {
				t.Fatalf("link %d after Resume: read %q, %v; want the SSLRequest's answer", i, b, err)
			}
		}
	})

	t.Run("Refuse", func(t *testing.T) {
		n := p.Accepted()
		p.Refuse()
		err := ping("postgres", dsn)
		t.Logf("lib/pq connect, refused: %v", err)
		if !connectFailed(err) {
			t.Fatalf("connect while refused: %v, want EOF or a reset", err)
		}
		if p.Accepted() <= n {
			t.Errorf("Accepted %d, was %d", p.Accepted(), n)
		}
		if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
			t.Fatalf("the existing link while refused: %v", err)
		}
		p.ResetNew()
		err = ping("postgres", dsn)
		t.Logf("lib/pq connect, reset: %v", err)
		if !connectFailed(err) {
			t.Fatalf("connect while reset: %v, want a reset", err)
		}
		p.Normal()
		if err := ping("postgres", dsn); err != nil {
			t.Fatalf("connect after Normal: %v", err)
		}
	})

	t.Run("CutAll", func(t *testing.T) {
		// A *sql.Conn, not the pool, which would retry on a new link.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		n := p.Accepted()
		p.CutAll()
		err = c.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		t.Logf("lib/pq on a cut link: %v", err)
		if err == nil {
			t.Fatal("query on a cut link: no error")
		}
		c.Close()
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("query on a new link after CutAll: %v", err)
		}
		if p.Accepted() != n+1 {
			t.Errorf("Accepted %d after CutAll and a query, want %d", p.Accepted(), n+1)
		}
	})
}

func TestProxyMySQL(t *testing.T) {
	dsn := os.Getenv(EnvMySQL)
	if dsn == "" {
		t.Skipf("proxy test: set %s", EnvMySQL)
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil || cfg.Net != "tcp" {
		t.Skipf("proxy test: %s is not a tcp DSN (%v)", EnvMySQL, err)
	}
	checkNoGoroutineLeak(t, func() {
		t.Run("Faults", func(t *testing.T) { testProxyMySQL(t, cfg) })
	})
}

func testProxyMySQL(t *testing.T, cfg *mysql.Config) {
	p := NewProxy(t, cfg.Addr)
	via := cfg.Clone()
	via.Addr = p.Addr()
	dsn := via.FormatDSN()
	if err := ping("mysql", dsn); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}

	t.Run("Stall", func(t *testing.T) {
		// The server speaks first: its greeting is what the stall holds.
		p.Stall()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if b, err := readWithin(c, 4, 300*time.Millisecond); !isTimeout(err) {
			t.Fatalf("greeting while stalled: read %q, %v; want a timeout", b, err)
		}
		p.Resume()
		if _, err := readWithin(c, 4, 2*time.Second); err != nil {
			t.Fatalf("greeting after Resume: %v", err)
		}
	})

	t.Run("Refuse", func(t *testing.T) {
		p.Refuse()
		err := ping("mysql", dsn)
		t.Logf("go-sql-driver/mysql connect, refused: %v", err)
		if !mysqlConnectFailed(t, err) {
			t.Fatalf("connect while refused: %v, want EOF or a reset", err)
		}
		p.ResetNew()
		err = ping("mysql", dsn)
		t.Logf("go-sql-driver/mysql connect, reset: %v", err)
		if !mysqlConnectFailed(t, err) {
			t.Fatalf("connect while reset: %v, want a reset", err)
		}
		p.Normal()
		if err := ping("mysql", dsn); err != nil {
			t.Fatalf("connect after Normal: %v", err)
		}
	})
}
