package sqlconflict

import (
	"database/sql"

	"github.com/jackc/pgx/v5/stdlib"
)

// driverPgxTest is the driver the pgx subpackage registers as
// "sqlconflict-pgx", built the same way under a name of its own: the
// subpackage imports this package, so these tests cannot import it, and a
// test binary that did (an external example) must not register the name
// twice.
const driverPgxTest = "sqlconflict-pgx-test"

func init() {
	sql.Register(driverPgxTest, Wrap(stdlib.GetDefaultDriver(), withDialect(DialectPostgres)))
}
