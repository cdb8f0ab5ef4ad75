//go:build chart

package chart

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chargesim/chargesim/test/testenv"
)

// proc is a chargesim subcommand started by a test, logging to a file that is printed when the
// test fails, stopped with SIGTERM at cleanup.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// startProc runs `chargesim <args...>` and waits until readyURL answers 200. The environment
// is minimal so CHARGESIM_* settings of the caller's shell do not leak in; env adds to it.
func startProc(t testing.TB, name, readyURL string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(chargesimBin(t, args[0]), args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail([]byte(p.log()), 8000))
		}
	})
	testenv.Eventually(t, 60*time.Second, name+" ready at "+readyURL, func() error {
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", name, tail([]byte(p.log()), 4000))
		default:
		}
		resp, err := http.Get(readyURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
	return p
}

func (p *proc) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop on SIGTERM within 20s", p.name)
	}
}

func (p *proc) log() string { b, _ := os.ReadFile(p.logPath); return string(b) }

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
