package sqlconflict_test

import (
	"fmt"
	"time"

	"github.com/sqlconflict/sqlconflict"
)

func ExampleSplitDSN() {
	opts, dsn, err := sqlconflict.SplitDSN(
		"app:s3cret@tcp(db:3306)/shop?parseTime=true&conflict_retries=5&conflict_savepoints=writes",
		sqlconflict.DSNAuto, sqlconflict.DefaultOptions())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(dsn)
	fmt.Println(opts.Retries, opts.Savepoints, opts.BlindReread)
	// Output:
	// app:s3cret@tcp(db:3306)/shop?parseTime=true
	// 5 writes fix
}

func ExampleSplitDSN_postgresURL() {
	opts, dsn, err := sqlconflict.SplitDSN(
		"postgres://app:s3cret@db:5432/shop?conflict_backoff=10ms&sslmode=disable&conflict_max_backoff=2s",
		sqlconflict.DSNAuto, sqlconflict.DefaultOptions())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(dsn)
	fmt.Println(opts.Backoff, opts.MaxBackoff)
	// Output:
	// postgres://app:s3cret@db:5432/shop?sslmode=disable
	// 10ms 2s
}

func ExampleSplitDSN_postgresKV() {
	opts, dsn, err := sqlconflict.SplitDSN(
		`host=db dbname=shop password='it\'s s3cret' conflict_blind_reread=error conflict_wrap_errors=true`,
		sqlconflict.DSNPostgresKV, sqlconflict.DefaultOptions())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(dsn)
	fmt.Println(opts.BlindReread, opts.WrapErrors)
	// Output:
	// host=db dbname=shop password='it\'s s3cret'
	// error true
}

func ExampleSplitDSN_error() {
	_, _, err := sqlconflict.SplitDSN("postgres://app:s3cret@db/shop?conflict_retries=many",
		sqlconflict.DSNAuto, sqlconflict.DefaultOptions())
	fmt.Println(err)
	_, _, err = sqlconflict.SplitDSN("app:s3cret@tcp(db)/shop?conflict_retry=1",
		sqlconflict.DSNAuto, sqlconflict.DefaultOptions())
	fmt.Println(err)
	// Output:
	// sqlconflict: DSN option conflict_retries="many": want an integer >= 0
	// sqlconflict: unknown DSN option "conflict_retry" (known: conflict_retries, conflict_retry_timeout, conflict_backoff, conflict_max_backoff, conflict_savepoints, conflict_savepoint_budget, conflict_blind_reread, conflict_wrap_errors, conflict_retry_functions, conflict_cancel_grace, conflict_verify_commit, conflict_replay, conflict_replay_statements, conflict_replay_bytes)
}

func ExampleOptions_Validate() {
	opts := sqlconflict.DefaultOptions()
	opts.Backoff = 2 * time.Second // beyond the default MaxBackoff of 1s
	fmt.Println(opts.Validate())
	// Output:
	// sqlconflict: Options.MaxBackoff (conflict_max_backoff) must be >= Options.Backoff (conflict_backoff, 2s), got 1s
}

func ExampleDefaultOptions() {
	fmt.Printf("%+v\n", sqlconflict.DefaultOptions())
	// Output:
	// {Retries:50 RetryTimeout:10s Backoff:5ms MaxBackoff:1s Savepoints:off SavepointBudget:32 BlindReread:fix WrapErrors:false RetryFunctions:false CancelGrace:80ms VerifyCommit:false Replay:on ReplayStatements:1000 ReplayBytes:1048576 Logger:<nil> Observer:<nil> Dialect:unknown NetConn:<nil>}
}

// Verified transaction replay is one DSN option: an application's own
// transactions that a deadlock or serialization failure aborted are
// replayed, and go on only if everything they saw is the same.
func ExampleReplayMode() {
	opts, dsn, err := sqlconflict.SplitDSN("postgres://app@db/shop?sslmode=disable&conflict_replay=on", sqlconflict.DSNAuto, sqlconflict.DefaultOptions())
	if err != nil {
		panic(err)
	}
	fmt.Println(opts.Replay, opts.ReplayStatements, dsn)
	// Output:
	// on 1000 postgres://app@db/shop?sslmode=disable
}

// The zero Options means the defaults; a negative count or duration means
// none, which is how a DSN's 0 reads.
func ExampleOptions() {
	var opts sqlconflict.Options // the defaults: 50 retries, replay on, blind re-reads fixed
	fmt.Println(opts.Replay, opts.BlindReread)

	opts.Retries = -1 // no statement retries (conflict_retries=0)
	fmt.Println(opts.Validate())

	fromDSN, _, err := sqlconflict.SplitDSN("postgres://db/app?conflict_retries=0", sqlconflict.DSNAuto, sqlconflict.Options{})
	fmt.Println(fromDSN.Retries, fromDSN.Backoff, err)
	// Output:
	// on fix
	// <nil>
	// -1 0s <nil>
}
