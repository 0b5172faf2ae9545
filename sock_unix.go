//go:build unix && !linux

package sqlconflict

import (
	"net"
	"syscall"
)

// peerGone reports, without blocking and without consuming anything,
// whether the server has ended the connection: the socket reads as closed
// (EOF or a reset), or holds a PostgreSQL ErrorResponse ('E') that only a
// session being terminated receives while idle. Data already waiting hides
// a FIN behind it here; Linux's POLLRDHUP sees it (sock_linux.go).
func peerGone(c net.Conn) bool {
	c, plain := underTLS(c)
	gone := false
	withFD(c, func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil:
			gone = n == 0 || plain && b[0] == 'E'
		case err == syscall.ECONNRESET:
			gone = true
		}
	})
	return gone
}
