package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
	"go.uber.org/goleak"
)

// Context cancellation and deadlines during the wrapper's backoff and during
// a blocked lock wait, on real servers: the call returns promptly with the
// context's error, no connection is left in a transaction, and no goroutine
// leaks. See docs/reliability.md for the figures of a run.

// cancelPrompt is how late after its context's deadline a call may return.
// The figures printed are what matters; this bound only catches a call that
// waited for its lock or backoff instead of the deadline, on a loaded
// machine.
const cancelPrompt = time.Second

// checkLeaks fails t if goroutines started during the test outlive it. It
// must be called first, so that its cleanup runs after the ones that close
// the test's databases and proxies.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("goroutine leak: %v", err)
		}
	})
}

// lockTimeoutSQL sets a short lock wait for the session, for the statement
// that should fail retryably.
func (s server) lockTimeoutSQL() (string, time.Duration) {
	if s.PG() {
		return "SET lock_timeout = '100ms'", 100 * time.Millisecond
	}
	return "SET SESSION innodb_lock_wait_timeout = 1", time.Second // MySQL's minimum
}

// sessionID returns the server's id for the session of conn.
func (s server) sessionID(ctx context.Context, conn *sql.Conn) (int64, error) {
	q := "SELECT CONNECTION_ID()"
	if s.PG() {
		q = "SELECT pg_backend_pid()"
	}
	var id int64
	err := conn.QueryRowContext(ctx, q).Scan(&id)
	return id, err
}

// inTx reports whether the session of conn has a transaction open on the
// server. PostgreSQL's answer comes from pg_stat_activity, read through
// direct: now() = statement_timestamp() is not reliable over the extended
// protocol.
func (s server) inTx(ctx context.Context, conn *sql.Conn, direct *sql.DB) (bool, error) {
	if s.PG() {
		id, err := s.sessionID(ctx, conn)
		if err != nil {
			return false, err
		}
		var state sql.NullString
		err = direct.QueryRowContext(ctx, "SELECT state FROM pg_stat_activity WHERE pid = $1", id).Scan(&state)
		return strings.HasPrefix(state.String, "idle in transaction"), err
	}
	var in int
	err := conn.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&in) // MariaDB
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1193 { // MySQL: no such variable
		err = conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()").Scan(&in)
	}
	return in != 0, err
}

// checkPoolNotInTx checks every connection of db's pool and returns how many
// it checked.
func (s server) checkPoolNotInTx(t *testing.T, db, direct *sql.DB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := db.Stats().OpenConnections
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("pool connection: %v", err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		in, err := s.inTx(ctx, c, direct)
		if err != nil {
			t.Errorf("pool connection %d: %v", i, err)
		} else if in {
			t.Errorf("pool connection %d is left in a transaction", i)
		}
	}
	return n
}

// sameConnAfter closes conn, which waits for database/sql to finish the
// rollback of a transaction its context ended, takes the pool's only
// connection again, and says whether the driver kept the session (same
// server id) and that it is not in a transaction.
func (s server) sameConnAfter(t *testing.T, db, direct *sql.DB, conn *sql.Conn, id int64) string {
	t.Helper()
	conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatalf("pool connection: %v", err)
	}
	defer c.Close()
	id2, err := s.sessionID(ctx, c)
	if err != nil {
		t.Fatalf("pool connection: %v", err)
	}
	in, err := s.inTx(ctx, c, direct)
	switch {
	case err != nil:
		t.Errorf("pool connection: %v", err)
	case in:
		t.Errorf("the connection is left in a transaction (same session: %v)", id == id2)
	}
	if id == id2 {
		return "kept, not in a transaction"
	}
	return "discarded by the driver (the pool opened a new one)"
}

// lockFree reports whether row id of tbl can be locked at once from another
// session: no transaction still holds it.
func (s server) lockFree(t *testing.T, db *sql.DB, tbl string, id int) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	q := fmt.Sprintf("SELECT id FROM %s WHERE id = %d FOR UPDATE NOWAIT", tbl, id)
	var got int
	return tx.QueryRowContext(ctx, q).Scan(&got)
}

// describeCancelErr names the error a driver returned for a cancellation.
func describeCancelErr(err error) string {
	cl := Classify(err)
	return fmt.Sprintf("%s (%q) -> Classify %v/%v retryable=%v", errName(err), err.Error(), cl.Kind, cl.Scope, cl.Retryable)
}

// TestIntegrationCancelDuringBackoff: a statement fails with a lock timeout,
// the wrapper backs off for long (conflict_backoff=20s), and the context's
// deadline falls during the backoff. The lock is released as soon as the
// wrapper decides to retry, so the only wait left is the backoff.
func TestIntegrationCancelDuringBackoff(t *testing.T) {
	checkLeaks(t)
	eachServer(t, func(t *testing.T, s server) {
		for _, inTx := range []bool{false, true} {
			name := map[bool]string{false: "autocommit", true: "tx-savepoints"}[inTx]
			t.Run(name, func(t *testing.T) { cancelDuringBackoff(t, s, inTx) })
		}
	})
}

func cancelDuringBackoff(t *testing.T, s server, inTx bool) {
	direct := s.open(t)
	tbl := s.table(t, direct, "", "id INT PRIMARY KEY, v INT")
	mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")

	retried := make(chan Observation, 16)
	var obs lossCounter
	params := []string{"conflict_retries=3", "conflict_backoff=20s", "conflict_max_backoff=20s"}
	if inTx {
		params = append(params, "conflict_savepoints=writes")
	}
	db := s.openObservedDSN(t, s.DSNWith(params...), func(ctx context.Context, o Observation) {
		obs.observe(ctx, o)
		if o.Event == EventRetry {
			select {
			case retried <- o:
			default:
			}
		}
	})
	db.SetMaxOpenConns(1) // so that the connection after is the one before, if kept
	setTimeout, lockWait := s.lockTimeoutSQL()
	const margin = 500 * time.Millisecond // deadline after the lock timeout

	// Backoff is drawn from [0, 20s]: when it happens to be shorter than
	// the margin, the retry succeeds and the run is repeated.
	for try := 1; try <= 5; try++ {
		for len(retried) > 0 {
			<-retried
		}
		bg, stop := context.WithTimeout(context.Background(), 30*time.Second)
		holder, err := direct.BeginTx(bg, nil)
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, holder, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		released := make(chan struct{})
		go func() {
			defer close(released)
			select {
			case <-retried:
			case <-bg.Done():
			}
			holder.Rollback()
		}()

		conn, err := db.Conn(bg)
		if err != nil {
			t.Fatal(err)
		}
		cancelExecConn(t, bg, conn, setTimeout)
		id, err := s.sessionID(bg, conn)
		if err != nil {
			t.Fatal(err)
		}

		ctx, cancel := context.WithTimeout(bg, lockWait+margin)
		deadline, _ := ctx.Deadline()
		var tx *sql.Tx
		if inTx {
			if tx, err = conn.BeginTx(ctx, nil); err != nil {
				t.Fatal(err)
			}
			if _, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 2"); err != nil {
				t.Fatal(err)
			}
			_, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		} else {
			_, err = conn.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 1")
		}
		late := time.Since(deadline)
		cancel()
		var rbErr error
		if tx != nil {
			rbErr = tx.Rollback()
		}
		stop()
		<-released

		if err == nil {
			t.Logf("try %d: the backoff drawn was shorter than %v and the retry succeeded; again", try, margin)
			conn.Close()
			continue
		}
		// The context ended during the wait: the call returns the last
		// attempt's error, the driver's own, which had no effect.
		if ok, name := s.driverError(err); !ok {
			t.Fatalf("error %v, want the last attempt's %s", describeCancelErr(err), name)
		}
		if late > cancelPrompt {
			t.Errorf("returned %v after the deadline", late)
		}
		if obs.retries.Load() == 0 {
			t.Errorf("the wrapper did not back off")
		}
		cl := Classify(err)
		if cl.Kind != KindLockTimeout || cl.Scope == ScopeUnknownOutcome {
			t.Errorf("Classify = %v/%v retryable=%v, want the lock timeout, a known outcome", cl.Kind, cl.Scope, cl.Retryable)
		}

		// The same connection, if the driver kept it, is out of any
		// transaction; so is every pooled one; and the row the
		// transaction wrote is not locked any more.
		sameConn := s.sameConnAfter(t, db, direct, conn, id)
		pooled := s.checkPoolNotInTx(t, db, direct)
		if err := s.lockFree(t, direct, tbl, 2); err != nil {
			t.Errorf("row 2 is still locked after the cancellation: %v", err)
		}
		t.Logf("cancel report %s backoff-%s: returned %v after the deadline (lock wait %v, backoff up to 20s); error %s; tx.Rollback after: %v; same connection %s; %d pooled connections not in a transaction; wrapper retries %d",
			s.Name, map[bool]string{false: "autocommit", true: "tx"}[inTx], late.Round(time.Microsecond), lockWait, describeCancelErr(err), rbErr, sameConn, pooled, obs.retries.Load())
		return
	}
	t.Fatal("five backoffs in a row were shorter than the margin")
}

func cancelExecConn(t *testing.T, ctx context.Context, conn *sql.Conn, q string) {
	t.Helper()
	if _, err := conn.ExecContext(ctx, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestIntegrationCancelDuringLockWait: the row is locked by another
// transaction and the waiter's context times out while it waits, in
// autocommit and inside a transaction that wrote another row first.
func TestIntegrationCancelDuringLockWait(t *testing.T) {
	checkLeaks(t)
	eachServer(t, func(t *testing.T, s server) {
		for _, inTx := range []bool{false, true} {
			name := map[bool]string{false: "autocommit", true: "tx"}[inTx]
			t.Run(name, func(t *testing.T) { cancelDuringLockWait(t, s, inTx) })
		}
	})
}

func cancelDuringLockWait(t *testing.T, s server, inTx bool) {
	direct := s.open(t)
	tbl := s.table(t, direct, "", "id INT PRIMARY KEY, v INT")
	mustExec(t, direct, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0), (2, 0)")
	var obs lossCounter
	db := s.openObservedDSN(t, s.DSN, obs.observe)
	db.SetMaxOpenConns(1)

	bg, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	holder, err := direct.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	mustExec(t, holder, "UPDATE "+tbl+" SET v = 1 WHERE id = 1")

	conn, err := db.Conn(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sessionID, err := s.sessionID(bg, conn)
	if err != nil {
		t.Fatal(err)
	}

	const wait = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(bg, wait)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var tx *sql.Tx
	if inTx {
		if tx, err = conn.BeginTx(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if _, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = 2 WHERE id = 2"); err != nil {
			t.Fatal(err)
		}
		_, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET v = 2 WHERE id = 1")
	} else {
		_, err = conn.ExecContext(ctx, "UPDATE "+tbl+" SET v = 2 WHERE id = 1")
	}
	late := time.Since(deadline)
	var rbErr error
	if tx != nil {
		rbErr = tx.Rollback()
	}

	if err == nil {
		t.Fatal("the blocked statement succeeded")
	}
	var pqErr *pq.Error
	pgCanceled := errors.As(err, &pqErr) && pqErr.Code == "57014"
	if !errors.Is(err, context.DeadlineExceeded) && !pgCanceled && Classify(err).Kind != KindQueryCanceled {
		t.Errorf("error %s, want the context's deadline or the server's query_canceled", describeCancelErr(err))
	}
	cl := Classify(err)
	if cl.Kind != KindQueryCanceled || cl.Retryable {
		t.Errorf("Classify = %v/%v retryable=%v, want query canceled, not retryable", cl.Kind, cl.Scope, cl.Retryable)
	}
	if late > cancelPrompt {
		t.Errorf("returned %v after the deadline", late)
	}
	if n := obs.retries.Load(); n != 0 {
		t.Errorf("the wrapper retried a canceled statement %d times", n)
	}

	check, cancelCheck := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelCheck()

	// Does the server still run the canceled session's statement (and
	// hold the transaction's locks) while the holder keeps its lock?
	serverSide := "gone"
	if s.PG() {
		var state sql.NullString
		err := direct.QueryRowContext(check, "SELECT state FROM pg_stat_activity WHERE pid = $1", sessionID).Scan(&state)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			t.Errorf("pg_stat_activity: %v", err)
		default:
			serverSide = "session " + state.String
		}
	} else {
		var trx int
		if err := direct.QueryRowContext(check, "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?", sessionID).Scan(&trx); err != nil {
			t.Errorf("innodb_trx: %v", err)
		} else if trx > 0 {
			serverSide = "transaction still open, waiting for the lock"
		}
	}

	sameConn := s.sameConnAfter(t, db, direct, conn, sessionID)

	// Release the holder, then see whether the canceled UPDATE took effect
	// after all and how long the server kept the waiter's transaction.
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	var gone time.Duration = -1
	for time.Since(released) < 5*time.Second {
		if inTx {
			if s.lockFree(t, direct, tbl, 2) == nil {
				gone = time.Since(released)
				break
			}
		} else {
			gone = 0
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if inTx && gone < 0 {
		t.Errorf("row 2 written by the canceled transaction is still locked 5s after the holder released row 1")
	}
	time.Sleep(200 * time.Millisecond) // let a surviving statement finish
	v1 := count(t, direct, "SELECT v FROM "+tbl+" WHERE id = 1")
	v2 := count(t, direct, "SELECT v FROM "+tbl+" WHERE id = 2")
	applied := v1 == 2
	if inTx && v2 != 0 {
		t.Errorf("the canceled transaction's first write committed: v2 = %d", v2)
	}
	if applied && cl.Scope != ScopeUnknownOutcome {
		t.Errorf("the canceled statement took effect after all, but Classify said scope %v", cl.Scope)
	}
	pooled := s.checkPoolNotInTx(t, db, direct)
	lockGone := "n/a (no earlier write)"
	if inTx {
		lockGone = gone.Round(time.Millisecond).String()
	}
	t.Logf("cancel report %s lockwait-%s: returned %v after the deadline; error %s; tx.Rollback after: %v; same connection %s; server side while the lock was held: %s; canceled UPDATE applied after the holder committed: %v; waiter's row 2 lock released %s after the holder's commit; %d pooled connections not in a transaction",
		s.Name, map[bool]string{false: "autocommit", true: "tx"}[inTx], late.Round(time.Microsecond), describeCancelErr(err), rbErr, sameConn, serverSide, applied, lockGone, pooled)
}
