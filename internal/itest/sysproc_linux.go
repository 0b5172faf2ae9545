package itest

import "syscall"

// sysProcAttr puts a child in a process group of its own, as cred, and has
// the kernel kill it if the test process dies without its cleanups (a go
// test timeout): a server never outlives its test.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred, Pdeathsig: syscall.SIGKILL}
}
