package sqlconflict

import "errors"

// Sentinel errors, one per [Kind]. Errors returned with conflict_wrap_errors=true
// match them with errors.Is, so callers need not know which database they talk to.
var (
	ErrUniqueViolation      = errors.New("sqlconflict: unique violation")
	ErrForeignKeyViolation  = errors.New("sqlconflict: foreign key violation")
	ErrNotNullViolation     = errors.New("sqlconflict: not null violation")
	ErrCheckViolation       = errors.New("sqlconflict: check violation")
	ErrExclusionViolation   = errors.New("sqlconflict: exclusion violation")
	ErrIntegrityViolation   = errors.New("sqlconflict: integrity violation")
	ErrDeadlock             = errors.New("sqlconflict: deadlock")
	ErrSerializationFailure = errors.New("sqlconflict: serialization failure")
	ErrTransactionRollback  = errors.New("sqlconflict: transaction rollback")
	ErrLockTimeout          = errors.New("sqlconflict: lock timeout")
	ErrQueryCanceled        = errors.New("sqlconflict: query canceled")
	ErrTxAborted            = errors.New("sqlconflict: transaction aborted")
	ErrConnectionLost       = errors.New("sqlconflict: connection lost")
	ErrUnavailable          = errors.New("sqlconflict: server unavailable")
	ErrReadOnly             = errors.New("sqlconflict: read only")

	// ErrBlindReread reports that a re-read after a conflict cannot see the
	// conflicting row because the transaction's snapshot predates it
	// (REPEATABLE READ); only a locking read or a new transaction can.
	ErrBlindReread = errors.New("sqlconflict: blind re-read: the transaction snapshot predates the conflicting row")
)

// Err returns the sentinel error for k, or nil for [KindUnknown].
func (k Kind) Err() error {
	switch k {
	case KindUniqueViolation:
		return ErrUniqueViolation
	case KindForeignKeyViolation:
		return ErrForeignKeyViolation
	case KindNotNullViolation:
		return ErrNotNullViolation
	case KindCheckViolation:
		return ErrCheckViolation
	case KindExclusionViolation:
		return ErrExclusionViolation
	case KindIntegrityViolation:
		return ErrIntegrityViolation
	case KindDeadlock:
		return ErrDeadlock
	case KindSerializationFailure:
		return ErrSerializationFailure
	case KindTransactionRollback:
		return ErrTransactionRollback
	case KindLockTimeout:
		return ErrLockTimeout
	case KindQueryCanceled:
		return ErrQueryCanceled
	case KindTxAborted:
		return ErrTxAborted
	case KindConnectionLost:
		return ErrConnectionLost
	case KindUnavailable:
		return ErrUnavailable
	case KindReadOnly:
		return ErrReadOnly
	}
	return nil
}

// Error is what the driver returns instead of the base driver's error when
// conflict_wrap_errors=true. It keeps the original error reachable so that
// errors.As to *pq.Error or *mysql.MySQLError still works, and adds the
// classification and a match on the sentinel of its kind.
type Error struct {
	Class Class
	Err   error
}

// Error returns the base driver's message unchanged, so logs and string
// matching written for the base driver keep working.
func (e *Error) Error() string {
	if e.Err == nil {
		return "sqlconflict: " + e.Class.Kind.String()
	}
	return e.Err.Error()
}

// Unwrap returns the base driver's error.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of the error's kind, for
// example errors.Is(err, ErrUniqueViolation).
func (e *Error) Is(target error) bool {
	s := e.Class.Kind.Err()
	return s != nil && target == s
}

// wrapError wraps err in an *Error when it is a conflict we know; other
// errors, and nil, are returned unchanged.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*Error); ok {
		return err
	}
	c := Classify(err)
	if c.Kind == KindUnknown {
		return err
	}
	return &Error{Class: c, Err: err}
}

// TxAbortedError is returned for statements and Commit on a transaction that
// an earlier error doomed: the server has rolled back (or will only roll back)
// the work, so running on would silently lose it. Cause is that earlier error.
type TxAbortedError struct {
	Cause error
}

// Error names the earlier error, since it is the one worth reporting.
func (e *TxAbortedError) Error() string {
	if e.Cause == nil {
		return "sqlconflict: transaction aborted by an earlier error"
	}
	return "sqlconflict: transaction aborted by an earlier error: " + e.Cause.Error()
}

// Unwrap returns [ErrTxAborted] and the cause, so that errors.Is matches
// ErrTxAborted and errors.Is / errors.As still reach the earlier error (for
// example a *pq.Error).
func (e *TxAbortedError) Unwrap() []error {
	if e == nil {
		return nil
	}
	if e.Cause == nil {
		return []error{ErrTxAborted}
	}
	return []error{ErrTxAborted, e.Cause}
}

// LostConnError is returned instead of driver.ErrBadConn when the connection
// broke while a statement that may write was in flight: the statement may
// have run. It matches [ErrConnectionLost] with errors.Is and deliberately
// does not unwrap to driver.ErrBadConn, which would make database/sql run the
// statement again on another connection.
type LostConnError struct{ Cause error }

func (e *LostConnError) Error() string {
	return "sqlconflict: connection lost with the statement in flight; it may have run: " + e.Cause.Error()
}

// Is reports whether target is ErrConnectionLost.
func (e *LostConnError) Is(target error) bool { return target == ErrConnectionLost }
