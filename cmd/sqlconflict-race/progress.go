package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// progress draws a progress bar on a terminal, and nothing elsewhere: a
// redirected stderr gets no control characters.
type progress struct {
	w     io.Writer
	on    bool
	label string
	total int64
	done  atomic.Int64
	stop  chan struct{}
	ended chan struct{}
}

// newProgress draws on f if f is a terminal.
func newProgress(f *os.File) *progress {
	return &progress{w: f, on: f != nil && term.IsTerminal(int(f.Fd()))}
}

// start begins a bar of total steps, redrawn ten times a second.
func (p *progress) start(label string, total int) {
	p.done.Store(0)
	if !p.on {
		return
	}
	p.label, p.total = label, int64(total)
	p.stop, p.ended = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.ended)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			p.draw()
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// add records n steps done; safe for concurrent use.
func (p *progress) add(n int) { p.done.Add(int64(n)) }

// finish erases the bar.
func (p *progress) finish() {
	if !p.on || p.stop == nil {
		return
	}
	close(p.stop)
	<-p.ended
	p.stop = nil
	fmt.Fprint(p.w, "\r\033[K")
}

const barWidth = 30

func (p *progress) draw() {
	fmt.Fprint(p.w, "\r\033[K"+p.line())
}

// line is the bar's text.
func (p *progress) line() string {
	done, total := p.done.Load(), max(p.total, 1)
	filled := int(min(done, total) * barWidth / total)
	return fmt.Sprintf("%-34s [%s%s] %d/%d", p.label,
		strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), done, p.total)
}
