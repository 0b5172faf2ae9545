package sqlconflict

import (
	"net"
	"syscall"
	"unsafe"
)

// Poll events (poll(2)); POLLRDHUP is Linux's: the peer closed its side.
const (
	pollIn    = 0x1
	pollErr   = 0x8
	pollHup   = 0x10
	pollRdHup = 0x2000
)

type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

// peerGone reports, without blocking and without reading, whether the
// server has ended the connection: closed it (FIN or RST, seen even behind
// unread data), or sent a message while it was idle that only a session
// being terminated receives (PostgreSQL's ErrorResponse, 'E': 57P01 at a
// shutdown, idle_session_timeout). Nothing was sent on it since, so the
// next statement may go to another connection instead.
func peerGone(c net.Conn) bool {
	c, plain := underTLS(c)
	gone := false
	withFD(c, func(fd uintptr) {
		p := pollFd{fd: int32(fd), events: pollIn | pollRdHup}
		var ts syscall.Timespec // zero: return at once
		n, _, e := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if e != 0 || n != 1 {
			return
		}
		if p.revents&(pollRdHup|pollHup|pollErr) != 0 {
			gone = true
			return
		}
		if p.revents&pollIn != 0 {
			var b [1]byte
			m, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			gone = err == nil && (m == 0 || plain && b[0] == 'E')
		}
	})
	return gone
}
