//go:build chart

package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/chargesim/chargesim/test/testenv"
)

const (
	release     = "cs"
	operatorSA  = "cs-chargesim"
	operatorDep = "cs-chargesim-operator"
	leaseName   = "chargesim-operator.chargesim.io"
)

// chargesimBin is the binary under test: bin/chargesim (go build -o bin/chargesim .), or
// $CHARGESIM_BIN. It fails the test when the binary lacks subcommand.
func chargesimBin(t testing.TB, subcommand string) string {
	t.Helper()
	p := os.Getenv("CHARGESIM_BIN")
	if p == "" {
		p = filepath.Join(root, "bin", "chargesim")
	}
	if r := run(context.Background(), nil, nil, p, subcommand, "--help"); r.err != nil {
		t.Fatalf("%s has no working %q subcommand (rebuild it: go build -o bin/chargesim .; main.go must dispatch it): %v", p, subcommand, r)
	}
	return p
}

// helmIn runs bin/helm against kubeconfig kc and reports how long it took.
func helmIn(t testing.TB, kc string, args ...string) string {
	t.Helper()
	start := time.Now()
	out := mustRun(t, nil, nil, tool(t, "helm"), append([]string{"--kubeconfig", kc}, args...)...)
	t.Logf("helm %s: %s", args[0], time.Since(start).Round(time.Millisecond))
	return out
}

// The chart's operator pod is fake under kwok, so `chargesim operator` runs here as the chart's
// ServiceAccount, with exactly the permissions the chart grants (the kubeconfig's `as`).

func impersonatingKubeconfig(t testing.TB, kc, user string) string {
	t.Helper()
	raw := kubectl(t, kc, nil, "config", "view", "--raw", "--minify", "--flatten")
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	users := cfg["users"].([]any)
	if len(users) != 1 {
		t.Fatalf("kubeconfig has %d users", len(users))
	}
	users[0].(map[string]any)["user"].(map[string]any)["as"] = user
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "operator-kubeconfig.yaml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startOperator runs the operator against kc as the chart's ServiceAccount in ns; metrics is
// the host:port of its /metrics.
func startOperator(t testing.TB, kc, ns string, extra ...string) (op *proc, metrics string) {
	t.Helper()
	opKC := impersonatingKubeconfig(t, kc, "system:serviceaccount:"+ns+":"+operatorSA)
	// The impersonation is in force: the ServiceAccount may patch a simulation's status, but not
	// delete Secrets (it lists and watches them for their metadata only: docs/operator.md),
	// delete nodes or create ClusterRoles.
	if r := kubectlResult(t, opKC, nil, "auth", "can-i", "patch", "chargersimulations.chargesim.io", "--subresource=status", "-n", ns); strings.TrimSpace(r.stdout) != "yes" {
		t.Fatalf("chart ServiceAccount cannot patch ChargerSimulation status: %v", r)
	}
	for _, verb := range []string{"delete secrets", "patch secrets", "delete nodes", "create clusterroles"} {
		v := strings.Fields(verb)
		if r := kubectlResult(t, opKC, nil, "auth", "can-i", v[0], v[1], "-A"); strings.TrimSpace(r.stdout) != "no" {
			t.Fatalf("chart ServiceAccount can %s: %v", verb, r)
		}
	}
	return runOperator(t, opKC, "--leader-elect", "--leader-election-namespace="+ns)
}

// runOperator starts `chargesim operator` with kubeconfig kc.
func runOperator(t testing.TB, kc string, extra ...string) (*proc, string) {
	t.Helper()
	metrics, probe := freeAddr(t), freeAddr(t)
	args := append([]string{"operator", "--kubeconfig=" + kc, "--metrics-bind-address=" + metrics,
		"--health-probe-bind-address=" + probe, "--default-image=chargesim:kwok", "--log-format=text"}, extra...)
	return startProc(t, "operator", "http://"+probe+"/readyz", nil, args...), metrics
}

func jsonpath(t testing.TB, kc string, args ...string) string {
	t.Helper()
	return strings.TrimSpace(kubectl(t, kc, nil, args...))
}

func waitReady(t testing.TB, kc, ns, sim string) {
	t.Helper()
	start := time.Now()
	testenv.Eventually(t, 2*time.Minute, "ChargerSimulation "+sim+" Ready", func() error {
		r := kubectlResult(t, kc, nil, "-n", ns, "get", "chargersimulation", sim, "-o",
			`jsonpath={.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}`)
		if r.err != nil {
			return r.err
		}
		if !strings.HasPrefix(r.stdout, "True/") {
			return fmt.Errorf("Ready condition %q", r.stdout)
		}
		return nil
	})
	t.Logf("ChargerSimulation %s Ready after %s", sim, time.Since(start).Round(time.Millisecond))
}

// makePV provides the volume the MongoDB StatefulSet claims (a kwok cluster has no provisioner).
func makePV(t testing.TB, kc, name string) {
	t.Helper()
	pv := fmt.Sprintf(`apiVersion: v1
kind: PersistentVolume
metadata:
  name: %s
  labels: {chargesim-test: "true"}
spec:
  capacity: {storage: 8Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/%s}
`, name, name)
	kubectl(t, kc, []byte(pv), "apply", "-f", "-")
}

func simulationYAML(name, ns, secret string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: chargesim.io/v1alpha1
kind: ChargerSimulation
metadata:
  name: %s
  namespace: %s
spec:
  chargers: 4
  timeScale: 60
  publisher: {replicas: 2}
  mongo:
    uriSecretRef: {name: %s, key: uri}
`, name, ns, secret))
}

// leftovers lists every object in namespace ns (all listable namespaced kinds) except what the
// namespace starts with, Events, and the operator's leader-election Lease, plus cluster-scoped
// objects labelled with the release.
func leftovers(t testing.TB, kc, ns string) []string {
	t.Helper()
	kindsOut := kubectl(t, kc, nil, "api-resources", "--verbs=list", "--namespaced", "-o", "name")
	var kinds []string
	for _, k := range strings.Fields(kindsOut) {
		if k == "events" || k == "events.events.k8s.io" {
			continue
		}
		kinds = append(kinds, k)
	}
	out := kubectl(t, kc, nil, "-n", ns, "get", strings.Join(kinds, ","), "-o", "name", "--ignore-not-found")
	allowed := []string{"serviceaccount/default", "configmap/kube-root-ca.crt", "lease.coordination.k8s.io/" + leaseName}
	var left []string
	for _, o := range strings.Fields(out) {
		if !slices.Contains(allowed, o) {
			left = append(left, o)
		}
	}
	cl := kubectl(t, kc, nil, "get", "clusterroles,clusterrolebindings,customresourcedefinitions,persistentvolumes",
		"-l", "app.kubernetes.io/instance="+release, "-o", "name")
	left = append(left, strings.Fields(cl)...)
	return left
}

// TestLifecycle installs the chart into a kwok cluster, runs the operator as the chart's
// ServiceAccount, brings ChargerSimulations to Ready, upgrades the release and uninstalls it,
// with and without crds.keep.
func TestLifecycle(t *testing.T) {
	chargesimBin(t, "operator")
	kc := cluster(t, lifecycleCluster)
	const ns = testNamespace
	kubectl(t, kc, nil, "create", "namespace", ns)
	t.Cleanup(func() {
		kubectlResult(t, kc, nil, "delete", "pv", "-l", "chargesim-test=true", "--wait=false")
	})

	t.Run("crds.keep=false", func(t *testing.T) {
		makePV(t, kc, "chargesim-test-pv-1")
		helmIn(t, kc, "install", release, chartDir, "-n", ns, "--wait", "--timeout", "3m",
			"--set", "mongodb.enabled=true", "--set", "example.enabled=true", "--set", "crds.keep=false",
			"--set", "image.repository=chargesim", "--set", "image.tag=kwok")
		if s := jsonpath(t, kc, "-n", ns, "get", "deployment", operatorDep, "-o", "jsonpath={.status.availableReplicas}"); s != "1" {
			t.Fatalf("operator Deployment availableReplicas=%q", s)
		}
		if s := jsonpath(t, kc, "-n", ns, "get", "pvc", "data-cs-chargesim-mongodb-0", "-o", "jsonpath={.status.phase}"); s != "Bound" {
			t.Fatalf("MongoDB PVC %s", s)
		}
		password := jsonpath(t, kc, "-n", ns, "get", "secret", "cs-chargesim-mongodb", "-o", "jsonpath={.data.password}")
		if len(password) < 40 { // base64 of 32 characters
			t.Fatalf("generated password %q too short", password)
		}
		// The example is a post-install hook; it exists once install returns.
		demoUID := jsonpath(t, kc, "-n", ns, "get", "chargersimulation", "demo", "-o", "jsonpath={.metadata.uid}")

		op, _ := startOperator(t, kc, ns)
		waitReady(t, kc, ns, "demo")
		kubectl(t, kc, simulationYAML("second", ns, "cs-chargesim-mongodb"), "apply", "-f", "-")
		waitReady(t, kc, ns, "second")
		for _, sim := range []string{"demo", "second"} {
			out := kubectl(t, kc, nil, "-n", ns, "get", "deployments,statefulsets,services", "-l", "chargesim.io/simulation="+sim, "-o", "name")
			if n := len(strings.Fields(out)); n < 4 {
				t.Errorf("simulation %s has only %d workloads/services: %s", sim, n, out)
			}
		}
		if l := op.log(); strings.Contains(strings.ToLower(l), "forbidden") {
			t.Errorf("the chart's RBAC is not enough for the operator:\n%s", tail([]byte(l), 4000))
		}

		// Upgrade with a changed value: the operator pod template changes, so the Deployment
		// rolls out a new ReplicaSet; the generated password and the example survive.
		sel := "app.kubernetes.io/instance=cs,app.kubernetes.io/component=operator"
		before := strings.Fields(jsonpath(t, kc, "-n", ns, "get", "replicasets", "-l", sel, "-o", "name"))
		if len(before) != 1 {
			t.Fatalf("operator ReplicaSets before upgrade: %v", before)
		}
		helmIn(t, kc, "upgrade", release, chartDir, "-n", ns, "--reuse-values", "--set", "operator.logLevel=debug", "--wait", "--timeout", "3m")
		testenv.Eventually(t, time.Minute, "operator rolled to a new ReplicaSet", func() error {
			rs := strings.Fields(jsonpath(t, kc, "-n", ns, "get", "replicasets", "-l", sel, "-o",
				`jsonpath={range .items[*]}{.metadata.name}={.status.replicas}/{.status.readyReplicas} {end}`))
			if len(rs) != 2 {
				return fmt.Errorf("ReplicaSets %v", rs)
			}
			for _, r := range rs {
				name, counts, _ := strings.Cut(r, "=")
				old := "replicaset.apps/"+name == before[0]
				if old && counts != "0/" && counts != "0/0" {
					return fmt.Errorf("old ReplicaSet %s still has %s", name, counts)
				}
				if !old && counts != "1/1" {
					return fmt.Errorf("new ReplicaSet %s has %s", name, counts)
				}
			}
			return nil
		})
		env := jsonpath(t, kc, "-n", ns, "get", "deployment", operatorDep, "-o", `jsonpath={.spec.template.spec.containers[0].env[?(@.name=="CHARGESIM_LOG_LEVEL")].value}`)
		if env != "debug" {
			t.Errorf("operator log level after upgrade %q", env)
		}
		if p := jsonpath(t, kc, "-n", ns, "get", "secret", "cs-chargesim-mongodb", "-o", "jsonpath={.data.password}"); p != password {
			t.Errorf("upgrade changed the generated MongoDB password")
		}
		if u := jsonpath(t, kc, "-n", ns, "get", "chargersimulation", "demo", "-o", "jsonpath={.metadata.uid}"); u != demoUID {
			t.Errorf("upgrade recreated the example simulation")
		}

		// helm uninstall deletes the operator Deployment first; stop the out-of-cluster one.
		op.stop(t)
		waitGCWatchesSimulations(t, kc, ns)
		helmIn(t, kc, "uninstall", release, "-n", ns, "--wait", "--timeout", "3m")
		testenv.Eventually(t, 2*time.Minute, "nothing left after uninstall", func() error {
			if l := leftovers(t, kc, ns); len(l) > 0 {
				return fmt.Errorf("left behind: %v", l)
			}
			if r := kubectlResult(t, kc, nil, "get", "crd", "chargersimulations.chargesim.io"); r.err == nil {
				return fmt.Errorf("CRD still there with crds.keep=false")
			}
			return nil
		})
	})

	t.Run("crds.keep=true", func(t *testing.T) {
		// Defaults: the CRD is kept. MongoDB without a volume this time.
		helmIn(t, kc, "install", release, chartDir, "-n", ns, "--wait", "--timeout", "3m",
			"--set", "mongodb.enabled=true", "--set", "mongodb.persistence.enabled=false")
		op, _ := startOperator(t, kc, ns)
		kubectl(t, kc, simulationYAML("kept", ns, "cs-chargesim-mongodb"), "apply", "-f", "-")
		waitReady(t, kc, ns, "kept")
		op.stop(t)
		helmIn(t, kc, "uninstall", release, "-n", ns, "--wait", "--timeout", "3m")

		if a := jsonpath(t, kc, "get", "crd", "chargersimulations.chargesim.io", "-o", `jsonpath={.metadata.annotations.helm\.sh/resource-policy}`); a != "keep" {
			t.Fatalf("kept CRD annotation %q", a)
		}
		// What remains is the CRD, the user's simulation and what it owns.
		uid := jsonpath(t, kc, "-n", ns, "get", "chargersimulation", "kept", "-o", "jsonpath={.metadata.uid}")
		testenv.Eventually(t, 2*time.Minute, "only the kept CRD and simulation left", func() error {
			var unexpected []string
			for _, o := range leftovers(t, kc, ns) {
				if o == "customresourcedefinition.apiextensions.k8s.io/chargersimulations.chargesim.io" ||
					o == "chargersimulation.chargesim.io/kept" {
					continue
				}
				r := kubectlResult(t, kc, nil, "-n", ns, "get", o, "--ignore-not-found", "-o", "jsonpath={.metadata.uid}")
				if r.err == nil && strings.TrimSpace(r.stdout) == "" {
					continue // deleted since it was listed
				}
				if ownedTransitively(t, kc, ns, o, uid) {
					continue
				}
				unexpected = append(unexpected, o)
			}
			if len(unexpected) > 0 {
				return fmt.Errorf("left behind: %v", unexpected)
			}
			return nil
		})

		// Installing again adopts the kept CRD (same release name and namespace).
		helmIn(t, kc, "install", release, chartDir, "-n", ns, "--wait", "--timeout", "3m")
		if u := jsonpath(t, kc, "-n", ns, "get", "chargersimulation", "kept", "-o", "jsonpath={.metadata.uid}"); u != uid {
			t.Errorf("reinstall lost the kept simulation")
		}
		kubectl(t, kc, nil, "-n", ns, "delete", "chargersimulation", "kept", "--wait")
		helmIn(t, kc, "uninstall", release, "-n", ns, "--wait")
		// The garbage collector resolves a dependent's owner through the CRD: deleting the CRD
		// before it has collected the simulation's children would orphan them for good (a
		// simulation has a dozen children). Users are told the same (docs/operator.md).
		testenv.Eventually(t, 2*time.Minute, "children of the deleted simulation collected", func() error {
			var left []string
			for _, o := range leftovers(t, kc, ns) {
				if o != "customresourcedefinition.apiextensions.k8s.io/chargersimulations.chargesim.io" {
					left = append(left, o)
				}
			}
			if len(left) > 0 {
				return fmt.Errorf("left: %v", left)
			}
			return nil
		})
		kubectl(t, kc, nil, "delete", "crd", "chargersimulations.chargesim.io", "--wait")
		testenv.Eventually(t, 2*time.Minute, "namespace empty", func() error {
			if l := leftovers(t, kc, ns); len(l) > 0 {
				return fmt.Errorf("left behind: %v", l)
			}
			return nil
		})
	})
}

// waitGCWatchesSimulations returns once kube-controller-manager's garbage collector watches
// ChargerSimulations. It picks up new CRDs on a 30s resync; until then, deleting the CRD (and so
// every ChargerSimulation) orphans their workloads for good, because once the CRD is gone the
// collector cannot even resolve the owner's kind. A fresh cluster in a test hits that window;
// a real one, where the CRD is older than 30s, does not. Probe: a canary simulation owning a
// ConfigMap is deleted, and the ConfigMap must follow.
func waitGCWatchesSimulations(t testing.TB, kc, ns string) {
	t.Helper()
	start := time.Now()
	testenv.Eventually(t, 2*time.Minute, "garbage collector watching ChargerSimulations", func() error {
		// suspend: the operator is stopped anyway; the canary must not look like a workload.
		kubectl(t, kc, []byte(fmt.Sprintf(`apiVersion: chargesim.io/v1alpha1
kind: ChargerSimulation
metadata: {name: gc-canary, namespace: %s}
spec:
  suspend: true
  mongo: {uriSecretRef: {name: gc-canary}}
`, ns)), "apply", "-f", "-")
		uid := jsonpath(t, kc, "-n", ns, "get", "chargersimulation", "gc-canary", "-o", "jsonpath={.metadata.uid}")
		kubectl(t, kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: gc-canary
  namespace: %s
  ownerReferences: [{apiVersion: chargesim.io/v1alpha1, kind: ChargerSimulation, name: gc-canary, uid: %s}]
`, ns, uid)), "apply", "-f", "-")
		kubectl(t, kc, nil, "-n", ns, "delete", "chargersimulation", "gc-canary", "--wait")
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if r := kubectlResult(t, kc, nil, "-n", ns, "get", "configmap", "gc-canary", "--ignore-not-found", "-o", "name"); r.err == nil && strings.TrimSpace(r.stdout) == "" {
				return nil
			}
			time.Sleep(200 * time.Millisecond)
		}
		kubectl(t, kc, nil, "-n", ns, "delete", "configmap", "gc-canary", "--ignore-not-found")
		return fmt.Errorf("ConfigMap owned by a deleted ChargerSimulation not collected")
	})
	t.Logf("garbage collector watches ChargerSimulations (waited %s)", time.Since(start).Round(time.Millisecond))
}

// ownedTransitively reports whether object o (kind/name) is owned, through a chain of
// ownerReferences (Pod → ReplicaSet → Deployment → ChargerSimulation), by uid.
func ownedTransitively(t testing.TB, kc, ns, o, uid string) bool {
	t.Helper()
	// The endpoints controller names Endpoints after their Service but sets no owner.
	if name, ok := strings.CutPrefix(o, "endpoints/"); ok {
		o = "service/" + name
	}
	for range 4 {
		r := kubectlResult(t, kc, nil, "-n", ns, "get", o, "-o",
			`jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].uid}`)
		if r.err != nil {
			return false
		}
		parts := strings.Split(strings.TrimSpace(r.stdout), "/")
		if len(parts) != 3 || parts[0] == "" {
			return false
		}
		if parts[2] == uid {
			return true
		}
		o = strings.ToLower(parts[0]) + "/" + parts[1]
	}
	return false
}
