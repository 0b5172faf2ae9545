//go:build unix

package sqlconflict

import (
	"net"
	"syscall"
)

// readArrived reads into p, without waiting, what is already in c's socket,
// and returns how much; 0 when nothing is there (or the socket is closed,
// which the driver finds on its own). The read goes around the runtime's
// poller, whose expired deadline refuses even data that has arrived; only
// the goroutine already inside Read calls it, so no other reader races it.
func readArrived(c net.Conn, p []byte) int {
	n := 0
	withFD(c, func(fd uintptr) {
		if m, err := syscall.Read(int(fd), p); err == nil && m > 0 {
			n = m
		}
	})
	return n
}
