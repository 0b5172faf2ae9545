package sqlconflict

import (
	"strings"
	"testing"
)

func TestParseStmt(t *testing.T) {
	for _, tc := range []struct {
		q    string
		kind stmtKind
	}{
		{"SELECT 1", stmtSelect},
		{"  /* c */ select * from t for update", stmtSelect},
		{"-- x\nINSERT INTO t VALUES (1)", stmtWrite},
		{"(SELECT 1)", stmtSelect},
		{"update t set x=1", stmtWrite},
		{"Delete from t", stmtWrite},
		{"REPLACE INTO t VALUES (1)", stmtWrite},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING", stmtWrite},
		{"UPSERT INTO t VALUES (1)", stmtWrite},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", stmtWith},
		{"SAVEPOINT a", stmtSavepoint},
		{"RELEASE SAVEPOINT a", stmtSavepoint},
		{"ROLLBACK TO SAVEPOINT a", stmtRollbackTo},
		{"rollback work to a", stmtRollbackTo},
		{"ROLLBACK", stmtRollback},
		{"ROLLBACK AND CHAIN", stmtRollback},
		{"ABORT", stmtRollback},
		{"COMMIT", stmtCommit},
		{"commit work and no chain", stmtCommit},
		{"END", stmtCommit},
		{"BEGIN", stmtBegin},
		{"START TRANSACTION WITH CONSISTENT SNAPSHOT", stmtBegin},
		{"START SLAVE", stmtOther},
		{"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", stmtSet},
		{"XA START 'x'", stmtXA},
		{"xa end 'x'", stmtXA},
		{"PREPARE TRANSACTION 'gid'", stmtPrepareTx},
		{"PREPARE s AS SELECT 1", stmtOther},
		{"COMMIT PREPARED 'gid'", stmtOther},
		{"ROLLBACK PREPARED 'gid'", stmtOther},
		{"BEGIN WORK", stmtBegin},
		{"BEGIN NOT ATOMIC SELECT 1; END", stmtOther},
		{"CALL p()", stmtOther},
		{"DO $$ BEGIN END $$", stmtOther},
		{"EXECUTE s", stmtOther},
		{"CREATE TABLE t (x int)", stmtOther},
		{"", stmtOther},
		{"/* unterminated", stmtOther},
	} {
		if k := parseStmt(tc.q); k != tc.kind {
			t.Errorf("parseStmt(%q) = %v, want %v", tc.q, k, tc.kind)
		}
	}
}

func TestChain(t *testing.T) {
	for _, tc := range []struct {
		q            string
		chains, said bool
	}{
		{"COMMIT", false, false},
		{"COMMIT AND CHAIN", true, true},
		{"commit work and chain", true, true},
		{"ROLLBACK AND NO CHAIN", false, true},
		{"COMMIT AND NO CHAIN NO RELEASE", false, true},
		{"ROLLBACK TRANSACTION AND CHAIN", true, true},
		{"END", false, false},
		{"COMMIT /* AND CHAIN */", false, false},
	} {
		chains, said := chain(tc.q)
		if chains != tc.chains || said != tc.said {
			t.Errorf("chain(%q) = %v, %v; want %v, %v", tc.q, chains, said, tc.chains, tc.said)
		}
	}
}

// TestLexStmt is the lexer's table, row by row: whether a text is one
// statement the wrapper may run again, and what it says about locks.
func TestLexStmt(t *testing.T) {
	const (
		pg = DialectPostgres
		my = DialectMySQL
		sl = DialectSQLite
	)
	for _, tc := range []struct {
		d       Dialect
		q       string
		single  bool
		locking bool
		writes  bool
	}{
		// One statement, in its many spellings.
		{pg, "SELECT 1", true, false, false},
		{pg, "SELECT 1;", true, false, false},
		{pg, "SELECT 1 ; ;  -- done\n", true, false, false},
		{pg, "INSERT INTO t VALUES ('a;b')", true, false, true},
		{pg, "INSERT INTO t VALUES ('it''s; fine')", true, false, true},
		{pg, `SELECT "a;b" FROM t`, true, false, false},
		{pg, `SELECT "a""; DROP" FROM t`, true, false, false},
		{pg, "SELECT $$;$$", true, false, false},
		{pg, "SELECT $tag$ a $$ ; $ $tag$", true, false, false},
		{pg, "SELECT $1, $2 FROM t WHERE a = $3", true, false, false},
		{pg, "SELECT a$b FROM t", true, false, false},
		{pg, "SELECT E'a\\'; b'", true, false, false},
		{pg, "SELECT 1 /* a /* nested ; */ still */", true, false, false},
		{pg, "SELECT 1 -- ; not a statement", true, false, false},
		{pg, "SELECT 2 # 3", true, false, false},
		{my, "SELECT 'a\\'; b'", false, false, false},    // two statements with NO_BACKSLASH_ESCAPES
		{my, "SELECT \"a\\\"; b\"", false, false, false}, // ends elsewhere without backslash escapes
		{my, "SELECT 1 # ; comment", true, false, false},
		{my, "SELECT 1 -- ; comment", true, false, false},
		{my, "SELECT `a;b` FROM t", true, false, false},
		{my, "SELECT 1 /*+ hint; */", true, false, false},
		{sl, "SELECT [a;b] FROM t", true, false, false},
		{sl, "SELECT 'a\\'; SELECT 2", false, false, false},
		// Locks and writes.
		{pg, "SELECT * FROM t WHERE id = 1 FOR UPDATE", true, true, false},
		{pg, "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", true, true, false},
		{pg, "SELECT * FROM t FOR KEY SHARE", true, true, false},
		{pg, "select * from t for share of t nowait", true, true, false},
		{my, "SELECT * FROM t LOCK IN SHARE MODE", true, true, false},
		{pg, "SELECT updated_at, shared FROM t", true, false, false},
		{pg, "SELECT 'FOR UPDATE' FROM t", true, false, false},
		{pg, "SELECT substring(a FROM 1 FOR 2) FROM t", true, false, false},
		{pg, "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", true, false, true},
		{pg, "WITH x AS (SELECT 1) SELECT * FROM x", true, false, false},
		{my, "SELECT REPLACE(a, 'x', 'y'), INSERT(a, 1, 1, 'z') FROM t", true, false, false},
		{my, "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE n = n + 1", true, false, true},
		// Never one statement. What follows the first is not read.
		{pg, "INSERT INTO t VALUES (1); UPDATE hot SET n = n + 1", false, false, true},
		{pg, "INSERT INTO log VALUES (1); COMMIT; UPDATE hot SET n = 1", false, false, true},
		{my, "INSERT INTO t VALUES (1);UPDATE hot SET n = 1", false, false, true},
		{pg, "SELECT 1; SELECT 2;", false, false, false},
		{my, "SELECT 1--1; DELETE FROM t", false, false, false},
		{my, "SELECT 1 /*! ; DELETE FROM t */", false, false, false},
		{my, "SELECT 1 /*M!100000 ; DELETE FROM t */", false, false, false},
		// Not understood: never one statement.
		{pg, "SELECT 'unterminated", false, false, false},
		{pg, "SELECT $x$ unterminated", false, false, false},
		{pg, "SELECT 1 /* unterminated", false, false, false},
		{pg, `SELECT "unterminated`, false, false, false},
		{pg, "SELECT (1", false, false, false},
		{pg, "SELECT 1)", false, false, false},
		{pg, "SELECT (1; SELECT 2)", false, false, false},
		// A backslash whose meaning the server's settings decide.
		{pg, "SELECT 'a\\'; DELETE FROM t; --'", false, false, false},
		{my, "SELECT 'a\\'; DELETE FROM t; --'", false, false, false},
		{pg, "SELECT 'C:\\dir' FROM t", true, false, false},
		{my, "SELECT 'C:\\\\dir' FROM t", true, false, false},
		// sql_mode=ANSI_QUOTES with backslash escapes: "\" is an identifier,
		// 'a\' ' a string, so the server runs two statements, which the
		// lexer's other readings (and the default's) call one.
		{my, "INSERT INTO aq_log SET \"\\\" = 'a\\' '; UPDATE aq_hot SET v = v + 1 WHERE id = 1 -- \" -- '\nAND 1 = 1", false, false, true},
		{my, "SELECT \"a;b\" FROM t", true, false, false},
	} {
		s := lexStmt(tc.q, tc.d)
		if s.single != tc.single || s.locking != tc.locking || s.writes != tc.writes {
			t.Errorf("%v lexStmt(%q) = single %v locking %v writes %v; want %v %v %v",
				tc.d, tc.q, s.single, s.locking, s.writes, tc.single, tc.locking, tc.writes)
		}
	}
}

func TestLockingReread(t *testing.T) {
	for _, tc := range []struct {
		q, want string
	}{
		{"SELECT id FROM t WHERE k = ?", "SELECT id FROM t WHERE k = ? LOCK IN SHARE MODE"},
		{"SELECT id FROM t WHERE k = ?;", "SELECT id FROM t WHERE k = ? LOCK IN SHARE MODE;"},
		{"SELECT id FROM t WHERE k = ? -- by key", "SELECT id FROM t WHERE k = ? LOCK IN SHARE MODE -- by key"},
		{"SELECT id FROM t LIMIT 1", "SELECT id FROM t LIMIT 1 LOCK IN SHARE MODE"},
		{"WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x LOCK IN SHARE MODE"},
		{"SELECT id FROM t FOR UPDATE", ""},
		{"SELECT a FROM t UNION SELECT b FROM u", ""},
		{"SELECT a INTO @x FROM t", ""},
		{"SELECT 1; SELECT 2", ""},
		{"DELETE FROM t", ""},
	} {
		got, ok := lockingReread(tc.q, lexStmt(tc.q, DialectMySQL))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("lockingReread(%q) = %q, %v; want %q", tc.q, got, ok, tc.want)
		}
	}
}

// FuzzLexStmt: the lexer never panics, its end is inside the text, and a
// text it calls one statement stops being one when a second follows.
func FuzzLexStmt(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "INSERT INTO t VALUES ('a;b'); SELECT 2", "SELECT $t$ ; $t$", "SELECT E'\\''",
		"SELECT 'a\\'; x", "SELECT 1 -- c", "SELECT /* /* */ */ 1", "SELECT `a;b`", "SELECT [a]",
		"SELECT * FROM t FOR UPDATE", "SELECT 1 /*! x */", "WITH x AS (DELETE FROM t) SELECT 1",
	} {
		for d := DialectUnknown; d <= DialectSQLite; d++ {
			f.Add(s, uint8(d))
		}
	}
	f.Fuzz(func(t *testing.T, q string, d uint8) {
		dialect := Dialect(d % 4)
		s := lexStmt(q, dialect)
		if s.end < 0 || s.end > len(q) {
			t.Fatalf("end %d outside %q", s.end, q)
		}
		if s.single && lexStmt(q+"\n;\nDELETE FROM t", dialect).single {
			t.Fatalf("%v: %q reads as one statement with a second appended", dialect, q)
		}
		if l, ok := lockingReread(q, s); ok && dialect == DialectMySQL {
			if r := lexStmt(l, dialect); !r.single || !r.locking {
				t.Fatalf("locking re-read %q of %q: single %v locking %v", l, q, r.single, r.locking)
			}
		}
	})
}

func TestXA(t *testing.T) {
	for q, want := range map[string]xaAction{
		"XA START 'a'": xaStart, "xa begin 'a'": xaStart, "XA END 'a'": xaOther, "XA PREPARE 'a'": xaOther,
		"XA COMMIT 'a' ONE PHASE": xaEnd, "XA ROLLBACK 'a'": xaEnd, "XA RECOVER": xaOther,
	} {
		if got := xa(q); got != want {
			t.Errorf("xa(%q) = %v, want %v", q, got, want)
		}
	}
}

// TestStmtEffects is the table of what a retry would repeat that the
// server does not undo (effects.go), row by row.
func TestStmtEffects(t *testing.T) {
	const (
		pg = DialectPostgres
		my = DialectMySQL
	)
	for _, tc := range []struct {
		d              Dialect
		q              string
		effects, calls bool
	}{
		{pg, "UPDATE t SET v = v + 1 WHERE id = $1", false, false},
		{pg, "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b RETURNING id", false, false},
		{pg, "INSERT INTO s.t(a) VALUES (now()), (coalesce($1, 0))", false, false},
		{pg, `INSERT INTO "t" ("a") VALUES (1)`, false, false},
		{pg, "SELECT count(*), max(v)::numeric(10,2), lower(name) FROM t WHERE id IN (SELECT id FROM u) AND EXISTS (SELECT 1)", false, false},
		{pg, "WITH x AS (SELECT 1) SELECT * FROM x", false, false},
		{pg, "SELECT * FROM generate_series(1, 3) AS g(n)", false, false},
		{pg, "SELECT nextval('s'), pg_catalog.now()", false, false},
		{pg, "SELECT pg_advisory_xact_lock(1)", false, false},
		{pg, "SELECT f()", false, true},
		{pg, "SELECT f (1)", false, true},
		{pg, "SELECT public.count(*) FROM t", false, true},
		{pg, `SELECT "f"(1)`, false, true},
		{pg, "UPDATE t SET v = my_fn(v) WHERE id = 1", false, true},
		{pg, "SELECT pg_advisory_lock(1)", true, false},
		{pg, "SELECT pg_catalog.pg_advisory_lock /* x */ (1)", true, false},
		{pg, "SELECT PG_TRY_ADVISORY_LOCK(1)", true, false},
		{pg, "SELECT set_config('x.y', '1', false)", true, false},
		{pg, "SELECT setval('s', 10)", true, false},
		{pg, "SELECT * INTO newt FROM t", true, false},
		{pg, "SELECT 'pg_advisory_lock(1)', \"my_fn\" FROM t", false, false},
		{my, "UPDATE t SET v = (@x := @x + 1) + GET_LOCK('l', 0) * 0 WHERE id = 1", true, false},
		{my, "UPDATE t SET v = @x WHERE id = 1", false, false},
		{my, "SELECT a INTO @x FROM t", true, false},
		{my, "SELECT a FROM t INTO OUTFILE '/tmp/x'", true, false},
		{my, "INSERT IGNORE INTO t(a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)", false, false},
		{my, "INSERT t (a) VALUES (1)", false, false},
		{my, "REPLACE INTO t (a) VALUES (REPLACE('a', 'b', 'c'))", false, false},
		{my, "SELECT IF(a, 1, 2), IFNULL(b, 0), DATE_FORMAT(NOW(), '%Y') FROM t", false, false},
		{my, "SELECT RELEASE_LOCK('l')", true, false},
		{my, "SELECT `f`(1)", false, true},
		{my, "SELECT my_udf(a) FROM t", false, true},
		{my, "SELECT 'a := b', \"GET_LOCK(x)\" FROM t", false, false},
	} {
		s := lexStmt(tc.q, tc.d)
		if s.effects != tc.effects || s.calls != tc.calls {
			t.Errorf("%v %q: effects %v calls %v; want %v %v", tc.d, tc.q, s.effects, s.calls, tc.effects, tc.calls)
		}
	}
}

func TestSplitStmts(t *testing.T) {
	for _, tc := range []struct {
		d    Dialect
		q    string
		want []string
		ok   bool
	}{
		{DialectPostgres, "BEGIN; UPDATE t SET v = 1; COMMIT;", []string{"BEGIN", " UPDATE t SET v = 1", " COMMIT"}, true},
		{DialectPostgres, "SELECT ';'; ;SELECT $$;$$", []string{"SELECT ';'", "SELECT $$;$$"}, true},
		{DialectPostgres, "SELECT 1", []string{"SELECT 1"}, true},
		{DialectPostgres, "SELECT 'a\\'; COMMIT; --'", nil, false}, // standard_conforming_strings decides
		{DialectMySQL, "SELECT 'a\\'; COMMIT; --'", nil, false},
		{DialectMySQL, "SELECT 1 /*! ; COMMIT */", nil, false},
		{DialectMySQL, "SELECT (1; COMMIT)", nil, false},
		{DialectMySQL, "START TRANSACTION; INSERT INTO t VALUES ('a;b')", []string{"START TRANSACTION", " INSERT INTO t VALUES ('a;b')"}, true},
	} {
		got, ok := splitStmts(tc.q, tc.d)
		if ok != tc.ok || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%v splitStmts(%q) = %q, %v; want %q, %v", tc.d, tc.q, got, ok, tc.want, tc.ok)
		}
	}
}
