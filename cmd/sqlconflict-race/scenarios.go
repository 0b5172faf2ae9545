package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"

	"github.com/sqlconflict/sqlconflict"
)

// querier is what the application code uses: a *sql.Tx, or the *sql.DB in
// autocommit.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// opFunc is one operation of the application's code. Under sqlconflict,
// RunTx may run it more than once.
type opFunc func(ctx context.Context, q querier) error

// scenario is one race, run the same way through both drivers.
type scenario struct {
	name  string
	about string
	// autocommit: the operation runs on the *sql.DB, not in a transaction.
	autocommit bool
	txOptions  *sql.TxOptions
	fix        fix
	notes      map[string]string // by target kind: what happens there
	// race is the label of the failures (see failureLabel) the raw run
	// meets on PostgreSQL and MySQL, empty for the control, which races
	// nowhere.
	race  string
	start func(e *env) workload
}

// fix is how the code of the sqlconflict run uses the API: the right tool
// for the race. The driver's options are the defaults.
type fix struct {
	runner sqlconflict.TxRunner
	desc   string
}

// workload is one run of a scenario: its tables, its operations, and the
// check of the final state against the operations that succeeded.
type workload interface {
	setup(ctx context.Context) error
	// op returns operation i of worker, and done, to call once if it
	// succeeded, to record its effect.
	op(rng *rand.Rand, worker, i int) (fn opFunc, done func())
	// check compares the final state with the effects recorded: wrong
	// counts the lost updates, missing or extra rows, and wrong values.
	check(ctx context.Context) (wrong int, detail string, err error)
}

// env is what a workload needs.
type env struct {
	t      *target
	admin  *sql.DB // the raw driver, for setup and checks
	keys   int
	prefix string // of table names, unique per process

	mu     sync.Mutex
	tables []string
	blind  int // re-reads after a duplicate key that found no row, or failed with ErrBlindReread
}

// create makes a fresh table and remembers it for drop.
func (e *env) create(ctx context.Context, name, cols string) (string, error) {
	table := e.prefix + name
	if _, err := e.admin.ExecContext(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return "", err
	}
	if _, err := e.admin.ExecContext(ctx, "CREATE TABLE "+table+" ("+cols+")"); err != nil {
		return "", err
	}
	e.tables = append(e.tables, table)
	return table, nil
}

// drop removes the workload's tables.
func (e *env) drop(ctx context.Context) {
	for _, t := range e.tables {
		e.admin.ExecContext(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+t)
	}
	e.tables = nil
}

func (e *env) noteBlind() {
	e.mu.Lock()
	e.blind++
	e.mu.Unlock()
}

// insertID inserts name into table and returns the new row's id.
func (e *env) insertID(ctx context.Context, q querier, table, name string) (int64, error) {
	if e.t.kind == kindPostgres {
		var id int64
		err := q.QueryRowContext(ctx, "INSERT INTO "+table+" (name) VALUES ($1) RETURNING id", name).Scan(&id)
		return id, err
	}
	res, err := q.ExecContext(ctx, e.t.q("INSERT INTO "+table+" (name) VALUES ($1)"), name)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// busyNote is what SQLite does to a transaction that reads, then writes.
const busyNote = `A transaction that has read cannot wait for SQLite's single write lock, whatever busy_timeout says: ` +
	`its first write fails at once with SQLITE_BUSY ("database is locked") while another connection writes, ` +
	`or with SQLITE_BUSY_SNAPSHOT if another committed since its read.`

// scenarios, in the order they run. Under sqlconflict they use the
// defaults: DefaultOptions, a zero TxRunner but for RetryUniqueViolation
// where the code is a get-or-create written as select-then-insert.
var scenarios = []*scenario{
	{
		name:  "get-or-create",
		race:  "unique violation",
		about: "SELECT the row by name, INSERT it if missing, in a transaction; every step brings new hot names",
		fix:   fix{runner: sqlconflict.TxRunner{RetryUniqueViolation: true}, desc: "RunTx with RetryUniqueViolation"},
		notes: map[string]string{
			kindPostgres: "Both transactions find no row and both INSERT: the second waits for the first's lock, then gets 23505 unique_violation. RunTx reruns it, and the rerun finds the winner's row.",
			kindMySQL:    "Both transactions find no row and both INSERT: the second waits for the first's lock, then gets 1062 Duplicate entry. RunTx reruns it, and the rerun finds the winner's row.",
			kindSQLite:   busyNote + " So the duplicate itself never happens. RunTx reruns the transaction.",
		},
		start: func(e *env) workload { return &getOrCreate{env: e, ids: newIDLedger()} },
	},
	{
		name:       "upsert-same-key",
		about:      "INSERT ... ON CONFLICT DO UPDATE (MySQL: ON DUPLICATE KEY UPDATE) n = n + 1 on hot keys, in autocommit",
		autocommit: true,
		fix:        fix{desc: "no code change: the driver retries a statement that had no effect (conflict_retries)"},
		notes: map[string]string{
			kindPostgres: "The control: PostgreSQL's upsert is atomic, and neither run fails. The check is that sqlconflict adds no failure and loses no increment.",
			kindMySQL:    "The control: InnoDB serializes single-row upserts on the key, and neither run fails. The check is that sqlconflict adds no failure and loses no increment; where upserts do deadlock (1213, as multi-row ones in different key orders do), the deadlock undoes only that statement, and sqlconflict runs it again.",
			kindSQLite:   "The control: each upsert is a transaction of its own, which waits for the write lock under busy_timeout, and neither run fails. The check is that sqlconflict adds no failure and loses no increment.",
		},
		start: func(e *env) workload { return &upsert{env: e, want: newCounts()} },
	},
	{
		name:  "optimistic-counter",
		race:  "stale version",
		about: "SELECT value, version; UPDATE value = value + 1, version = version + 1 WHERE version is the one read; no row updated: another increment won",
		fix:   fix{desc: "the code returns sqlconflict.ErrRetryTx when no row matched; RunTx reruns it"},
		notes: map[string]string{
			kindPostgres: "The version check turns a would-be lost update into a failed operation: the raw run fails the increments that lost the race. RunTx reruns them on a fresh read.",
			kindMySQL:    "The version check turns a would-be lost update into a failed operation: the raw run fails the increments that lost the race. RunTx reruns them on a fresh read.",
			kindSQLite:   busyNote + " So the version check seldom fires: the losers fail with SQLITE_BUSY or SQLITE_BUSY_SNAPSHOT first, which RunTx reruns.",
		},
		start: func(e *env) workload { return &optimistic{env: e, want: newCounts()} },
	},
	{
		name:  "deadlock-pair",
		race:  "deadlock",
		about: "transfers between two accounts, UPDATE one row then the other; two workers per pair of accounts, in opposite directions",
		fix:   fix{desc: "RunTx: reruns the deadlock victim"},
		notes: map[string]string{
			kindPostgres: "Opposite transfers lock the same rows in opposite orders: PostgreSQL aborts one with 40P01 deadlock_detected, but only after deadlock_timeout (1s by default), hence the low throughput.",
			kindMySQL:    "Opposite transfers lock the same rows in opposite orders: InnoDB detects the cycle at once and rolls one transaction back with 1213 Deadlock found.",
			kindSQLite:   "SQLite has no row locks and cannot deadlock: a transfer's first UPDATE takes the single write lock, waiting for it under busy_timeout, and neither run fails.",
		},
		start: func(e *env) workload { return &transfers{env: e, want: newCounts()} },
	},
	{
		name:      "blind-reread",
		race:      "blind re-read",
		about:     "get-or-create by the book, at REPEATABLE READ: on a duplicate key (PostgreSQL: rolled back to a savepoint), re-read the row the other transaction inserted",
		txOptions: &sql.TxOptions{Isolation: sql.LevelRepeatableRead},
		fix:       fix{desc: "RunTx, with conflict_blind_reread=fix, the default; no code change"},
		notes: map[string]string{
			kindMySQL:    "InnoDB's REPEATABLE READ re-read uses the transaction's snapshot, older than the other transaction's row: the duplicate key says the row exists, the raw re-read returns nothing. sqlconflict runs that re-read again as a locking read (LOCK IN SHARE MODE), which sees the row: the code goes on, with no rerun.",
			kindPostgres: "At REPEATABLE READ the re-read's snapshot predates the other transaction's row: the duplicate key says the row exists, the raw re-read returns nothing. No read in the transaction can see the row: sqlconflict fails the re-read with ErrBlindReread, and RunTx reruns the transaction, which finds it.",
			kindSQLite:   busyNote + " So the duplicate, and the blind re-read after it, never happen: the raw run fails with SQLITE_BUSY or SQLITE_BUSY_SNAPSHOT instead, which RunTx reruns.",
		},
		start: func(e *env) workload { return &bookGetOrCreate{getOrCreate{env: e, ids: newIDLedger()}} },
	},
}

// findScenarios resolves a comma-separated list of names, or "all".
func findScenarios(list string) ([]*scenario, error) {
	if list == "" || list == "all" {
		return scenarios, nil
	}
	var out []*scenario
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		i := -1
		for j, s := range scenarios {
			if s.name == name {
				i = j
			}
		}
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", name, scenarioNames())
		}
		out = append(out, scenarios[i])
	}
	return out, nil
}

func scenarioNames() string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return strings.Join(names, ", ")
}

// idLedger records the id each successful get-or-create returned per name.
type idLedger struct {
	mu       sync.Mutex
	ids      map[string]int64
	mismatch int // callers given another id than an earlier caller for the same name
}

func newIDLedger() *idLedger { return &idLedger{ids: map[string]int64{}} }

func (l *idLedger) record(name string, id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.ids[name]; ok && old != id {
		l.mismatch++
		return
	}
	l.ids[name] = id
}

// check compares the table's name -> id rows with the ledger.
func (l *idLedger) check(ctx context.Context, db *sql.DB, table string) (int, string, error) {
	rows, err := db.QueryContext(ctx, "SELECT name, id FROM "+table)
	if err != nil {
		return 0, "", err
	}
	defer rows.Close()
	got := map[string]int64{}
	for rows.Next() {
		var name string
		var id int64
		if err := rows.Scan(&name, &id); err != nil {
			return 0, "", err
		}
		got[name] = id
	}
	if err := rows.Err(); err != nil {
		return 0, "", err
	}
	var missing, extra, wrongID int
	for name, id := range l.ids {
		switch gid, ok := got[name]; {
		case !ok:
			missing++
		case gid != id:
			wrongID++
		}
	}
	for name := range got {
		if _, ok := l.ids[name]; !ok {
			extra++
		}
	}
	return missing + extra + wrongID + l.mismatch, details(
		missing, "rows missing that a caller was given",
		extra, "rows no successful caller asked for",
		wrongID+l.mismatch, "callers given the wrong id"), nil
}

// details formats the non-zero counts of pairs (count, description).
func details(pairs ...any) string {
	var parts []string
	for i := 0; i+1 < len(pairs); i += 2 {
		if n := pairs[i].(int); n != 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, pairs[i+1]))
		}
	}
	return strings.Join(parts, ", ")
}

// counts is the expected value per key, from the successful operations.
type counts struct {
	mu sync.Mutex
	m  map[int64]int64
}

func newCounts() *counts { return &counts{m: map[int64]int64{}} }

func (c *counts) add(k, n int64) {
	c.mu.Lock()
	c.m[k] += n
	c.mu.Unlock()
}

// check compares query's (key, value) rows with base plus the counts, for
// every key in keys.
func (c *counts) check(ctx context.Context, db *sql.DB, query string, keys []int64, base int64, what string) (int, string, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return 0, "", err
	}
	defer rows.Close()
	got := map[int64]int64{}
	for rows.Next() {
		var k, v int64
		if err := rows.Scan(&k, &v); err != nil {
			return 0, "", err
		}
		got[k] = v
	}
	if err := rows.Err(); err != nil {
		return 0, "", err
	}
	wrong, keysOff := 0, 0
	for _, k := range keys {
		want := base + c.m[k]
		if d := got[k] - want; d != 0 {
			wrong += int(max(d, -d))
			keysOff++
		}
	}
	if wrong == 0 {
		return 0, "", nil
	}
	return wrong, fmt.Sprintf("%s off by %d in total on %d keys", what, wrong, keysOff), nil
}

// getOrCreate: SELECT, then INSERT if missing.
type getOrCreate struct {
	env   *env
	table string
	ids   *idLedger
}

func (w *getOrCreate) setup(ctx context.Context) (err error) {
	w.table, err = w.env.create(ctx, "items", w.env.t.idColumn()+", name "+w.env.t.text()+" NOT NULL UNIQUE")
	return err
}

// name picks operation i's name: every step has its own few new names,
// which the workers reach at about the same time.
func (w *getOrCreate) name(rng *rand.Rand, i int) string {
	return fmt.Sprintf("item-%d-%d", i, rng.IntN(w.env.keys))
}

func (w *getOrCreate) op(rng *rand.Rand, _, i int) (opFunc, func()) {
	name := w.name(rng, i)
	var id int64
	fn := func(ctx context.Context, q querier) error {
		err := q.QueryRowContext(ctx, w.env.t.q("SELECT id FROM "+w.table+" WHERE name = $1"), name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			id, err = w.env.insertID(ctx, q, w.table, name)
		}
		return err
	}
	return fn, func() { w.ids.record(name, id) }
}

func (w *getOrCreate) check(ctx context.Context) (int, string, error) {
	return w.ids.check(ctx, w.env.admin, w.table)
}

// blindRereadError: the INSERT said the row exists, the re-read found none.
type blindRereadError struct {
	name string
	dup  error
}

func (e *blindRereadError) Error() string {
	return fmt.Sprintf("%s: duplicate key, yet the re-read finds no row: %v", e.name, e.dup)
}

// Unwrap returns the duplicate-key error: the cause, to the caller and to
// RunTx's RetryUniqueViolation.
func (e *blindRereadError) Unwrap() error { return e.dup }

// bookGetOrCreate: getOrCreate that catches the duplicate and re-reads.
type bookGetOrCreate struct{ getOrCreate }

func (w *bookGetOrCreate) op(rng *rand.Rand, _, i int) (opFunc, func()) {
	name := w.name(rng, i)
	var id int64
	sel := w.env.t.q("SELECT id FROM " + w.table + " WHERE name = $1")
	// On PostgreSQL an error aborts the transaction: the book sets a
	// savepoint before the INSERT and rolls back to it on the duplicate.
	// MySQL and SQLite undo only the failed statement.
	pg := w.env.t.kind == kindPostgres
	fn := func(ctx context.Context, q querier) error {
		err := q.QueryRowContext(ctx, sel, name).Scan(&id)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if pg {
			if _, err := q.ExecContext(ctx, "SAVEPOINT get_or_create"); err != nil {
				return err
			}
		}
		id, err = w.env.insertID(ctx, q, w.table, name)
		if !sqlconflict.IsUniqueViolation(err) {
			return err
		}
		if pg {
			if _, rerr := q.ExecContext(ctx, "ROLLBACK TO SAVEPOINT get_or_create"); rerr != nil {
				return rerr
			}
		}
		// Someone else inserted it first: read theirs.
		switch rerr := q.QueryRowContext(ctx, sel, name).Scan(&id); {
		case errors.Is(rerr, sql.ErrNoRows):
			w.env.noteBlind()
			return &blindRereadError{name: name, dup: err}
		case errors.Is(rerr, sqlconflict.ErrBlindReread):
			w.env.noteBlind() // sqlconflict said so, for RunTx to rerun
			return rerr
		case rerr != nil:
			return rerr
		}
		return nil
	}
	return fn, func() { w.ids.record(name, id) }
}

// upsert: INSERT ... ON CONFLICT DO UPDATE n = n + 1.
type upsert struct {
	env   *env
	table string
	want  *counts
	stmt  string
}

func (w *upsert) setup(ctx context.Context) (err error) {
	t := w.env.t
	w.table, err = w.env.create(ctx, "upserts", t.idColumn()+", k BIGINT NOT NULL UNIQUE, n BIGINT NOT NULL")
	if t.kind == kindMySQL {
		w.stmt = "INSERT INTO " + w.table + " (k, n) VALUES (?, 1) ON DUPLICATE KEY UPDATE n = n + 1"
	} else {
		w.stmt = t.q("INSERT INTO " + w.table + " (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = " + w.table + ".n + 1")
	}
	return err
}

func (w *upsert) op(rng *rand.Rand, _, _ int) (opFunc, func()) {
	k := int64(rng.IntN(w.env.keys))
	fn := func(ctx context.Context, q querier) error {
		_, err := q.ExecContext(ctx, w.stmt, k)
		return err
	}
	return fn, func() { w.want.add(k, 1) }
}

func (w *upsert) check(ctx context.Context) (int, string, error) {
	return w.want.check(ctx, w.env.admin, "SELECT k, n FROM "+w.table, keyRange(w.env.keys), 0, "counts")
}

func keyRange(n int) []int64 {
	keys := make([]int64, n)
	for i := range keys {
		keys[i] = int64(i)
	}
	return keys
}

// seedRows inserts rows 0..n-1 of (id, cols...) with the same values.
func (e *env) seedRows(ctx context.Context, table, cols string, n int, vals ...any) error {
	ph := make([]string, len(vals)+1)
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	stmt := e.t.q("INSERT INTO " + table + " (id, " + cols + ") VALUES (" + strings.Join(ph, ", ") + ")")
	for id := range n {
		if _, err := e.admin.ExecContext(ctx, stmt, append([]any{id}, vals...)...); err != nil {
			return err
		}
	}
	return nil
}

// optimistic: version-checked increments.
type optimistic struct {
	env   *env
	table string
	want  *counts
}

func (w *optimistic) setup(ctx context.Context) (err error) {
	w.table, err = w.env.create(ctx, "counters", "id BIGINT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL")
	if err != nil {
		return err
	}
	return w.env.seedRows(ctx, w.table, "value, version", w.env.keys, 0, 0)
}

func (w *optimistic) op(rng *rand.Rand, _, _ int) (opFunc, func()) {
	id := int64(rng.IntN(w.env.keys))
	t := w.env.t
	sel := t.q("SELECT value, version FROM " + w.table + " WHERE id = $1")
	upd := t.q("UPDATE " + w.table + " SET value = $1, version = $2 WHERE id = $3 AND version = $4")
	fn := func(ctx context.Context, q querier) error {
		var value, version int64
		if err := q.QueryRowContext(ctx, sel, id).Scan(&value, &version); err != nil {
			return err
		}
		res, err := q.ExecContext(ctx, upd, value+1, version+1, id, version)
		if err != nil {
			return err
		}
		switch n, err := res.RowsAffected(); {
		case err != nil:
			return err
		case n == 0:
			return fmt.Errorf("counter %d: version %d is stale: %w", id, version, sqlconflict.ErrRetryTx)
		}
		return nil
	}
	return fn, func() { w.want.add(id, 1) }
}

func (w *optimistic) check(ctx context.Context) (int, string, error) {
	wrong, detail, err := w.want.check(ctx, w.env.admin, "SELECT id, value FROM "+w.table, keyRange(w.env.keys), 0, "counters (lost updates)")
	if err != nil || wrong > 0 {
		return wrong, detail, err
	}
	var skew int
	err = w.env.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+w.table+" WHERE value <> version").Scan(&skew)
	return skew, details(skew, "counters whose version differs from their value"), err
}

// transfers: two UPDATEs, in the opposite order to the other worker of the
// same pair of accounts.
type transfers struct {
	env      *env
	table    string
	want     *counts
	accounts int
}

const initialBalance = 1_000_000

func (w *transfers) setup(ctx context.Context) (err error) {
	w.accounts = 2 * w.env.keys // keys pairs
	w.table, err = w.env.create(ctx, "accounts", "id BIGINT PRIMARY KEY, balance BIGINT NOT NULL")
	if err != nil {
		return err
	}
	return w.env.seedRows(ctx, w.table, "balance", w.accounts, initialBalance)
}

// op moves 1 between the accounts of pair worker % keys: from the first to
// the second for the first worker on the pair, back for the second, and so
// on.
func (w *transfers) op(_ *rand.Rand, worker, _ int) (opFunc, func()) {
	pair := worker % w.env.keys
	from, to := int64(2*pair), int64(2*pair+1)
	if (worker/w.env.keys)%2 == 1 {
		from, to = to, from
	}
	upd := w.env.t.q("UPDATE " + w.table + " SET balance = balance + $1 WHERE id = $2")
	fn := func(ctx context.Context, q querier) error {
		if _, err := q.ExecContext(ctx, upd, -1, from); err != nil {
			return err
		}
		_, err := q.ExecContext(ctx, upd, 1, to)
		return err
	}
	return fn, func() { w.want.add(from, -1); w.want.add(to, 1) }
}

func (w *transfers) check(ctx context.Context) (int, string, error) {
	return w.want.check(ctx, w.env.admin, "SELECT id, balance FROM "+w.table, keyRange(w.accounts), initialBalance, "balances")
}

// sortedLabels returns the labels of m, most frequent first.
func sortedLabels(m map[string]int) []string {
	labels := make([]string, 0, len(m))
	for l := range m {
		labels = append(labels, l)
	}
	sort.Slice(labels, func(i, j int) bool {
		if m[labels[i]] != m[labels[j]] {
			return m[labels[i]] > m[labels[j]]
		}
		return labels[i] < labels[j]
	})
	return labels
}
