package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxLogDump bounds how much of a log is printed when a test fails (the tail is kept).
const maxLogDump = 64 << 10

// process is one server binary, restartable with the same arguments, running in its own
// process group so that stopping it also stops anything it spawned.
type process struct {
	name    string
	bin     string
	args    []string
	logPath string
	// termGrace is how long cleanup waits after SIGTERM before SIGKILL.
	termGrace time.Duration

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

func newProcess(name, bin string, args []string, logPath string) *process {
	return &process{name: name, bin: bin, args: args, logPath: logPath, termGrace: 5 * time.Second}
}

// start launches the process; its output is appended to logPath.
func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s already running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s log: %w", p.name, err)
	}
	// The child writes straight into the file; the parent's copy is not needed after start.
	defer f.Close()
	fmt.Fprintf(f, "--- testenv %s: %s %s\n", time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))

	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Dir = filepath.Dir(p.logPath)
	cmd.SysProcAttr = sysProcAttr()
	if err := spawn(cmd); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status is in cmd.ProcessState
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// exited returns a channel closed when the current run has ended (nil if never started).
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

func (p *process) running() bool {
	done := p.exited()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// stop sends sig to the process group, waits up to grace for the process to exit, then kills
// the group; with mustExit, needing SIGKILL is an error. Stopping a process that is not
// running is a no-op.
func (p *process) stop(sig syscall.Signal, grace time.Duration, mustExit bool) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	pgid := cmd.Process.Pid // Setpgid: the group id is the leader's pid
	select {
	case <-done:
	default:
		_ = syscall.Kill(-pgid, sig)
		select {
		case <-done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, pgid)
			}
			if mustExit && sig != syscall.SIGKILL {
				return fmt.Errorf("%s did not exit within %s of %s; killed", p.name, grace, sig)
			}
		}
	}
	// Anything the leader left behind in its group goes too.
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s process group: %w", p.name, err)
	}
	return nil
}

// exitStatus describes how the last run ended, for error messages.
func (p *process) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

// logTail returns up to max bytes from the end of the log.
func (p *process) logTail(max int64) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	prefix := ""
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err == nil {
			prefix = fmt.Sprintf("(last %d of %d bytes)\n", max, fi.Size())
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	return prefix + string(bytes.TrimRight(b, "\n"))
}

// register makes tb stop the process at cleanup and print its log if the test failed. Call it
// after the tb.TempDir holding the log was created, so that (cleanups run last-in first-out)
// the process is gone before its directory is removed.
func (p *process) register(tb testing.TB) {
	tb.Cleanup(func() {
		if err := p.stop(syscall.SIGTERM, p.termGrace, false); err != nil {
			tb.Errorf("testenv: %v", err)
		}
		if tb.Failed() {
			tb.Logf("testenv: %s log %s:\n%s", p.name, p.logPath, p.logTail(maxLogDump))
		}
	})
}

// errAddrInUse reports whether the last run failed because its port was taken (another test
// bound it between FreePort and the server's own bind).
func (p *process) errAddrInUse() bool {
	return strings.Contains(strings.ToLower(p.logTail(4096)), "address already in use")
}

// launch starts a server on a free port, retrying with another port when the first one was
// taken in the meantime. newProc builds the process for a port; ready waits until it serves.
func launch(tb testing.TB, newProc func(port int) *process, ready func(p *process, port int) error) (*process, int) {
	tb.Helper()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := FreePort(tb)
		p := newProc(port)
		if err := p.start(); err != nil {
			tb.Fatalf("testenv: %v", err)
		}
		err := ready(p, port)
		if err == nil {
			p.register(tb)
			return p, port
		}
		_ = p.stop(syscall.SIGKILL, time.Second, false)
		lastErr = fmt.Errorf("%w (%s)\n%s log %s:\n%s", err, p.exitStatus(), p.name, p.logPath, p.logTail(maxLogDump))
		if !p.errAddrInUse() {
			break
		}
	}
	tb.Fatalf("testenv: %v", lastErr)
	return nil, 0
}
