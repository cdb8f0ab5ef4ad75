//go:build e2e

// Package e2e runs the operator against a real control plane whose nodes and kubelets are faked
// by kwok (hack/kwok-cluster.sh): real kube-apiserver, etcd, kube-controller-manager (Deployment,
// StatefulSet, ReplicaSet and garbage-collector controllers) and kube-scheduler; pods become
// Running and Ready without containers.
//
// The operator runs as its own process (test/e2e/operator = `chargesim operator`), as the
// ServiceAccount of config/rbac (impersonated), with leader election, metrics and probes.
//
//	go test -tags e2e -count=1 -timeout 30m ./test/e2e/
//
// E2E_CLUSTER names the kwok cluster (default chargesim-e2e-<pid>); E2E_KEEP_CLUSTER=1 leaves it up.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/controllers"
)

const (
	operatorNamespace = "chargesim-system"
	operatorSA        = "chargesim-operator"
)

var (
	root        string // repository root
	kubeconfig  string // cluster admin
	adminCfg    *rest.Config
	k8s         client.Client
	opMetrics   string // http://127.0.0.1:port/metrics of the operator
	opPprof     string // http://127.0.0.1:port/debug/pprof
	opProcess   *os.Process
	opLog       string
	clusterName string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		teardownCluster()
		return 1
	}
	code := m.Run()
	if err := stopOperator(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	if n, last := denials(); n > 0 {
		fmt.Fprintf(os.Stderr, "e2e: the operator was denied %d request(s) by RBAC; last: %s\n", n, last)
		code = 1
	}
	if code != 0 {
		fmt.Fprintln(os.Stderr, "e2e: operator log:", opLog)
	}
	teardownCluster()
	return code
}

func setup() error {
	var err error
	root, err = filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	for _, tool := range []string{"kubectl", "kwokctl", "kwok", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"} {
		if _, err := os.Stat(filepath.Join(root, "bin", tool)); err != nil {
			return fmt.Errorf("bin/%s missing: run hack/kube-tools.sh cluster", tool)
		}
	}
	clusterName = os.Getenv("E2E_CLUSTER")
	if clusterName == "" {
		// Per process: two runs at once (two engineers, or make test next to a manual run) must
		// not share a cluster that the first to finish tears down.
		clusterName = fmt.Sprintf("chargesim-e2e-%d", os.Getpid())
	}
	// 200 simulations of 4+ pods each (the benchmark) need more than kwok's 110 pods per node.
	up := exec.Command(filepath.Join(root, "hack", "kwok-cluster.sh"), "up", clusterName)
	up.Env = append(os.Environ(), "KWOK_NODES=12")
	up.Stderr = os.Stderr
	out, err := up.Output()
	if err != nil {
		return fmt.Errorf("hack/kwok-cluster.sh up %s: %w", clusterName, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	kubeconfig = lines[len(lines)-1]

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	adminCfg = cfg
	k8s, err = client.New(cfg, client.Options{Scheme: controllers.Scheme()})
	if err != nil {
		return err
	}

	// Install exactly what users install: CRD, RBAC, the operator's namespace and Deployment.
	if out, err := kubectl("apply", "--server-side", "-k", filepath.Join(root, "config", "default")); err != nil {
		return fmt.Errorf("kubectl apply -k config/default: %w\n%s", err, out)
	}
	if out, err := kubectl("wait", "--for=condition=Established", "crd/chargersimulations.chargesim.io", "--timeout=60s"); err != nil {
		return fmt.Errorf("CRD not established: %w\n%s", err, out)
	}
	// kube-apiserver's default Service range is a /24: 254 ClusterIPs, fewer than the
	// benchmark's 200 simulations × 2 Services. A ServiceCIDR (GA since 1.33) adds room.
	extra := filepath.Join(os.TempDir(), "chargesim-e2e-servicecidr.yaml")
	if err := os.WriteFile(extra, []byte(serviceCIDR), 0o600); err != nil {
		return err
	}
	if out, err := kubectl("apply", "--server-side", "-f", extra); err != nil {
		return fmt.Errorf("add ServiceCIDR: %w\n%s", err, out)
	}
	return startOperator()
}

func teardownCluster() {
	if os.Getenv("E2E_KEEP_CLUSTER") != "" || clusterName == "" {
		return
	}
	down := exec.Command(filepath.Join(root, "hack", "kwok-cluster.sh"), "down", clusterName)
	down.Stdout, down.Stderr = io.Discard, io.Discard
	_ = down.Run()
}

// kubectl runs bin/kubectl against the cluster as admin.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "bin", "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startOperator builds `chargesim operator` and runs it as the operator's ServiceAccount.
func startOperator() error {
	dir, err := os.MkdirTemp("", "chargesim-e2e-")
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "operator")
	build := exec.Command("go", "build", "-o", bin, "./test/e2e/operator")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build operator: %w", err)
	}

	// A kubeconfig that impersonates the ServiceAccount: the operator gets only config/rbac.
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return err
	}
	for _, ai := range kc.AuthInfos {
		ai.Impersonate = "system:serviceaccount:" + operatorNamespace + ":" + operatorSA
		ai.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"}
	}
	opKubeconfig := filepath.Join(dir, "operator.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, opKubeconfig); err != nil {
		return err
	}

	metricsAddr, err := freeAddr()
	if err != nil {
		return err
	}
	probeAddr, err := freeAddr()
	if err != nil {
		return err
	}
	pprofAddr, err := freeAddr()
	if err != nil {
		return err
	}
	opLog = filepath.Join(dir, "operator.log")
	logFile, err := os.Create(opLog)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin,
		"--kubeconfig", opKubeconfig,
		"--leader-elect", "--leader-election-namespace", operatorNamespace,
		"--metrics-bind-address", metricsAddr,
		"--metrics-secure=false", // scraped over plain HTTP; the secure path has its envtest and chart tests
		"--health-probe-bind-address", probeAddr,
		"--pprof-bind-address", pprofAddr,
		"--log-format", "text",
		"--resync-interval", "10m",
	)
	// Flags and CHARGESIM_* variables are one contract: set the image the way a manifest does.
	cmd.Env = append(os.Environ(), "CHARGESIM_DEFAULT_IMAGE=ghcr.io/chargesim/chargesim:e2e")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start operator: %w", err)
	}
	opProcess = cmd.Process
	opMetrics = "http://" + metricsAddr + "/metrics"
	opPprof = "http://" + pprofAddr + "/debug/pprof"
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("operator not ready within 2m; log: %s", opLog)
}

func stopOperator() error {
	if opProcess == nil {
		return nil
	}
	if err := opProcess.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop operator: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		st, err := opProcess.Wait()
		if err == nil && !st.Success() {
			err = fmt.Errorf("operator exited with %s", st)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = opProcess.Kill()
		return errors.New("operator did not stop within 30s of SIGTERM")
	}
}

// denials counts RBAC denials in the operator's log.
func denials() (int, string) {
	f, err := os.Open(opLog)
	if err != nil {
		return 0, ""
	}
	defer f.Close()
	n, last := 0, ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "forbidden") {
			n++
			last = sc.Text()
		}
	}
	return n, last
}

func scrape(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), nil
}

var bg = context.Background()

const serviceCIDR = `apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: chargesim-e2e
spec:
  cidrs:
  - 10.96.0.0/16
`
