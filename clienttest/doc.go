// Package clienttest holds only tests: integration tests that drive the
// sqlconflict drivers through the clients applications already use (sqlx,
// GORM, bun) and check that get-or-create races end with no failed
// operation under [sqlconflict.RunTx] and that the classified errors survive
// each client's error handling. docs/clients.md describes what they show.
//
// Like the root package's integration tests, they run against the servers
// named by SQLCONFLICT_PG_DSN and SQLCONFLICT_MYSQL_DSN: unset, they skip;
// set, an unreachable server fails them. SQLCONFLICT_PG_DSN is used through
// both sqlconflict-postgres (lib/pq) and sqlconflict-pgx.
package clienttest
