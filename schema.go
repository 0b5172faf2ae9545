package sqlconflict

import (
	"context"
	"database/sql/driver"
	"strings"
	"sync"
	"time"
)

// What a statement's text cannot show of its effects: a trigger fires on
// the tables it writes, a view may call functions, and a MySQL table of a
// non-transactional engine (MyISAM, Aria, MEMORY) keeps what a failed
// statement wrote to it (MariaDB gives no warning of it). Before a
// statement is run again, the wrapper checks the names it mentions against
// the tables and views it learned of, on the error path only, once per
// connector and schemaTTL. A name is matched without its schema and without
// regard to case: a table of the same name elsewhere only costs a retry.

// schemaTTL bounds how long what was learned is trusted: a table created
// or altered since may go unseen for that long.
const schemaTTL = 30 * time.Second

// schemaFacts is what a connector learned, shared by its connections.
type schemaFacts struct {
	mu     sync.Mutex
	loaded time.Time
	names  map[string]effect // lower-case table or view name: effectSide (never retried) or effectUnknown
}

// Schema queries, by dialect. Each row is a name, a kind and a text: 'n' a
// non-transactional table, 'u' a table with something the wrapper cannot
// read (a rule, a default calling a function, a trigger in C), 'b' a table
// with a trigger or a view, whose body or definition is the text.
const (
	sqlSchemaMySQL = `SELECT TABLE_NAME, 'n', '' FROM information_schema.TABLES ` +
		`WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE IS NOT NULL ` +
		`AND UPPER(ENGINE) NOT IN ('INNODB', 'ROCKSDB', 'TOKUDB', 'NDBCLUSTER', 'NDB', 'SEQUENCE') ` +
		`AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ` +
		`UNION ALL SELECT EVENT_OBJECT_TABLE, 'b', ACTION_STATEMENT FROM information_schema.TRIGGERS ` +
		`UNION ALL SELECT TABLE_NAME, 'b', VIEW_DEFINITION FROM information_schema.VIEWS ` +
		`WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')`
	sqlSchemaPostgres = `SELECT c.relname, 'b', pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c ` +
		`JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ` +
		`WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ` +
		`UNION ALL SELECT c.relname, CASE WHEN l.lanname IN ('plpgsql', 'sql') THEN 'b' ELSE 'u' END, p.prosrc ` +
		`FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid ` +
		`JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid JOIN pg_catalog.pg_language l ON l.oid = p.prolang ` +
		`WHERE NOT g.tgisinternal ` +
		`UNION ALL SELECT c.relname, 'u', '' FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class ` +
		`WHERE r.rulename <> '_RETURN' ` +
		`UNION ALL SELECT c.relname, 'u', '' FROM pg_catalog.pg_attrdef ad JOIN pg_catalog.pg_class c ON c.oid = ad.adrelid ` +
		`JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid ` +
		`AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass ` +
		`JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace ` +
		`WHERE pn.nspname <> 'pg_catalog'`
)

// allows reports whether the tables and views q mentions let it run again:
// none is non-transactional, and none has a trigger or definition that may
// have side effects (unless the application vouches for its functions).
// When the wrapper cannot learn the schema, it cannot rule them out.
func (ic *interceptor) schemaAllows(ctx context.Context, q string) bool {
	var query string
	switch ic.cfg.Dialect {
	case DialectMySQL:
		query = sqlSchemaMySQL
	case DialectPostgres:
		query = sqlSchemaPostgres
	default:
		return true // SQLite: no triggers the wrapper reads; every table is transactional
	}
	names, ok := ic.cfg.schema.get(ctx, ic, query)
	if !ok {
		return false
	}
	if len(names) == 0 {
		return true
	}
	allowed := true
	rs := readings(q, ic.cfg.Dialect)
	for _, r := range rs.all() {
		lexOnce(q, ic.cfg.Dialect, r, &lexAll{name: func(w string) {
			if e, ok := names[strings.ToLower(w)]; ok && (e == effectSide || !ic.cfg.RetryFunctions) {
				allowed = false
			}
		}})
	}
	return allowed
}

// get returns what the connector knows, learning it on ic's connection if
// it is older than schemaTTL.
func (f *schemaFacts) get(ctx context.Context, ic *interceptor, query string) (map[string]effect, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.names != nil && time.Since(f.loaded) < schemaTTL {
		return f.names, true
	}
	type row struct{ name, kind, text string }
	var rows []row
	err := ic.queryRows(ctx, query, func(cols []driver.Value) {
		if len(cols) < 3 {
			return
		}
		name, _ := textValue(cols[0])
		kind, _ := textValue(cols[1])
		text, _ := textValue(cols[2])
		rows = append(rows, row{strings.ToLower(name), kind, text})
	})
	if err != nil {
		return nil, false
	}
	names := map[string]effect{}
	for _, r := range rows {
		if r.kind == "n" {
			names[r.name] = effectSide
		}
	}
	for _, r := range rows {
		switch r.kind {
		case "u":
			names[r.name] = worse(names[r.name], effectUnknown)
		case "b":
			if e := bodyEffect(r.text, ic.cfg.Dialect, names); e != effectNone {
				names[r.name] = worse(names[r.name], e)
			}
		}
	}
	f.names, f.loaded = names, time.Now()
	return names, true
}

// worse returns the stronger of two effects; the zero effect of a name not
// yet in the map is effectUnknown, so a name seen first here takes e.
func worse(have, e effect) effect {
	if have == effectSide || e == effectSide {
		return effectSide
	}
	return effectUnknown
}

// bodyEffect reads a trigger's body or a view's definition: effectSide if
// it assigns a user variable, calls a function with side effects or
// mentions a non-transactional table; effectUnknown if it calls a function
// the wrapper does not know, a procedure, or runs dynamic SQL; else
// effectNone.
func bodyEffect(body string, d Dialect, names map[string]effect) effect {
	e := effectNone
	rs := readings(body, d)
	for _, r := range rs.all() {
		s := lexOnce(body, d, r, &lexAll{name: func(w string) {
			switch {
			case names[strings.ToLower(w)] == effectSide:
				e = effectSide
			case strings.EqualFold(w, "CALL") || strings.EqualFold(w, "EXECUTE") || strings.EqualFold(w, "PREPARE"):
				e = worse(e, effectUnknown)
			}
		}})
		switch {
		case !s.single, s.calls:
			e = worse(e, effectUnknown)
		}
		if s.effects || s.userVars {
			e = effectSide
		}
	}
	return e
}
