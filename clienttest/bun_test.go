package clienttest

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/sqlconflict/sqlconflict"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"
)

type bunTag struct {
	bun.BaseModel `bun:"alias:tag"`
	ID            int64 `bun:",pk,autoincrement"`
	Name          string
}

// openBun wraps a *sql.DB of the sqlconflict driver in bun.
func openBun(t *testing.T, tg target, params ...string) (*bun.DB, *sql.DB) {
	t.Helper()
	db := tg.open(t, params...)
	if tg.PG() {
		return bun.NewDB(db, pgdialect.New()), db
	}
	return bun.NewDB(db, mysqldialect.New()), db
}

// TestBunGetOrCreateRace: select-then-insert through bun's query builders in
// RunTx: each query runs in RunTx's transaction through Conn(tx).
func TestBunGetOrCreateRace(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		bdb, db := openBun(t, tg)
		table, _ := tg.tagTable(t, db)
		race(t, db, table, func(ctx context.Context, tx *sql.Tx, key string) (int64, error) {
			var tag bunTag
			err := bdb.NewSelect().Conn(tx).Model(&tag).ModelTableExpr("? AS tag", bun.Ident(table)).
				Where("name = ?", key).Scan(ctx)
			if !errors.Is(err, sql.ErrNoRows) {
				return tag.ID, err
			}
			tag = bunTag{Name: key}
			if _, err := bdb.NewInsert().Conn(tx).Model(&tag).ModelTableExpr("?", bun.Ident(table)).Exec(ctx); err != nil {
				return 0, err
			}
			if tag.ID == 0 {
				return 0, errors.New("bun did not set the new row's id")
			}
			return tag.ID, nil
		})
	})
}

// TestBunUniqueViolation: bun returns the driver's error as it is, directly
// and through RunTx.
func TestBunUniqueViolation(t *testing.T) {
	eachTarget(t, func(t *testing.T, tg target) {
		ctx := context.Background()
		bdb, db := openBun(t, tg)
		table, constraint := tg.tagTable(t, db)
		insert := func(conn bun.IConn) error {
			_, err := bdb.NewInsert().Conn(conn).Model(&bunTag{Name: "dup"}).ModelTableExpr("?", bun.Ident(table)).Exec(ctx)
			return err
		}
		if err := insert(bdb); err != nil {
			t.Fatal(err)
		}
		tg.checkUnique(t, insert(bdb), constraint)
		err := sqlconflict.RunTx(ctx, db, nil, func(ctx context.Context, tx *sql.Tx) error { return insert(tx) })
		tg.checkUnique(t, err, constraint)
		if n := rows(t, db, table); n != 1 {
			t.Errorf("rows = %d, want 1", n)
		}
	})
}
