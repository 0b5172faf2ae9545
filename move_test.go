package sqlconflict

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/sqlconflict/sqlconflict/internal/itest"
)

// TestIntegrationReplayLostConnection: with conflict_replay=on, a plain
// transaction whose connection is lost before its COMMIT (a proxy cuts
// every link; new connections pass) is replayed on a new connection and
// commits, exactly once, its statements prepared on the lost connection
// included, the query that met the loss read from the new one. Raw, the same transaction fails. Never replayed: a loss at
// COMMIT (its outcome is unknown), a session the application changed (a
// SET), a transaction whose replay does not verify (it read the clock).
func TestIntegrationReplayLostConnection(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		target, dsnVia := s.viaProxy(t)
		tbl := replayTable(t, s, raw)
		upd := s.q("UPDATE " + tbl + " SET v = v + 1 WHERE id = $1")
		clock := "SELECT CAST(clock_timestamp() AS TEXT)"
		if !s.PG() {
			clock = "SELECT CAST(NOW(6) AS CHAR)"
		}
		for _, tc := range []struct {
			name    string
			wrapped bool
			session string // run on the connection before the transaction
			read    string // the transaction's read
			atCommit,
			kill, // the server ends the session (pg_terminate_backend, KILL) instead of the proxy's cut
			want bool // the transaction commits
		}{
			{name: "raw", read: "SELECT v FROM " + tbl + " WHERE id = 2"},
			{name: "replayed", wrapped: true, read: "SELECT v FROM " + tbl + " WHERE id = 2", want: true},
			{name: "session killed, replayed", wrapped: true, read: "SELECT v FROM " + tbl + " WHERE id = 2", kill: true, want: true},
			{name: "lost at COMMIT", wrapped: true, read: "SELECT v FROM " + tbl + " WHERE id = 2", atCommit: true},
			{name: "session changed", wrapped: true, session: map[bool]string{true: "SET application_name = 'sqlconflict_test'", false: "SET @sqlconflict_test = 1"}[s.PG()],
				read: "SELECT v FROM " + tbl + " WHERE id = 2"},
			{name: "not verified", wrapped: true, read: clock},
		} {
			t.Run(tc.name, func(t *testing.T) {
				mustExec(t, raw, "UPDATE "+tbl+" SET v = 0")
				proxy := itest.NewProxy(t, target)
				via := s
				via.DSN = dsnVia(proxy.Addr())
				obs := &replayObs{}
				db := via.openRaw(t)
				if tc.wrapped {
					db = via.openReplay(t, obs)
				}
				db.SetMaxOpenConns(1)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				before := s.backendID(t, db)
				if tc.session != "" {
					mustExec(t, db, tc.session)
				}
				err := func() error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback()
					st, err := tx.PrepareContext(ctx, upd)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := st.ExecContext(ctx, 1); err != nil {
						t.Fatal(err)
					}
					var v string
					if err := tx.QueryRowContext(ctx, tc.read).Scan(&v); err != nil {
						t.Fatal(err)
					}
					if tc.kill {
						kill := "SELECT pg_terminate_backend($1)"
						if !s.PG() {
							kill = fmt.Sprintf("KILL %d", before)
						}
						if s.PG() {
							mustExec(t, raw, kill, before)
						} else {
							mustExec(t, raw, kill)
						}
						waitGone(t, s, raw, before)
					} else if tc.atCommit {
						proxy.StallOn("COMMIT") // held: the server never sees it
						go func() { time.Sleep(200 * time.Millisecond); proxy.CutAll() }()
					} else {
						proxy.CutAll()
					}
					// The first statement after the loss is a query: its
					// rows come from the new connection.
					var v2 int
					if err := tx.QueryRowContext(ctx, "SELECT v FROM "+tbl+" WHERE id = 2").Scan(&v2); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, upd, 3); err != nil {
						return err
					}
					if _, err := st.ExecContext(ctx, 4); err != nil { // prepared on the lost connection
						return err
					}
					return tx.Commit()
				}()
				proxy.Resume()
				if err != nil {
					t.Logf("%s: %v (%s); %s", tc.name, err, errName(err), obs)
				} else {
					t.Logf("%s: committed; %s", tc.name, obs)
				}
				var v1, v3, v4 int
				if err := raw.QueryRowContext(ctx, "SELECT (SELECT v FROM "+tbl+" WHERE id = 1), (SELECT v FROM "+tbl+" WHERE id = 3), (SELECT v FROM "+tbl+" WHERE id = 4)").Scan(&v1, &v3, &v4); err != nil {
					t.Fatal(err)
				}
				if tc.want {
					if err != nil {
						t.Errorf("%s: %v, want the transaction committed", tc.name, err)
					}
					if v1 != 1 || v3 != 1 || v4 != 1 {
						t.Errorf("%s: rows 1, 3, 4 = %d, %d, %d, want each updated once", tc.name, v1, v3, v4)
					}
					if obs.replayed.Load() != 1 {
						t.Errorf("%s: %s, want one replay", tc.name, obs)
					}
				} else {
					if err == nil {
						t.Errorf("%s: committed, want the connection's loss", tc.name)
					}
					if v1 != 0 || v3 != 0 || v4 != 0 {
						t.Errorf("%s: rows 1, 3, 4 = %d, %d, %d: part of the transaction committed", tc.name, v1, v3, v4)
					}
					if tc.wrapped && (obs.replayed.Load() != 0 || obs.failed.Load() != 1) {
						t.Errorf("%s: %s, want one replay refused or not verified", tc.name, obs)
					}
				}
				if after := s.backendID(t, db); after == before {
					t.Errorf("%s: the connection is the one that was cut", tc.name)
				}
			})
		}
	})
}

// waitGone waits until the server no longer lists session id.
func waitGone(t *testing.T, s server, raw *sql.DB, id int64) {
	t.Helper()
	q := "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1"
	if !s.PG() {
		q = "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?"
	}
	for deadline := time.Now().Add(5 * time.Second); count(t, raw, q, id) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("session %d still there 5 s after it was ended", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestIntegrationReplayLostConnectionSessionHistory: a transaction that
// reads the session's own history (MySQL's LAST_INSERT_ID(), PostgreSQL's
// lastval() of an insert made before it, in autocommit) is not replayed on
// a new connection, where that history is empty: its write would silently
// take another value. The loss reaches the application, and nothing of the
// transaction commits.
func TestIntegrationReplayLostConnectionSessionHistory(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		raw := s.openRaw(t)
		target, dsnVia := s.viaProxy(t)
		idCol, last := "id SERIAL PRIMARY KEY", "lastval()"
		if !s.PG() {
			idCol, last = "id INT AUTO_INCREMENT PRIMARY KEY", "LAST_INSERT_ID()"
		}
		parent := s.table(t, raw, "_p", idCol+", v INT")
		child := s.table(t, raw, "_c", "parent INT NOT NULL")
		proxy := itest.NewProxy(t, target)
		via := s
		via.DSN = dsnVia(proxy.Addr())
		obs := &replayObs{}
		db := via.openReplay(t, obs)
		db.SetMaxOpenConns(1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		mustExec(t, db, "INSERT INTO "+parent+" (v) VALUES (1)") // autocommit: the session's last id
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		mustExec(t, tx, "INSERT INTO "+child+" (parent) VALUES ("+last+")")
		proxy.CutAll()
		_, err = tx.ExecContext(ctx, "INSERT INTO "+child+" (parent) VALUES (0)")
		if err == nil {
			err = tx.Commit()
		}
		t.Logf("%v; %s", err, obs)
		if err == nil {
			t.Error("committed after the loss: replayed on a session without the insert's id")
		}
		if obs.replayed.Load() != 0 || obs.failed.Load() != 1 {
			t.Errorf("%s, want the replay refused", obs)
		}
		if n := count(t, raw, "SELECT COUNT(*) FROM "+child); n != 0 {
			t.Errorf("%d child rows committed", n)
		}
	})
}
