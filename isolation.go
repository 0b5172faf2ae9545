package sqlconflict

import (
	"context"
	"database/sql/driver"
)

// isoLevel is a transaction isolation level as the wrapper tracks it.
type isoLevel uint8

const (
	isoUnset isoLevel = iota
	isoReadUncommitted
	isoReadCommitted
	isoRepeatableRead
	isoSerializable
)

// isoState is the connection's isolation bookkeeping.
type isoState struct {
	session isoLevel // the session default
	next    isoLevel // SET TRANSACTION without SESSION: the next transaction only
}

// txIso is the isolation bookkeeping of the current transaction.
type txIso struct {
	level isoLevel
}

func (ic *interceptor) initIsolation(ctx context.Context) error { return nil }

func (ic *interceptor) txIsolation(opts driver.TxOptions) txIso { return ic.nextTxIsolation() }

func (ic *interceptor) nextTxIsolation() txIso {
	if ic.iso.next != isoUnset {
		return txIso{level: ic.iso.next}
	}
	return txIso{level: ic.iso.session}
}

func (ic *interceptor) noteBegin(query string) {}
func (ic *interceptor) noteSet(query string)   {}
func (ic *interceptor) noteRead(query string)  {}
func (ic *interceptor) onConflict(cl Class)    {}

func (ic *interceptor) rereadMayBeBlind(k stmtKind, query string) bool { return false }

func (ic *interceptor) blindReread(ctx context.Context) error { return nil }
