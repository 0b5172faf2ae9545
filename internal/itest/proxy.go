package itest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 for the network faults a base driver
// meets below the server: a stalled path (partition), a connect refused or
// reset by a load balancer in front of a dead server, every link cut. Its
// methods are safe for concurrent use; t's cleanup closes it and waits for
// its goroutines.
type Proxy struct {
	ln       net.Listener
	ctx      context.Context // done once the proxy is closed: ends dials and held links
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	accepted atomic.Int64

	mu      sync.Mutex
	target  string // host:port new links are forwarded to (Retarget)
	links   map[*proxyConn]struct{}
	stall   chan struct{} // non-nil while stalled; Resume closes it
	stallOn []byte        // StallOn's trigger: client bytes that stall the proxy before they are forwarded
	onNew   newConnMode
	closed  bool
}

// newConnMode is how the proxy meets a new connection.
type newConnMode int

const (
	forwardNew newConnMode = iota
	refuseNew              // accept, then close (FIN)
	resetNew               // accept, then close with RST
)

// proxyDialTimeout bounds the dial to the target for one new link.
const proxyDialTimeout = 5 * time.Second

// NewProxy starts a proxy on 127.0.0.1 (a free port) forwarding to target
// (host:port), and closes it when t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{target: target, ln: ln, ctx: ctx, cancel: cancel, links: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port, to put in a DSN in place of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Retarget forwards new connections to target (host:port) from now on,
// as a virtual IP moved to a promoted standby does; links already made
// stay with the old target.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Accepted is the number of connections the proxy has accepted, refused
// and reset ones included.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Stall stops forwarding, both ways, on every link, existing or new, and
// keeps every socket open: each side's bytes are held (one buffer, then
// unread, so TCP flow control pushes back), as on a frozen network path.
// New connections are still accepted and dialed through.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		p.stall = make(chan struct{})
	}
}

// StallExisting stalls the links open now, as Stall does, and keeps
// forwarding new ones: a server slow to answer on its sessions but
// answering new connections (a cancel request) at once.
func (p *Proxy) StallExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		if l.stall == nil {
			l.stall = make(chan struct{})
		}
	}
}

// StallOn arms a stall for the first chunk a client sends that contains
// pattern, in any case (drivers spell their own statements differently):
// the proxy stalls (as Stall does) before forwarding it, so the
// server never sees it until Resume. It targets one statement on the wire,
// such as a SAVEPOINT a driver wrapper sends of its own.
func (p *Proxy) StallOn(pattern string) {
	p.mu.Lock()
	p.stallOn = bytes.ToLower([]byte(pattern))
	p.mu.Unlock()
}

// Resume forwards again, delivering what Stall and StallExisting held
// back, in order.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
	for l := range p.links {
		if l.stall != nil {
			close(l.stall)
			l.stall = nil
		}
	}
}

// Refuse makes the proxy accept new connections and close them at once
// (FIN), as a load balancer in front of a dead server does; existing links
// go on.
func (p *Proxy) Refuse() { p.setMode(refuseNew) }

// ResetNew makes the proxy accept new connections and reset them (RST) at
// once; existing links go on.
func (p *Proxy) ResetNew() { p.setMode(resetNew) }

// Normal undoes Refuse and ResetNew: new connections are forwarded.
func (p *Proxy) Normal() { p.setMode(forwardNew) }

func (p *Proxy) setMode(m newConnMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onNew = m
}

// CutAll closes every link now, both sockets of each.
func (p *Proxy) CutAll() {
	for _, l := range p.snapshot() {
		l.close()
	}
}

func (p *Proxy) snapshot() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*proxyConn, 0, len(p.links))
	for l := range p.links {
		out = append(out, l)
	}
	return out
}

// close is the cleanup: no new connection, every link closed, every
// goroutine ended.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.ln.Close()
	p.CutAll()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure (EMFILE...): retry, unless closed.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.accepted.Add(1)
		p.mu.Lock()
		mode := p.onNew
		p.mu.Unlock()
		switch mode {
		case refuseNew:
			c.Close()
		case resetNew:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		default:
			p.wg.Add(1)
			go p.serve(c)
		}
	}
}

// proxyConn is one link: a client connection and its own to the target.
type proxyConn struct {
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
	stall          chan struct{} // under Proxy.mu: StallExisting's, closed by Resume
}

func (l *proxyConn) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// serve dials the target for client and forwards both ways until both
// directions end or the link is cut.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(p.ctx, proxyDialTimeout)
	server, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
	cancel()
	if err != nil {
		client.Close()
		return
	}
	l := &proxyConn{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); p.pipe(l, server, client, true) }()
	go func() { defer both.Done(); p.pipe(l, client, server, false) }()
	both.Wait()
	l.close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pipe copies src to dst, each chunk once the proxy is not stalled. At
// src's EOF it half-closes dst (also held by a stall: a FIN is traffic
// too); on any other error it closes the link.
func (p *Proxy) pipe(l *proxyConn, dst, src net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && fromClient {
			p.mu.Lock()
			if p.stallOn != nil && p.stall == nil && bytes.Contains(bytes.ToLower(buf[:n]), p.stallOn) {
				p.stallOn = nil
				p.stall = make(chan struct{})
			}
			p.mu.Unlock()
		}
		if n > 0 || err == io.EOF {
			if !p.waitForward(l) {
				return
			}
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.close()
				return
			}
		}
		if err == io.EOF {
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
				return
			}
			l.close()
			return
		}
		if err != nil {
			l.close()
			return
		}
	}
}

// waitForward waits while the proxy is stalled; false if the link or the
// proxy closed meanwhile.
func (p *Proxy) waitForward(l *proxyConn) bool {
	for {
		p.mu.Lock()
		stall := p.stall
		if stall == nil {
			stall = l.stall
		}
		p.mu.Unlock()
		if stall == nil {
			return true
		}
		select {
		case <-stall:
		case <-l.done:
			return false
		case <-p.ctx.Done():
			return false
		}
	}
}
