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
// pass (classifyConnect): a refused or reset connection, a handshake cut
// short, a server starting up, full, or read-only. The statement that
// needed the connection then rides through a restart or a failover.
// driver.ErrBadConn is left to database/sql, which retries it itself. The
// error returned is the base driver's own object, the last real one when
// the context ended the waiting.
func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	var first time.Time
	var last error // the last failure that was not the context's
	for attempt := 0; ; attempt++ {
		conn, err := c.connectOnce(ctx)
		if err == nil {
			return conn, nil
		}
		err = redact(err, c.secrets)
		if attempt == 0 {
			first = time.Now()
		}
		if ctx.Err() != nil {
			switch {
			case last != nil:
				return nil, c.wrapConnect(last)
			case errors.As(err, new(*interrupted)), errors.Is(err, ctx.Err()):
				// The context ended the dial, or the wrapper's watchdog cut
				// the handshake: the context's own error, as database/sql
				// returns when the context ends before it has a connection
				// (callers compare it with ==).
				return nil, ctx.Err()
			}
			return nil, c.wrapConnect(err)
		}
		if !classifyConnect(err).Retryable || errors.Is(err, driver.ErrBadConn) || attempt >= c.cfg.Retries ||
			c.cfg.RetryTimeout > 0 && time.Since(first) >= c.cfg.RetryTimeout {
			return nil, c.wrapConnect(err)
		}
		last = err
		wait := backoff(attempt, c.cfg.Backoff, c.cfg.MaxBackoff)
		if t := c.cfg.RetryTimeout; t > 0 {
			wait = min(wait, t-time.Since(first))
		}
		if sleep(ctx, wait) != nil {
			return nil, c.wrapConnect(last)
		}
	}
}

// connectOnce opens one base connection and wraps it.
func (c *connector) connectOnce(ctx context.Context) (driver.Conn, error) {
	bc, s, err := c.dialBase(ctx)
	if err != nil {
		return nil, err
	}
	ic := &interceptor{cfg: c.cfg, redial: c.dialBase}
	ic.connect(bc, s)
	mc, err := sqlmw.Driver(connDriver{bc}, ic).Open("")
	if err != nil {
		bc.Close()
		return nil, err
	}
	return &conn{mwConn: mc.(mwConn), ic: ic}, nil
}

// dialBase opens one base connection, bounded by ctx, and returns it with
// its socket when the wrapper dialed it.
func (c *connector) dialBase(ctx context.Context) (driver.Conn, *sock, error) {
	bctx, slot := c.connectSlot(ctx)
	bc, berr := c.base.Connect(bctx)
	s, err := slot.settle(berr)
	if err != nil {
		if berr == nil {
			bc.Close() // opened, but past the context's end: the watchdog cut it
		}
		return nil, nil, err
	}
	return bc, s, nil
}

// wrapConnect is the error of a failed Connect: the base driver's own,
// or with conflict_wrap_errors an *Error carrying what the wrapper knows,
// that nothing was sent (classifyConnect).
func (c *connector) wrapConnect(err error) error {
	if !c.cfg.WrapErrors {
		return err
	}
	if cl := classifyConnect(err); cl.Kind != KindUnknown {
		return &Error{Class: cl, Err: err}
	}
	return err
}

// classifyConnect classifies err as a failure to open a connection or to
// begin a transaction, where nothing of the application's was sent: the
// server's refusal as the server put it (an authentication failure is not
// retryable), a read-only server as read-only, a context that ended as
// canceled, and any other failure of the network or the handshake as an
// unavailable server. Classify cannot tell these from the same errors in
// the middle of a statement (lib/pq's and go-sql-driver/mysql's carry no
// mark), so the wrapper applies this where it knows: Connect's own
// retries, and RunTx's failed BeginTx.
func classifyConnect(err error) Class {
	cl := Classify(err)
	switch {
	case hasAnyText(err, readOnlyConnect):
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
