package pgx_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

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
	ctx := context.Background()
	srv := pgServer(b)
	for _, op := range []string{"exec", "exec-nomatch", "query", "tx"} {
		b.Run("op="+op, func(b *testing.B) {
			raw, wrapped := srv.Open(b, "pgx"), srv.Open(b, sqlconflictpgx.DriverName)
			tbl := table(b, raw, "", "id INT PRIMARY KEY, v INT NOT NULL")
			mustExec(b, raw, "INSERT INTO "+tbl+" (id, v) VALUES (1, 0)")
			update := "UPDATE " + tbl + " SET v = v + 1 WHERE id = $1"
			sel := "SELECT v FROM " + tbl + " WHERE id = $1"
			do := func(db *sql.DB) time.Duration {
				start := time.Now()
				var err error
				switch op {
				case "exec":
					_, err = db.ExecContext(ctx, update, 1)
				case "exec-nomatch":
					_, err = db.ExecContext(ctx, update, -1)
				case "query":
					var v int64
					err = db.QueryRowContext(ctx, sel, 1).Scan(&v)
				case "tx":
					err = benchTx(ctx, db, update, sel)
				}
				if err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			do(raw) // open both connections outside the timed loop
			do(wrapped)
			var rawT, wrappedT, ratios []float64
			for i := 0; b.Loop(); i++ {
				var r, w time.Duration
				if i%2 == 0 {
					r, w = do(raw), do(wrapped)
				} else {
					w, r = do(wrapped), do(raw)
				}
				rawT = append(rawT, float64(r))
				wrappedT = append(wrappedT, float64(w))
				ratios = append(ratios, float64(w)/float64(r))
			}
			b.ReportMetric(median(rawT), "raw-ns/op")
			b.ReportMetric(median(wrappedT), "wrapped-ns/op")
			b.ReportMetric(median(ratios), "wrapped/raw")
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
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}
