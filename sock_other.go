//go:build !unix

package sqlconflict

import "net"

// peerGone cannot look at the socket on this system: a connection the
// server closed is found when a statement is sent on it.
func peerGone(net.Conn) bool { return false }

// readArrived cannot read around the runtime's poller on this system: a
// read that the watchdog's deadline failed stays failed.
func readArrived(net.Conn, []byte) int { return 0 }
