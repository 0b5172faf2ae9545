//go:build unix && !linux

package itest

import "syscall"

// sysProcAttr puts a child in a process group of its own, as cred. Only
// Linux kills it with the test process (Pdeathsig); elsewhere a go test
// timeout can leave a private server running.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}
