package clienttest

import (
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestDocsGoBlocksCompile type-checks every ```go block of README.md and
// docs/*.md against the real packages (this module requires them all):
// a block compiles as written, but for the variables it takes from the
// surrounding prose (db, ctx, err, ...), which may stay undeclared. A
// block of statements is checked as a function body, a block of
// declarations as a file; the imports it leaves out are added for the
// package names it uses.
func TestDocsGoBlocksCompile(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../README.md"}, files...)
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "source", nil)
	n := 0
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range goBlocks(string(text)) {
			n++
			name := filepath.Base(f) + ":" + itoa(b.line)
			if errs := checkBlock(fset, imp, name, b.code); len(errs) > 0 {
				t.Errorf("%s: the Go block does not compile:\n\t%s", name, strings.Join(errs, "\n\t"))
			}
		}
	}
	if n == 0 {
		t.Fatal("no Go blocks found: the test reads the wrong files")
	}
	t.Logf("%d Go blocks checked", n)
}

type goBlock struct {
	line int // of the opening fence
	code string
}

// goBlocks returns the ```go blocks of a Markdown text, indented ones (in
// list items) included.
func goBlocks(text string) []goBlock {
	var out []goBlock
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		trimmed := strings.TrimSpace(lines[i])
		if trimmed != "```go" {
			continue
		}
		indent := lines[i][:strings.Index(lines[i], "```")]
		var code []string
		j := i + 1
		for ; j < len(lines) && strings.TrimSpace(lines[j]) != "```"; j++ {
			code = append(code, strings.TrimPrefix(lines[j], indent))
		}
		out = append(out, goBlock{line: i + 1, code: strings.Join(code, "\n")})
		i = j
	}
	return out
}

// knownImports are the package names the docs use, and what they name. In
// a block about GORM, mysql and postgres are GORM's dialectors.
var knownImports = map[string]string{
	"context":         "context",
	"errors":          "errors",
	"fmt":             "fmt",
	"os":              "os",
	"time":            "time",
	"expvar":          "expvar",
	"slog":            "log/slog",
	"sql":             "database/sql",
	"driver":          "database/sql/driver",
	"sqlconflict":     "github.com/sqlconflict/sqlconflict",
	"sqlconflictpgx":  "github.com/sqlconflict/sqlconflict/pgx",
	"sqlconflictotel": "github.com/sqlconflict/sqlconflict/otel",
	"prometheus":      "github.com/prometheus/client_golang/prometheus",
	"pgx":             "github.com/jackc/pgx/v5",
	"stdlib":          "github.com/jackc/pgx/v5/stdlib",
	"pgconn":          "github.com/jackc/pgx/v5/pgconn",
	"pq":              "github.com/lib/pq",
	"mysql":           "github.com/go-sql-driver/mysql",
	"sqlx":            "github.com/jmoiron/sqlx",
	"gorm":            "gorm.io/gorm",
	"postgres":        "gorm.io/driver/postgres",
	"bun":             "github.com/uptrace/bun",
	"pgdialect":       "github.com/uptrace/bun/dialect/pgdialect",
	"mysqldialect":    "github.com/uptrace/bun/dialect/mysqldialect",
}

var (
	selectorRE = regexp.MustCompile(`\b([a-z][A-Za-z0-9]*)\.[A-Za-z]`)
	importRE   = regexp.MustCompile(`(?m)^import\s+(\([^)]*\)|.*)$`)
)

// checkBlock type-checks one block and returns its errors, those about
// variables taken from the prose left out.
func checkBlock(fset *token.FileSet, imp types.Importer, name, code string) []string {
	// The block's own imports go first; the rest is declarations or a
	// function body.
	var own []string
	body := importRE.ReplaceAllStringFunc(code, func(m string) string {
		own = append(own, m)
		return ""
	})
	imported := map[string]bool{}
	for _, m := range own {
		for _, q := range regexp.MustCompile(`(\w+\s+)?"([^"]+)"`).FindAllStringSubmatch(m, -1) {
			path := q[2]
			local := strings.TrimSpace(q[1])
			if local == "" {
				local = path[strings.LastIndex(path, "/")+1:]
			}
			imported[local] = true
		}
	}
	gormBlock := strings.Contains(code, "gorm.")
	var auto []string
	for _, m := range selectorRE.FindAllStringSubmatch(body, -1) {
		pkg := m[1]
		path, ok := knownImports[pkg]
		if !ok || imported[pkg] {
			continue
		}
		if gormBlock && pkg == "mysql" {
			path = "gorm.io/driver/mysql"
		}
		imported[pkg] = true
		auto = append(auto, pkg+` "`+path+`"`)
	}
	sort.Strings(auto)
	head := "package doc\n" + strings.Join(own, "\n") + "\n"
	if len(auto) > 0 {
		head += "import (\n" + strings.Join(auto, "\n") + "\n)\n"
	}
	src := head + body
	file, err := parser.ParseFile(fset, name, src, 0)
	if err != nil || !onlyDecls(file) {
		src = head + "func _() error {\n" + body + "\n}\n"
		if file, err = parser.ParseFile(fset, name, src, 0); err != nil {
			return []string{err.Error()}
		}
	}
	var errs []string
	conf := types.Config{Importer: imp, Error: func(err error) {
		msg := err.(types.Error).Msg
		switch {
		case regexp.MustCompile(`^undefined: \w+$`).MatchString(msg), // a variable or type of the prose
			strings.HasPrefix(msg, "declared and not used"),
			strings.HasSuffix(msg, "declared and not used"),
			msg == "missing return",
			strings.Contains(msg, "imported and not used"):
		default:
			errs = append(errs, err.Error())
		}
	}}
	conf.Check("doc", fset, []*ast.File{file}, nil)
	return errs
}

// onlyDecls reports a file that parsed and has declarations beyond its
// imports: the block was declarations, not statements.
func onlyDecls(f *ast.File) bool {
	for _, d := range f.Decls {
		if g, ok := d.(*ast.GenDecl); !ok || g.Tok != token.IMPORT {
			return true
		}
	}
	return false
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}
