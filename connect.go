package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"time"

	"github.com/ngrok/sqlmw"
)

// Connect opens a base connection and gives it its own interceptor. sqlmw
// hands an interceptor no connection identity, so one interceptor per
// connection is what makes the interceptor's fields the connection's state:
// they live and die with the connection, with no map to leak or lock.
//
// A connection that could not be opened sent nothing of the application's,
// so Connect tries again, within conflict_retries and
// conflict_retry_timeout and the caller's context, when the failure may
// pass: a refused or reset connection, a handshake cut short, a server
// starting up, full, or read-only. The statement that needed the
// connection then rides through a restart or a failover.
func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	var first time.Time
	var last error // the last failure that was not the context's
	for attempt := 0; ; attempt++ {
		conn, err := c.connectOnce(ctx)
		if err == nil {
			return conn, nil
		}
		err = c.connectError(err)
		if attempt == 0 {
			first = time.Now()
		}
		if ctx.Err() != nil {
			if last != nil {
				return nil, &RetryError{Attempts: attempt + 1, Err: last, Ctx: context.Cause(ctx), op: "connect"}
			}
			// Nothing but the context ended it: its own error, as
			// database/sql returns when the context ends before it has
			// a connection (callers compare it with ==).
			return nil, ctx.Err()
		}
		if !Classify(err).Retryable || attempt >= c.cfg.Retries ||
			c.cfg.RetryTimeout > 0 && time.Since(first) >= c.cfg.RetryTimeout {
			return nil, err
		}
		last = err
		wait := backoff(attempt, c.cfg.Backoff, c.cfg.MaxBackoff)
		if t := c.cfg.RetryTimeout; t > 0 {
			wait = min(wait, t-time.Since(first))
		}
		if werr := sleep(ctx, wait); werr != nil {
			return nil, &RetryError{Attempts: attempt + 1, Err: last, Ctx: context.Cause(ctx), op: "connect"}
		}
	}
}

// connectOnce opens one base connection and wraps it.
func (c *connector) connectOnce(ctx context.Context) (driver.Conn, error) {
	bctx, slot := c.connectSlot(ctx)
	bc, berr := c.base.Connect(bctx)
	s, err := slot.settle(berr)
	if err != nil {
		if berr == nil {
			bc.Close() // opened, but past the context's end: the watchdog cut it
		}
		return nil, err
	}
	ic := &interceptor{cfg: c.cfg, sock: s}
	if s != nil {
		ic.peer = s.Conn
	} else if c.cfg.NetConn != nil {
		ic.peer = c.cfg.NetConn(bc)
	}
	ic.connect(bc)
	mc, err := sqlmw.Driver(connDriver{bc}, ic).Open("")
	if err != nil {
		bc.Close()
		return nil, err
	}
	return &conn{mwConn: mc.(mwConn), ic: ic}, nil
}

// connectError marks an error of Connect as one that sent nothing: a
// broken handshake is not an unknown outcome (see Classify). The server's
// own answers keep their type (*pq.Error, *mysql.MySQLError) where their
// class is already right, as for "too many connections". When the wrapper
// retries connections itself, database/sql must not do so again on top:
// driver.ErrBadConn no longer shows through.
func (c *connector) connectError(err error) error {
	err = redact(err, c.secrets)
	if cl := Classify(err); cl.Dialect != DialectUnknown && cl.Scope != ScopeUnknownOutcome {
		return err
	}
	return &connectError{err: err, hideBadConn: c.cfg.Retries > 0}
}

// connectError is a failure to open a connection: nothing was sent.
type connectError struct {
	err         error
	hideBadConn bool
}

// Error returns the base driver's message unchanged.
func (e *connectError) Error() string { return e.err.Error() }

// Unwrap returns the base driver's error, unless it is driver.ErrBadConn
// after the wrapper's own retries.
func (e *connectError) Unwrap() error {
	if e.hideBadConn && errors.Is(e.err, driver.ErrBadConn) {
		return nil
	}
	return e.err
}

// classifyConnect classifies a failure to connect: the server's refusal as
// the server put it (auth failures are not retryable), a read-only server
// as read-only, a context that ended as canceled, and any other failure of
// the network or the handshake as an unavailable server. In every case
// nothing was sent.
func classifyConnect(e *connectError) Class {
	cl := Classify(e.err)
	switch {
	case hasAnyText(e.err, readOnlyConnect):
		cl = Class{Kind: KindReadOnly, Retryable: true, Dialect: cl.Dialect}
	case cl.Kind == KindReadOnly, cl.Kind == KindQueryCanceled:
	case cl.Kind == KindConnectionLost, cl.Kind == KindUnavailable:
		cl = Class{Kind: KindUnavailable, Retryable: true, Dialect: cl.Dialect, Code: cl.Code, SQLState: cl.SQLState}
	}
	if cl.Kind != KindUnknown {
		cl.Scope = ScopeStatement
	}
	return cl
}
