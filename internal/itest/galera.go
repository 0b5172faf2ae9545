package itest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvGalera names the nodes of a MariaDB Galera cluster: a comma-separated
// list of go-sql-driver/mysql DSNs, node 1 first, as `.ci/galera env` prints
// them (root@tcp(127.0.0.1:3311)/test,...). .ci/run starts that cluster and
// sets it. Unset, the Galera tests skip; set, a node that does not answer
// fails them.
const EnvGalera = "SQLCONFLICT_GALERA_DSNS"

// GaleraNodes returns the DSNs of the Galera nodes, node 1 first, skipping
// the test if EnvGalera is unset.
func GaleraNodes(t testing.TB) []string {
	t.Helper()
	v := strings.TrimSpace(os.Getenv(EnvGalera))
	if v == "" {
		t.Skipf("Galera test: set %s (see .ci/galera and .ci/run)", EnvGalera)
	}
	var out []string
	for _, dsn := range strings.Split(v, ",") {
		if dsn = strings.TrimSpace(dsn); dsn != "" {
			out = append(out, dsn)
		}
	}
	if len(out) < 2 {
		t.Fatalf("%s names %d node(s), want the cluster's nodes (3)", EnvGalera, len(out))
	}
	return out
}

// GaleraServer is node n (0-based) as a Server, for the helpers that take
// one (DSNWith, Open, Ping). Env is EnvGalera, so PG reports false.
func GaleraServer(t testing.TB, n int, driver, raw string) Server {
	t.Helper()
	nodes := GaleraNodes(t)
	if n < 0 || n >= len(nodes) {
		t.Fatalf("no Galera node %d: %s names %d", n+1, EnvGalera, len(nodes))
	}
	return Server{Name: fmt.Sprintf("galera node %d", n+1), Driver: driver, Raw: raw, DSN: nodes[n], Env: EnvGalera}
}

// OpenGalera opens the driver named driver (wrapped or raw) on every node,
// with params appended to each DSN, one *sql.DB per node, node 1 first. It
// closes them when t ends and fails t, never skips, if a node does not
// answer within 10 seconds.
func OpenGalera(t testing.TB, driver string, params ...string) []*sql.DB {
	t.Helper()
	nodes := GaleraNodes(t)
	dbs := make([]*sql.DB, len(nodes))
	for i, dsn := range nodes {
		s := Server{Name: fmt.Sprintf("galera node %d", i+1), DSN: dsn, Env: EnvGalera}
		dbs[i] = s.Open(t, driver, params...)
	}
	return dbs
}

// galeraScriptTimeout bounds one .ci/galera command: a restart waits up to
// GALERA_TIMEOUT (90s by default) for the node to be Synced.
const galeraScriptTimeout = 150 * time.Second

// GaleraScript runs .ci/galera with args (found by walking up from the
// test's working directory to the repository root) and returns its output,
// failing t if it fails.
func GaleraScript(t testing.TB, args ...string) string {
	t.Helper()
	script, err := galeraScriptPath()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), galeraScriptTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf(".ci/galera %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// GaleraKill kills node n (1-based, the order of EnvGalera) with SIGKILL.
func GaleraKill(t testing.TB, n int) string {
	t.Helper()
	return GaleraScript(t, "kill", fmt.Sprint(n))
}

// GaleraRestart starts node n (1-based) again and waits until it is Synced
// and the cluster has three nodes again.
func GaleraRestart(t testing.TB, n int) string {
	t.Helper()
	return GaleraScript(t, "restart", fmt.Sprint(n))
}

// galeraScriptPath finds .ci/galera in the working directory or a parent:
// the repository root of the package under test.
func galeraScriptPath() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, ".ci", "galera")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf(".ci/galera not found above the working directory")
		}
		dir = parent
	}
}
