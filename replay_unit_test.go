package sqlconflict

import (
	"context"
	"database/sql"
	"testing"

	sqlmock "github.com/DATA-DOG/go-sqlmock"
)

// observedMockDB is mockDB with replayOptions(d), and the events its
// Observer saw.
func observedMockDB(t *testing.T, d Dialect) (*sql.DB, sqlmock.Sqlmock, *[]Observation) {
	var events []Observation
	o := replayOptions(d)
	o.Observer = func(_ context.Context, ob Observation) { events = append(events, ob) }
	db, mock := mockDB(t, o)
	return db, mock, &events
}

// replayOptions are fastOptions without savepoints, with replay on.
func replayOptions(d Dialect) Options {
	o := fastOptions(d)
	o.Savepoints = SavepointsOff
	o.Replay = ReplayOn
	return o
}

// TestReplaySequence: the exact statements of a replay after a deadlock at
// the second UPDATE: ROLLBACK, BEGIN, the first UPDATE and the SELECT again
// (the schema asked once, outside the aborted transaction), then the
// failing UPDATE, and the COMMIT on the replay's transaction.
func TestReplaySequence(t *testing.T) {
	for _, d := range []Dialect{DialectPostgres, DialectMySQL} {
		t.Run(d.String(), func(t *testing.T) {
			db, mock := mockDB(t, replayOptions(d))
			deadlock := map[Dialect]error{DialectPostgres: errPGDeadlock, DialectMySQL: errMyDeadlock}[d]
			ok := sqlmock.NewResult(0, 1)
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
			mock.ExpectQuery(exact("SELECT v FROM t WHERE id = 3")).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow(7))
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 2")).WillReturnError(deadlock)
			mock.ExpectRollback()
			expectSchema(mock, d)
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
			mock.ExpectQuery(exact("SELECT v FROM t WHERE id = 3")).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow(7))
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 2")).WillReturnResult(ok)
			mock.ExpectCommit()

			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			var v int
			if err := tx.QueryRow("SELECT v FROM t WHERE id = 3").Scan(&v); err != nil || v != 7 {
				t.Fatalf("select: %d, %v", v, err)
			}
			if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 2"); err != nil {
				t.Fatalf("the deadlocked UPDATE after the replay: %v", err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReplayDiffers: the replayed SELECT returns another value: the
// application gets its deadlock, the replayed transaction is rolled back
// on MySQL (and the guard dooms the rest) or made to fail on PostgreSQL,
// and the failing UPDATE is not sent again.
func TestReplayDiffers(t *testing.T) {
	for _, d := range []Dialect{DialectPostgres, DialectMySQL} {
		t.Run(d.String(), func(t *testing.T) {
			db, mock := mockDB(t, replayOptions(d))
			deadlock := map[Dialect]error{DialectPostgres: errPGDeadlock, DialectMySQL: errMyDeadlock}[d]
			mock.ExpectBegin()
			mock.ExpectQuery(exact("SELECT v FROM t WHERE id = 3")).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow(7))
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 2")).WillReturnError(deadlock)
			mock.ExpectRollback()
			expectSchema(mock, d)
			mock.ExpectBegin()
			mock.ExpectQuery(exact("SELECT v FROM t WHERE id = 3")).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow(8))
			if d == DialectPostgres {
				mock.ExpectExec(exact("DO $$BEGIN RAISE EXCEPTION 'sqlconflict: transaction replay not verified; the transaction stays aborted'; END$$")).
					WillReturnError(errPGSerial) // any error of the server's: the transaction is aborted
			} else {
				mock.ExpectRollback()
			}
			mock.ExpectRollback()

			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			var v int
			if err := tx.QueryRow("SELECT v FROM t WHERE id = 3").Scan(&v); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 2"); err != deadlock {
				t.Fatalf("got %v, want the deadlock itself", err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReplayAtClose: the conflict comes at rows.Close (go-sql-driver/mysql
// reads the rest of a result there). The replay runs the query again,
// checks the row the application had read, closes the rows, and Close
// returns nil; the transaction commits.
func TestReplayAtClose(t *testing.T) {
	db, mock := mockDB(t, replayOptions(DialectMySQL))
	ok := sqlmock.NewResult(0, 1)
	rows := func() *sqlmock.Rows { return sqlmock.NewRows([]string{"id", "v"}).AddRow(1, "a").AddRow(2, "b") }
	mock.ExpectBegin()
	mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 9")).WillReturnResult(ok)
	mock.ExpectQuery(exact("SELECT id, v FROM t FOR UPDATE")).WillReturnRows(rows().CloseError(errMyDeadlock))
	mock.ExpectRollback()
	expectSchema(mock, DialectMySQL)
	mock.ExpectBegin()
	mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 9")).WillReturnResult(ok)
	mock.ExpectQuery(exact("SELECT id, v FROM t FOR UPDATE")).WillReturnRows(rows())
	mock.ExpectCommit()

	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 9"); err != nil {
		t.Fatal(err)
	}
	rs, err := tx.Query("SELECT id, v FROM t FOR UPDATE")
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Next() {
		t.Fatal(rs.Err())
	}
	if err := rs.Close(); err != nil {
		t.Fatalf("Close after the replay: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestReplayConflictsAgain: the replay meets a deadlock of its own at its
// first re-sent UPDATE; it rolls that back and replays once more, which
// verifies: the application's deadlocked UPDATE and COMMIT succeed, and one
// EventReplay reports the second attempt.
func TestReplayConflictsAgain(t *testing.T) {
	for _, d := range []Dialect{DialectPostgres, DialectMySQL} {
		t.Run(d.String(), func(t *testing.T) {
			db, mock, ev := observedMockDB(t, d)
			deadlock := map[Dialect]error{DialectPostgres: errPGDeadlock, DialectMySQL: errMyDeadlock}[d]
			ok := sqlmock.NewResult(0, 1)
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 2")).WillReturnError(deadlock)
			mock.ExpectRollback()
			expectSchema(mock, d)
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnError(deadlock) // the replay's own
			mock.ExpectRollback()
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 2")).WillReturnResult(ok)
			mock.ExpectCommit()

			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 2"); err != nil {
				t.Fatalf("the deadlocked UPDATE after two replays: %v", err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if len(*ev) != 1 || (*ev)[0].Event != EventReplay || (*ev)[0].Attempt != 2 || (*ev)[0].Statements != 1 {
				t.Errorf("events %+v, want one EventReplay of attempt 2 with 1 statement", (*ev))
			}
		})
	}
}

// TestReplayUniqueViolationAgain: on PostgreSQL a blind INSERT's unique
// violation (a committed row; the replayed statements affect the same rows
// each time) is replayed uniqueAgain times, then the application gets its
// first error, not after the whole retry budget of replays. The same at
// COMMIT (a deferred constraint).
func TestReplayUniqueViolationAgain(t *testing.T) {
	t.Run("statement", func(t *testing.T) {
		db, mock, ev := observedMockDB(t, DialectPostgres)
		ok := sqlmock.NewResult(0, 1)
		mock.ExpectBegin()
		mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
		mock.ExpectExec(exact("INSERT INTO u VALUES (1)")).WillReturnError(errPGUnique)
		for i := range uniqueAgain {
			mock.ExpectRollback()
			if i == 0 {
				expectSchema(mock, DialectPostgres)
			}
			mock.ExpectBegin()
			mock.ExpectExec(exact("UPDATE t SET x = 1 WHERE id = 1")).WillReturnResult(ok)
			mock.ExpectExec(exact("INSERT INTO u VALUES (1)")).WillReturnError(errPGUnique)
		}
		mock.ExpectRollback()

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("UPDATE t SET x = 1 WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO u VALUES (1)"); err != errPGUnique {
			t.Fatalf("INSERT: %v, want the server's unique violation", err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if len(*ev) != uniqueAgain || (*ev)[0].Event != EventReplay {
			t.Errorf("%d events %+v, want %d replays", len(*ev), (*ev), uniqueAgain)
		}
	})
	t.Run("a write found no rows", func(t *testing.T) {
		// Airflow's delete-then-insert storm: each replay's DELETE waits
		// for the winner of the moment and then finds no row, the same 0
		// as the first time, and its INSERT meets the winner's row. That
		// is a race being run, not the data's answer: the replays go on
		// past uniqueAgain, within the retry budget, until one wins.
		db, mock, ev := observedMockDB(t, DialectPostgres)
		none := sqlmock.NewResult(0, 0)
		ok := sqlmock.NewResult(0, 1)
		del, ins := "DELETE FROM f WHERE k = 1", "INSERT INTO f VALUES (1)"
		mock.ExpectBegin()
		mock.ExpectExec(exact(del)).WillReturnResult(none)
		mock.ExpectExec(exact(ins)).WillReturnError(errPGUnique)
		lost := uniqueAgain + 3
		for i := range lost {
			mock.ExpectRollback()
			if i == 0 {
				expectSchema(mock, DialectPostgres)
			}
			mock.ExpectBegin()
			mock.ExpectExec(exact(del)).WillReturnResult(none)
			if i < lost-1 {
				mock.ExpectExec(exact(ins)).WillReturnError(errPGUnique)
			} else {
				mock.ExpectExec(exact(ins)).WillReturnResult(ok)
			}
		}
		mock.ExpectCommit()

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(del); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ins); err != nil {
			t.Fatalf("INSERT: %v, want the replay that won", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Error(err)
		}
		if len(*ev) != lost || (*ev)[lost-1].Event != EventReplay || (*ev)[lost-1].Attempt != lost {
			t.Errorf("%d events %+v, want %d replays", len(*ev), *ev, lost)
		}
	})
	t.Run("COMMIT", func(t *testing.T) {
		db, mock, ev := observedMockDB(t, DialectPostgres)
		ok := sqlmock.NewResult(0, 1)
		mock.ExpectBegin()
		mock.ExpectExec(exact("INSERT INTO u VALUES (1)")).WillReturnResult(ok)
		mock.ExpectCommit().WillReturnError(errPGUnique)
		expectSchema(mock, DialectPostgres)
		for range uniqueAgain {
			mock.ExpectBegin()
			mock.ExpectExec(exact("INSERT INTO u VALUES (1)")).WillReturnResult(ok)
			mock.ExpectCommit().WillReturnError(errPGUnique)
		}

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO u VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != errPGUnique {
			t.Fatalf("Commit: %v, want the server's unique violation", err)
		}
		if len(*ev) != uniqueAgain || (*ev)[0].Event != EventReplay {
			t.Errorf("%d events %+v, want %d replays", len(*ev), (*ev), uniqueAgain)
		}
	})
}
