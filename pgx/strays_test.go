package pgx_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/sqlconflict/sqlconflict"
	sqlconflictpgx "github.com/sqlconflict/sqlconflict/pgx"
)

// TestNewConnectorStrayOptions: a conflict_* option that pgx.ParseConfig
// left in RuntimeParams fails sqlconflict.NewConnector over pgx's own
// connector, naming it and not the password (pgx would send it to the
// server as a setting); OpenDB takes it as an option instead.
func TestNewConnectorStrayOptions(t *testing.T) {
	const pw = "s3cret-pw"
	cfg, err := pgx.ParseConfig("postgres://u:" + pw + "@127.0.0.1/db?sslmode=disable&conflict_retries=3")
	if err != nil {
		t.Fatal(err)
	}
	_, err = sqlconflict.NewConnector(stdlib.GetConnector(*cfg), sqlconflict.DefaultOptions())
	if err == nil || !strings.Contains(err.Error(), `"conflict_retries"`) || !strings.Contains(err.Error(), "Options.Retries") {
		t.Fatalf("NewConnector: %v, want the stray conflict_retries named", err)
	}
	if strings.Contains(err.Error(), pw) {
		t.Fatalf("the error shows the password: %v", err)
	}
	db, err := sqlconflictpgx.OpenDB(*cfg, sqlconflict.DefaultOptions())
	if err != nil {
		t.Fatalf("OpenDB reads the option: %v", err)
	}
	db.Close()
	clean, err := pgx.ParseConfig("postgres://u:" + pw + "@127.0.0.1/db?sslmode=disable&application_name=x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlconflict.NewConnector(stdlib.GetConnector(*clean), sqlconflict.DefaultOptions()); err != nil {
		t.Fatalf("NewConnector on a clean config: %v", err)
	}
}
