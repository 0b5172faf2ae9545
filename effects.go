package sqlconflict

import "strings"

// Side effects a retry would apply again. Running a failed statement again
// is invisible only if the server undid all of the first attempt. It does
// not undo a user variable the statement assigned (@x := ...), an advisory
// or named lock it took (pg_advisory_lock, GET_LOCK), a session setting it
// changed (set_config(..., false)), a sequence it set, or a file it wrote
// (INTO OUTFILE). A function the wrapper does not know may do any of these,
// so a statement that calls one is not run again unless the application
// says its functions do none of them (conflict_retry_functions); see
// docs/retry.md. The tables below are the only place that says which
// functions are which; a name in neither is unknown.

// effect is what calling a function does beyond computing a value.
type effect uint8

const (
	effectUnknown effect = iota // not a function the wrapper knows
	effectNone                  // a built-in function, a type or a keyword before '('
	effectSide                  // something the server does not roll back with the statement
)

// sideEffectFunctions take or release locks outside the transaction, change
// the session, or write where no rollback reaches. The transaction-scoped
// advisory locks (pg_advisory_xact_lock) are not here: the server releases
// them with the statement's transaction, so a retry takes them once.
var sideEffectFunctions = words(`
	pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared
	pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all
	set_config setval pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile
	pg_switch_wal pg_create_restore_point pg_stat_reset pg_stat_reset_shared
	lo_import lo_export dblink dblink_exec dblink_connect dblink_send_query
	get_lock release_lock release_all_locks`)

// pureFunctions are built-in functions that compute a value and change
// nothing the server keeps, type names that take a length or precision
// (numeric(10,2)), and keywords a '(' may follow. Volatile functions such as
// random() or now() are here: a retry computes a new value, which the
// application sees in place of the failed attempt's, never beside it.
// nextval is here too: a retry may consume a sequence value, as any failed
// attempt does (sequences and AUTO_INCREMENT never hand a value back).
var pureFunctions = words(`
	all and any array as asc between by case check collate conflict constraint cross current cycle
	default delete desc distinct do else end escape except exists fetch filter first following for
	foreign from full group groups having if ignore ilike in index inner insert intersect interval into
	is join key last lateral left like limit lock match matched materialized merge mode natural next
	no not nowait null nulls of offset on only or order outer over overlaps partition preceding
	primary range recursive references regexp replace returning right rlike row rows search select
	set share similar skip some tablesample then ties to union unique update using value values when
	where window with within xor

	bigint binary bit bool boolean char character date datetime dec decimal double enum float float4
	float8 int int2 int4 int8 integer mediumint nchar numeric nvarchar precision real smallint time
	timestamp timestamptz timetz tinyint varbinary varchar varying year

	count sum avg min max every bool_and bool_or bit_and bit_or bit_xor array_agg string_agg
	json_agg jsonb_agg json_object_agg jsonb_object_agg group_concat json_arrayagg json_objectagg
	stddev stddev_pop stddev_samp variance var_pop var_samp std corr covar_pop covar_samp
	percentile_cont percentile_disc regr_slope regr_intercept
	row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
	coalesce nullif greatest least ifnull isnull nvl iif cast convert try_cast
	abs ceil ceiling floor round trunc truncate mod power pow sqrt cbrt exp ln log log2 log10 sign
	pi degrees radians sin cos tan asin acos atan atan2 cot div random rand width_bucket gcd lcm
	lower upper lcase ucase length char_length character_length octet_length bit_length
	substr substring mid trim ltrim rtrim btrim concat concat_ws strpos position instr locate
	lpad rpad repeat reverse initcap split_part translate format quote_ident quote_literal
	quote_nullable quote chr ascii ord hex unhex to_hex md5 sha sha1 sha2 encode decode to_base64
	from_base64 regexp_replace regexp_matches regexp_match regexp_substr regexp_instr regexp_like
	regexp_split_to_array regexp_split_to_table starts_with field find_in_set elt make_set
	soundex space strcmp string_to_array array_to_string left right insert replace overlay
	crc32 uuid uuid_short gen_random_uuid uuid_generate_v4 uuid_generate_v1 sys_guid
	now current_timestamp current_date current_time localtime localtimestamp clock_timestamp
	statement_timestamp transaction_timestamp timeofday sysdate curdate curtime utc_timestamp
	utc_date utc_time unix_timestamp from_unixtime to_timestamp to_char to_date to_number
	date_trunc date_part extract age make_date make_time make_timestamp make_timestamptz
	make_interval justify_days justify_hours justify_interval date_add date_sub adddate subdate
	addtime subtime datediff timediff timestampdiff timestampadd date_format time_format str_to_date
	get_format last_day dayname dayofmonth dayofweek dayofyear day month monthname quarter week
	weekday weekofyear yearweek hour minute second microsecond period_add period_diff to_days
	from_days to_seconds sec_to_time time_to_sec makedate maketime convert_tz isfinite
	json_extract json_unquote json_value json_query json_object json_array json_contains
	json_contains_path json_keys json_length json_type json_valid json_set json_insert json_replace
	json_remove json_merge json_merge_patch json_merge_preserve json_search json_quote json_depth
	json_table json_exists json_build_object json_build_array jsonb_build_object jsonb_build_array
	to_json to_jsonb row_to_json array_to_json json_each json_each_text jsonb_each jsonb_each_text
	json_array_elements jsonb_array_elements json_array_length jsonb_array_length jsonb_set
	jsonb_insert jsonb_strip_nulls jsonb_pretty jsonb_typeof json_typeof jsonb_extract_path
	jsonb_extract_path_text json_extract_path json_extract_path_text jsonb_path_query
	jsonb_path_exists jsonb_path_match jsonb_object_keys json_object_keys
	array_length array_upper array_lower array_position array_positions array_append array_prepend
	array_cat array_remove array_replace cardinality unnest generate_series generate_subscripts
	array_ndims array_dims array_fill
	to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
	ts_headline setweight
	inet_aton inet_ntoa inet6_aton inet6_ntoa host masklen network broadcast
	nextval currval lastval last_insert_id found_rows row_count
	pg_sleep sleep benchmark is_free_lock is_used_lock pg_backend_pid connection_id
	pg_current_xact_id pg_current_xact_id_if_assigned txid_current txid_current_if_assigned
	pg_advisory_xact_lock pg_advisory_xact_lock_shared pg_try_advisory_xact_lock
	pg_try_advisory_xact_lock_shared pg_notify
	current_setting version database schema current_user session_user user system_user
	current_database current_schema current_schemas pg_typeof pg_column_size octet_length
	format_type to_regclass has_table_privilege name_const charset collation coercibility
	bin oct conv inet_server_addr pg_is_in_recovery
`)

// words builds a lookup set from a list of blank-separated lower-case names.
func words(list string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, w := range strings.Fields(list) {
		m[w] = struct{}{}
	}
	return m
}

// functionEffect classifies a call of name (any case), optionally
// qualified by a schema. Only a built-in's own schema (pg_catalog) keeps a
// qualified name known: public.count() is the application's.
func functionEffect(name, schema string) effect {
	var buf [64]byte
	if len(name) > len(buf) {
		return effectUnknown
	}
	lower := buf[:len(name)]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	if _, ok := sideEffectFunctions[string(lower)]; ok {
		return effectSide // whatever the schema: no application shadows these by accident
	}
	if schema != "" && !strings.EqualFold(schema, "pg_catalog") {
		return effectUnknown
	}
	if _, ok := pureFunctions[string(lower)]; ok {
		return effectNone
	}
	return effectUnknown
}

// tableContext reports the words after which "name (" is a table or a CTE
// with its column list, or an alias with its columns, not a call:
// INSERT INTO t (a, b), WITH x (a) AS (...), f() AS t (a, b).
func tableContext(prev string) bool {
	for _, w := range [...]string{"INTO", "INSERT", "REPLACE", "IGNORE", "LOW_PRIORITY", "HIGH_PRIORITY",
		"DELAYED", "TABLE", "WITH", "RECURSIVE", "AS", "REFERENCES", "UPSERT"} {
		if strings.EqualFold(prev, w) {
			return true
		}
	}
	return false
}

// noteCall records a name that a '(' follows, blanks and comments between
// them allowed: a function call unless the context makes it a table name.
// w is the name, "" for a quoted identifier (always the application's);
// ctx is the word before the dotted name it ends, schema the word before
// its last '.', if any. end is where the name ends in q.
func (s *stmtShape) noteCall(ctx, w, schema string, q string, end int, d Dialect) {
	if j := skipTrivia(q, end, d); j >= len(q) || q[j] != '(' || tableContext(ctx) {
		return
	}
	e := effectUnknown
	if w != "" {
		e = functionEffect(w, schema)
	}
	switch e {
	case effectSide:
		s.effects = true
	case effectUnknown:
		s.calls = true
	}
}

// noteInto records what an INTO at the top level writes: a table after
// INSERT, REPLACE or MERGE; otherwise (SELECT ... INTO) a user variable, a
// file, or on PostgreSQL a new table, none of which a retry may write again.
func (s *stmtShape) noteInto(prev string) {
	for _, w := range [...]string{"INSERT", "REPLACE", "MERGE", "IGNORE", "LOW_PRIORITY", "HIGH_PRIORITY", "DELAYED", "UPSERT"} {
		if strings.EqualFold(prev, w) {
			return
		}
	}
	s.effects = true
}

// skipTrivia returns the index of the first byte at or after i that is not
// blank or inside a comment, in dialect d's comment syntax.
func skipTrivia(q string, i int, d Dialect) int {
	my := d == DialectMySQL
	for i < len(q) {
		switch c := q[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-' && (!my || i+2 == len(q) || q[i+2] <= ' '):
			i = lineEnd(q, i)
		case c == '#' && my:
			i = lineEnd(q, i)
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			i, _ = blockCommentEnd(q, i, d == DialectPostgres || d == DialectUnknown)
		default:
			return i
		}
	}
	return i
}
