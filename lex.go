package sqlconflict

import "strings"

// The statement lexer. Two levels, for two paths:
//
//   - parseStmt reads a statement's first keywords. It runs for every
//     statement, so it looks at a bounded prefix only: the happy path's cost
//     does not grow with the statement's length.
//   - lexStmt reads the whole text: is it exactly one statement, does it take
//     row locks, can a locking clause be appended. Only the error path (may
//     this statement be run again?) and the opt-in savepoint mode need it.
//
// lexStmt understands quotes, PostgreSQL's dollar quoting and E'' strings,
// quoted identifiers, and comments in each dialect's spelling. What it cannot
// read for certain (an unterminated literal, MySQL's executable comments, a
// backslash whose meaning depends on the server's settings and changes the
// answer) it reports as not understood, and the wrapper then never runs the
// statement again.

// stmtKind is the little the wrapper needs to know about a statement.
type stmtKind uint8

const (
	stmtOther stmtKind = iota
	stmtSelect
	stmtWrite // INSERT, UPDATE, DELETE, MERGE, REPLACE, UPSERT
	stmtWith  // a CTE: a write if it contains one
	stmtSavepoint
	stmtRollbackTo
	stmtBegin
	stmtCommit
	stmtRollback
	stmtSet
	// stmtXA is MySQL's XA START/BEGIN, END, PREPARE, COMMIT and ROLLBACK:
	// transaction boundaries of their own (see xaAction).
	stmtXA
	// stmtPrepareTx is PostgreSQL's PREPARE TRANSACTION, which ends the
	// session's transaction as COMMIT does, committed or not.
	stmtPrepareTx
)

// atomic reports the kinds that are one statement the server runs atomically
// when nothing else is in the text: the only kinds ever run again alone.
// CALL, DO, EXECUTE and anything else may commit inside or run several
// statements.
func (k stmtKind) atomic() bool {
	return k == stmtSelect || k == stmtWrite || k == stmtWith
}

// parseStmt reads the statement's first keywords. It never allocates.
func parseStmt(q string) stmtKind {
	w, rest := firstWord(q)
	switch {
	case strings.EqualFold(w, "SELECT"):
		return stmtSelect
	case strings.EqualFold(w, "INSERT"), strings.EqualFold(w, "UPDATE"), strings.EqualFold(w, "DELETE"),
		strings.EqualFold(w, "MERGE"), strings.EqualFold(w, "REPLACE"), strings.EqualFold(w, "UPSERT"):
		return stmtWrite
	case strings.EqualFold(w, "WITH"):
		return stmtWith
	case strings.EqualFold(w, "SAVEPOINT"), strings.EqualFold(w, "RELEASE"):
		return stmtSavepoint
	case strings.EqualFold(w, "ROLLBACK"):
		w, rest = firstWord(rest)
		if strings.EqualFold(w, "WORK") || strings.EqualFold(w, "TRANSACTION") {
			w, _ = firstWord(rest)
		}
		switch {
		case strings.EqualFold(w, "TO"):
			return stmtRollbackTo
		case strings.EqualFold(w, "PREPARED"):
			return stmtOther // ROLLBACK PREPARED 'gid': another, prepared transaction
		}
		return stmtRollback
	case strings.EqualFold(w, "ABORT"):
		return stmtRollback
	case strings.EqualFold(w, "COMMIT"):
		if w, _ = firstWord(rest); strings.EqualFold(w, "PREPARED") {
			return stmtOther // COMMIT PREPARED 'gid'
		}
		return stmtCommit
	case strings.EqualFold(w, "END"):
		return stmtCommit
	case strings.EqualFold(w, "BEGIN"):
		if w, _ = firstWord(rest); strings.EqualFold(w, "NOT") {
			return stmtOther // MariaDB's BEGIN NOT ATOMIC ... END: a compound statement
		}
		return stmtBegin
	case strings.EqualFold(w, "XA"):
		return stmtXA
	case strings.EqualFold(w, "PREPARE"):
		if w, _ = firstWord(rest); strings.EqualFold(w, "TRANSACTION") {
			return stmtPrepareTx
		}
	case strings.EqualFold(w, "START"):
		if w, _ = firstWord(rest); strings.EqualFold(w, "TRANSACTION") {
			return stmtBegin
		}
	case strings.EqualFold(w, "SET"), strings.EqualFold(w, "RESET"):
		return stmtSet
	}
	return stmtOther
}

// chain reads the end of a COMMIT or ROLLBACK statement: AND CHAIN starts a
// new transaction at once (PostgreSQL 12+, MySQL), AND NO CHAIN does not, and
// without either the session's completion_type decides (MySQL). It reads a
// handful of words: transaction control statements are short.
func chain(q string) (chains, said bool) {
	w, rest := firstWord(q)
	for w != "" {
		if strings.EqualFold(w, "AND") {
			w, _ = firstWord(rest)
			if strings.EqualFold(w, "NO") {
				return false, true
			}
			return strings.EqualFold(w, "CHAIN"), true
		}
		w, rest = firstWord(rest)
	}
	return false, false
}

// xaAction is what an XA statement does to the session's transaction.
type xaAction uint8

const (
	xaOther xaAction = iota // XA END, XA PREPARE, XA RECOVER: the branch stays the session's
	xaStart                 // XA START, XA BEGIN
	xaEnd                   // XA COMMIT, XA ROLLBACK: the branch is over
)

// xa reads an XA statement's verb.
func xa(q string) xaAction {
	_, rest := firstWord(q) // XA
	switch w, _ := firstWord(rest); {
	case strings.EqualFold(w, "START"), strings.EqualFold(w, "BEGIN"):
		return xaStart
	case strings.EqualFold(w, "COMMIT"), strings.EqualFold(w, "ROLLBACK"):
		return xaEnd
	}
	return xaOther
}

// firstWord skips blanks, comments and opening parentheses and returns the
// next run of letters and the text after it.
func firstWord(q string) (string, string) {
	for {
		var ok bool
		if q, ok = skipBlanks(q); !ok || q == "" {
			return "", ""
		}
		if q[0] != '(' {
			break
		}
		q = q[1:]
	}
	j := 0
	for j < len(q) && isLetter(q[j]) {
		j++
	}
	return q[:j], q[j:]
}

// skipBlanks returns s from its first byte that is neither blank nor inside
// a comment (--, # and /* */); false for an unterminated /* comment. It is
// for the first keywords and SET statements, where a '#' cannot be an
// operator; lexStmt reads comments exactly, per dialect.
func skipBlanks(s string) (string, bool) {
	for len(s) > 0 {
		switch c := s[0]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			s = s[1:]
		case c == '#' || c == '-' && len(s) > 1 && s[1] == '-':
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return "", true
			}
			s = s[i:]
		case c == '/' && len(s) > 1 && s[1] == '*':
			end := strings.Index(s[2:], "*/")
			if end < 0 {
				return "", false
			}
			s = s[end+4:]
		default:
			return s, true
		}
	}
	return s, true
}

// isLetter reports identifier characters, so that words end where they do.
func isLetter(c byte) bool {
	return c|0x20 >= 'a' && c|0x20 <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '$' || c >= 0x80
}

// stmtShape is what lexStmt learned about a statement's text.
type stmtShape struct {
	kind stmtKind
	// single: the text is exactly one statement, read with certainty. A
	// trailing ';', blanks and comments are allowed.
	single bool
	// locking: a locking clause (FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE,
	// FOR KEY SHARE, LOCK IN SHARE MODE) anywhere in the statement.
	locking bool
	// writes: a data-changing keyword (INSERT, UPDATE, DELETE, MERGE,
	// REPLACE, UPSERT) anywhere outside literals, as in a CTE that writes.
	writes bool
	// setOp: UNION, INTERSECT or EXCEPT outside parentheses; into: INTO
	// outside parentheses. Either keeps a locking clause from being appended.
	setOp, into bool
	// effects: the statement does something the server does not roll back
	// with it (effects.go): it assigns a user variable, takes or releases
	// an advisory or named lock, changes a session setting, or writes a
	// file. calls: it calls a function the wrapper does not know, which
	// may do any of that.
	effects, calls bool
	// userVars: the text uses a MySQL user variable (@x), which a trigger
	// body may assign with SET.
	userVars bool
	// end is where the statement's last token ends: a clause appended there
	// joins the statement, before any trailing ';' or comment.
	end int
}

// reading is one way the server may read a text: whether a backslash
// escapes the next character in string literals (MySQL unless
// NO_BACKSLASH_ESCAPES; PostgreSQL only with standard_conforming_strings
// off), and whether MySQL reads "..." as an identifier (ANSI_QUOTES) rather
// than a string.
type reading struct{ escapes, ansiQuotes bool }

// readings returns the ways dialect d's server may read q, the default
// first. A text without a backslash reads the same every way: a doubled
// quote is the only escape left, and a "..." identifier and a "..." string
// end at the same quote.
func readings(q string, d Dialect) readingSet {
	def := reading{escapes: d == DialectMySQL}
	switch {
	case d == DialectSQLite || strings.IndexByte(q, '\\') < 0:
		return readingSet{n: 1, r: [4]reading{def}}
	case d == DialectMySQL:
		return readingSet{n: 4, r: [4]reading{def, {false, false}, {true, true}, {false, true}}}
	}
	return readingSet{n: 2, r: [4]reading{def, {escapes: true}}}
}

// readingSet is readings' answer, held by value: lexing a statement
// allocates nothing.
type readingSet struct {
	n int
	r [4]reading
}

// all returns the readings, the default first.
func (rs *readingSet) all() []reading { return rs.r[:rs.n] }

// lexStmt reads q whole in dialect d's syntax. The wrapper cannot know the
// session's settings (sql_mode, standard_conforming_strings), so a text
// whose meaning they could change is read every way the server might, and
// is single only if every reading agrees.
func lexStmt(q string, d Dialect) stmtShape {
	rs := readings(q, d)
	s := lexOnce(q, d, rs.r[0], nil)
	for _, r := range rs.all()[1:] {
		if t := lexOnce(q, d, r, nil); t != s {
			s.single = false
		}
	}
	return s
}

// splitStmts returns the statements of a text that holds several, as the
// server runs them, with false when the lexer cannot tell where each ends
// for certain, in every reading. Blank statements (";;") are left out.
func splitStmts(q string, d Dialect) ([]string, bool) {
	var first []int
	rs := readings(q, d)
	for i, r := range rs.all() {
		var all lexAll
		if !lexOnce(q, d, r, &all).single {
			return nil, false
		}
		if i == 0 {
			first = all.ends
		} else if !equalInts(all.ends, first) {
			return nil, false
		}
	}
	var out []string
	start := 0
	for _, e := range first {
		if p := q[start:e]; strings.TrimSpace(p) != "" {
			out = append(out, p)
		}
		start = e + 1
	}
	return out, true
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// lexAll asks lexOnce to read every statement of a text rather than stop
// after the first.
type lexAll struct {
	ends []int          // where each statement ends: the index of its ';', or len(q)
	name func(w string) // if set, called with each word and quoted identifier (without its quotes)
}

// lexOnce is one reading of q. With all non-nil it reads every statement
// of the text, recording where each ends, and reports single when it
// understood them all; the shape's flags are then those of the whole text.
func lexOnce(q string, d Dialect, rd reading, all *lexAll) (s stmtShape) {
	s.kind = parseStmt(q)
	pg, my := d == DialectPostgres || d == DialectUnknown, d == DialectMySQL
	depth, statements := 0, 0
	understood, content := true, false
	var prev, ctx string // the previous word, and the word before the current dotted name
	i := 0
	for i < len(q) && understood {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && i+1 < len(q) && q[i+1] == '-' && (!my || i+2 == len(q) || q[i+2] <= ' '):
			// MySQL reads "--" as a comment only before a blank or control
			// character: 1--1 is arithmetic there.
			i = lineEnd(q, i)
			continue
		case c == '#' && my:
			i = lineEnd(q, i)
			continue
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			if my && i+2 < len(q) && (q[i+2] == '!' || strings.HasPrefix(q[i+2:], "M!")) {
				understood = false // MySQL executes the text of /*! ... */
				continue
			}
			var ok bool
			if i, ok = blockCommentEnd(q, i, pg); !ok {
				understood = false
			}
			continue
		}
		if statements > 0 && all == nil {
			if c == ';' {
				i++
				continue
			}
			statements++ // something after the first statement
			break
		}
		switch {
		case c == ';':
			if depth != 0 {
				understood = false
			}
			if all != nil {
				all.ends = append(all.ends, i)
				content, prev, ctx = false, "", ""
			}
			statements = 1
			i++
			continue
		case c == '(':
			depth++
			i++
		case c == ')':
			if depth--; depth < 0 {
				understood = false
			}
			i++
		case c == '\'':
			var ok bool
			i, _, ok = quoteEnd(q, i, '\'', rd.escapes && d != DialectSQLite)
			understood = ok
		case c == '"' || c == '`' && d != DialectPostgres:
			// "..." is an identifier on PostgreSQL and SQLite, and on MySQL
			// with ANSI_QUOTES; otherwise a string on MySQL.
			ident := c == '`' || !my || rd.ansiQuotes
			start := i
			var ok bool
			i, _, ok = quoteEnd(q, i, c, rd.escapes && !ident)
			understood = ok
			if ident && ok && all != nil && all.name != nil {
				all.name(q[start+1 : i-1])
			}
			if ident && ok {
				schema := ""
				if start > 0 && q[start-1] == '.' {
					schema = prev
				} else {
					ctx = prev
				}
				s.noteCall(ctx, "", schema, q, i, d)
				prev = `"`
			}
		case c == '[' && d == DialectSQLite:
			j := strings.IndexByte(q[i+1:], ']')
			if j < 0 {
				understood = false
			}
			i += j + 2
		case c == '$' && pg:
			var ok bool
			i, ok = dollarEnd(q, i)
			understood = ok
		case c == ':' && my && i+1 < len(q) && q[i+1] == '=':
			s.effects = true // @x := ...: a user variable outlives the statement
			i += 2
		case c == '@' && my && i+1 < len(q) && isLetter(q[i+1]):
			s.userVars = true
			i++
		case isLetter(c):
			j := i
			for j < len(q) && isLetter(q[j]) {
				j++
			}
			w := q[i:j]
			schema := ""
			if i > 0 && q[i-1] == '.' {
				schema = prev // the name is qualified: prev is its schema
			}
			i = j
			if pg && (w == "E" || w == "e") && i < len(q) && q[i] == '\'' {
				// E'...': backslash escapes whatever the settings say.
				var ok bool
				i, _, ok = quoteEnd(q, i, '\'', true)
				understood = ok
				w = ""
			}
			if schema == "" {
				ctx = prev
			}
			s.noteWord(prev, w, depth, i < len(q) && q[i] == '(')
			if w != "" {
				s.noteCall(ctx, w, schema, q, i, d)
				if all != nil && all.name != nil {
					all.name(w)
				}
			}
			prev = w
		default:
			i++
		}
		content = true
		s.end = i
	}
	if all != nil && content && understood {
		all.ends = append(all.ends, len(q))
	}
	s.single = understood && (statements <= 1 || all != nil) && depth == 0
	return s
}

// noteWord records what a word says about the statement. fn: the word is
// followed at once by '(', as a function's name is (MySQL has INSERT() and
// REPLACE() functions).
func (s *stmtShape) noteWord(prev, w string, depth int, fn bool) {
	switch {
	case w == "":
	case strings.EqualFold(prev, "FOR") && (strings.EqualFold(w, "UPDATE") || strings.EqualFold(w, "SHARE") ||
		strings.EqualFold(w, "NO") || strings.EqualFold(w, "KEY")):
		s.locking = true
	case strings.EqualFold(prev, "LOCK") && strings.EqualFold(w, "IN"):
		s.locking = true // LOCK IN SHARE MODE
	case strings.EqualFold(w, "UPDATE") && !strings.EqualFold(prev, "KEY") && !strings.EqualFold(prev, "ON"),
		strings.EqualFold(w, "DELETE") && !strings.EqualFold(prev, "ON"),
		strings.EqualFold(w, "MERGE"), strings.EqualFold(w, "UPSERT"),
		(strings.EqualFold(w, "INSERT") || strings.EqualFold(w, "REPLACE")) && !fn:
		// ON UPDATE / ON DELETE name a foreign key's actions.
		s.writes = true
	case depth == 0 && (strings.EqualFold(w, "UNION") || strings.EqualFold(w, "INTERSECT") || strings.EqualFold(w, "EXCEPT")):
		s.setOp = true
	case depth == 0 && strings.EqualFold(w, "INTO"):
		s.into = true
		s.noteInto(prev)
	}
}

// lineEnd returns the index of the newline that ends the comment at i, or
// len(q).
func lineEnd(q string, i int) int {
	if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
		return i + j
	}
	return len(q)
}

// blockCommentEnd returns the index after the /* comment at i. PostgreSQL's
// block comments nest; MySQL's and SQLite's do not.
func blockCommentEnd(q string, i int, nests bool) (int, bool) {
	depth := 0
	for i < len(q)-1 {
		switch {
		case q[i] == '/' && q[i+1] == '*':
			if depth == 0 || nests {
				depth++
			}
			i += 2
		case q[i] == '*' && q[i+1] == '/':
			i += 2
			if depth--; depth == 0 {
				return i, true
			}
		default:
			i++
		}
	}
	return len(q), false
}

// quoteEnd returns the index after the literal or quoted identifier that
// starts with quote at i. A doubled quote stands for itself; with escapes a
// backslash escapes the next byte. bs reports a backslash inside.
func quoteEnd(q string, i int, quote byte, escapes bool) (end int, bs, ok bool) {
	for j := i + 1; j < len(q); j++ {
		switch q[j] {
		case '\\':
			bs = true
			if escapes {
				j++
			}
		case quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1, bs, true
		}
	}
	return len(q), bs, false
}

// dollarEnd reads what starts with '$' at i on PostgreSQL: a parameter ($1),
// a dollar-quoted string ($$...$$, $tag$...$tag$), or a lone '$'.
func dollarEnd(q string, i int) (int, bool) {
	j := i + 1
	if j < len(q) && q[j] >= '0' && q[j] <= '9' {
		for j < len(q) && q[j] >= '0' && q[j] <= '9' {
			j++
		}
		return j, true
	}
	for j < len(q) && q[j] != '$' {
		// A tag is an identifier without '$': a letter or '_' first.
		if c := q[j]; !(isLetter(c) && c != '$' && (j > i+1 || c > '9')) {
			return i + 1, true // a lone '$'
		}
		j++
	}
	if j == len(q) {
		return i + 1, true
	}
	tag := q[i : j+1]
	end := strings.Index(q[j+1:], tag)
	if end < 0 {
		return len(q), false
	}
	return j + 1 + end + len(tag), true
}
