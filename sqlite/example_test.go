package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/sqlconflict/sqlconflict"
	sqlconflictsqlite "github.com/sqlconflict/sqlconflict/sqlite"
)

// Importing the package registers "sqlconflict-sqlite"; DSNs are
// modernc.org/sqlite's, plus conflict_* options.
func Example() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	dsn := "file:" + filepath.Join(dir, "app.db") + "?_pragma=journal_mode(WAL)&conflict_retries=10"
	db, err := sql.Open(sqlconflictsqlite.DriverName, dsn)
	if err != nil {
		log.Fatal(err) // a bad conflict_* option, named
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"); err != nil {
		log.Fatal(err)
	}

	// Get-or-create: the transaction is rerun on "database is locked" and,
	// as asked, on a duplicate, when the rerun finds the winner's row.
	var id int64
	err = sqlconflict.TxRunner{RetryUniqueViolation: true}.Run(context.Background(), db, nil,
		func(ctx context.Context, tx *sql.Tx) error {
			err := tx.QueryRowContext(ctx, "SELECT id FROM tags WHERE name = ?", "go").Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				err = tx.QueryRowContext(ctx, "INSERT INTO tags (name) VALUES (?) RETURNING id", "go").Scan(&id)
			}
			return err
		})
	if err != nil {
		log.Fatal(err)
	}

	_, err = db.Exec("INSERT INTO tags (name) VALUES (?)", "go")
	cl := sqlconflict.Classify(err)
	fmt.Println(id, cl.Kind, cl.Dialect, cl.Table, cl.Column)
	// Output: 1 unique violation sqlite tags name
}

// OpenDB takes the options that have no DSN form, such as an Observer.
func ExampleOpenDB() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	var retries atomic.Int64
	opts := sqlconflict.DefaultOptions()
	opts.Observer = func(_ context.Context, o sqlconflict.Observation) {
		if o.Event == sqlconflict.EventRetry {
			retries.Add(1) // export as a metric
		}
	}
	db, err := sqlconflictsqlite.OpenDB(filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(0)&conflict_retries=20", opts)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE hits (n INTEGER)"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(retries.Load())
	// Output: 0
}
