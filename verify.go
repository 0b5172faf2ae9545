package sqlconflict

import (
	"context"
	"database/sql/driver"
	"strconv"
	"time"
)

// Settling a COMMIT whose answer was lost (conflict_verify_commit,
// PostgreSQL). The server records every transaction's fate, so after the
// connection broke during COMMIT a fresh connection can ask whether the
// transaction committed: txid_status answers committed, aborted, or in
// progress while the old backend has not yet noticed that its client is
// gone (it is then terminated, which ends the transaction one way or the
// other, and asked again). To ask, the wrapper needs the transaction's id,
// read with the backend's pid just before COMMIT, in one round trip, and
// only for a transaction that wrote: one that only read has nothing to
// lose. A transaction that never got an id (its writes touched no row)
// changed nothing, so its COMMIT's outcome does not matter.
//
// MySQL and MariaDB keep no such record a client can query by id: the
// transaction's GTID comes in COMMIT's own answer, lost with it. Settling
// there would mean writing a marker row in every transaction, or running
// each as an XA transaction (XA RECOVER lists the prepared ones), which
// changes what the application's transactions send; the wrapper offers
// neither, and a lost COMMIT stays an unknown outcome (docs/reliability.md).

const (
	sqlTxIdentity = "SELECT pg_catalog.txid_current_if_assigned(), pg_catalog.pg_backend_pid()"
	// verifyTimeout bounds the asking when the transaction's context has no
	// deadline of its own.
	verifyTimeout = 10 * time.Second
)

// txIdentity is what the wrapper learned of a transaction before COMMIT.
type txIdentity struct {
	xid int64 // 0: none assigned
	pid int64
}

// learnIdentity reads the transaction's id before COMMIT, when the
// transaction wrote. It reports whether there is an id to settle by.
func (ic *interceptor) learnIdentity(ctx context.Context) (txIdentity, bool) {
	if !ic.cfg.VerifyCommit || ic.cfg.Dialect != DialectPostgres || !ic.tx.wrote || ic.tx.failed {
		return txIdentity{}, false
	}
	var id txIdentity
	err := ic.queryRows(ctx, sqlTxIdentity, func(cols []driver.Value) {
		id.xid, _ = intValue(cols[0])
		id.pid, _ = intValue(cols[1])
	})
	return id, err == nil && id.xid != 0
}

// settleCommit asks, on a fresh connection, what became of the transaction
// whose COMMIT failed with err and an unknown outcome. It returns nil if it
// committed, a retryable error if it rolled back, and err as it was when
// the server cannot tell.
func (ic *interceptor) settleCommit(ctx context.Context, id txIdentity, err error) error {
	if ctx.Err() != nil {
		return err // the caller gave up; asking would outlive its deadline
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, verifyTimeout)
		defer cancel()
	}
	bc, cerr := ic.cfg.base.Connect(ctx)
	if cerr != nil {
		return err
	}
	defer bc.Close()
	q := ownConn{conn: bc}
	for tries := 0; tries < 2; tries++ {
		status, serr := q.text(ctx, "SELECT pg_catalog.txid_status("+strconv.FormatInt(id.xid, 10)+")")
		switch {
		case serr != nil:
			return err
		case status == "committed":
			ic.event(ctx, Observation{Event: EventCommitSettled, Class: Class{Dialect: DialectPostgres}})
			return nil
		case status == "aborted":
			ic.event(ctx, Observation{Event: EventCommitSettled, Class: Class{Kind: KindConnectionLost, Scope: ScopeTransaction, Dialect: DialectPostgres}})
			return &rolledBackError{err: err, xid: id.xid}
		case status != "in progress" || tries > 0:
			return err
		}
		// The old backend still holds the transaction: end it, if it is
		// still that backend (a pid may be reused), and wait until it has
		// gone, so that the status is final.
		xid32 := strconv.FormatInt(id.xid%(1<<32), 10)
		pid := strconv.FormatInt(id.pid, 10)
		if _, terr := q.text(ctx, "SELECT pg_catalog.pg_terminate_backend(pid)::text FROM pg_catalog.pg_stat_activity "+
			"WHERE pid = "+pid+" AND backend_xid::text = '"+xid32+"'"); terr != nil {
			return err
		}
		for {
			n, werr := q.text(ctx, "SELECT count(*)::text FROM pg_catalog.pg_stat_activity WHERE pid = "+pid+
				" AND backend_xid::text = '"+xid32+"'")
			if werr != nil {
				return err
			}
			if n == "0" {
				break
			}
			if sleep(ctx, 10*time.Millisecond) != nil {
				return err
			}
		}
	}
	return err
}

// rolledBackError is a COMMIT whose answer was lost, settled: the server
// says the transaction rolled back, so it may run again. It reads as the
// driver's error, and unwraps to it.
type rolledBackError struct {
	err error
	xid int64
}

func (e *rolledBackError) Error() string {
	return e.err.Error() + " (sqlconflict: the server says transaction " + strconv.FormatInt(e.xid, 10) + " rolled back)"
}

func (e *rolledBackError) Unwrap() error { return e.err }

func (e *rolledBackError) class() Class {
	return Class{Kind: KindConnectionLost, Scope: ScopeTransaction, Retryable: true, Dialect: DialectPostgres}
}

// ownConn runs the wrapper's own queries on a connection of its own.
type ownConn struct{ conn driver.Conn }

// text runs q and returns the first column of its first row as text ("" for
// no row or NULL).
func (c ownConn) text(ctx context.Context, q string) (string, error) {
	var out string
	err := queryConn(ctx, c.conn, q, func(cols []driver.Value) {
		if out == "" {
			out, _ = textValue(cols[0])
		}
	})
	return out, err
}

// intValue reads an integer column, as drivers return it (int64, or text).
func intValue(v driver.Value) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case []byte:
		n, err := strconv.ParseInt(string(v), 10, 64)
		return n, err == nil
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}
