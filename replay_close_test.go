package sqlconflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
)

// TestIntegrationReplayAtClose: a locking read's deadlock that reaches the
// application at rows.Close, in a plain transaction (no RunTx).
//
// The victim reads SELECT id, v ... WHERE id BETWEEN 1 AND 10 ORDER BY id
// FOR UPDATE: it locks rows 1 and 2 and waits on row 3, which the other
// session holds; the other session (the heavier one: it updated rows
// 20..30 first, so that InnoDB rolls back the reader) then asks for row 1,
// which closes the cycle. Both servers keep the rows 1 and 2 of the reader
// in their output buffer while it waits (MySQL's net buffer, PostgreSQL's
// send buffer: small rows are flushed only when the buffer fills or the
// statement ends), so the rows and the error come together once the
// deadlock is found. The application reads only the first row and calls
// Close, and each base driver reads the rest of the result there:
// go-sql-driver/mysql's Close skips the remaining rows up to the error
// packet, lib/pq's Close calls Next to the ReadyForQuery; both return the
// error (1213, 40P01) from Close. (The application that reads on, as in
// TestIntegrationReplayRowsPartlyRead, gets it at Next instead.) On
// PostgreSQL the reader is the victim because its own deadlock check,
// deadlock_timeout (1 s) after it began to wait, comes first: the other
// session asks for row 1 only once the reader is seen waiting, and checks
// after 10 s.
//
// Three runs: raw, the premise (Close returns the driver's deadlock);
// replayed (conflict_replay=on; the other session only locks row 1): Close
// returns nil after an EventReplay, the next statement and Commit succeed,
// and the table holds exactly the acknowledged writes; not verified (the
// other session changes row 1 before it commits, so the row the
// application read differs in the replay): Close returns the driver's own
// deadlock, the transaction is as the deadlock left it (the next statement
// and Commit fail), and nothing of the victim commits.
func TestIntegrationReplayAtClose(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		tbl := replayTable(t, s, raw)
		// The other session's own deadlock check comes 10 s after it
		// began to wait on PostgreSQL: the reader's, 1 s after it did,
		// comes first whatever the timers' jitter.
		other := raw
		if s.PG() {
			other = s.openRaw(t, "deadlock_timeout=10s")
		}
		for _, tc := range []struct {
			name    string
			wrapped bool
			// other is the other session's request for row 1, which
			// closes the cycle.
			other string
		}{
			{"raw", false, "SELECT v FROM " + tbl + " WHERE id = 1 FOR UPDATE"},
			{"replayed", true, "SELECT v FROM " + tbl + " WHERE id = 1 FOR UPDATE"},
			{"not verified", true, "UPDATE " + tbl + " SET v = v + 100 WHERE id = 1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				mustExec(t, raw, "UPDATE "+tbl+" SET v = 0")
				db, obs := raw, &replayObs{}
				if tc.wrapped {
					db = s.openReplay(t, obs)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				r := closeVictim(t, ctx, s, raw, other, db, tbl, tc.other)
				defer r.victim.Rollback()
				t.Logf("%s: Query returned %v after the other session asked for row 1; first row (%d, %d); Close: %v (%s); %s",
					tc.name, r.queried.Round(time.Millisecond), r.id, r.v, r.closeErr, nameOf(r.closeErr), obs)
				if r.id != 1 || r.v != 0 {
					t.Errorf("first row (%d, %d), want (1, 0)", r.id, r.v)
				}
				// Row 15: the victim's update before its read; row 1: its
				// update after it; row 3 and 20..30: the other session's.
				upd := "UPDATE " + tbl + " SET v = v + 10 WHERE id = 1"
				want := map[int]int{3: 1}
				for id := 20; id <= 30; id++ {
					want[id] = 1
				}
				switch tc.name {
				case "raw":
					if ok, _ := s.driverError(r.closeErr); !ok || Classify(r.closeErr).Kind != KindDeadlock {
						t.Fatalf("raw: Close returned %v (%s), want the driver's deadlock: the conflict did not come at Close", r.closeErr, nameOf(r.closeErr))
					}
				case "replayed":
					if r.closeErr != nil {
						t.Fatalf("Close after the replay: %v (%s); %s", r.closeErr, nameOf(r.closeErr), obs)
					}
					// More than one if a replay met a deadlock of its own
					// (on PostgreSQL it may lock row 1 before the other
					// session, woken by the abort, takes it).
					if obs.replayed.Load() == 0 || obs.failed.Load() != 0 {
						t.Errorf("events %s, want an EventReplay and no EventReplayFailed", obs)
					}
					if _, err := r.victim.ExecContext(ctx, upd); err != nil {
						t.Fatalf("the statement after Close: %v", err)
					}
					if err := r.victim.Commit(); err != nil {
						t.Fatalf("Commit: %v", err)
					}
					want[1], want[15] = 10, 1
				case "not verified":
					if ok, _ := s.driverError(r.closeErr); !ok || Classify(r.closeErr).Kind != KindDeadlock {
						t.Fatalf("Close returned %v (%s), want the driver's own deadlock", r.closeErr, nameOf(r.closeErr))
					}
					// No EventReplay: one is reported only once the open
					// query's rows are checked too.
					if obs.failed.Load() != 1 || obs.replayed.Load() != 0 {
						t.Errorf("events %s, want one EventReplayFailed and no EventReplay", obs)
					}
					// The transaction is as the deadlock left it: on
					// MySQL rolled back and doomed by the guard, on
					// PostgreSQL aborted.
					_, xerr := r.victim.ExecContext(ctx, upd)
					cerr := r.victim.Commit()
					t.Logf("not verified: the next statement: %v; Commit: %v", xerr, cerr)
					if s.PG() {
						if Classify(xerr).Code != "25P02" || !errors.Is(cerr, pq.ErrInFailedTransaction) {
							t.Errorf("the statement after Close: %v, Commit: %v; want 25P02 and lib/pq's ErrInFailedTransaction", xerr, cerr)
						}
					} else if !errors.Is(xerr, ErrTxAborted) || !errors.Is(cerr, ErrTxAborted) {
						t.Errorf("the statement after Close: %v, Commit: %v; want ErrTxAborted", xerr, cerr)
					}
					want[1] = 100
				}
				checkRows(t, raw, tbl, want)
			})
		}
	})
}

// closeResult is what the victim of closeVictim saw.
type closeResult struct {
	victim   *sql.Tx
	id, v    int           // the first row
	queried  time.Duration // when its Query returned, after the other session's request
	queryEnd time.Time     // when its Query returned
	closeErr error
}

// closeVictim runs the victim's transaction on db: it updates row 15, then
// runs the locking read of rows 1..10, which waits on row 3 (the other
// session, on otherDB, updated rows 20..30 and 3 first); once raw sees the
// victim waiting, the other session runs other (its request for row 1) and
// commits. The victim reads the first row and closes the rows. It returns
// what the victim saw, its transaction still open.
func closeVictim(t *testing.T, ctx context.Context, s server, raw, otherDB, db *sql.DB, tbl, other string) closeResult {
	t.Helper()
	otx := beginWith(t, ctx, otherDB, "UPDATE "+tbl+" SET v = v + 1 WHERE id BETWEEN 20 AND 30", "UPDATE "+tbl+" SET v = v + 1 WHERE id = 3")
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	idq := "SELECT CONNECTION_ID()"
	if s.PG() {
		idq = "SELECT pg_backend_pid()"
	}
	var backend int64
	if err := conn.QueryRowContext(ctx, idq).Scan(&backend); err != nil {
		t.Fatal(err)
	}
	victim, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Rollback() }) // before conn.Close, which waits for it
	if _, err := victim.ExecContext(ctx, "UPDATE "+tbl+" SET v = v + 1 WHERE id = 15"); err != nil {
		t.Fatal(err)
	}
	res := closeResult{victim: victim}
	done := make(chan error, 1)
	go func() {
		rows, err := victim.QueryContext(ctx, "SELECT id, v FROM "+tbl+" WHERE id BETWEEN 1 AND 10 ORDER BY id FOR UPDATE")
		res.queryEnd = time.Now()
		if err != nil {
			done <- fmt.Errorf("Query: %w", err)
			return
		}
		if !rows.Next() {
			rows.Close()
			done <- fmt.Errorf("no first row: %v", rows.Err())
			return
		}
		if err := rows.Scan(&res.id, &res.v); err != nil {
			rows.Close()
			done <- err
			return
		}
		res.closeErr = rows.Close()
		done <- nil
	}()
	waitLockWait(t, ctx, s, raw, backend, done)
	asked := time.Now()
	if _, err := otx.ExecContext(ctx, other); err != nil {
		t.Fatalf("the other session lost the deadlock, %v after it asked: %v", time.Since(asked), err)
	}
	if err := otx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the victim: %v", err)
	}
	res.queried = res.queryEnd.Sub(asked)
	return res
}

// waitLockWait waits until the session backend waits for a row lock (its
// read reached row 3), failing t if it ends first (done) or takes 10 s.
// MariaDB's information_schema.innodb_trx is a cache that InnoDB refreshes
// only when nobody read it for 100 ms, so a poll of it sees the past: SHOW
// ENGINE INNODB STATUS, made for each call, says which session waits.
func waitLockWait(t *testing.T, ctx context.Context, s server, raw *sql.DB, backend int64, done <-chan error) {
	t.Helper()
	waiting := func() bool {
		if s.PG() {
			var n int
			if err := raw.QueryRowContext(ctx, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", backend).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		}
		var typ, name, status string
		if err := raw.QueryRowContext(ctx, "SHOW ENGINE INNODB STATUS").Scan(&typ, &name, &status); err != nil {
			t.Fatal(err)
		}
		for _, trx := range strings.Split(status, "---TRANSACTION ") {
			if strings.Contains(trx, fmt.Sprintf(" thread id %d,", backend)) {
				return strings.Contains(trx, "\nLOCK WAIT ")
			}
		}
		return false
	}
	for end := time.Now().Add(10 * time.Second); !waiting(); time.Sleep(2 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("the victim's read ended before it waited for the lock: %v", err)
		default:
		}
		if time.Now().After(end) {
			t.Fatal("the victim's read did not wait for row 3's lock within 10 s")
		}
	}
}

// checkRows fails t unless the rows of tbl (1..30) have the values want
// gives them, 0 for those it leaves out.
func checkRows(t *testing.T, raw *sql.DB, tbl string, want map[int]int) {
	t.Helper()
	rows, err := raw.Query("SELECT id, v FROM " + tbl + " ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var diffs []string
	n := 0
	for rows.Next() {
		var id, v int
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		n++
		if v != want[id] {
			diffs = append(diffs, fmt.Sprintf("row %d = %d, want %d", id, v, want[id]))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 30 || len(diffs) > 0 {
		t.Errorf("%d rows; %s", n, strings.Join(diffs, "; "))
	}
}

// nameOf is errName, or "nil".
func nameOf(err error) string {
	if err == nil {
		return "nil"
	}
	return errName(err)
}
