package sqlconflict

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
	"github.com/go-sql-driver/mysql"
)

// Servers that would not serve, or would not take writes: what they answer,
// and what the wrapper does with the connection afterwards.

// backendID returns the server's id for the session db's one connection
// runs.
func (s server) backendID(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	q := "SELECT CONNECTION_ID()"
	if s.PG() {
		q = "SELECT pg_backend_pid()"
	}
	var id int64
	if err := db.QueryRow(q).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestIntegrationReadOnlyRefused: a write refused because the transaction or
// the session is read-only (as on a replica after a failover) is
// KindReadOnly (PostgreSQL 25006, MySQL 1792), the driver's own error, and
// the connection is not reused: the next attempt connects anew. PostgreSQL
// says 25006 for a standby as for a READ ONLY transaction, so it is
// retryable, and RunTx does not rerun it in a transaction begun READ ONLY;
// MySQL's 1792 is the transaction's own, never retryable.
func TestIntegrationReadOnlyRefused(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := s.open(t)
		db.SetMaxOpenConns(1)
		tbl := s.table(t, db, "", "n INT")
		code, retryable := "1792", false
		sessionRO := "SET SESSION TRANSACTION READ ONLY"
		if s.PG() {
			code, retryable, sessionRO = "25006", true, "SET SESSION default_transaction_read_only = on"
		}
		check := func(t *testing.T, err error) {
			t.Helper()
			cl := Classify(err)
			if ok, name := s.driverError(err); !ok || cl.Kind != KindReadOnly || cl.Code != code || cl.Scope != ScopeStatement || cl.Retryable != retryable {
				t.Errorf("err = %v (%s %v), want %s classified read only, retryable %v", err, name, ok, code, retryable)
			}
		}
		t.Run("read-only transaction", func(t *testing.T) {
			before := s.backendID(t, db)
			tx, err := db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec("INSERT INTO " + tbl + " (n) VALUES (1)")
			check(t, err)
			tx.Rollback()
			if after := s.backendID(t, db); after == before {
				t.Errorf("the connection that met a read-only refusal was reused (session %d)", after)
			}
		})
		t.Run("read-only session", func(t *testing.T) {
			// This connection opened after the first subtest's reconnect:
			// refused too, it goes only once the pacer's first interval
			// has passed (readonly.go; TestROPacer has the schedule).
			time.Sleep(roMinInterval)
			conn, err := db.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			mustExecConn(t, conn, sessionRO)
			_, err = conn.ExecContext(context.Background(), "INSERT INTO "+tbl+" (n) VALUES (1)")
			check(t, err)
			conn.Close()
			// A new connection: writable again.
			mustExec(t, db, "INSERT INTO "+tbl+" (n) VALUES (2)")
		})
		t.Run("RunTx READ ONLY not rerun", func(t *testing.T) {
			attempts := 0
			err := RunTx(context.Background(), db, &sql.TxOptions{ReadOnly: true}, func(ctx context.Context, tx *sql.Tx) error {
				attempts++
				_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" (n) VALUES (3)")
				return err
			})
			if attempts != 1 || Classify(err).Kind != KindReadOnly {
				t.Errorf("RunTx: %v after %d attempts, want the read-only refusal after 1", err, attempts)
			}
		})
	})
}

// TestIntegrationRefusedDialRerun: a refused connection sent nothing: it is
// KindUnavailable, retryable, and RunTx reruns it with backoff, bounded,
// until the server answers.
func TestIntegrationRefusedDialRerun(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		target, dsnVia := s.viaProxy(t)
		// A port nobody listens on, for now.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		db := s.openObservedDSNLazy(t, dsnVia(addr))

		_, err = db.Exec("SELECT 1")
		if cl := Classify(err); cl.Kind != KindUnavailable || !cl.Retryable {
			t.Fatalf("refused: %v classified %+v, want a retryable unavailable", err, cl)
		}
		runner := TxRunner{MaxAttempts: 3, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
		var attempts int
		err = runner.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error { attempts++; return nil })
		var re *RetryError
		if !errors.As(err, &re) || re.Attempts != 3 || Classify(err).Kind != KindUnavailable || attempts != 0 {
			t.Fatalf("RunTx against nothing: %v after %d calls of fn, want a RetryError after 3 attempts", err, attempts)
		}

		// The server comes up 300 ms later: RunTx gets through.
		var wg sync.WaitGroup
		t.Cleanup(wg.Wait)
		go func() {
			time.Sleep(300 * time.Millisecond)
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("listen again on %s: %v", addr, err)
				return
			}
			t.Cleanup(func() { l.Close() })
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					continue
				}
				wg.Add(2)
				go func() { defer wg.Done(); io.Copy(up, c); up.Close() }()
				go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
			}
		}()
		start := time.Now()
		err = TxRunner{Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}.Run(context.Background(), db, nil,
			func(ctx context.Context, tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, "SELECT 1")
				return err
			})
		if err != nil {
			t.Fatalf("RunTx once the server is up: %v", err)
		}
		t.Logf("%s: RunTx got through after %v", s.Name, time.Since(start).Round(time.Millisecond))
		db.Close()
	})
}

// openObservedDSNLazy opens dsn with the wrapped driver of s without
// checking that the server answers.
func (s server) openObservedDSNLazy(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(s.Driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestFailedCommitRolledBack: MySQL may keep a transaction open after its
// COMMIT failed (a Galera node that stopped serving answers 1047). The
// wrapper sends ROLLBACK; where even that is refused, the transaction stays
// doomed (nothing written next on the connection may join it and be lost
// with it) until a ROLLBACK gets through, and the connection is not reused.
func TestFailedCommitRolledBack(t *testing.T) {
	errNotReady := &mysql.MySQLError{Number: 1047, Message: "WSREP has not yet prepared node for application use"}
	ok := sqlmock.NewResult(0, 1)
	opts := fastOptions(DialectMySQL)
	opts.Savepoints = SavepointsOff
	t.Run("rolled back", func(t *testing.T) {
		db, mock := mockDB(t, opts)
		mock.ExpectBegin()
		mock.ExpectExec(exact("INSERT INTO t VALUES (1)")).WillReturnResult(ok)
		mock.ExpectCommit().WillReturnError(errNotReady)
		mock.ExpectExec(exact("ROLLBACK")).WillReturnResult(ok)
		tx, _ := db.Begin()
		mustExec(t, tx, "INSERT INTO t VALUES (1)")
		if err := tx.Commit(); err != errNotReady {
			t.Fatalf("Commit: %v", err)
		}
	})
	t.Run("refused, then rolled back", func(t *testing.T) {
		db, mock := mockDB(t, opts)
		mock.ExpectBegin()
		mock.ExpectCommit().WillReturnError(errNotReady)
		mock.ExpectExec(exact("ROLLBACK")).WillReturnError(errNotReady)
		mock.ExpectExec(exact("ROLLBACK")).WillReturnError(errNotReady) // before the next statement
		mock.ExpectExec(exact("ROLLBACK")).WillReturnResult(ok)         // before the one after
		mock.ExpectExec(exact("INSERT INTO t VALUES (3)")).WillReturnResult(ok)
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		tx, _ := conn.BeginTx(ctx, nil)
		if err := tx.Commit(); err != errNotReady {
			t.Fatalf("Commit: %v", err)
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, ErrTxAborted) {
			t.Fatalf("while the node refuses: %v, want ErrTxAborted", err)
		}
		mustExecConn(t, conn, "INSERT INTO t VALUES (3)")
		var valid bool
		conn.Raw(func(dc any) error { valid = dc.(interface{ IsValid() bool }).IsValid(); return nil })
		if valid {
			t.Error("the connection would go back to the pool")
		}
	})
}

// TestIntegrationRawBaseConn: inside sql.Conn.Raw, BaseConn hands out the
// base driver's own connection, and a statement run on the connection
// Raw gives returns the base driver's own result: go-sql-driver/mysql's
// mysql.Result with every statement's last insert id, as its README shows.
func TestIntegrationRawBaseConn(t *testing.T) {
	s, ok := mysqlServer(t)
	if !ok {
		return
	}
	db := s.open(t, "multiStatements=true")
	tbl := s.table(t, db, "", "id INT AUTO_INCREMENT PRIMARY KEY, v INT")
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := "INSERT INTO " + tbl + " (v) VALUES (1), (2); INSERT INTO " + tbl + " (v) VALUES (3)"
	err = conn.Raw(func(dc any) error {
		if _, ok := BaseConn(dc).(driver.ExecerContext); !ok {
			return fmt.Errorf("BaseConn gave %T", BaseConn(dc))
		}
		for _, c := range []any{dc, BaseConn(dc)} {
			res, err := c.(driver.ExecerContext).ExecContext(context.Background(), q, nil)
			if err != nil {
				return err
			}
			mres, ok := res.(mysql.Result)
			if !ok {
				return fmt.Errorf("%T's result is %T, not mysql.Result", c, res)
			}
			if ids := mres.AllLastInsertIds(); len(ids) != 2 {
				return fmt.Errorf("AllLastInsertIds = %v, want one per statement", ids)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A value that wraps nothing is its own base connection.
	if BaseConn(nil) != nil || BaseConn(42) != nil {
		t.Error("BaseConn of a non-connection")
	}
}
