package clienttest

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/sqlconflict/sqlconflict"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// sqlx picks its bindvars ($1 or ?) by driver name and does not know the
// sqlconflict names; docs/clients.md shows the two fixes. This one is
// global.
func init() {
	sqlx.BindDriver(sqlconflict.DriverPostgres, sqlx.DOLLAR)
	sqlx.BindDriver(sqlconflictpgx.DriverName, sqlx.DOLLAR)
	sqlx.BindDriver(sqlconflict.DriverMySQL, sqlx.QUESTION)
}

type sqlxTag struct {
	ID   int64  `db:"id"`
	Name string `db:"name"`
}

// openSqlx opens the target through sqlx.Open, as an application would.
func (tg target) openSqlx(t *testing.T, params ...string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open(tg.Driver, tg.DSNWith(params...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tg.Ping(t, db.DB)
	return db
}

// sqlxTx gives the transaction RunTx began sqlx's API. The Tx knows no driver
// name (sqlx keeps it unexported), so its own Rebind and Named* methods would
// use '?': bind with the *sqlx.DB and run on the Tx.
func sqlxTx(db *sqlx.DB, tx *sql.Tx) *sqlx.Tx { return &sqlx.Tx{Tx: tx, Mapper: db.Mapper} }

// TestSqlxGetOrCreateRace: select-then-insert through sqlx's Get and a
// named insert, in RunTx.
func TestSqlxGetOrCreateRace(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		db := tg.openSqlx(t)
		table, _ := tg.tagTable(t, db.DB)
		sel := db.Rebind("SELECT id, name FROM " + table + " WHERE name = ?")
		race(t, db.DB, table, func(ctx context.Context, tx *sql.Tx, key string) (int64, error) {
			var tag sqlxTag
			stx := sqlxTx(db, tx)
			err := stx.GetContext(ctx, &tag, sel, key)
			if !errors.Is(err, sql.ErrNoRows) {
				return tag.ID, err
			}
			tag = sqlxTag{Name: key}
			ins, args, err := db.BindNamed("INSERT INTO "+table+" (name) VALUES (:name)", tag)
			if err != nil {
				return 0, err
			}
			if tg.PG() {
				err := stx.GetContext(ctx, &tag.ID, ins+" RETURNING id", args...)
				return tag.ID, err
			}
			res, err := stx.ExecContext(ctx, ins, args...)
			if err != nil {
				return 0, err
			}
			return res.LastInsertId()
		})
	})
}

// TestSqlxUniqueViolation: the unique violation reaches the caller of
// sqlx's methods, and of RunTx, classified and holding the driver's error.
func TestSqlxUniqueViolation(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		ctx := context.Background()
		db := tg.openSqlx(t)
		table, constraint := tg.tagTable(t, db.DB)
		ins := "INSERT INTO " + table + " (name) VALUES (:name)"
		if _, err := db.NamedExecContext(ctx, ins, sqlxTag{Name: "dup"}); err != nil {
			t.Fatal(err)
		}

		_, err := db.NamedExecContext(ctx, ins, sqlxTag{Name: "dup"})
		tg.checkUnique(t, err, constraint)

		// RunTx without RetryUniqueViolation returns it as fn did.
		err = sqlconflict.RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
			q, args, err := db.BindNamed(ins, sqlxTag{Name: "dup"})
			if err != nil {
				return err
			}
			_, err = sqlxTx(db, tx).ExecContext(ctx, q, args...)
			return err
		})
		tg.checkUnique(t, err, constraint)

		// sqlx.NewDb with the base driver's name needs no BindDriver.
		bind := map[bool]string{true: "postgres", false: "mysql"}[tg.PG()]
		wrapped := sqlx.NewDb(tg.open(t, "conflict_wrap_errors=true"), bind)
		_, err = wrapped.NamedExecContext(ctx, ins, sqlxTag{Name: "dup"})
		tg.checkUnique(t, err, constraint)
		if !errors.Is(err, sqlconflict.ErrUniqueViolation) {
			t.Errorf("conflict_wrap_errors=true: %T %v does not match ErrUniqueViolation", err, err)
		}
		if n := rows(t, db.DB, table); n != 1 {
			t.Errorf("rows = %d, want 1", n)
		}
	})
}

// TestSqlxDriverName: what docs/clients.md says of DriverName. sqlx.Open
// keeps the wrapper's name, which BindDriver (above) does not change, so
// code branching on DriverName sees "sqlconflict-postgres"; sqlx.NewDb
// with the base driver's name keeps "postgres", and its bindvars, while
// the statements still go through the wrapper. sql.Open does not connect:
// no server needed.
func TestSqlxDriverName(t *testing.T) {
	opened, err := sqlx.Open(sqlconflict.DriverPostgres, "postgres://u@localhost/db")
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	if got := opened.DriverName(); got != sqlconflict.DriverPostgres {
		t.Errorf("sqlx.Open: DriverName() = %q, want %q", got, sqlconflict.DriverPostgres)
	}

	sqlDB, err := sql.Open(sqlconflict.DriverPostgres, "postgres://u@localhost/db")
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	db := sqlx.NewDb(sqlDB, "postgres")
	if got := db.DriverName(); got != "postgres" {
		t.Errorf("sqlx.NewDb: DriverName() = %q, want postgres", got)
	}
	if got := db.Rebind("SELECT ? + ?"); got != "SELECT $1 + $2" {
		t.Errorf("sqlx.NewDb: Rebind = %q", got)
	}
	if _, ok := db.Driver().(*sqlconflict.Driver); !ok {
		t.Errorf("sqlx.NewDb: driver %T, want the wrapper", db.Driver())
	}
}
