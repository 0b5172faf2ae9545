package pgx_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/sqlconflict/sqlconflict/internal/itest"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// BenchmarkPaired is the root package's BenchmarkServerPaired for pgx (the
// root module does not depend on pgx): raw pgx's stdlib ("pgx") against
// sqlconflict-pgx, default options, on the server SQLCONFLICT_PG_DSN names
// (it skips without). Each iteration runs the operation once through each
// driver, alternating which goes first; the metrics are the median time of
// each (raw-ns/op, wrapped-ns/op) and the median of the pairs' ratios
// (wrapped/raw). ns/op is the sum of both and means nothing by itself.
//
//   - op=exec: autocommit UPDATE of one row
//   - op=exec-nomatch: autocommit UPDATE matching no row
//   - op=query: SELECT of one row by primary key, QueryRow+Scan
//   - op=tx: BEGIN; UPDATE; SELECT; COMMIT
func BenchmarkPaired(b *testing.B) {
	srv := pgServer(b)
	for _, op := range []string{"exec", "exec-nomatch", "query", "tx"} {
		b.Run("op="+op, func(b *testing.B) {
			raw, wrapped := srv.Open(b, "pgx"), srv.Open(b, sqlconflictpgx.DriverName)
			tbl := table(b, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
			mustExec(b, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
			update := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"
			sel := "SELECT v FROM " + tbl + " WHERE id = $1"
			itest.Pairs(b, raw, wrapped, false, func(ctx context.Context, db *sql.DB) error {
				switch op {
				case "exec":
					_, err := db.ExecContext(ctx, update, 1)
					return err
				case "exec-nomatch":
					_, err := db.ExecContext(ctx, update, -1)
					return err
				case "query":
					var v int64
					return db.QueryRowContext(ctx, sel, 1).Scan(&v)
				}
				return benchTx(ctx, db, update, sel)
			})
		})
	}
}

func benchTx(ctx context.Context, db *sql.DB, update, sel string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, update, 1); err != nil {
		return err
	}
	var v int64
	if err := tx.QueryRowContext(ctx, sel, 1).Scan(&v); err != nil {
		return err
	}
	return tx.Commit()
}

// median returns the middle of v (which it sorts), or 0 for none.
