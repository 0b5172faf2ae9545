package clienttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/sqlconflict/sqlconflict"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

type gormTag struct {
	ID   int64 `gorm:"primaryKey"`
	Name string
}

// gormTx returns a GORM handle whose statements run in tx, the transaction
// RunTx began. It is what GORM's own Begin returns, over a transaction GORM
// did not begin: a session with a fresh statement whose connection pool is
// the transaction. GORM's default transaction around Create and Save then
// notices it is inside one and starts none.
func gormTx(ctx context.Context, db *gorm.DB, tx *sql.Tx) *gorm.DB {
	g := db.Session(&gorm.Session{Context: ctx, NewDB: true})
	g.Statement.ConnPool = tx
	return g
}

// gormOpen is a way of handing GORM a sqlconflict driver.
type gormOpen struct {
	name string
	open func(t *testing.T, tg target, params ...string) gorm.Dialector
}

var gormOpens = []gormOpen{
	// GORM opens the driver by name.
	{"DriverName", func(t *testing.T, tg target, params ...string) gorm.Dialector {
		if tg.PG() {
			return postgres.New(postgres.Config{DriverName: tg.Driver, DSN: tg.DSNWith(params...)})
		}
		return mysql.New(mysql.Config{DriverName: tg.Driver, DSN: tg.DSNWith(params...)})
	}},
	// GORM uses a *sql.DB the application opened.
	{"Conn", func(t *testing.T, tg target, params ...string) gorm.Dialector {
		db := tg.open(t, params...)
		if tg.PG() {
			return postgres.New(postgres.Config{Conn: db})
		}
		return mysql.New(mysql.Config{Conn: db})
	}},
}

// openGorm opens tg through GORM and returns GORM's *sql.DB too.
func openGorm(t *testing.T, tg target, how gormOpen, translate bool, params ...string) (*gorm.DB, *sql.DB) {
	t.Helper()
	gdb, err := gorm.Open(how.open(t, tg, params...), &gorm.Config{
		Logger:         logger.Default.LogMode(logger.Silent),
		TranslateError: translate,
	})
	if err != nil {
		tg.Unreachable(t, err)
	}
	db, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return gdb, db
}

// TestGormGetOrCreateRace: GORM's FirstOrCreate in RunTx, with GORM opening
// the driver by name and over an existing *sql.DB.
func TestGormGetOrCreateRace(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		for _, how := range gormOpens {
			t.Run(how.name, func(t *testing.T) {
				gdb, db := openGorm(t, tg, how, false)
				table, _ := tg.tagTable(t, db)
				race(t, db, table, func(ctx context.Context, tx *sql.Tx, key string) (int64, error) {
					var tag gormTag
					err := gormTx(ctx, gdb, tx).Table(table).FirstOrCreate(&tag, gormTag{Name: key}).Error
					return tag.ID, err
				})
			})
		}
	})
}

// TestGormTranslateErrorRace: with TranslateError, GORM replaces lib/pq's and
// MySQL's unique violation with gorm.ErrDuplicatedKey, which RunTx does not
// recognise; the transaction asks for its rerun with ErrRetryTx instead.
func TestGormTranslateErrorRace(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		gdb, db := openGorm(t, tg, gormOpens[0], true)
		table, _ := tg.tagTable(t, db)
		race(t, db, table, func(ctx context.Context, tx *sql.Tx, key string) (int64, error) {
			var tag gormTag
			err := gormTx(ctx, gdb, tx).Table(table).FirstOrCreate(&tag, gormTag{Name: key}).Error
			if errors.Is(err, gorm.ErrDuplicatedKey) {
				return 0, fmt.Errorf("%w: %w", sqlconflict.ErrRetryTx, err)
			}
			return tag.ID, err
		})
	})
}

// TestGormUniqueViolation: what a unique violation looks like through GORM,
// with and without TranslateError and conflict_wrap_errors, directly and
// through RunTx.
//
// Without TranslateError it is the driver's error, classified. With it,
// GORM's dialectors replace the error: gorm.ErrDuplicatedKey matches, but
// only the PostgreSQL dialector over pgx keeps the *pgconn.PgError wrapped
// inside; over lib/pq (recognised by a JSON round trip) and MySQL the
// driver's error, and so the classification, is gone. With
// conflict_wrap_errors=true the dialectors no longer recognise the error and
// leave it alone: sqlconflict.ErrUniqueViolation matches, gorm's does not.
func TestGormUniqueViolation(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		for _, tc := range []struct {
			name      string
			translate bool
			params    []string
		}{
			{"plain", false, nil},
			{"TranslateError", true, nil},
			{"TranslateError+wrap_errors", true, []string{"conflict_wrap_errors=true"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := context.Background()
				gdb, db := openGorm(t, tg, gormOpens[0], tc.translate, tc.params...)
				table, constraint := tg.tagTable(t, db)
				if err := gdb.Table(table).Create(&gormTag{Name: "dup"}).Error; err != nil {
					t.Fatal(err)
				}
				direct := gdb.Table(table).Create(&gormTag{Name: "dup"}).Error
				inTx := sqlconflict.RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					return gormTx(ctx, gdb, tx).Table(table).Create(&gormTag{Name: "dup"}).Error
				})
				for _, err := range []error{direct, inTx} {
					if err == nil {
						t.Fatal("duplicate insert succeeded")
					}
					wrapped := len(tc.params) > 0
					translated := tc.translate && !wrapped
					if got := errors.Is(err, gorm.ErrDuplicatedKey); got != translated {
						t.Errorf("errors.Is(%v, gorm.ErrDuplicatedKey) = %v, want %v", err, got, translated)
					}
					if wrapped && !errors.Is(err, sqlconflict.ErrUniqueViolation) {
						t.Errorf("errors.Is(%v, sqlconflict.ErrUniqueViolation) = false", err)
					}
					if !translated || tg.Name == "pgx" {
						tg.checkUnique(t, err, constraint)
						continue
					}
					// The driver's error is gone: if GORM starts keeping
					// it, docs/clients.md needs updating.
					if sqlconflict.IsUniqueViolation(err) || tg.AsDriverError(err) {
						t.Errorf("%T %v: GORM now keeps the driver's error through TranslateError", err, err)
					}
				}
				if n := rows(t, db, table); n != 1 {
					t.Errorf("rows = %d, want 1", n)
				}
			})
		}
	})
}

// TestGormNestedTransaction: GORM's nested Transaction sets savepoints of
// its own; they and conflict_savepoints=writes coexist. The nested
// transaction's duplicate insert fails and is rolled back to GORM's
// savepoint, and the outer transaction reads the row and commits.
func TestGormNestedTransaction(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		for _, params := range [][]string{{"conflict_savepoints=off"}, {"conflict_savepoints=writes"}} {
			t.Run(params[0], func(t *testing.T) {
				ctx := context.Background()
				gdb, db := openGorm(t, tg, gormOpens[0], false, params...)
				table, constraint := tg.tagTable(t, db)
				if err := gdb.Table(table).Create(&gormTag{Name: "dup"}).Error; err != nil {
					t.Fatal(err)
				}
				var nested error
				err := sqlconflict.RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error {
					g := gormTx(ctx, gdb, tx)
					if err := g.Table(table).Create(&gormTag{Name: "before"}).Error; err != nil {
						return err
					}
					nested = g.Transaction(func(g *gorm.DB) error {
						return g.Table(table).Create(&gormTag{Name: "dup"}).Error
					})
					var tag gormTag
					if err := g.Table(table).Where("name = ?", "dup").First(&tag).Error; err != nil {
						return fmt.Errorf("re-read after the nested failure: %w", err)
					}
					return g.Table(table).Create(&gormTag{Name: "after"}).Error
				})
				if err != nil {
					t.Fatal(err)
				}
				tg.checkUnique(t, nested, constraint)
				if n := rows(t, db, table); n != 3 {
					t.Errorf("rows = %d, want 3", n)
				}
			})
		}
	})
}
