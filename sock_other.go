//go:build !unix

package sqlconflict

// peerGone cannot look at the socket on this system: a connection the
// server closed is found when a statement is sent on it.
func (s *sock) peerGone() bool { return false }
