package sqlconflict

import (
	"sync"
	"time"
)

// Read-only refusals and reconnecting. A write refused because the server
// is read-only (a standby after a failover) discards its connection, so
// that the next attempt connects anew and a multi-host DSN finds the new
// primary. But a DSN that leads only to a standby would then open a new
// session per rejected write. The pacer bounds that churn: a connection
// opened before the last reconnect is stale and always goes; one opened
// since, refused too, shows that reconnecting did not help, and such
// connections go at most once per interval, which doubles each time, up to
// roMaxInterval. In between they stay and answer as the raw driver's would.

const (
	roMinInterval = 100 * time.Millisecond
	roMaxInterval = 5 * time.Second
	roQuiet       = time.Minute // after this long without a refusal, a refusal starts afresh
)

// roPacer is shared by a connector's connections.
type roPacer struct {
	mu    sync.Mutex
	gen   uint64    // reconnects so far; a connection remembers the value it was born under
	last  time.Time // the last reconnect
	steps uint      // reconnects that did not help, in this episode
}

// born returns the generation of a new connection.
func (p *roPacer) born() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// discard reports whether a connection born under gen and refused as
// read-only at now is to be discarded.
func (p *roPacer) discard(gen uint64, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen < p.gen {
		return true // stale: from before the last reconnect
	}
	if now.Sub(p.last) >= roQuiet {
		p.steps = 0
	} else if now.Sub(p.last) < min(roMinInterval<<p.steps, roMaxInterval) {
		return false
	} else if p.steps < 16 {
		p.steps++
	}
	p.gen++
	p.last = now
	return true
}
