package itest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Private servers: PostgreSQL 15 and MariaDB instances of a test's own,
// under a temporary directory, for the faults the shared servers must not
// suffer: a frozen or killed server, a standby or replica promoted. Each is
// a child process of the test, stopped by PID when the test ends, failed or
// not.

// EnvPrivate gates the private servers. Unset or empty, the tests that
// start them skip; set to 1, a server that fails to start fails them.
const EnvPrivate = "SQLCONFLICT_PRIVATE_SERVERS"

const (
	pgBin       = "/usr/lib/postgresql/15/bin"
	mariadbd    = "/usr/sbin/mariadbd"
	toolTimeout = 2 * time.Minute // initdb, pg_basebackup, mariadb-install-db
	// readyTimeout bounds a start, crash recovery after Kill included.
	readyTimeout = time.Minute
	stopTimeout  = 10 * time.Second
)

// requirePrivate skips t unless EnvPrivate is 1.
func requirePrivate(t testing.TB) {
	t.Helper()
	switch v := os.Getenv(EnvPrivate); v {
	case "":
		t.Skipf("private-server test: set %s=1 (starts PostgreSQL 15 and MariaDB under %s)", EnvPrivate, os.TempDir())
	case "1":
	default:
		t.Fatalf("%s=%q: want 1 or unset", EnvPrivate, v)
	}
}

// requireFreePort fails t if something answers on 127.0.0.1:port: a
// server would fail to bind it, or worse, the test would talk to another.
func requireFreePort(t testing.TB, port int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("port %d on 127.0.0.1 is in use: a private server needs it free", port)
	}
}

// osUser returns the credential to run a server as the OS user name, and
// its uid and gid for chown. Not root, we cannot switch: the servers run as
// ourselves (nil credential).
func osUser(t testing.TB, name string) (cred *syscall.Credential, uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil, os.Geteuid(), os.Getegid()
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("OS user %s: %v", name, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, uid, gid
}

// instanceDir creates the instance's directory under os.TempDir(), not
// t.TempDir(), whose root-owned 0700 parents the server's user cannot
// cross; it is owned by that user and removed when t ends, after the
// server has stopped (cleanups run last-registered first).
func instanceDir(t testing.TB, kind string, port, uid, gid int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", fmt.Sprintf("sqlconflict-priv-%s%d-", kind, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// childEnv is a child's whole environment: nothing of ours (PG*, MYSQL_*)
// leaks in, and HOME is the instance's directory, not the user's.
func childEnv(dir string) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + dir}
}

// runTool runs a setup command (initdb, pg_basebackup, mariadb-install-db)
// as cred in dir, its output in logName there, failing t with the log's
// tail if it fails or outlasts toolTimeout.
func runTool(t testing.TB, cred *syscall.Credential, dir, logName string, argv ...string) {
	t.Helper()
	logPath := filepath.Join(dir, logName)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, childEnv(dir), f, f
	cmd.SysProcAttr = sysProcAttr(cred)
	// The whole group: mariadb-install-db is a script that runs mariadbd.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v after %v\n%s", strings.Join(argv, " "), err, time.Since(start).Round(time.Millisecond), logTail(logPath))
	}
}

// logTail returns the last lines of the log at path, for a failure message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > 8192 {
		b = b[len(b)-8192:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	return fmt.Sprintf("----- %s (tail)\n%s", path, strings.Join(lines, "\n"))
}

// proc is one server process we started, and how to start it again.
type proc struct {
	name    string // "postgres on 5460", for messages
	argv    []string
	cred    *syscall.Credential
	dir     string
	logPath string
	stopSig syscall.Signal // the server's fast, clean shutdown
	// ready reports whether the server accepts connections, within ctx.
	ready func(ctx context.Context) error

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed once cmd has exited
	frozen bool
}

// newProc returns a proc that t's cleanup will stop, thawed first, and
// SIGKILL if it is not gone within stopTimeout.
func newProc(t testing.TB, p *proc) *proc {
	t.Cleanup(func() { p.shutdown(t) })
	return p
}

// start launches the server and waits until it accepts connections,
// returning its PID. On failure it kills it and fails t with the log's tail.
func (p *proc) start(t testing.TB) int {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.runningLocked() {
		t.Fatalf("%s: already running (PID %d)", p.name, p.cmd.Process.Pid)
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	// An *os.File, not a pipe: Wait needs no copying goroutine, which the
	// server's children could keep waiting.
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = p.dir, childEnv(p.dir), f, f
	cmd.SysProcAttr = sysProcAttr(p.cred)
	err = cmd.Start()
	f.Close()
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.cmd, p.done, p.frozen = cmd, done, false

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		err := p.ready(ctx)
		if err == nil {
			return cmd.Process.Pid
		}
		select {
		case <-done:
			t.Fatalf("%s exited during its start (%v): %v\n%s", p.name, cmd.ProcessState, err, logTail(p.logPath))
		case <-ctx.Done():
			p.killLocked()
			t.Fatalf("%s: not accepting connections after %v: %v\n%s", p.name, readyTimeout, err, logTail(p.logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *proc) runningLocked() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) pidLocked(t testing.TB) int {
	t.Helper()
	if !p.runningLocked() {
		t.Fatalf("%s: not running", p.name)
	}
	return p.cmd.Process.Pid
}

// freeze stops the server and every descendant with SIGSTOP and waits
// until all are stopped: the postmaster's backends are processes of their
// own, and each one left running would still answer its connection.
func (p *proc) freeze(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	pid := p.pidLocked(t)
	if p.frozen {
		return
	}
	p.frozen = true
	// The server first, so that it forks no new child meanwhile; the loop
	// then stops whatever it forked before it stopped.
	syscall.Kill(pid, syscall.SIGSTOP)
	deadline := time.Now().Add(5 * time.Second)
	for {
		waiting := 0
		for _, c := range tree(pid) {
			switch st := procState(c); st {
			case 'T', 't', 'Z', 'X', 0:
			default:
				syscall.Kill(c, syscall.SIGSTOP)
				waiting++
			}
		}
		if waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d process(es) not stopped 5s after SIGSTOP", p.name, waiting)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// thaw resumes what freeze stopped.
func (p *proc) thaw(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.thawLocked()
}

func (p *proc) thawLocked() {
	if !p.frozen || !p.runningLocked() {
		p.frozen = false
		return
	}
	for _, c := range tree(p.cmd.Process.Pid) {
		syscall.Kill(c, syscall.SIGCONT)
	}
	p.frozen = false
}

// kill sends SIGKILL to the server, its group and its descendants, and
// waits until all are gone: a PostgreSQL backend left alive would keep the
// shared memory that Restart's postmaster refuses to share.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pidLocked(t)
	if err := p.killLocked(); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
}

func (p *proc) killLocked() error {
	pid := p.cmd.Process.Pid
	pids := tree(pid)
	syscall.Kill(-pid, syscall.SIGKILL)
	for _, c := range pids {
		syscall.Kill(c, syscall.SIGKILL)
	}
	p.frozen = false
	return p.waitLocked(pids)
}

// waitLocked waits up to stopTimeout for the server to exit and pids (its
// tree, taken before the signal) to be gone.
func (p *proc) waitLocked(pids []int) error {
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return fmt.Errorf("PID %d still running %v after the signal", p.cmd.Process.Pid, stopTimeout)
	}
	for _, c := range pids {
		for procState(c) != 0 && procState(c) != 'Z' {
			select {
			case <-timer.C:
				return fmt.Errorf("child PID %d still running %v after the signal", c, stopTimeout)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// stop shuts the server down cleanly with stopSig and waits; past
// stopTimeout it kills it and fails t.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	pid := p.pidLocked(t)
	p.thawLocked()
	pids := tree(pid)
	syscall.Kill(pid, p.stopSig)
	if err := p.waitLocked(pids); err != nil {
		kerr := p.killLocked()
		t.Fatalf("%s: clean shutdown: %v (then SIGKILL: %v)\n%s", p.name, err, kerr, logTail(p.logPath))
	}
}

// shutdown is the cleanup: stop if running, SIGKILL if that fails.
func (p *proc) shutdown(t testing.TB) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.runningLocked() {
		return
	}
	p.thawLocked()
	pids := tree(p.cmd.Process.Pid)
	syscall.Kill(p.cmd.Process.Pid, p.stopSig)
	if err := p.waitLocked(pids); err != nil {
		t.Logf("%s: clean shutdown: %v; sending SIGKILL", p.name, err)
		if err := p.killLocked(); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}

// tree returns pid and its descendants, found by the parent PIDs in
// /proc/*/stat.
func tree(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	kids := map[int][]int{}
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(c)
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		kids[ppid] = append(kids[ppid], c)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, kids[out[i]]...)
	}
	return out
}

// statFields returns the fields of /proc/pid/stat after the command name
// (state first, then the parent PID), or nil if there is no such process.
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the name may hold spaces and parens
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// procState returns pid's state letter (R, S, T, Z...), 0 if it is gone.
func procState(pid int) byte {
	f := statFields(pid)
	if len(f) == 0 || f[0] == "" {
		return 0
	}
	return f[0][0]
}

// withDB opens driver on dsn for one admin task, bounded by timeout.
func withDB(driver, dsn string, timeout time.Duration, f func(ctx context.Context, db *sql.DB) error) error {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f(ctx, db)
}

// poll calls f until it returns nil or timeout passes, returning f's last
// error then.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PGInstance is a private PostgreSQL 15 server: its data directory is
// Dir/data, its log Dir/postgres.log and its socket in Dir. It runs as the
// postgres OS user (when the test runs as root) with trust authentication,
// so the user postgres needs no password.
type PGInstance struct {
	Port int    // on 127.0.0.1
	Dir  string // removed when the test ends
	PID  int    // the postmaster's; Restart changes it

	proc *proc
}

// StartPG initializes a PostgreSQL server on 127.0.0.1:port, with conf
// appended to its postgresql.conf after ours (a later line wins), starts
// it, and creates the database test. It is a replication primary
// (wal_level replica, replication from 127.0.0.1 trusted), durable against
// a Kill but not a machine crash (fsync off). t's cleanup stops it and
// removes Dir.
func StartPG(t testing.TB, port int, conf ...string) *PGInstance {
	t.Helper()
	requirePrivate(t)
	requireFreePort(t, port)
	cred, uid, gid := osUser(t, "postgres")
	dir := instanceDir(t, "pg", port, uid, gid)
	data := filepath.Join(dir, "data")
	runTool(t, cred, dir, "initdb.log", filepath.Join(pgBin, "initdb"), "-D", data,
		"-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	appendFile(t, filepath.Join(data, "postgresql.conf"), strings.Join(append([]string{
		"# Appended by itest.StartPG.",
		"fsync = off",
		"full_page_writes = off",
		"wal_level = replica",
		"max_wal_senders = 10",
		"wal_keep_size = '128MB'",
		"hot_standby = on",
		"shared_buffers = '16MB'",
		"logging_collector = off",
		// Fast standby feedback on a link cut or a primary Kill.
		"wal_receiver_timeout = '10s'",
		"wal_retrieve_retry_interval = '500ms'",
	}, conf...), "\n"))
	appendFile(t, filepath.Join(data, "pg_hba.conf"), "host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust")
	p := newPG(t, port, dir, cred)
	err := withDB("postgres", p.adminDSN(), 30*time.Second, func(ctx context.Context, db *sql.DB) error {
		_, err := db.ExecContext(ctx, "CREATE DATABASE test")
		return err
	})
	if err != nil {
		t.Fatalf("%s: create database test: %v", p.proc.name, err)
	}
	return p
}

// newPG writes the settings that differ between a primary and its standby
// (the standby's postgresql.conf is the primary's copy, hence appended
// last) and starts the server.
func newPG(t testing.TB, port int, dir string, cred *syscall.Credential) *PGInstance {
	t.Helper()
	data := filepath.Join(dir, "data")
	appendFile(t, filepath.Join(data, "postgresql.conf"), fmt.Sprintf(
		"# This instance's own (itest).\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'", port, dir))
	p := &PGInstance{Port: port, Dir: dir}
	p.proc = newProc(t, &proc{
		name:    fmt.Sprintf("postgres on %d", port),
		argv:    []string{filepath.Join(pgBin, "postgres"), "-D", data},
		cred:    cred,
		dir:     dir,
		logPath: filepath.Join(dir, "postgres.log"),
		stopSig: syscall.SIGINT, // fast shutdown
		ready: func(ctx context.Context) error {
			return withDB("postgres", p.adminDSN()+"&connect_timeout=2", 3*time.Second, func(ctx context.Context, db *sql.DB) error {
				return db.PingContext(ctx)
			})
		},
	})
	p.PID = p.proc.start(t)
	return p
}

// appendFile appends text and a newline to the file at path.
func appendFile(t testing.TB, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "\n%s\n", text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// DSN is the lib/pq (and pgx) DSN of the database test as postgres.
func (p *PGInstance) DSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", p.Port)
}

// adminDSN is the database postgres, which exists before test does.
func (p *PGInstance) adminDSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
}

// StartStandby starts a streaming hot standby of p on 127.0.0.1:port, from
// a pg_basebackup -R of p, with conf appended to its postgresql.conf, and
// waits until it is in recovery and streaming. t's cleanup stops it first,
// the primary after (it was started later).
func (p *PGInstance) StartStandby(t testing.TB, port int, conf ...string) *PGInstance {
	t.Helper()
	requirePrivate(t)
	requireFreePort(t, port)
	cred, uid, gid := osUser(t, "postgres")
	dir := instanceDir(t, "pg", port, uid, gid)
	data := filepath.Join(dir, "data")
	runTool(t, cred, dir, "basebackup.log", filepath.Join(pgBin, "pg_basebackup"),
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "postgres", "-D", data,
		"-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
	if len(conf) > 0 {
		appendFile(t, filepath.Join(data, "postgresql.conf"), strings.Join(conf, "\n"))
	}
	s := newPG(t, port, dir, cred)
	err := poll(readyTimeout, func() error {
		return withDB("postgres", s.adminDSN(), 3*time.Second, func(ctx context.Context, db *sql.DB) error {
			var rec bool
			var status string
			err := db.QueryRowContext(ctx, "SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), '')").Scan(&rec, &status)
			if err == nil && (!rec || status != "streaming") {
				err = fmt.Errorf("in recovery %v, WAL receiver %q", rec, status)
			}
			return err
		})
	})
	if err != nil {
		t.Fatalf("%s: not a streaming standby: %v\n%s", s.proc.name, err, logTail(s.proc.logPath))
	}
	return s
}

// Promote makes a standby a primary (pg_promote, after it has replayed the
// WAL it received) and waits until it is out of recovery.
func (p *PGInstance) Promote(t testing.TB) {
	t.Helper()
	err := withDB("postgres", p.adminDSN(), readyTimeout, func(ctx context.Context, db *sql.DB) error {
		var ok bool
		if err := db.QueryRowContext(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return errors.New("pg_promote returned false")
		}
		return poll(readyTimeout, func() error {
			var rec bool
			if err := db.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
				return err
			}
			return errors.New("still in recovery")
		})
	})
	if err != nil {
		t.Fatalf("%s: promote: %v\n%s", p.proc.name, err, logTail(p.proc.logPath))
	}
}

// Freeze stops the postmaster and all its children (backends, WAL sender,
// background workers) with SIGSTOP: connections stay open and the kernel
// still accepts new ones, but nothing answers, as from a hung machine.
// lib/pq then blocks past its context's deadline, until the thaw: a query
// on an open connection (its cancel request gets no answer either) and a
// connect without connect_timeout. The cleanup thaws it.
func (p *PGInstance) Freeze(t testing.TB) { t.Helper(); p.proc.freeze(t) }

// Thaw resumes a frozen server (SIGCONT to every process Freeze stopped).
func (p *PGInstance) Thaw(t testing.TB) { t.Helper(); p.proc.thaw(t) }

// Kill kills the postmaster and its children with SIGKILL, a crash, and
// waits until they are gone.
func (p *PGInstance) Kill(t testing.TB) { t.Helper(); p.proc.kill(t) }

// Stop shuts the server down (SIGINT: fast shutdown, which rolls back open
// transactions and closes connections) and waits.
func (p *PGInstance) Stop(t testing.TB) { t.Helper(); p.proc.stop(t) }

// Restart starts the server again on the same directory and port, after
// Kill or Stop, and waits until it accepts connections (after crash
// recovery, for Kill). A standby comes back as a standby.
func (p *PGInstance) Restart(t testing.TB) {
	t.Helper()
	requireFreePort(t, p.Port)
	p.PID = p.proc.start(t)
}

// MariaDBInstance is a private MariaDB server: its datadir is Dir/data,
// its config Dir/my.cnf (the only one it reads), its log Dir/mariadbd.log
// and its socket in Dir. root has an empty password from 127.0.0.1, and
// all privileges but on a replica (see StartReplica).
type MariaDBInstance struct {
	Port int    // on 127.0.0.1
	Dir  string // removed when the test ends
	PID  int    // mariadbd's; Restart changes it

	proc *proc
}

// StartMariaDB initializes a MariaDB server on 127.0.0.1:port, with conf
// appended to the [mysqld] section of its my.cnf after ours (a later line
// wins), starts it and creates the database test. It is a replication
// primary: server_id is the port, binlog and GTIDs on. t's cleanup stops
// it and removes Dir.
func StartMariaDB(t testing.TB, port int, conf ...string) *MariaDBInstance {
	t.Helper()
	m := startMariaDB(t, port, conf)
	err := withDB("mysql", m.adminDSN(), 30*time.Second, func(ctx context.Context, db *sql.DB) error {
		_, err := db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS test")
		return err
	})
	if err != nil {
		t.Fatalf("%s: create database test: %v", m.proc.name, err)
	}
	return m
}

func startMariaDB(t testing.TB, port int, conf []string) *MariaDBInstance {
	t.Helper()
	requirePrivate(t)
	requireFreePort(t, port)
	// As the mysql user from the start rather than root with --user=mysql:
	// mariadbd's own setuid would clear the parent-death signal.
	cred, uid, gid := osUser(t, "mysql")
	dir := instanceDir(t, "mariadb", port, uid, gid)
	for _, sub := range []string{"data", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(filepath.Join(dir, sub), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	cnf := filepath.Join(dir, "my.cnf")
	lines := append([]string{
		"# Written by itest.StartMariaDB; read with --defaults-file only.",
		"[mysqld]",
		"datadir=" + filepath.Join(dir, "data"),
		"socket=" + filepath.Join(dir, "mariadbd.sock"),
		"pid-file=" + filepath.Join(dir, "mariadbd.pid"),
		"tmpdir=" + filepath.Join(dir, "tmp"),
		"bind-address=127.0.0.1",
		fmt.Sprintf("port=%d", port),
		"skip-name-resolve",
		// Small.
		"innodb_buffer_pool_size=32M",
		"innodb_log_file_size=16M",
		"innodb_log_buffer_size=4M",
		"innodb_flush_log_at_trx_commit=2",
		"key_buffer_size=4M",
		"aria_pagecache_buffer_size=4M",
		"query_cache_size=0",
		"query_cache_type=0",
		"performance_schema=OFF",
		"max_connections=200",
		// Replication, either way.
		fmt.Sprintf("server_id=%d", port),
		"log_bin=mariadb-bin",
		"log_slave_updates=ON",
		"binlog_format=ROW",
		"relay_log=relay-bin",
	}, conf...)
	if err := os.WriteFile(cnf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// No binlog of the system tables: a replica replays the primary's
	// binlog from its start and has them already.
	runTool(t, cred, dir, "install.log", "mariadb-install-db", "--defaults-file="+cnf,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-log-bin")
	m := &MariaDBInstance{Port: port, Dir: dir}
	m.proc = newProc(t, &proc{
		name:    fmt.Sprintf("mariadbd on %d", port),
		argv:    []string{mariadbd, "--defaults-file=" + cnf},
		cred:    cred,
		dir:     dir,
		logPath: filepath.Join(dir, "mariadbd.log"), // its stderr: no log-error
		stopSig: syscall.SIGTERM,
		ready: func(ctx context.Context) error {
			return withDB("mysql", m.rootDSN()+"?timeout=2s&readTimeout=3s&writeTimeout=3s", 3*time.Second, func(ctx context.Context, db *sql.DB) error {
				return db.PingContext(ctx)
			})
		},
	})
	m.PID = m.proc.start(t)
	err := withDB("mysql", m.rootDSN(), 30*time.Second, func(ctx context.Context, db *sql.DB) error {
		return execSession(ctx, db,
			"CREATE USER IF NOT EXISTS "+mariaAdmin+"@'127.0.0.1'",
			"GRANT ALL PRIVILEGES ON *.* TO "+mariaAdmin+"@'127.0.0.1' WITH GRANT OPTION")
	})
	if err != nil {
		t.Fatalf("%s: create %s: %v", m.proc.name, mariaAdmin, err)
	}
	return m
}

// mariaAdmin is the fixtures' own account on every MariaDB instance, made
// by the instance and not binlogged: unlike root on a replica, it keeps
// READ_ONLY ADMIN, which Promote needs to set read_only.
const mariaAdmin = "itest_admin"

// execSession runs qs on one connection of db with the binlog off, so
// that they stay local to the server.
func execSession(ctx context.Context, db *sql.DB, qs ...string) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, q := range append([]string{"SET SESSION sql_log_bin = 0"}, qs...) {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// DSN is the go-sql-driver/mysql DSN of the database test as root.
func (m *MariaDBInstance) DSN() string {
	return fmt.Sprintf("root@tcp(127.0.0.1:%d)/test", m.Port)
}

func (m *MariaDBInstance) rootDSN() string {
	return fmt.Sprintf("root@tcp(127.0.0.1:%d)/", m.Port)
}

func (m *MariaDBInstance) adminDSN() string {
	return fmt.Sprintf("%s@tcp(127.0.0.1:%d)/", mariaAdmin, m.Port)
}

// StartReplica starts a read_only GTID replica of m on 127.0.0.1:port, with
// conf appended to its my.cnf, and waits until both replication threads
// run and it has caught up with m. root loses READ_ONLY ADMIN there (not
// binlogged), so that read_only refuses its writes (error 1290) as it would
// an application user's.
func (m *MariaDBInstance) StartReplica(t testing.TB, port int, conf ...string) *MariaDBInstance {
	t.Helper()
	r := startMariaDB(t, port, append([]string{"read_only=ON"}, conf...))
	var primaryPos string
	err := withDB("mysql", m.adminDSN(), 10*time.Second, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&primaryPos)
	})
	if err != nil {
		t.Fatalf("%s: gtid_binlog_pos: %v", m.proc.name, err)
	}
	err = withDB("mysql", r.adminDSN(), readyTimeout, func(ctx context.Context, db *sql.DB) error {
		err := execSession(ctx, db,
			"REVOKE READ_ONLY ADMIN ON *.* FROM "+mariaRoots,
			fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1", m.Port),
			"START SLAVE")
		if err != nil {
			return err
		}
		err = poll(readyTimeout, func() error {
			st, err := slaveStatus(ctx, db)
			if err == nil && (st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes") {
				err = fmt.Errorf("Slave_IO_Running %s, Slave_SQL_Running %s: %s %s", st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"])
			}
			return err
		})
		if err != nil {
			return err
		}
		var res sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, 30)", primaryPos).Scan(&res); err != nil {
			return err
		}
		if res.Int64 != 0 {
			return fmt.Errorf("not caught up with %s within 30s", primaryPos)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: replicate from %d: %v\n%s", r.proc.name, m.Port, err, logTail(r.proc.logPath))
	}
	return r
}

// mariaRoots are the root accounts mariadb-install-db makes that a TCP
// client can be (skip-name-resolve: no host name).
const mariaRoots = "'root'@'127.0.0.1', 'root'@'localhost'"

// slaveStatus returns SHOW SLAVE STATUS as column → value, empty if the
// server replicates from nobody.
func slaveStatus(ctx context.Context, db *sql.DB) (map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, c := range cols {
			out[c] = vals[i].String
		}
	}
	return out, rows.Err()
}

// Promote makes a replica a primary: it stops fetching, applies what it
// has fetched, forgets its primary (STOP SLAVE; RESET SLAVE ALL) and
// accepts writes (read_only OFF), root's READ_ONLY ADMIN given back.
func (m *MariaDBInstance) Promote(t testing.TB) {
	t.Helper()
	err := withDB("mysql", m.adminDSN(), readyTimeout, func(ctx context.Context, db *sql.DB) error {
		if _, err := db.ExecContext(ctx, "STOP SLAVE IO_THREAD"); err != nil {
			return err
		}
		// As pg_promote: what was received is applied before the switch.
		err := poll(30*time.Second, func() error {
			st, err := slaveStatus(ctx, db)
			if err == nil && st["Slave_SQL_Running"] == "Yes" &&
				(st["Relay_Master_Log_File"] != st["Master_Log_File"] || st["Exec_Master_Log_Pos"] != st["Read_Master_Log_Pos"]) {
				err = fmt.Errorf("applied up to %s:%s, fetched %s:%s", st["Relay_Master_Log_File"], st["Exec_Master_Log_Pos"], st["Master_Log_File"], st["Read_Master_Log_Pos"])
			}
			return err
		})
		if err != nil {
			return err
		}
		return execSession(ctx, db, "STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF",
			"GRANT READ_ONLY ADMIN ON *.* TO "+mariaRoots)
	})
	if err != nil {
		t.Fatalf("%s: promote: %v", m.proc.name, err)
	}
}

// Freeze stops mariadbd (every thread) with SIGSTOP: connections stay open
// and the kernel still accepts new ones, but nothing answers.
// go-sql-driver/mysql still returns at its context's deadline (it closes
// the connection). The cleanup thaws it.
func (m *MariaDBInstance) Freeze(t testing.TB) { t.Helper(); m.proc.freeze(t) }

// Thaw resumes a frozen server.
func (m *MariaDBInstance) Thaw(t testing.TB) { t.Helper(); m.proc.thaw(t) }

// Kill kills mariadbd with SIGKILL, a crash, and waits until it is gone.
func (m *MariaDBInstance) Kill(t testing.TB) { t.Helper(); m.proc.kill(t) }

// Stop shuts mariadbd down cleanly (SIGTERM) and waits.
func (m *MariaDBInstance) Stop(t testing.TB) { t.Helper(); m.proc.stop(t) }

// Restart starts mariadbd again on the same directory and port, after Kill
// or Stop, and waits until it accepts connections (after InnoDB recovery,
// for Kill). A replica resumes replicating.
func (m *MariaDBInstance) Restart(t testing.TB) {
	t.Helper()
	requireFreePort(t, m.Port)
	m.PID = m.proc.start(t)
}
