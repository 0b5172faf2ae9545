package sqlconflict

import (
	"testing"
	"time"
)

// TestROPacer: stale connections always go; connections opened since the
// last reconnect go at a doubling interval; a quiet minute starts afresh.
func TestROPacer(t *testing.T) {
	var p roPacer
	t0 := time.Unix(1000, 0)
	old := p.born()
	steps := []struct {
		gen  uint64
		at   time.Duration
		want bool
	}{
		{old, 0, true},                                // the first refusal reconnects
		{old, time.Millisecond, true},                 // the pool's other stale connections go too
		{old, 2 * time.Millisecond, true},             // ...
		{1, 3 * time.Millisecond, false},              // one opened since: refused again, too soon
		{1, 99 * time.Millisecond, false},             // still within 100ms of the reconnect
		{1, 100 * time.Millisecond, true},             // the interval passed: reconnect (gen 2)
		{1, 101 * time.Millisecond, true},             // gen 1 is stale now
		{2, 250 * time.Millisecond, false},            // 200ms interval
		{2, 300 * time.Millisecond, true},             // gen 3, interval 400ms
		{3, 600 * time.Millisecond, false},            //
		{3, 700 * time.Millisecond, true},             // gen 4
		{4, 700*time.Millisecond + time.Minute, true}, // quiet for a minute: afresh
		{5, 700*time.Millisecond + time.Minute + 50*time.Millisecond, false},
	}
	for i, s := range steps {
		if got := p.discard(s.gen, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d (gen %d at %v): discard = %v, want %v", i, s.gen, s.at, got, s.want)
		}
	}
}
