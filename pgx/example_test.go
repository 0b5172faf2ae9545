package pgx_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/sqlconflict/sqlconflict"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// Importing the package registers "sqlconflict-pgx"; DSNs are pgx's, plus
// conflict_* options.
func Example() {
	db, err := sql.Open(sqlconflictpgx.DriverName, "postgres://app@db.example/app?conflict_savepoints=writes")
	if err != nil {
		log.Fatal(err) // a bad conflict_* option, named
	}
	defer db.Close()

	err = sqlconflict.TxRunner{RetryUniqueViolation: true}.Run(context.Background(), db, nil,
		func(ctx context.Context, tx *sql.Tx) error {
			var id int64
			err := tx.QueryRowContext(ctx, "SELECT id FROM tags WHERE name = $1", "go").Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				_, err = tx.ExecContext(ctx, "INSERT INTO tags (name) VALUES ($1)", "go")
			}
			return err
		})
	if err != nil {
		log.Print(err)
	}
}

// OpenDB takes a configuration built in code. conflict_* options parsed into
// it by pgx.ParseConfig override the Options given.
func ExampleOpenDB() {
	config, err := pgx.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	opts := sqlconflict.DefaultOptions()
	opts.Savepoints = sqlconflict.SavepointsWrites
	db, err := sqlconflictpgx.OpenDB(*config, opts)
	if err != nil {
		log.Fatal(err) // an invalid option
	}
	defer db.Close()
}
