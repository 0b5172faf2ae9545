package sqlconflict

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"sync"
	"syscall"
	"time"

	"github.com/lib/pq"
)

// The caller's context as a hard bound. lib/pq does not stop a blocked read
// when a context ends: it sends a cancel request on a new connection and
// keeps reading, so against a frozen server or across a partition a call
// outlives its deadline by minutes. The wrapper therefore dials lib/pq's
// connections itself and, for every call it intercepts, arms a watchdog on
// the call's context: once the context has ended, the socket's deadline is
// set conflict_cancel_grace later. A driver that answers in that time (the
// server canceled the statement, 57014) is unaffected; one that does not
// gets a timeout from its read or write, the call returns an error whose
// outcome is unknown, and the connection is discarded. go-sql-driver/mysql
// closes its socket when a context ends, and pgx sets its socket's deadline
// itself, so they need no help once the wrapper passes them the caller's
// context (its own statements included).

// Two rules keep the cut from turning a live server's answer into an
// unknown outcome. The deadline stops the waiting, it never throws away what
// came: a read that the deadline fails while the server's answer is already
// in the socket (the reading goroutine was not scheduled in time) gets that
// answer. And a server that shows it is alive gets longer: when lib/pq's
// cancel request to the same address is answered (the server closes that
// connection once it has signalled the backend), the statement's 57014 is
// on its way, and a running grace is stretched to twice the grace from the
// context's end. A frozen server or a partition never answers the
// cancel request, and is cut after one grace.

// sock is a base connection's socket, dialed by the wrapper.
type sock struct {
	net.Conn
	grace time.Duration
	d     *dialer // the dialer, for the liveness rule; nil for tests' sockets
	spare bool    // dialed outside Connect: lib/pq's cancel request

	mu      sync.Mutex
	expired int // watchdogs that fired and are still armed
}

// Read reads from the socket and, when the watchdog's deadline failed the
// read, takes what the server had already sent.
func (s *sock) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	if n == 0 && err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded) && s.isExpired():
			if m := readArrived(s.Conn, p); m > 0 {
				return m, nil
			}
		case err == io.EOF && s.spare && s.d != nil:
			s.d.answered(s.Conn.RemoteAddr().String())
		}
	}
	return n, err
}

func (s *sock) isExpired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expired > 0
}

// watchdog bounds one call by its context.
type watchdog struct {
	s       *sock
	ctx     context.Context
	stop    func() bool
	active  bool      // under s.mu: the call is still running
	fired   bool      // under s.mu: ctx ended during the call and the deadline was set
	firedAt time.Time // under s.mu: when
	cutAt   time.Time // under s.mu: the deadline set
}

// watch arms a watchdog on ctx for a call on s, or returns nil when there
// is nothing to watch (no socket of the wrapper's, or a context that never
// ends).
func (s *sock) watch(ctx context.Context) *watchdog {
	if s == nil || ctx.Done() == nil {
		return nil
	}
	w := &watchdog{s: s, ctx: ctx, active: true}
	w.stop = context.AfterFunc(ctx, w.fire)
	return w
}

func (w *watchdog) fire() {
	s := w.s
	s.mu.Lock()
	if !w.active {
		s.mu.Unlock()
		return // the call ended as the context did
	}
	w.fired = true
	s.expired++
	w.firedAt = time.Now()
	w.cutAt = w.firedAt.Add(s.grace)
	_ = s.Conn.SetDeadline(w.cutAt)
	s.mu.Unlock()
	if s.d != nil {
		s.d.track(w, true)
	}
}

// stretch gives a call whose grace is running twice the grace from its
// context's end, the server having shown it is alive.
func (w *watchdog) stretch() {
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !w.active || !w.fired || !time.Now().Before(w.cutAt) {
		return // returned, or already cut: nothing to give back
	}
	if cut := w.firedAt.Add(2 * s.grace); cut.After(w.cutAt) {
		w.cutAt = cut
		_ = s.Conn.SetDeadline(cut)
	}
}

// waited is how long the call was given after its context ended.
func (w *watchdog) waited() time.Duration {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.cutAt.Sub(w.firedAt).Round(time.Millisecond)
}

// cutBy reports, under s.mu, whether err is the deadline's doing: the
// watchdog fired, the deadline passed, and err is not the server's answer.
// An error within the grace is the driver's own (lib/pq closes its
// connection when a context ends) and goes to the caller as it is.
func (w *watchdog) cutBy(err error) bool {
	return w.fired && err != nil && !time.Now().Before(w.cutAt) && Classify(err).Dialect == DialectUnknown
}

// done disarms the watchdog when its call returns with err. It reports
// whether the socket's deadline cut the call: the context ended, the grace
// passed, and the call failed with no answer from the server (err is not
// the server's own). Then the call's outcome is unknown and the connection
// must go. A call that succeeded, or that the server answered, leaves the
// socket as it was before, unless another watchdog still holds it expired.
func (w *watchdog) done(err error) (cut bool) {
	if w == nil || w.stop() {
		return false
	}
	s := w.s
	if s.d != nil {
		defer s.d.track(w, false)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w.active = false
	if !w.fired {
		return false
	}
	s.expired--
	if w.cutBy(err) {
		return true
	}
	if s.expired == 0 {
		_ = s.Conn.SetDeadline(time.Time{})
	}
	return false
}

// cuts reports, while the call still runs, whether err is the watchdog's
// doing: the context ended and err is not the server's answer.
func (w *watchdog) cuts(err error) bool {
	if w == nil || err == nil {
		return false
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.cutBy(err)
}

// interrupted is the error of a call that the watchdog cut: it matches the
// context's error with errors.Is and classifies as an unknown outcome, and
// it deliberately does not unwrap to the driver's error, which may be
// driver.ErrBadConn (database/sql would send the statement again).
type interrupted struct {
	ctx   error
	cause error
	grace time.Duration
}

func (e *interrupted) Error() string {
	return "sqlconflict: " + e.ctx.Error() + ", and the server did not answer within " + e.grace.String() +
		": the connection was cut; the statement may have run (" + e.cause.Error() + ")"
}

func (e *interrupted) Unwrap() error { return e.ctx }

// cutErr turns the error of a call the watchdog cut into an interrupted
// one and marks the connection to be discarded.
func (ic *interceptor) cutErr(w *watchdog, err error) error {
	ic.sess.discard = true
	return &interrupted{ctx: context.Cause(w.ctx), cause: err, grace: w.waited()}
}

// dialer dials lib/pq's connections as lib/pq's own default dialer does,
// and hands each socket to the connection that Connect is opening, found
// in the dial's context. A socket dialed without one is lib/pq's cancel
// request (it dials with a context of its own, bounded by ten seconds):
// it is bounded by that context's deadline, so that a frozen server cannot
// keep its goroutine waiting for ever. By the deadline, not by the
// context's end: as with net.Dialer, a context that ends once the dial has
// returned must leave the connection alone, and lib/pq's dial cancels its
// context as soon as the dial returns when connect_timeout is set. Bound
// by that end, the cancel request's write or its read of the server's
// answer failed at once: the server never got the request, or its answer
// was never seen and the grace of the statement being canceled was not
// stretched (the statement cut, where raw lib/pq gets the server's 57014).
type dialer struct {
	d     net.Dialer
	grace time.Duration

	mu    sync.Mutex
	fired map[*watchdog]struct{} // watchdogs whose grace may be running
}

// track records a watchdog that fired (on) or whose call returned (off).
func (d *dialer) track(w *watchdog, on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if on {
		if d.fired == nil {
			d.fired = map[*watchdog]struct{}{}
		}
		d.fired[w] = struct{}{}
	} else {
		delete(d.fired, w)
	}
}

// answered stretches the running graces of the calls on connections to
// addr: the server there answered a cancel request.
func (d *dialer) answered(addr string) {
	d.mu.Lock()
	var ws []*watchdog
	for w := range d.fired {
		if w.s.Conn.RemoteAddr().String() == addr {
			ws = append(ws, w)
		}
	}
	d.mu.Unlock()
	for _, w := range ws {
		w.stretch()
	}
}

var _ pq.DialerContext = (*dialer)(nil)

// spareBound bounds a cancel request dialed with a context without a
// deadline, as lib/pq bounds its own (watchCancelDialContextTimeout).
const spareBound = 10 * time.Second

// connSlot collects the sockets dialed while one connection is opened,
// with the Connect call's context.
type connSlot struct {
	ctx   context.Context
	socks []*sock
	dogs  []*watchdog
}

type connSlotKey struct{}

// DialContext implements pq.DialerContext.
func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	s := &sock{Conn: c, grace: d.grace, d: d}
	if slot, ok := ctx.Value(connSlotKey{}).(*connSlot); ok {
		// Bound by Connect's own context, not the dial's: lib/pq cancels a
		// connect_timeout's context as soon as the dial returns.
		slot.socks = append(slot.socks, s)
		slot.dogs = append(slot.dogs, s.watch(slot.ctx))
	} else {
		s.spare = true
		end, ok := ctx.Deadline()
		if !ok {
			end = time.Now().Add(spareBound)
		}
		_ = c.SetDeadline(end)
	}
	return s, nil
}

// Dial implements pq.Dialer.
func (d *dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialTimeout implements pq.Dialer.
func (d *dialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

// withFD runs f with c's file descriptor, if it has one.
func withFD(c net.Conn, f func(fd uintptr)) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		_ = rc.Control(f)
	}
}

// underTLS returns the socket under a TLS connection, and whether c was
// plain: bytes waiting on a TLS socket are encrypted, so only a closed
// peer can be seen there.
func underTLS(c net.Conn) (net.Conn, bool) {
	if t, ok := c.(interface{ NetConn() net.Conn }); ok {
		return t.NetConn(), false
	}
	if s, ok := c.(*sock); ok {
		return s.Conn, true
	}
	return c, true
}

// pqConnector opens lib/pq connections as lib/pq's Driver.Open does, the
// DSN and the environment read anew at each connect and a bad DSN reported
// there, but with Connect's context and the wrapper's dialer.
type pqConnector struct {
	dsn    string
	dialer *dialer
}

func (c pqConnector) Connect(ctx context.Context) (driver.Conn, error) {
	pc, err := pq.NewConnector(c.dsn)
	if err != nil {
		return nil, err
	}
	pc.Dialer(c.dialer)
	return pc.Connect(ctx)
}

func (c pqConnector) Driver() driver.Driver { return &pq.Driver{} }

// ownDialer makes the wrapper dial base's sockets if base is lib/pq's
// connector with lib/pq's default dialer, and returns the connector to use:
// a copy, so that the caller's connector is left as it was. A connector
// with a dialer of the application's own is kept, and then the context
// bounds calls only as far as lib/pq honours it.
func ownDialer(base any, grace time.Duration) (any, bool) {
	if _, ok := base.(pqConnector); ok {
		return base, true
	}
	pc, ok := base.(*pq.Connector)
	if !ok || pc == nil {
		return base, false
	}
	f := reflect.ValueOf(pc).Elem().FieldByName("dialer")
	if !f.IsValid() || f.IsNil() || f.Elem().Type().Name() != "defaultDialer" || f.Elem().Type().PkgPath() != reflect.TypeOf(pc).Elem().PkgPath() {
		return base, false
	}
	cp := *pc
	cp.Dialer(&dialer{grace: grace})
	return &cp, true
}

// connectSlot returns the context for a base Connect call, carrying a slot
// for the sockets the wrapper dials; nil when it dials none.
func (c *connector) connectSlot(ctx context.Context) (context.Context, *connSlot) {
	if !c.dials {
		return ctx, nil
	}
	slot := &connSlot{ctx: ctx}
	return context.WithValue(ctx, connSlotKey{}, slot), slot
}

// settle disarms the watchdogs of a Connect call and returns the socket of
// the connection it opened (the last one dialed: lib/pq closes those of the
// hosts it gave up on), or an error when the watchdog cut the handshake.
func (slot *connSlot) settle(err error) (*sock, error) {
	if slot == nil {
		return nil, err
	}
	cut := false
	for _, w := range slot.dogs {
		cut = w.done(err) || cut
	}
	if cut {
		return nil, &interrupted{ctx: context.Cause(slot.ctx), cause: err, grace: slot.socks[0].grace}
	}
	if err != nil || len(slot.socks) == 0 {
		return nil, err
	}
	return slot.socks[len(slot.socks)-1], nil
}
