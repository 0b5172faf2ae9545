package sqlconflict

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server restarts during a write workload: the pool recovers, and no write
// runs twice. Restarting the shared servers breaks every other test that
// uses them at the same time, so these tests run only when
// SQLCONFLICT_RESTART_TESTS=1, which .ci/run sets in a step of its own after
// the main test command. See docs/reliability.md for the figures of a run.

const envRestart = "SQLCONFLICT_RESTART_TESTS"

// restartTimeout bounds a restart, the wait for the server to answer again,
// and the pool's recovery.
const restartTimeout = 90 * time.Second

// runCmd runs a command with a deadline and returns its combined output.
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// pgVersion is the one PostgreSQL cluster version under /etc/postgresql.
func pgVersion() (string, error) {
	ents, err := os.ReadDir("/etc/postgresql")
	if err != nil {
		return "", err
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("want one PostgreSQL version under /etc/postgresql, found %d", len(ents))
	}
	return ents[0].Name(), nil
}

// serverUp reports whether the local server of s answers.
func (s server) serverUp(ctx context.Context) bool {
	var err error
	if s.PG() {
		_, err = runCmd(ctx, "pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432")
	} else {
		_, err = runCmd(ctx, "mariadb-admin", "-h127.0.0.1", "-uroot", "ping")
	}
	return err == nil
}

// waitUp waits until the server answers, or ctx ends.
func (s server) waitUp(ctx context.Context) error {
	for {
		if s.serverUp(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not come back: %w", s.Name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startServer starts the local server if it is down, as .ci/run does.
func (s server) startServer(ctx context.Context) error {
	if s.serverUp(ctx) {
		return nil
	}
	if s.PG() {
		v, err := pgVersion()
		if err != nil {
			return err
		}
		if out, err := runCmd(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start"); err != nil {
			return fmt.Errorf("pg_ctlcluster start: %v: %s", err, out)
		}
	} else if out, err := runCmd(ctx, "start-stop-daemon", "--start", "--oknodo", "--background", "--pidfile", mariadbPidfile, "--exec", "/usr/sbin/mariadbd"); err != nil {
		return fmt.Errorf("start-stop-daemon: %v: %s", err, out)
	}
	return s.waitUp(ctx)
}

// restartServer restarts the local server: PostgreSQL with pg_ctlcluster's
// fast mode (active transactions are rolled back, clients get 57P01);
// MariaDB with a shutdown, which also rolls back, and a fresh mariadbd.
func (s server) restartServer(ctx context.Context) error {
	if s.PG() {
		v, err := pgVersion()
		if err != nil {
			return err
		}
		if out, err := runCmd(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "restart"); err != nil {
			return fmt.Errorf("pg_ctlcluster restart: %v: %s", err, out)
		}
		return s.waitUp(ctx)
	}
	if out, err := runCmd(ctx, "mariadb-admin", "-h127.0.0.1", "-uroot", "shutdown"); err != nil {
		return fmt.Errorf("mariadb-admin shutdown: %v: %s", err, out)
	}
	// The server stops answering before its process exits, and
	// start-stop-daemon --oknodo would take a dying mariadbd for a running
	// one: wait until the process is gone (--status exits 1 or 3 then). The
	// PID file tells the single server from the Galera nodes, which run the
	// same binary.
	for {
		out, err := runCmd(ctx, "start-stop-daemon", "--status", "--pidfile", mariadbPidfile, "--exec", "/usr/sbin/mariadbd")
		var exit *exec.ExitError
		if errors.As(err, &exit) && (exit.ExitCode() == 1 || exit.ExitCode() == 3) {
			break
		}
		if err != nil {
			return fmt.Errorf("start-stop-daemon --status: %v: %s", err, out)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mariadbd did not exit: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if out, err := runCmd(ctx, "start-stop-daemon", "--start", "--oknodo", "--background", "--pidfile", mariadbPidfile, "--exec", "/usr/sbin/mariadbd"); err != nil {
		return fmt.Errorf("start-stop-daemon: %v: %s", err, out)
	}
	return s.waitUp(ctx)
}

// mariadbPidfile is the single MariaDB server's PID file (Debian's
// /etc/mysql/my.cnf).
const mariadbPidfile = "/run/mysqld/mysqld.pid"

// restartRecord is one write of the workload.
type restartRecord struct {
	tok string
	out faultOutcome
	err error
	at  time.Time // when it returned
}

// TestIntegrationServerRestart restarts each server during a write workload
// of four goroutines (autocommit, autocommit with arguments, transactions,
// RunTx) and checks that the pool recovers, that the table holds every
// acknowledged write once and nothing twice, and that neither the wrapper nor
// RunTx retried a write after a lost connection.
func TestIntegrationServerRestart(t *testing.T) {
	if os.Getenv(envRestart) != "1" {
		t.Skipf("set %s=1 to restart the servers during a workload (.ci/run does, after the main tests)", envRestart)
	}
	eachServer(t, func(t *testing.T, s server) {
		s.viaProxy(t) // skips a server not on loopback: only local servers are restarted
		ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
		defer cancel()
		// Whatever happens, the server is up when the test ends.
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
			defer cancel()
			if err := s.startServer(ctx); err != nil {
				t.Errorf("bringing %s back up: %v", s.Name, err)
			}
		})

		// The checks read through the raw driver: after the restart lib/pq
		// answers driver.ErrBadConn for a pooled connection the restart
		// killed, which the wrapper, not knowing whether it sent the
		// statement, must report as lost rather than let database/sql
		// send again.
		direct := s.openRaw(t)
		cols := "id BIGSERIAL PRIMARY KEY, token VARCHAR(64) NOT NULL"
		if !s.PG() {
			cols = "id BIGINT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64) NOT NULL"
		}
		tbl := s.table(t, direct, "", cols)
		var obs lossCounter
		db := s.openObservedDSN(t, s.DSN, obs.observe)
		db.SetMaxOpenConns(4)
		db.SetMaxIdleConns(4)

		var (
			mu      sync.Mutex
			records []restartRecord
			reruns  int
		)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		const workers = 4
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if i >= 100000 {
						return
					}
					tok := fmt.Sprintf("rs%sw%di%06dx", runID, w, i)
					op := []faultOp{opAutoLiteral, opAutoArgs, opTx, opRunTx}[(w+i)%4]
					out, n, err := runFaultOp(s, db, tbl, op, tok, i%2 == 0)
					mu.Lock()
					records = append(records, restartRecord{tok: tok, out: out, err: err, at: time.Now()})
					reruns += n
					mu.Unlock()
					if err != nil {
						time.Sleep(50 * time.Millisecond) // the server is down: do not spin
					}
				}
			}()
		}

		time.Sleep(500 * time.Millisecond)
		restartAt := time.Now()
		rerr := s.restartServer(ctx)
		upAt := time.Now()
		if rerr != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("restart: %v", rerr)
		}
		// Keep the workload going until the pool has served writes for a
		// while after the restart.
		var recoveredAt time.Time
		for recoveredAt.IsZero() && ctx.Err() == nil {
			mu.Lock()
			for _, r := range records {
				if r.err == nil && r.at.After(upAt) {
					recoveredAt = r.at
					break
				}
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		if recoveredAt.IsZero() {
			t.Fatalf("no write succeeded within %v of the restart", restartTimeout)
		}

		found, total := tokenRows(t, ctx, direct, tbl)

		var acked, unknown, unknownApplied, notApplied, dups, failedAfter int
		errKinds := map[string]int{}
		for _, r := range records {
			n := found[r.tok]
			if n > 1 {
				dups += n - 1
				t.Errorf("duplicate: %s is there %d times (error %v)", r.tok, n, r.err)
			}
			switch r.out {
			case outAcked:
				acked++
				if n == 0 {
					t.Errorf("acknowledged write %s is missing", r.tok)
				}
			case outUnknown:
				unknown++
				if n == 1 {
					unknownApplied++
				}
			case outNotApplied:
				notApplied++
				if n != 0 {
					t.Errorf("write %s whose transaction failed before COMMIT is there", r.tok)
				}
			}
			// Writes that return a second after the first success on the
			// restarted server must all succeed: the pool has recovered.
			if r.err != nil {
				cl := Classify(r.err)
				errKinds[fmt.Sprintf("%s %v/%v", errName(r.err), cl.Kind, cl.Scope)]++
				// Retryable means nothing was done: only a server that
				// refused the connection or would not serve yet.
				if cl.Retryable && (cl.Kind != KindUnavailable || found[r.tok] != 0) {
					t.Errorf("restart error %v classified retryable (%v), and its write is there %d times", r.err, cl.Kind, found[r.tok])
				}
				if r.at.After(recoveredAt.Add(time.Second)) {
					failedAfter++
					t.Errorf("write failed %v after the pool recovered: %v", r.at.Sub(recoveredAt).Round(time.Millisecond), r.err)
				}
			}
			delete(found, r.tok)
		}
		for tok := range found {
			t.Errorf("unexpected token %s in the table", tok)
		}
		if n := obs.lostRetries.Load(); n != 0 {
			t.Errorf("the wrapper retried %d statements after a lost connection", n)
		}
		if reruns != 0 {
			t.Errorf("RunTx reran %d transactions after a lost connection", reruns)
		}
		var kinds []string
		for k, n := range errKinds {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
		}
		sort.Strings(kinds)
		t.Logf("restart report %s: restart took %v; first write acknowledged %v after the server answered again; writes=%d acked=%d unknown-outcome=%d (found applied %d) failed-before-commit=%d rows=%d duplicates=%d wrapper-retries=%d on-conn-loss=%d runtx-reruns=%d failed-after-recovery=%d errors={%s}",
			s.Name, upAt.Sub(restartAt).Round(time.Millisecond), recoveredAt.Sub(upAt).Round(time.Millisecond), len(records), acked, unknown, unknownApplied, notApplied, total, dups,
			obs.retries.Load(), obs.lostRetries.Load(), reruns, failedAfter, strings.Join(kinds, "; "))
	})
}
