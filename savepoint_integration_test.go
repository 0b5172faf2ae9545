package sqlconflict

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
)

// TestIntegrationSavepointGetOrCreate: with conflict_savepoints=writes an
// application catches the unique violation and re-reads in the same
// transaction, keeping its earlier work. Without it PostgreSQL has aborted
// the transaction, and the application gets the server's and lib/pq's own
// answers: 25P02 for the re-read, ErrInFailedTransaction from Commit.
func TestIntegrationSavepointGetOrCreate(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		for _, mode := range []string{"writes", "off"} {
			t.Run(mode, func(t *testing.T) {
				db := s.open(t, "conflict_savepoints="+mode)
				tbl := s.table(t, db, "", "k VARCHAR(32) PRIMARY KEY, v INT NOT NULL")
				audit := s.table(t, db, "_audit", "note VARCHAR(32)")
				mustExec(t, db, s.q("INSERT INTO "+tbl+" (k, v) VALUES ($1, 7)"), "taken")

				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				mustExec(t, tx, s.q("INSERT INTO "+audit+" (note) VALUES ($1)"), "before")
				_, err = tx.Exec(s.q("INSERT INTO "+tbl+" (k, v) VALUES ($1, 1)"), "taken")
				checkClass(t, s, err, KindUniqueViolation, ScopeStatement, "")
				var v int
				err = tx.QueryRow(s.q("SELECT v FROM "+tbl+" WHERE k = $1"), "taken").Scan(&v)
				commitErr := tx.Commit()
				if mode == "writes" || !s.PG() {
					if err != nil || v != 7 {
						t.Fatalf("re-read in the same transaction: v=%d err=%v", v, err)
					}
					if commitErr != nil {
						t.Fatalf("commit: %v", commitErr)
					}
					if n := count(t, db, "SELECT COUNT(*) FROM "+audit); n != 1 {
						t.Errorf("earlier work of the transaction: %d rows, want 1", n)
					}
					return
				}
				// PostgreSQL without savepoints: the transaction is lost, as
				// with the raw driver.
				if Classify(err).Code != "25P02" || !errors.Is(commitErr, pq.ErrInFailedTransaction) {
					t.Fatalf("re-read err %v, commit err %v; want 25P02 and pq.ErrInFailedTransaction", err, commitErr)
				}
			})
		}
	})
}

// TestIntegrationSavepointLockTimeoutRetry: a write that times out waiting for
// a lock is rolled back to its savepoint and retried inside the transaction;
// it succeeds once the holder commits. The same for a locking read, whose
// error PostgreSQL reports at the first Next.
func TestIntegrationSavepointLockTimeoutRetry(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		for _, stmt := range []string{"UPDATE %s SET v = v + 1 WHERE id = 1", "SELECT v FROM %s WHERE id = 1 FOR UPDATE"} {
			t.Run(stmt[:6], func(t *testing.T) {
				var rc retryCounter
				params := []string{"conflict_savepoints=writes", "conflict_retries=10", "conflict_backoff=50ms", "conflict_max_backoff=200ms"}
				if !s.PG() {
					params = append(params, "innodb_lock_wait_timeout=1")
				}
				db := s.openObserved(t, &rc, params...)
				tbl := s.table(t, db, "", "id INT PRIMARY KEY, v INT NOT NULL")
				mustExec(t, db, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
				holder, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				mustExec(t, holder, "UPDATE "+tbl+" SET v = v + 10 WHERE id = 1")

				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				if s.PG() {
					mustExec(t, tx, "SET LOCAL lock_timeout = '100ms'")
				}
				time.AfterFunc(1500*time.Millisecond, func() { holder.Commit() })
				q := fmt.Sprintf(stmt, tbl)
				if stmt[0] == 'U' {
					_, err = tx.Exec(q)
				} else {
					var v int
					err = tx.QueryRowContext(context.Background(), q).Scan(&v)
				}
				if err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if rc.retries.Load() == 0 {
					t.Error("no retry observed: the lock wait did not time out")
				}
				want := 10
				if stmt[0] == 'U' {
					want = 11
				}
				var v int
				if err := db.QueryRow("SELECT v FROM " + tbl + " WHERE id = 1").Scan(&v); err != nil || v != want {
					t.Errorf("v = %d (%v), want %d", v, err, want)
				}
				t.Logf("%s: %d retries behind the savepoint", s.Name, rc.retries.Load())
			})
		}
	})
}
