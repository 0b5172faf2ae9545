package sqlconflict

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
)

// What the wrapper sends on the happy path: nothing of its own. The same
// workload (connect, statements with and without arguments, queries,
// transactions with options, errors that are no conflict) runs through the
// raw driver and through the wrapper at the default options, and what the
// server received is compared: MariaDB's per-session Com_* counters, and the
// PostgreSQL protocol messages a recording proxy saw.

// wireWorkload is the workload, on a pool of one connection.
func wireWorkload(t *testing.T, s server, db *sql.DB, tbl string) {
	t.Helper()
	ctx := context.Background()
	mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 'a')")
	mustExec(t, db, s.q("INSERT INTO "+tbl+" (id, v) VALUES ($1, $2)"), 2, "b")
	var v string
	if err := db.QueryRow(s.q("SELECT v FROM "+tbl+" WHERE id = $1"), 1).Scan(&v); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("SELECT id, v FROM " + tbl + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
	}
	rows.Close()
	for _, opts := range []*sql.TxOptions{nil, {Isolation: sql.LevelRepeatableRead}, {Isolation: sql.LevelReadCommitted, ReadOnly: true}} {
		tx, err := db.BeginTx(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(s.q("SELECT v FROM "+tbl+" WHERE id = $1"), 2).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if opts == nil {
			mustExec(t, tx, s.q("UPDATE "+tbl+" SET v = $1 WHERE id = $2"), "c", 2)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		} else if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
	// Errors that are no conflict: not retried, nothing asked.
	for _, q := range []string{"SELECT nocolumn FROM " + tbl, "INSERT INTO " + tbl + " (id, v) VALUES (NULL, 'x')", "SELEKT 1"} {
		if _, err := db.Exec(q); err == nil {
			t.Fatalf("%s: no error", q)
		}
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("SELECT nocolumn FROM " + tbl); err == nil {
		t.Fatal("no error")
	}
	tx.Rollback()
	st, err := db.Prepare(s.q("SELECT v FROM " + tbl + " WHERE id = $1"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if err := st.QueryRow(i).Scan(&v); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
}

// TestIntegrationWireMySQL: MariaDB counts the commands each session ran
// (SHOW SESSION STATUS LIKE 'Com\_%'); a connection of the raw driver and
// one of the wrapper, from their first byte, run the same workload and must
// have run the same commands.
func TestIntegrationWireMySQL(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	counts := func(db *sql.DB) map[string]string {
		tbl := s.table(t, s.openRaw(t), "", "id INT PRIMARY KEY, v VARCHAR(8) NOT NULL")
		db.SetMaxOpenConns(1)
		wireWorkload(t, s, db, tbl)
		rows, err := db.Query(`SHOW SESSION STATUS LIKE 'Com\_%'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var k, v string
			if err := rows.Scan(&k, &v); err != nil {
				t.Fatal(err)
			}
			if v != "0" {
				m[k] = v
			}
		}
		return m
	}
	raw := counts(s.openRaw(t))
	wrapped := counts(s.open(t))
	if !maps.Equal(raw, wrapped) {
		t.Errorf("commands run by the session:\nraw     %v\nwrapped %v", raw, wrapped)
	}
	t.Logf("both sessions: %v", raw)
}

// TestIntegrationWirePostgres: a proxy counts the frontend messages of the
// PostgreSQL protocol (Query, Parse, Bind, Execute, ...) each connection
// sends, startup included; raw and wrapped must send the same.
func TestIntegrationWirePostgres(t *testing.T) {
	s, ok := pgServer(t)
	if !ok {
		return
	}
	target, dsnVia := s.viaProxy(t)
	counts := func(driverName, suffix string) map[byte]int {
		p := newMsgProxy(t, target)
		db, err := sql.Open(driverName, dsnVia(p.addr()))
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		tbl := s.table(t, s.openRaw(t), suffix, "id INT PRIMARY KEY, v VARCHAR(8) NOT NULL")
		wireWorkload(t, s, db, tbl)
		db.Close()
		p.stop() // every connection's messages read, its Terminate included
		return p.counts()
	}
	raw, wrapped := counts(s.Raw, "_raw"), counts(s.Driver, "_wrapped")
	if !maps.Equal(raw, wrapped) {
		t.Errorf("frontend messages:\nraw     %v\nwrapped %v", msgNames(raw), msgNames(wrapped))
	}
	t.Logf("both connections: %v", msgNames(raw))
}

// msgProxy forwards connections to a PostgreSQL server and counts the
// frontend messages by type; 0 stands for the startup packet.
type msgProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	n      map[byte]int
	wg     sync.WaitGroup
}

func newMsgProxy(t *testing.T, target string) *msgProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &msgProxy{ln: ln, target: target, n: map[byte]int{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			go func() { defer p.wg.Done(); p.readFrontend(io.TeeReader(c, up)); up.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(p.stop)
	return p
}

// stop closes the proxy and waits until it has read every connection to
// its end.
func (p *msgProxy) stop() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *msgProxy) addr() string { return p.ln.Addr().String() }

// readFrontend parses the client's stream: a startup packet (an SSLRequest
// first, possibly), then typed messages.
func (p *msgProxy) readFrontend(r io.Reader) {
	var hdr [5]byte
	startup := true
	for {
		if startup {
			if _, err := io.ReadFull(r, hdr[:4]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint32(hdr[:4]))
			var code [4]byte
			if _, err := io.ReadFull(r, code[:]); err != nil {
				return
			}
			io.CopyN(io.Discard, r, int64(n-8))
			p.note(0)
			// 80877103 is SSLRequest: the server answers with one byte and
			// the real startup packet follows.
			startup = binary.BigEndian.Uint32(code[:]) == 80877103
			continue
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.CopyN(io.Discard, r, int64(n-4)); err != nil {
			return
		}
		p.note(hdr[0])
	}
}

func (p *msgProxy) note(b byte) {
	p.mu.Lock()
	p.n[b]++
	p.mu.Unlock()
}

func (p *msgProxy) counts() map[byte]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.n)
}

// msgNames spells a count map with the messages' names.
func msgNames(m map[byte]int) string {
	names := map[byte]string{0: "startup", 'Q': "Query", 'P': "Parse", 'B': "Bind", 'E': "Execute", 'D': "Describe",
		'S': "Sync", 'C': "Close", 'H': "Flush", 'X': "Terminate", 'p': "Password"}
	var parts []string
	for _, b := range []byte{0, 'p', 'Q', 'P', 'B', 'D', 'E', 'S', 'C', 'H', 'X'} {
		if m[b] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", names[b], m[b]))
		}
	}
	for b, n := range m {
		if names[b] == "" {
			parts = append(parts, fmt.Sprintf("%q=%d", b, n))
		}
	}
	return strings.Join(parts, " ")
}

// TestIntegrationWireSavepointMySQL: with conflict_savepoints=writes each
// guarded write costs exactly one SAVEPOINT, the first write with arguments
// on a new connection included (go-sql-driver/mysql declines it with
// driver.ErrSkip, and database/sql prepares it: the savepoint set for the
// declined call serves the prepared one).
func TestIntegrationWireSavepointMySQL(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	db := s.open(t, "conflict_savepoints=writes")
	db.SetMaxOpenConns(1)
	tbl := s.table(t, s.openRaw(t), "", "id INT PRIMARY KEY")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		mustExec(t, tx, "INSERT INTO "+tbl+" (id) VALUES (?)", i)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var name string
	var n int
	if err := db.QueryRow(`SHOW SESSION STATUS LIKE 'Com\_savepoint'`).Scan(&name, &n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d SAVEPOINTs for 3 guarded writes, want 3", n)
	}
}
