package testenv

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		// Own process group: stop() signals the whole group.
		Setpgid: true,
		// If the test binary dies without running cleanups (go test -timeout panics, SIGKILL),
		// the kernel kills the server too, so nothing is left listening.
		Pdeathsig: syscall.SIGKILL,
	}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

var (
	spawnOnce sync.Once
	spawnCh   = make(chan spawnReq)
)

// spawn starts cmd from one goroutine locked to its OS thread for the life of the test binary.
// Pdeathsig fires when the *thread* that forked the child exits, and Go ends a thread when a
// goroutine locked to it returns; forking only from a thread that never exits keeps servers
// from being killed at random.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnCh {
				r.err <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawnCh <- r
	return <-r.err
}
