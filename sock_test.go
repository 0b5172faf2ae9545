package sqlconflict

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// loopbackPair returns the two ends of a TCP connection on 127.0.0.1.
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPeerGone: the liveness check sees a closed or reset peer, and a
// PostgreSQL ErrorResponse waiting on an idle plain connection, without
// consuming anything; an idle connection, or other data waiting (a
// NOTIFY), is alive.
func TestPeerGone(t *testing.T) {
	settle := func() { time.Sleep(20 * time.Millisecond) } // let the segments arrive
	t.Run("idle", func(t *testing.T) {
		c, _ := loopbackPair(t)
		if peerGone(c) {
			t.Error("an idle connection reads as gone")
		}
	})
	t.Run("closed", func(t *testing.T) {
		c, s := loopbackPair(t)
		s.Close()
		settle()
		if !peerGone(c) {
			t.Error("a connection the peer closed reads as alive")
		}
	})
	t.Run("error then close", func(t *testing.T) {
		c, s := loopbackPair(t)
		s.Write([]byte("E\x00\x00\x00\x05x")) // an ErrorResponse, then the server exits
		s.Close()
		settle()
		if !peerGone(c) {
			t.Error("a FATAL error and a close read as alive")
		}
		// Nothing was consumed: the driver would still read the message.
		var b [1]byte
		if n, err := c.Read(b[:]); n != 1 || err != nil || b[0] != 'E' {
			t.Errorf("after the check the socket gives %q, %v; want the error message's first byte", b[:n], err)
		}
	})
	t.Run("error pending", func(t *testing.T) {
		c, s := loopbackPair(t)
		s.Write([]byte("E\x00\x00\x00\x05x"))
		settle()
		if !peerGone(&sock{Conn: c}) {
			t.Error("an ErrorResponse waiting on an idle plain connection reads as alive")
		}
	})
	t.Run("notification pending", func(t *testing.T) {
		c, s := loopbackPair(t)
		s.Write([]byte("A\x00\x00\x00\x05x"))
		settle()
		if peerGone(c) {
			t.Error("a notification waiting reads as gone")
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		b.Close()
		if peerGone(a) {
			t.Error("a connection without a file descriptor cannot be looked at, and is not called gone")
		}
	})
}

// TestWatchdog: a call whose context ends is cut when the grace has passed,
// not before; a call that returns in time leaves the socket as it was.
func TestWatchdog(t *testing.T) {
	const grace = 50 * time.Millisecond
	t.Run("cuts a blocked read after the grace", func(t *testing.T) {
		c, _ := loopbackPair(t)
		s := &sock{Conn: c, grace: grace}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		w := s.watch(ctx)
		start := time.Now()
		_, err := s.Read(make([]byte, 1)) // the server never answers
		took := time.Since(start)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v, want the socket's deadline", err)
		}
		if took < 30*time.Millisecond+grace-5*time.Millisecond || took > time.Second {
			t.Errorf("the read was cut after %v, want about %v", took, 30*time.Millisecond+grace)
		}
		if !w.done(err) {
			t.Error("done does not report the cut")
		}
	})
	t.Run("an answer within the grace", func(t *testing.T) {
		c, srv := loopbackPair(t)
		s := &sock{Conn: c, grace: grace}
		ctx, cancel := context.WithCancel(context.Background())
		w := s.watch(ctx)
		cancel()
		time.Sleep(5 * time.Millisecond) // the watchdog has fired; the grace runs
		srv.Write([]byte("x"))
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			t.Fatalf("read within the grace: %v", err)
		}
		if w.done(nil) {
			t.Fatal("a call that returned in time reported cut")
		}
		// The deadline is gone: a later read waits for data again.
		go func() { time.Sleep(2 * grace); srv.Write([]byte("y")) }()
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			t.Errorf("a read after the call: %v, want the deadline reset", err)
		}
	})
	t.Run("an error within the grace is the driver's", func(t *testing.T) {
		c, _ := loopbackPair(t)
		s := &sock{Conn: c, grace: time.Hour}
		ctx, cancel := context.WithCancel(context.Background())
		w := s.watch(ctx)
		cancel()
		time.Sleep(5 * time.Millisecond)
		if w.done(io.EOF) {
			t.Error("an error before the deadline passed was taken for the watchdog's cut")
		}
	})
	t.Run("an answer that arrived before a late read", func(t *testing.T) {
		c, srv := loopbackPair(t)
		s := &sock{Conn: c, grace: grace}
		ctx, cancel := context.WithCancel(context.Background())
		w := s.watch(ctx)
		cancel()
		time.Sleep(grace + 20*time.Millisecond) // the deadline has passed
		srv.Write([]byte("xy"))                 // the answer arrives, the reader has not run yet
		time.Sleep(20 * time.Millisecond)
		b := make([]byte, 2)
		if n, err := io.ReadFull(s, b); n != 2 || err != nil || string(b) != "xy" {
			t.Fatalf("read: %q, %v; want the answer that had arrived", b[:n], err)
		}
		// Nothing more has arrived: the next read is cut at once.
		start := time.Now()
		if _, err := s.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > grace/2 {
			t.Errorf("a read with nothing waiting: %v after %v, want the deadline at once", err, time.Since(start))
		}
		if !w.done(os.ErrDeadlineExceeded) {
			t.Error("done does not report the cut")
		}
	})
	t.Run("a context that cannot end", func(t *testing.T) {
		c, _ := loopbackPair(t)
		if w := (&sock{Conn: c, grace: grace}).watch(context.Background()); w != nil {
			t.Error("a watchdog armed on a context that cannot end")
		}
		var none *sock
		if none.watch(context.TODO()) != nil {
			t.Error("a watchdog without a socket")
		}
	})
}

// TestWatchdogStretch: when lib/pq's cancel request to the same server is
// answered (the server closes that connection), a running grace is stretched
// to twice the grace from the context's end; without that answer (a
// frozen server, a partition) the call is cut after one grace.
func TestWatchdogStretch(t *testing.T) {
	const grace = 100 * time.Millisecond
	ln, conns := acceptAll(t)
	d := &dialer{grace: grace}
	dial := func() (*sock, net.Conn) {
		c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		srv := <-conns
		t.Cleanup(func() { c.Close(); srv.Close() })
		return c.(*sock), srv
	}
	// call reads on a fresh connection whose context has ended, the server
	// answering after the given time, and returns the read's error.
	call := func(t *testing.T, cancelAnswered bool, after time.Duration) error {
		s, srv := dial()
		ctx, cancel := context.WithCancel(context.Background())
		w := s.watch(ctx)
		cancel()
		time.Sleep(5 * time.Millisecond)
		if cancelAnswered {
			cs, csrv := dial() // lib/pq's cancel request, dialed outside Connect
			csrv.Close()
			if _, err := cs.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("the cancel request's read: %v, want EOF", err)
			}
		}
		go func() { time.Sleep(after); srv.Write([]byte("x")) }()
		_, err := s.Read(make([]byte, 1))
		w.done(err)
		return err
	}
	t.Run("a live server gets more time", func(t *testing.T) {
		if err := call(t, true, grace*3/2); err != nil {
			t.Errorf("read: %v, want the answer after one and a half graces", err)
		}
	})
	t.Run("at most two graces", func(t *testing.T) {
		if err := call(t, true, 3*grace); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read: %v, want the deadline", err)
		}
	})
	t.Run("no answer to the cancel request", func(t *testing.T) {
		if err := call(t, false, grace*3/2); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read: %v, want the deadline after one grace", err)
		}
	})
	if len(d.fired) != 0 {
		t.Errorf("%d watchdogs still tracked after their calls returned", len(d.fired))
	}
}

// TestCancelRequestOutlivesDialContext: with connect_timeout, lib/pq's dial
// cancels its context as soon as the dial returns (dial, conn.go), and then
// sends the cancel request and reads until the server closes. The end of
// that context must not cut the cancel request's socket: the request is
// sent, the server's close is seen, and the canceled statement's running
// grace is stretched. The socket stays bounded by the context's deadline.
func TestCancelRequestOutlivesDialContext(t *testing.T) {
	const grace = 100 * time.Millisecond
	ln, conns := acceptAll(t)
	d := &dialer{grace: grace}
	// dial dials as lib/pq's dial does with connect_timeout: a context of
	// its own with that timeout, canceled once the dial has returned.
	dial := func(timeout time.Duration) (*sock, net.Conn) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		srv := <-conns
		t.Cleanup(func() { c.Close(); srv.Close() })
		return c.(*sock), srv
	}
	t.Run("the cancel request is sent and answered", func(t *testing.T) {
		s, srv := dial(20 * time.Second) // the statement's connection
		ctx, cancel := context.WithCancel(context.Background())
		w := s.watch(ctx)
		cancel() // the statement's grace is running

		cs, csrv := dial(20 * time.Second)
		time.Sleep(20 * time.Millisecond) // anything the dial's end set off has run
		req := make([]byte, 16)           // a CancelRequest's size
		if _, err := cs.Write(req); err != nil {
			t.Fatalf("the cancel request's write: %v", err)
		}
		go func() {
			_, _ = io.ReadFull(csrv, make([]byte, len(req)))
			csrv.Close() // the server signalled the backend
		}()
		if _, err := cs.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the cancel request's read: %v, want EOF", err)
		}
		go func() { time.Sleep(grace * 3 / 2); srv.Write([]byte("x")) }() // the 57014, past one grace
		_, err := s.Read(make([]byte, 1))
		if w.done(err) || err != nil {
			t.Errorf("the statement's read: %v, want the answer within the stretched grace", err)
		}
	})
	t.Run("a frozen server: bounded by the dial's deadline", func(t *testing.T) {
		cs, _ := dial(50 * time.Millisecond)
		start := time.Now()
		_, err := cs.Read(make([]byte, 1)) // never answered
		took := time.Since(start)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v, want the deadline", err)
		}
		if took > time.Second {
			t.Errorf("the cancel request waited %v, want about 50ms", took)
		}
	})
}

// acceptAll listens on loopback and hands every accepted connection to the
// channel, until the test ends.
func acceptAll(t *testing.T) (net.Listener, chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	return ln, conns
}
