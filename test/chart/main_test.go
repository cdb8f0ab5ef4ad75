//go:build chart

// Package chart tests the Helm chart charts/chargesim and the observability that ships with it
// (alert rules, Grafana dashboards) against real tools: helm (v3 and v4), kubeconform, a real
// kube-apiserver (kwok cluster), promtool and Prometheus. hack/test-chart.sh and
// hack/test-dashboards.sh build what is needed and run these tests; see docs/helm.md.
package chart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chargesim/chargesim/test/testenv"
)

// Helm4Version is the Helm 4 release hack/kube-tools.sh builds (helm4) next to the pinned Helm 3.
const Helm4Version = "v4.3.1"

var (
	root     string // repository root
	chartDir string
)

func TestMain(m *testing.M) {
	r, err := testenv.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	root = r
	chartDir = filepath.Join(root, "charts", "chargesim")
	code := m.Run()
	stopCluster()
	os.Exit(code)
}

// tool returns the absolute path of a binary hack/kube-tools.sh or hack/deps.sh links into bin/.
func tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(root, "bin", name)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s missing: run hack/test-chart.sh (it runs hack/kube-tools.sh and go build)", p)
	}
	return p
}

// helm4 returns the Helm 4 binary built by hack/kube-tools.sh (hack/test-chart.sh asks for it).
func helm4(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("CHARGESIM_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "chargesim")
	}
	p := filepath.Join(cache, "helm-"+Helm4Version, "helm")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("helm %s missing at %s: run hack/test-chart.sh (it builds it)", Helm4Version, p)
	}
	return p
}

type result struct {
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("err=%v\nstderr:\n%s\nstdout:\n%s", r.err, r.stderr, r.stdout)
}

// run executes a command with a deadline and returns its output; env entries are added to the
// test process' environment.
func run(ctx context.Context, env []string, stdin []byte, name string, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return result{stdout: out.String(), stderr: errb.String(), err: err}
}

func mustRun(t testing.TB, env []string, stdin []byte, name string, args ...string) string {
	t.Helper()
	r := run(context.Background(), env, stdin, name, args...)
	if r.err != nil {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// ---- kwok clusters: started on first use, deleted when the package's tests end ----

type kwokCluster struct {
	once       sync.Once
	kubeconfig string
	err        error
	up         bool
}

var (
	clustersMu sync.Mutex
	clusters   = map[string]*kwokCluster{}
)

// staticCluster serves the tests that only talk to the API server (dry-run, OpenAPI, NOTES);
// lifecycleCluster is where the chart is really installed, upgraded and uninstalled, so that
// the CRDs the static tests install by hand never collide with the release's own. The names
// carry the process ID: two runs on one machine (two worktrees, CI next to a developer) must
// not share or delete each other's clusters.
var (
	staticCluster    = fmt.Sprintf("chart-%d", os.Getpid())
	lifecycleCluster = fmt.Sprintf("chart-life-%d", os.Getpid())
)

// cluster starts (once) the kwok cluster name through hack/kwok-cluster.sh and returns its
// kubeconfig.
func cluster(t testing.TB, name string) string {
	t.Helper()
	clustersMu.Lock()
	c := clusters[name]
	if c == nil {
		c = &kwokCluster{}
		clusters[name] = c
	}
	clustersMu.Unlock()
	c.once.Do(func() {
		start := time.Now()
		r := run(context.Background(), nil, nil, filepath.Join(root, "hack", "kwok-cluster.sh"), "up", name)
		if r.err != nil {
			c.err = errors.New(r.String())
			return
		}
		c.up = true
		c.kubeconfig = strings.TrimSpace(lastLine(r.stdout))
		fmt.Fprintf(os.Stderr, "kwok cluster %s up in %s\n", name, time.Since(start).Round(time.Millisecond))
	})
	if c.err != nil {
		t.Fatalf("kwok cluster %s: %v", name, c.err)
	}
	return c.kubeconfig
}

func stopCluster() {
	if os.Getenv("CHARGESIM_KEEP_CLUSTER") != "" {
		return
	}
	for name, c := range clusters {
		if c.up {
			_ = run(context.Background(), nil, nil, filepath.Join(root, "hack", "kwok-cluster.sh"), "down", name)
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// kubectl runs bin/kubectl against the kubeconfig kc.
func kubectl(t testing.TB, kc string, stdin []byte, args ...string) string {
	t.Helper()
	return mustRun(t, nil, stdin, tool(t, "kubectl"), append([]string{"--kubeconfig", kc}, args...)...)
}

func kubectlResult(t testing.TB, kc string, stdin []byte, args ...string) result {
	t.Helper()
	return run(context.Background(), nil, stdin, tool(t, "kubectl"), append([]string{"--kubeconfig", kc}, args...)...)
}
