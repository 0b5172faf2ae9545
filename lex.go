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
		if strings.EqualFold(w, "TO") {
			return stmtRollbackTo
		}
		return stmtRollback
	case strings.EqualFold(w, "ABORT"):
		return stmtRollback
	case strings.EqualFold(w, "COMMIT"), strings.EqualFold(w, "END"):
		return stmtCommit
	case strings.EqualFold(w, "BEGIN"):
		return stmtBegin
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
			w, rest = firstWord(rest)
			if strings.EqualFold(w, "NO") {
				return false, true
			}
			return strings.EqualFold(w, "CHAIN"), true
		}
		w, rest = firstWord(rest)
	}
	return false, false
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
	// end is where the statement's last token ends: a clause appended there
	// joins the statement, before any trailing ';' or comment.
	end int
}

// lexStmt reads q whole in dialect d's syntax. A backslash in a string
// literal means an escape on MySQL unless NO_BACKSLASH_ESCAPES is set, and
// nothing on PostgreSQL unless standard_conforming_strings is off: the
// wrapper cannot know the session's setting, so such a text is read both
// ways and is single only if both readings agree.
func lexStmt(q string, d Dialect) stmtShape {
	s, backslash := lexOnce(q, d, d == DialectMySQL)
	if backslash && d != DialectSQLite {
		if t, _ := lexOnce(q, d, d != DialectMySQL); t != s {
			s.single = false
		}
	}
	return s
}

// lexOnce is one reading of q; escapes says whether a backslash escapes the
// next character in '...' (and, on MySQL, "...") literals. It also reports
// whether such a literal held a backslash.
func lexOnce(q string, d Dialect, escapes bool) (s stmtShape, backslash bool) {
	s.kind = parseStmt(q)
	pg, my := d == DialectPostgres || d == DialectUnknown, d == DialectMySQL
	depth, statements := 0, 0
	understood := true
	var prev string // the previous word, for two-word clauses
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
		if statements > 0 {
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
			var bs, ok bool
			i, bs, ok = quoteEnd(q, i, '\'', escapes && d != DialectSQLite)
			backslash = backslash || bs
			understood = ok
		case c == '"':
			// An identifier on PostgreSQL and SQLite; a string on MySQL
			// (an identifier with ANSI_QUOTES: both end at the same quote
			// unless a backslash precedes one, which the second reading
			// catches).
			var bs, ok bool
			i, bs, ok = quoteEnd(q, i, '"', escapes && my)
			backslash = backslash || bs && my
			understood = ok
		case c == '`' && d != DialectPostgres:
			var ok bool
			i, _, ok = quoteEnd(q, i, '`', false)
			understood = ok
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
		case isLetter(c):
			j := i
			for j < len(q) && isLetter(q[j]) {
				j++
			}
			w := q[i:j]
			i = j
			if pg && (w == "E" || w == "e") && i < len(q) && q[i] == '\'' {
				// E'...': backslash escapes whatever the settings say.
				var ok bool
				i, _, ok = quoteEnd(q, i, '\'', true)
				understood = ok
				w = ""
			}
			s.noteWord(prev, w, depth, i < len(q) && q[i] == '(')
			prev = w
		default:
			i++
		}
		s.end = i
	}
	s.single = understood && statements <= 1 && depth == 0
	return s, backslash
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
