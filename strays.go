package sqlconflict

import (
	"database/sql/driver"
	"fmt"
	"reflect"
	"strconv"
)

// strayOptions reports a conflict_* parameter left in the configuration of
// a base connector handed to NewConnector: lib/pq, go-sql-driver/mysql and
// pgx keep a DSN's unknown parameters in a map (lib/pq's Config.Runtime or
// its values, mysql.Config.Params, pgconn.Config.RuntimeParams) and send
// them to the server as session settings, so the first query would fail
// with "unrecognized configuration parameter" or "Unknown system variable",
// far from the mistake. The connectors' fields are unexported, so this
// walks them with reflection, reading only the keys of string-keyed maps.
// The error names the parameter, never its value.
func strayOptions(base driver.Connector) error {
	w := strayWalker{seen: map[uintptr]bool{}}
	name := w.walk(reflect.ValueOf(base), 0)
	if name == "" {
		return nil
	}
	if f := optionField(name); f != "" {
		return fmt.Errorf("sqlconflict: the base connector's configuration holds the DSN option %s, which the base driver "+
			"would send to the server: NewConnector takes Options (set Options.%s), or pass the DSN to sql.Open or "+
			"the wrapped driver's OpenConnector, which read conflict_* options", strconv.Quote(name), f)
	}
	return fmt.Errorf("sqlconflict: the base connector's configuration holds %s, an unknown DSN option (known: %s), "+
		"which the base driver would send to the server", strconv.Quote(name), dsnOptionList())
}

// strayMaxDepth bounds the walk: the maps sit one to three levels below
// the connector (pgx: connector, ConnConfig, pgconn.Config).
const strayMaxDepth = 5

type strayWalker struct {
	seen map[uintptr]bool // pointers already walked
}

// walk returns the first key that is a conflict_* option in a string-keyed
// map reachable from v through pointers and struct fields, or "".
func (w strayWalker) walk(v reflect.Value, depth int) string {
	if depth > strayMaxDepth {
		return ""
	}
	switch v.Kind() {
	case reflect.Interface:
		if !v.IsNil() {
			return w.walk(v.Elem(), depth)
		}
	case reflect.Pointer:
		if v.IsNil() || w.seen[v.Pointer()] {
			return ""
		}
		w.seen[v.Pointer()] = true
		return w.walk(v.Elem(), depth+1)
	case reflect.Struct:
		for i := range v.NumField() {
			if k := w.walk(v.Field(i), depth+1); k != "" {
				return k
			}
		}
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String || v.IsNil() {
			return ""
		}
		it := v.MapRange()
		for it.Next() {
			if k := it.Key().String(); isOption(k) {
				return k
			}
		}
	}
	return ""
}
