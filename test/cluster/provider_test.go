//go:build cluster

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// provider is where the cluster comes from. The assertions are the same on every provider;
// only bringing the cluster up and reaching its node differ.
type provider interface {
	// up returns the admin kubeconfig of a cluster whose images (chargesim, ferretdb) are loaded.
	up(ctx context.Context) (string, error)
	// nodeShell runs a POSIX shell script on the node, with $CTR set to a ctr command for the
	// CRI's namespace (k8s.io).
	nodeShell(ctx context.Context, script string) (string, error)
	down(ctx context.Context) error
}

func newProvider(root string) (provider, error) {
	switch p := os.Getenv("E2E_PROVIDER"); p {
	case "", "local":
		return &localProvider{root: root}, nil
	case "kind":
		node := os.Getenv("E2E_KIND_NODE")
		if node == "" {
			return nil, fmt.Errorf("E2E_PROVIDER=kind needs E2E_KIND_NODE (the node container, hack/test-e2e-kind.sh sets it)")
		}
		return &kindProvider{node: node}, nil
	default:
		return nil, fmt.Errorf("E2E_PROVIDER=%q: want local or kind", p)
	}
}

// localProvider is hack/cluster.sh: a real node on this machine (containerd, kubelet, kube-proxy).
type localProvider struct {
	root string
	ctr  string
}

func (p *localProvider) up(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.root, "hack", "cluster.sh"), "up")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/cluster.sh up: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	kc, ok := strings.CutPrefix(lines[len(lines)-1], "KUBECONFIG=")
	if !ok {
		return "", fmt.Errorf("hack/cluster.sh up: last line %q is not KUBECONFIG=<path>", lines[len(lines)-1])
	}
	env, err := readEnvFile(filepath.Join(p.root, "bin", "cluster.env"))
	if err != nil {
		return "", err
	}
	p.ctr = env["CHARGESIM_CLUSTER_CTR"]
	if p.ctr == "" {
		return "", fmt.Errorf("bin/cluster.env has no CHARGESIM_CLUSTER_CTR")
	}
	return kc, nil
}

func (p *localProvider) nodeShell(ctx context.Context, script string) (string, error) {
	return run(ctx, nil, "sh", "-c", "CTR='"+p.ctr+"'\n"+script)
}

func (p *localProvider) down(ctx context.Context) error {
	if os.Getenv("E2E_KEEP_CLUSTER") != "" {
		return nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(p.root, "hack", "cluster.sh"), "down")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// kindProvider uses the kind cluster hack/test-e2e-kind.sh created (KUBECONFIG) and loaded the
// images into; its node is a Docker container.
type kindProvider struct{ node string }

func (p *kindProvider) up(context.Context) (string, error) {
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		return "", fmt.Errorf("E2E_PROVIDER=kind needs KUBECONFIG")
	}
	return kc, nil
}

func (p *kindProvider) nodeShell(ctx context.Context, script string) (string, error) {
	return run(ctx, nil, "docker", "exec", p.node, "sh", "-c", "CTR='ctr -n k8s.io'\n"+script)
}

func (p *kindProvider) down(context.Context) error { return nil }

// readEnvFile parses the `export K="V"` lines hack/ scripts write.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export ")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok {
			env[k] = strings.Trim(v, `"`)
		}
	}
	return env, sc.Err()
}

// run runs a command and returns its stdout; the error carries stderr.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
