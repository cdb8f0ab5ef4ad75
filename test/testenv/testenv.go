// Package testenv starts real dependency processes (mosquitto, FerretDB, Prometheus) for
// integration tests and benchmarks.
//
// Every Start* function picks a free loopback port, runs the process in its own process group
// with its files in tb.TempDir(), waits until it is ready, and registers a tb.Cleanup that kills
// the whole group. Its output goes to a log file (LogPath) that is printed when the test fails.
// Start-up takes tens of milliseconds (Prometheus: about a second), so each test can start its
// own instances and run in parallel.
//
// Binaries are found by [Bin]: the CHARGESIM_<NAME>_BIN variables written by hack/deps.sh into
// bin/deps.env, else <repo>/bin/<name>, else the hack/deps.sh cache, else PATH. A missing binary
// fails the test ("run hack/deps.sh"); it never skips (DEVELOPERS.md).
//
// Stop/Start/Kill methods and Start* functions call tb.Fatalf on error, so call them from the
// test goroutine.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FerretDBVersion is the FerretDB release hack/deps.sh builds; [Bin] looks for it in the cache.
const FerretDBVersion = "v1.24.2"

// Bin returns the absolute path of the dependency binary name ("ferretdb", "mosquitto",
// "mosquitto_passwd", "prometheus", "promtool", "chromium"). Lookup order:
//  1. $CHARGESIM_<NAME>_BIN (name upper-cased; bin/deps.env exports these),
//  2. <repo>/bin/<name> (links made by hack/deps.sh; repo = nearest directory holding go.mod),
//  3. ${CHARGESIM_CACHE:-$HOME/.cache/chargesim}/<name>-<version>/<name> (built tools),
//  4. PATH, then /usr/sbin and /usr/bin (Debian puts mosquitto in /usr/sbin, often not in PATH).
//
// It fails the test when none exists.
func Bin(tb testing.TB, name string) string {
	tb.Helper()
	p, err := lookBin(name)
	if err != nil {
		tb.Fatalf("%s not found: run hack/deps.sh (%v)", name, err)
	}
	return p
}

func lookBin(name string) (string, error) {
	envKey := "CHARGESIM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_BIN"
	if v := os.Getenv(envKey); v != "" {
		if isExecutable(v) {
			return filepath.Abs(v)
		}
		return "", fmt.Errorf("$%s=%s is not an executable file", envKey, v)
	}
	var tried []string
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, "bin", name)
		if isExecutable(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if name == "ferretdb" {
		p := filepath.Join(cacheDir(), "ferretdb-"+FerretDBVersion, "ferretdb")
		if isExecutable(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	tried = append(tried, "$PATH")
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("$%s unset; tried %s", envKey, strings.Join(tried, ", "))
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func cacheDir() string {
	if v := os.Getenv("CHARGESIM_CACHE"); v != "" {
		return v
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "chargesim")
}

// RepoRoot returns the nearest directory at or above the working directory holding go.mod
// (go test runs tests in their package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Start* functions retry
// with another port if it was taken in between.
func FreePort(tb testing.TB) int {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	return port
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen on 127.0.0.1:0: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitTCP waits until addr (host:port) accepts a TCP connection, polling every 10ms.
func WaitTCP(addr string, timeout time.Duration) error {
	return waitTCP(addr, timeout, nil)
}

// waitTCP is WaitTCP that gives up early when exited is closed (the server died).
func waitTCP(addr string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %s: %w", addr, timeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before %s accepted connections", addr)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
