package sqlconflict_test

import (
	"errors"
	"fmt"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/sqlconflict/sqlconflict"
)

func ExampleClassify() {
	// What lib/pq returns for a duplicate key, wrapped by application code.
	err := fmt.Errorf("create user: %w", &pq.Error{
		Code:       "23505",
		Message:    `duplicate key value violates unique constraint "users_email_key"`,
		Table:      "users",
		Constraint: "users_email_key",
	})
	c := sqlconflict.Classify(err)
	fmt.Println(c.Kind, "|", c.Scope, "|", c.Dialect, c.Code, "|", c.Table, c.Constraint, "| retryable:", c.Retryable)
	// Output: unique violation | statement | postgres 23505 | users users_email_key | retryable: false
}

func ExampleClassify_mysql() {
	// MySQL 8 names the key as table.key inside the message only.
	err := &mysql.MySQLError{
		Number:   1062,
		SQLState: [5]byte{'2', '3', '0', '0', '0'},
		Message:  "Duplicate entry 'it's' for key 'articles.title'",
	}
	c := sqlconflict.Classify(err)
	fmt.Println(c.Kind, "|", c.Dialect, c.Code, c.SQLState, "|", c.Table, c.Constraint)
	// Output: unique violation | mysql 1062 23000 | articles title
}

func ExampleClassify_deadlock() {
	// The same kind of error has a different scope on each database:
	// PostgreSQL undoes the statement, InnoDB the whole transaction.
	pg := sqlconflict.Classify(&pq.Error{Code: "40P01"})
	my := sqlconflict.Classify(&mysql.MySQLError{Number: 1213})
	fmt.Println(pg.Dialect, pg.Kind, pg.Scope, pg.Retryable)
	fmt.Println(my.Dialect, my.Kind, my.Scope, my.Retryable)
	// Output:
	// postgres deadlock statement true
	// mysql deadlock transaction true
}

func ExampleIsRetryable() {
	errs := []error{
		fmt.Errorf("transfer: %w", &pq.Error{Code: "40001"}),               // serialization failure
		fmt.Errorf("transfer: %w", &mysql.MySQLError{Number: 1205}),        // lock wait timeout
		fmt.Errorf("transfer: %w", &mysql.MySQLError{Number: 1062}),        // duplicate key
		fmt.Errorf("transfer: %w", &pq.Error{Code: "40003"}),               // outcome unknown
		fmt.Errorf("transfer: %w", &mysql.MySQLError{Number: 9007}),        // TiDB write conflict
		fmt.Errorf("transfer: %w", errors.New("connection reset by peer")), // no code: unknown
	}
	for _, err := range errs {
		fmt.Println(sqlconflict.IsRetryable(err))
	}
	// Output:
	// true
	// true
	// false
	// false
	// true
	// false
}

func ExampleError() {
	// With conflict_wrap_errors=true the driver returns an *Error: it matches
	// the sentinel of its kind and still unwraps to the base driver's error.
	base := &pq.Error{Code: "23505", Message: "duplicate key value violates unique constraint \"users_email_key\""}
	var err error = &sqlconflict.Error{Class: sqlconflict.Classify(base), Err: base}
	err = fmt.Errorf("signup: %w", err)

	fmt.Println(errors.Is(err, sqlconflict.ErrUniqueViolation))
	fmt.Println(errors.Is(err, sqlconflict.ErrDeadlock))
	var pqErr *pq.Error
	fmt.Println(errors.As(err, &pqErr), pqErr.Code)
	// The message is the base driver's own; lib/pq v1.11 on writes the
	// SQLSTATE after it: pq: duplicate key value violates unique
	// constraint "users_email_key" (23505).
	fmt.Println(err.Error() == "signup: "+base.Error())
	// Output:
	// true
	// false
	// true 23505
	// true
}

func ExampleTxAbortedError() {
	// A deadlock doomed the transaction; the next statement reports that,
	// and retrying the whole transaction is what can help.
	err := &sqlconflict.TxAbortedError{Cause: &mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"}}
	c := sqlconflict.Classify(err)
	fmt.Println(c.Kind, "|", c.Scope, "|", c.Code, "| retryable:", c.Retryable)
	fmt.Println(errors.Is(err, sqlconflict.ErrTxAborted))
	fmt.Println(err)
	// Output:
	// transaction aborted | transaction | 1213 | retryable: true
	// true
	// sqlconflict: transaction aborted by an earlier error: Error 1213: Deadlock found when trying to get lock; try restarting transaction
}
