package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A chargesim component as a real child process, so that kill -9 is a real crash: the test
// binary re-executes itself with childKindEnv set, and its TestMain hands over to
// RunChildIfAsked, which runs the component's Command (the same function the chargesim binary
// runs) with the flags in childArgsEnv.
const (
	childKindEnv = "CHARGESIM_TEST_CHILD"      // which command, a key of RunChildIfAsked's map
	childArgsEnv = "CHARGESIM_TEST_CHILD_ARGS" // its flags, a JSON array
)

// RunChildIfAsked, called first in a TestMain, runs the command this process was re-executed
// for and exits; in the test process itself it returns at once.
func RunChildIfAsked(commands map[string]func(context.Context, []string) error) {
	kind := os.Getenv(childKindEnv)
	if kind == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "child args:", err)
		os.Exit(2)
	}
	run := commands[kind]
	if run == nil {
		fmt.Fprintln(os.Stderr, "unknown child command", kind)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, args)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", kind, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Child is a component process serving /readyz and /metrics on HTTPAddr, its output appended
// to LogPath (kept across restarts).
type Child struct {
	Kind, HTTPAddr, LogPath string
	args                    []string
	cmd                     *exec.Cmd
	exited                  chan struct{}
}

// StartChild starts kind with args (plus --http-addr, text logs and a 10 s shutdown timeout)
// and waits until it is ready. Cleanup kills it and, when the test failed, logs its output's tail.
func StartChild(tb testing.TB, kind, logPath string, args ...string) *Child {
	tb.Helper()
	c := &Child{Kind: kind, HTTPAddr: "127.0.0.1:" + fmt.Sprint(FreePort(tb)), LogPath: logPath, args: args}
	c.Start(tb)
	tb.Cleanup(func() {
		c.Kill()
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			tb.Logf("%s log (tail):\n%s", kind, b)
		}
	})
	return c
}

// Start runs the process (again, with the same flags and address) and waits until it is ready.
func (c *Child) Start(tb testing.TB) {
	tb.Helper()
	args := append(append([]string(nil), c.args...), "--http-addr="+c.HTTPAddr, "--log-format=text", "--shutdown-timeout=10s")
	argsJSON, err := json.Marshal(args)
	if err != nil {
		tb.Fatal(err)
	}
	c.cmd = exec.Command(os.Args[0]) //nolint:gosec // this test binary, re-executed
	c.cmd.Env = append(os.Environ(), childKindEnv+"="+c.Kind, childArgsEnv+"="+string(argsJSON))
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", c.Kind, err)
	}
	exited := make(chan struct{})
	c.exited = exited
	cmd := c.cmd
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if r, err := http.Get("http://" + c.HTTPAddr + "/readyz"); err == nil {
			_ = r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(c.LogPath)
			tb.Fatalf("%s exited before ready:\n%s", c.Kind, b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready after 60s", c.Kind)
		}
	}
}

// Kill is a crash: SIGKILL, nothing flushed, nothing more acknowledged, no DISCONNECT.
func (c *Child) Kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// Stop is an orderly shutdown: SIGTERM, then wait (at most 30 s).
func (c *Child) Stop(tb testing.TB) {
	tb.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		tb.Fatalf("%s did not stop within 30s of SIGTERM", c.Kind)
	}
}

// Metric reads one unlabelled sample from the process's /metrics; false when it cannot.
func (c *Child) Metric(name string) (float64, bool) {
	r, err := http.Get("http://" + c.HTTPAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}
