//go:build cluster

// Package cluster runs the chart, the operator and the simulations as real containers on a real
// Kubernetes node: hack/cluster.sh's local node (E2E_PROVIDER=local, the default; make
// test-e2e-cluster) or kind (E2E_PROVIDER=kind, hack/test-e2e-kind.sh). Nothing is faked: the
// images are the project's own (hack/imagebuild), probes, security contexts, Services, DNS and
// port-forwards all run.
//
//	go test -tags cluster -count=1 -timeout 20m ./test/cluster/
//
// E2E_KEEP_CLUSTER=1 leaves the local cluster up afterwards (faster reruns).
package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/chargesim/chargesim/components/session"
)

const (
	namespace = "chargesim-e2e"
	release   = "chargesim"
	storeSec  = "chargesim-store" // charts/chargesim/ci/local-values.yaml: mongodb.auth.existingSecret
	crdName   = "chargersimulations.chargesim.io"
)

type env struct {
	t     *testing.T
	ctx   context.Context
	root  string
	kc    string
	prov  provider
	kubec string
	helm  string
	prom  string // 127.0.0.1:<port> forwarded to Prometheus (installMonitoring)
}

func TestChartOnRealCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 18*time.Minute)
	defer cancel()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	prov, err := newProvider(root)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, root: root, prov: prov,
		kubec: filepath.Join(root, "bin", "kubectl"), helm: filepath.Join(root, "bin", "helm")}
	start := time.Now()
	e.kc, err = prov.up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The test's context is canceled by now.
		var cancel context.CancelFunc
		e.ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if t.Failed() {
			e.dump()
		}
		_, _ = e.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")
		if err := prov.down(e.ctx); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	t.Logf("cluster up in %s", time.Since(start).Round(time.Second))

	// ---- install: monitoring stack, operator in-cluster, in-cluster store ---------------
	e.installMonitoring()
	monitoredFrom := time.Now()
	e.must(e.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--timeout=120s"))
	e.must(e.kubectl("create", "namespace", namespace))
	storeURI := fmt.Sprintf("mongodb://%s-mongodb.%s.svc:27017/", release, namespace)
	e.must(e.kubectl("-n", namespace, "create", "secret", "generic", storeSec,
		"--from-literal=username=none", "--from-literal=password=none", "--from-literal=uri="+storeURI))
	e.must(e.helmCmd(append([]string{"install", release, filepath.Join(root, "charts", "chargesim"), "-n", namespace,
		"-f", filepath.Join(root, "charts", "chargesim", "ci", "local-values.yaml"), "--wait", "--timeout", "5m"}, monitoringValues...)...))
	t.Logf("helm install done at %s", time.Since(start).Round(time.Second))
	// Two replicas (monitoringValues): one leader, one hot standby.
	op := e.podsWith("app.kubernetes.io/component=operator")
	if len(op) != 2 {
		t.Fatalf("operator pods: %d, want 2", len(op))
	}
	for _, p := range op {
		if sa := p.Spec.ServiceAccountName; sa != release {
			t.Errorf("operator %s runs as ServiceAccount %q, want the chart's %q", p.Metadata.Name, sa, release)
		}
	}
	e.waitFor("an operator replica holds the leader-election lease", func() (bool, string) {
		out, err := e.kubectl("-n", namespace, "get", "lease", "-o", "jsonpath={.items[*].spec.holderIdentity}")
		return err == nil && (strings.HasPrefix(out, op[0].Metadata.Name) || strings.HasPrefix(out, op[1].Metadata.Name)), out
	})

	// ---- simulations ---------------------------------------------------------------------
	e.applySim("minimal", storeURI, "")
	// "large" is about replicas, not rate: 6 simulated minutes a second (6 sessions/s) keep the
	// shared FerretDB small enough that its full-collection scans (every audit and snapshot of
	// three API pods) stay seconds long on one 2-core node.
	e.applySim("large", storeURI, `{"chargers": 60, "connectors": 2, "timeScale": 6, "publisher": {"replicas": 2}, "listener": {"replicas": 2}, "api": {"replicas": 2}}`)
	for _, sim := range []string{"minimal", "large"} {
		e.must(e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/"+sim, "--timeout=300s"))
	}
	t.Logf("simulations Ready at %s", time.Since(start).Round(time.Second))

	// Every pod: containers running in containerd, ready, as non-root, root filesystem read-only.
	pods := e.podsWith("")
	if len(pods) != 3+4+7 {
		t.Fatalf("%d pods in %s, want 14: 2 operators, store, 4 of minimal, 7 of large", len(pods), namespace)
	}
	for _, p := range pods {
		e.checkPod(p)
	}
	// The monitoring stack runs as hardened as the chart.
	for _, p := range e.podsIn(monNamespace, "") {
		e.checkPod(p)
	}

	// ---- the API through kubectl port-forward ------------------------------------------------
	api := e.portForward("svc/minimal-api", 8080)
	s1 := e.waitStat(api, 0)
	r1 := e.readings(api)
	s2 := e.waitStat(api, s1)
	e.waitFor("/readings/ shows new sessions", func() (bool, string) {
		r := e.readings(api)
		return len(r) > 0 && string(r[0]) != firstOr(r1), fmt.Sprintf("%d readings", len(r))
	})
	t.Logf("minimal: /api/v1/stats sessions %d -> %d", s1, s2)

	// ---- sessions through the port-forwarded broker: stored exactly once -----------------
	// The managed broker refuses anonymous clients and wrong passwords; the operator's
	// generated credentials (the Secret publisher and listener mount) get in.
	broker := e.portForward("svc/minimal-broker", 1883)
	user, pass := e.brokerCredentials("minimal")
	for _, c := range [][2]string{{"", ""}, {user, ""}, {user, pass + "x"}} {
		if err := tryMQTT("tcp://"+broker, c[0], c[1]); err == nil {
			t.Errorf("the managed broker accepted user %q with a password of %d characters", c[0], len(c[1]))
		}
	}
	pub := newClientPublisher(t, "tcp://"+broker, fmt.Sprintf("e2e-%d", time.Now().UnixNano()%1e9), user, pass)
	pub.publish(1, 100, 0)
	pub.publish(1, 100, 0) // the same 100 again: redelivery must not store twice
	e.waitCharger(api, pub.charger, 100)

	// ---- monitoring: every component scraped through the chart's monitors ------------------
	e.checkMonitoring(broker, api)

	// ---- credentials rotated while sessions flow: nothing lost, the broker not restarted ----
	brokerPod := e.podsWith("chargesim.io/simulation=minimal,app.kubernetes.io/component=broker")
	if len(brokerPod) != 1 {
		t.Fatalf("%d broker pods", len(brokerPod))
	}
	rotStart := time.Now().Truncate(time.Second)
	e.must(e.kubectl("-n", namespace, "annotate", "chargersimulation/minimal", "--overwrite",
		"chargesim.io/rotate-broker-credentials=e2e-"+strconv.FormatInt(rotStart.Unix(), 10)))
	rotating := make(chan struct{})
	go func() {
		defer close(rotating)
		// The test's client stays connected with the old password throughout.
		pub.publish(101, 100, 300*time.Millisecond)
	}()
	e.waitForUpTo(6*time.Minute, "rotation complete (only the new password accepted)", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "secret", "minimal-broker-credentials", "-o",
			`jsonpath={.metadata.annotations.chargesim\.io/rotation-phase}`)
		u, p := e.brokerCredentials("minimal")
		acc := e.secretKey("minimal-broker-credentials", "accepted-passwords")
		return out == "" && p != pass && strings.TrimSpace(acc) == p && u == user, "phase " + out
	})
	<-rotating
	e.must(e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/minimal", "--timeout=180s"))
	rotEnd := time.Now().Truncate(time.Second)
	_, newPass := e.brokerCredentials("minimal")
	if now := e.podsWith("chargesim.io/simulation=minimal,app.kubernetes.io/component=broker"); len(now) != 1 ||
		now[0].Metadata.UID != brokerPod[0].Metadata.UID || e.restarts(now[0].Metadata.Name) != 0 {
		t.Errorf("the broker pod was replaced or restarted by the rotation (its queues are on an emptyDir)")
	}
	e.waitFor("the broker re-read its password file", func() (bool, string) {
		err := tryMQTT("tcp://"+broker, user, pass)
		return err != nil && tryMQTT("tcp://"+broker, user, newPass) == nil, fmt.Sprint(err)
	})
	e.waitCharger(api, pub.charger, pub.distinct)
	t.Logf("credentials rotated in %s while publishing; old password refused, new accepted", rotEnd.Sub(rotStart))
	// The simulation's own publishers (rolled onto the new password) lost nothing either.
	time.Sleep(20 * time.Second) // sessions that ended just before rotEnd reach the store
	rot := e.auditClean(api, "the rotation", rotStart, rotEnd)
	t.Logf("audit of the rotation: %d sessions expected, %d stored, 0 missing", rot.Expected, rot.Stored)

	// ---- kubectl scale csim --------------------------------------------------------------
	for _, n := range []int{3, 1} {
		e.must(e.kubectl("-n", namespace, "scale", "chargersimulation/minimal", "--replicas="+strconv.Itoa(n)))
		e.waitFor(fmt.Sprintf("publisher at %d ready replicas", n), func() (bool, string) {
			out, _ := e.kubectl("-n", namespace, "get", "statefulset", "minimal-publisher", "-o",
				"jsonpath={.status.readyReplicas}/{.status.replicas}")
			return out == fmt.Sprintf("%d/%d", n, n), out
		})
		e.must(e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/minimal", "--timeout=120s"))
		s := e.waitStat(api, e.stat(api))
		t.Logf("publisher replicas %d: sessions still flowing (%d)", n, s)
	}

	// ---- a killed listener loses nothing ---------------------------------------------------
	// SIGKILL of the listener's process on the node mid-stream (no graceful drain; the kubelet
	// restarts the container), then the whole pod deleted while the test keeps publishing.
	restarts := e.restarts("minimal-listener-0")
	killStart := time.Now().Truncate(time.Second)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pub.publish(101, 400, 5*time.Millisecond)
		pub.publish(501, 300, 5*time.Millisecond)
	}()
	time.Sleep(500 * time.Millisecond)
	e.killContainer("minimal-listener-0")
	e.waitFor("listener container restarted", func() (bool, string) {
		r := e.restarts("minimal-listener-0")
		return r > restarts, fmt.Sprintf("restarts %d", r)
	})
	e.must(e.kubectl("-n", namespace, "delete", "pod", "minimal-listener-0", "--grace-period=0", "--force"))
	<-done
	// The operator reaches the publisher pods' metrics and the API Service in-cluster and writes
	// status.progress (every 30s): data flows, so published and stored are counted and the
	// newest stored session is young.
	e.waitFor("status.progress of minimal while publishing", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "chargersimulation/minimal", "-o", "jsonpath={.status.progress}")
		st := progressOf(out)
		return st.Error == "" && st.Published != nil && *st.Published > 0 && st.Stored > 0 && st.Lag != "" && st.LastTime != "", out
	})
	e.must(e.kubectl("-n", namespace, "patch", "chargersimulation/minimal", "--type=merge", "-p", `{"spec":{"suspend":true}}`))
	e.waitFor("publisher suspended", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "pods", "-l", "chargesim.io/simulation=minimal,app.kubernetes.io/component=publisher", "-o", "name")
		return strings.TrimSpace(out) == "", out
	})
	suspendedAt := time.Now().Truncate(time.Second).Add(time.Second)
	e.waitCharger(api, pub.charger, pub.distinct)
	e.waitFor("stored sessions stop changing after suspend", func() (bool, string) {
		a := e.stat(api)
		time.Sleep(3 * time.Second)
		b := e.stat(api)
		return a == b, fmt.Sprintf("%d -> %d", a, b)
	})
	t.Logf("listener killed mid-stream: %d of %d published sessions stored, each once", pub.distinct, pub.distinct)

	// ---- the audit agrees: the simulation's own publisher lost nothing either --------------
	// Its shards record their runs (the operator gives them the store), so /api/v1/audit knows
	// every session they produced while the listener was killed ("large", storing into the
	// same database, is audited with it; the test client's sessions ended the day before).
	total := e.auditClean(api, "the listener kill", killStart, suspendedAt)
	t.Logf("audit after the listener kill: %d sessions expected, %d stored, 0 missing", total.Expected, total.Stored)
	// The operator reaches the API Service in-cluster and writes status.audit (every minute).
	e.waitFor("status.audit of minimal", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "chargersimulation/minimal", "-o", "jsonpath={.status.audit}")
		var st struct {
			LastTime string `json:"lastTime"`
			Error    string `json:"error"`
		}
		return json.Unmarshal([]byte(out), &st) == nil && st.LastTime != "" && st.Error == "", out
	})

	// Suspended: no publisher pod, so no published figure; stored is the store's count (which
	// "large", storing into the same database, keeps raising).
	stored := e.stat(api)
	e.waitFor("status.progress of minimal after suspend", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "chargersimulation/minimal", "-o", "jsonpath={.status.progress}")
		st := progressOf(out)
		return st.Error == "" && st.Published == nil && st.Stored >= stored, fmt.Sprintf("%s (API: %d stored)", out, stored)
	})

	// CHARGESIM_DOCS_IMAGES=<dir>: the main panels over the whole run, for docs/observability.md.
	e.docsImages(monitoredFrom)

	// ---- every alert fires for its real cause, and resolves ----------------------------------
	e.checkAlerts(t)

	// ---- helm upgrade and uninstall ---------------------------------------------------------
	e.must(e.helmCmd(append([]string{"upgrade", release, filepath.Join(root, "charts", "chargesim"), "-n", namespace,
		"-f", filepath.Join(root, "charts", "chargesim", "ci", "local-values.yaml"),
		"--set", "operator.logLevel=debug", "--wait", "--timeout", "5m"}, monitoringValues...)...))
	e.must(e.kubectl("-n", namespace, "rollout", "status", "deployment/"+release+"-operator", "--timeout=180s"))
	for _, sim := range []string{"minimal", "large"} {
		e.must(e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/"+sim, "--timeout=180s"))
	}
	e.must(e.helmCmd("uninstall", release, "-n", namespace, "--wait", "--timeout", "3m"))
	if _, err := e.kubectl("get", "crd", crdName); err != nil {
		t.Errorf("CRD gone after helm uninstall (crds.keep): %v", err)
	}
	e.waitFor("operator and store gone after uninstall", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "pods", "-l", "app.kubernetes.io/instance="+release, "-o", "name")
		return strings.TrimSpace(out) == "", out
	})
	t.Logf("done in %s", time.Since(start).Round(time.Second))
}

// ---- helpers -----------------------------------------------------------------------------------

// progress is the part of status.progress the test reads.
type progress struct {
	Published *int64 `json:"published"`
	Stored    int64  `json:"stored"`
	Lag       string `json:"lag"`
	LastTime  string `json:"lastTime"`
	Error     string `json:"error"`
}

func progressOf(jsonText string) progress {
	var p progress
	if err := json.Unmarshal([]byte(jsonText), &p); err != nil {
		p.Error = "no status.progress: " + err.Error()
	}
	return p
}

func firstOr(r []json.RawMessage) string {
	if len(r) == 0 {
		return ""
	}
	return string(r[0])
}

func (e *env) kubectl(args ...string) (string, error) {
	return run(e.ctx, []string{"KUBECONFIG=" + e.kc}, e.kubec, args...)
}

func (e *env) helmCmd(args ...string) (string, error) {
	return run(e.ctx, []string{"KUBECONFIG=" + e.kc}, e.helm, args...)
}

func (e *env) must(out string, err error) string {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) waitFor(what string, ok func() (bool, string)) {
	e.t.Helper()
	e.waitForUpTo(3*time.Minute, what, ok)
}

func (e *env) waitForUpTo(limit time.Duration, what string, ok func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	last := ""
	for time.Now().Before(deadline) {
		var done bool
		if done, last = ok(); done {
			return
		}
		time.Sleep(time.Second)
	}
	e.t.Fatalf("%s: timed out (last: %s)", what, last)
}

func (e *env) applySim(name, uri, spec string) {
	e.t.Helper()
	e.must(e.kubectl("-n", namespace, "create", "secret", "generic", name+"-mongo", "--from-literal=uri="+uri))
	if spec == "" {
		spec = "{}"
	}
	// The sample as users apply it, plus a simulated minute per second so sessions arrive fast.
	e.must(e.kubectl("-n", namespace, "apply", "-f", e.sampleAs(name)))
	e.must(e.kubectl("-n", namespace, "patch", "chargersimulation/"+name, "--type=merge", "-p",
		`{"spec":{"timeScale":60}}`))
	e.must(e.kubectl("-n", namespace, "patch", "chargersimulation/"+name, "--type=merge", "-p",
		`{"spec":`+spec+`}`))
}

type pod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Spec struct {
		ServiceAccountName string `json:"serviceAccountName"`
		Containers         []struct {
			Name            string `json:"name"`
			SecurityContext *struct {
				ReadOnlyRootFilesystem *bool `json:"readOnlyRootFilesystem"`
			} `json:"securityContext"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase             string `json:"phase"`
		ContainerStatuses []struct {
			Name        string `json:"name"`
			Ready       bool   `json:"ready"`
			ContainerID string `json:"containerID"`
			State       struct {
				Running *struct{} `json:"running"`
			} `json:"state"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

func (e *env) podsWith(selector string) []pod {
	e.t.Helper()
	return e.podsIn(namespace, selector)
}

func (e *env) podsIn(ns, selector string) []pod {
	e.t.Helper()
	args := []string{"-n", ns, "get", "pods", "-o", "json"}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	var list struct {
		Items []pod `json:"items"`
	}
	if err := json.Unmarshal([]byte(e.must(e.kubectl(args...))), &list); err != nil {
		e.t.Fatal(err)
	}
	return list.Items
}

// checkPod: every container running in containerd and ready; on the node, its process runs as
// a non-root user and a write to its root filesystem fails with EROFS.
func (e *env) checkPod(p pod) {
	e.t.Helper()
	if p.Status.Phase != "Running" || len(p.Status.ContainerStatuses) != len(p.Spec.Containers) {
		e.t.Errorf("pod %s: phase %s, %d of %d container statuses", p.Metadata.Name, p.Status.Phase,
			len(p.Status.ContainerStatuses), len(p.Spec.Containers))
		return
	}
	for _, c := range p.Status.ContainerStatuses {
		id, ok := strings.CutPrefix(c.ContainerID, "containerd://")
		if !ok || c.State.Running == nil || !c.Ready {
			e.t.Errorf("pod %s container %s: id %q running %v ready %v", p.Metadata.Name, c.Name, c.ContainerID, c.State.Running != nil, c.Ready)
			continue
		}
		out, err := e.prov.nodeShell(e.ctx, `pid=$($CTR task ls | awk -v id=`+id+` '$1 == id {print $2}')
[ -n "$pid" ] || { echo "no task $id"; exit 1; }
awk '/^Uid:/ {print "uid", $2, $3}' /proc/$pid/status
if err=$( (echo x > /proc/$pid/root/.e2e-write-test) 2>&1); then echo write ok; rm -f /proc/$pid/root/.e2e-write-test; else echo "write failed: $err"; fi`)
		if err != nil {
			e.t.Errorf("pod %s container %s: %v", p.Metadata.Name, c.Name, err)
			continue
		}
		if !strings.Contains(out, "uid ") || strings.Contains(out, "uid 0 ") || strings.HasSuffix(strings.SplitN(out, "\n", 2)[0], " 0") {
			e.t.Errorf("pod %s container %s runs as root: %s", p.Metadata.Name, c.Name, out)
		}
		if !strings.Contains(out, "Read-only file system") {
			e.t.Errorf("pod %s container %s: a write to its root filesystem did not fail read-only: %s", p.Metadata.Name, c.Name, out)
		}
	}
}

// restarts returns the restart count of a pod's first container (-1 if unknown).
func (e *env) restarts(name string) int {
	out, err := e.kubectl("-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return -1
	}
	return n
}

// killContainer sends SIGKILL to the process of a pod's first container, on the node.
func (e *env) killContainer(name string) {
	e.t.Helper()
	id, ok := strings.CutPrefix(e.must(e.kubectl("-n", namespace, "get", "pod", name, "-o",
		"jsonpath={.status.containerStatuses[0].containerID}")), "containerd://")
	if !ok {
		e.t.Fatalf("pod %s: no containerd container", name)
	}
	e.must(e.prov.nodeShell(e.ctx, `pid=$($CTR task ls | awk -v id=`+id+` '$1 == id {print $2}')
[ -n "$pid" ] || { echo "no task `+id+`" >&2; exit 1; }
kill -9 "$pid"`))
}

// portForward starts kubectl port-forward to target's port and returns 127.0.0.1:<local port>.
func (e *env) portForward(target string, port int) string {
	e.t.Helper()
	pf := startPortForward(e.t, e.kubec, e.kc, namespace, target, port)
	return pf
}

func (e *env) get(url string) ([]byte, error) { return e.getWithin(url, 10*time.Second) }

// getWithin is get with its own time limit (an audit of a window scans the store: seconds on
// FerretDB with the machine's 2 cores busy).
func (e *env) getWithin(url string, limit time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(e.ctx, limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}

func (e *env) stat(api string) int64 {
	b, err := e.get("http://" + api + "/api/v1/stats")
	if err != nil {
		return -1
	}
	var s struct {
		Sessions int64 `json:"sessions"`
	}
	if json.Unmarshal(b, &s) != nil {
		return -1
	}
	return s.Sessions
}

// waitStat waits until /api/v1/stats counts more than min sessions.
func (e *env) waitStat(api string, min int64) int64 {
	e.t.Helper()
	var v int64
	e.waitFor(fmt.Sprintf("/api/v1/stats sessions > %d", min), func() (bool, string) {
		v = e.stat(api)
		return v > min, strconv.FormatInt(v, 10)
	})
	return v
}

// auditCounts are the counts of GET /api/v1/audit.
type auditCounts struct {
	Expected   int64 `json:"expected"`
	Stored     int64 `json:"stored"`
	Missing    int64 `json:"missing"`
	Unexpected int64 `json:"unexpected"`
	Duplicates int64 `json:"duplicates"`
}

// audit is GET /api/v1/audit of the sessions that ended in [from, to).
func (e *env) audit(api string, from, to time.Time) auditCounts {
	e.t.Helper()
	q := fmt.Sprintf("from=%s&to=%s", from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339))
	// The API answers 503 ("retry in 1 s") while its own audits and the operator's hold the
	// store's audit slots, and a scan slower than its minute (--audit-timeout) fails: retried
	// for up to three minutes.
	var b []byte
	var err error
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		start := time.Now()
		b, err = e.getWithin("http://"+api+"/api/v1/audit?"+q, 75*time.Second)
		if err == nil || (!strings.Contains(err.Error(), "503") && !errors.Is(err, context.DeadlineExceeded)) || time.Now().After(deadline) {
			break
		}
		e.t.Logf("audit: retrying after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	var c auditCounts
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		e.t.Fatalf("GET /api/v1/audit?%s: %v (%s)", q, err, b)
	}
	return c
}

func (e *env) readings(api string) []json.RawMessage {
	b, err := e.get("http://" + api + "/readings/")
	if err != nil {
		return nil
	}
	var r []json.RawMessage
	_ = json.Unmarshal(b, &r)
	return r
}

// waitCharger waits until the API reports exactly n stored sessions of charger, then checks
// that the count stays n (nothing stored twice later).
func (e *env) waitCharger(api, charger string, n int) {
	e.t.Helper()
	count := func() int64 {
		b, err := e.get("http://" + api + "/api/v1/chargers/" + charger)
		if err != nil {
			return -1
		}
		var c struct {
			Sessions int64 `json:"sessions"`
		}
		if json.Unmarshal(b, &c) != nil {
			return -1
		}
		return c.Sessions
	}
	e.waitFor(fmt.Sprintf("charger %s: %d sessions stored", charger, n), func() (bool, string) {
		v := count()
		if v > int64(n) {
			e.t.Fatalf("charger %s: %d sessions stored, %d distinct published: stored twice", charger, v, n)
		}
		return v == int64(n), strconv.FormatInt(v, 10)
	})
	time.Sleep(2 * time.Second)
	if v := count(); v != int64(n) {
		e.t.Fatalf("charger %s: %d sessions stored after settling, want %d", charger, v, n)
	}
}

func (e *env) dump() {
	for _, args := range [][]string{
		{"get", "nodes,pods,deploy,sts,svc,chargersimulations", "-A", "-o", "wide"},
		{"-n", namespace, "describe", "pods"},
		{"-n", namespace, "logs", "deploy/" + release + "-operator", "--tail=80"},
		{"-n", namespace, "logs", "deploy/minimal-api", "--tail=60"},
		{"-n", namespace, "logs", "statefulset/minimal-listener", "--tail=40"},
		{"-n", namespace, "logs", "statefulset/" + release + "-mongodb", "--tail=40"},
		{"-n", namespace, "get", "events", "--sort-by=.lastTimestamp"},
	} {
		out, err := e.kubectl(args...)
		e.t.Logf("kubectl %s:\n%s%v", strings.Join(args, " "), out, err)
	}
}

// secretKey is one key of a Secret of the test namespace, decoded.
func (e *env) secretKey(name, key string) string {
	e.t.Helper()
	out, err := e.kubectl("-n", namespace, "get", "secret", name, "-o", "jsonpath={.data."+strings.ReplaceAll(key, ".", `\.`)+"}")
	if err != nil {
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if err != nil {
		e.t.Fatalf("Secret %s key %s: %v", name, key, err)
	}
	return string(b)
}

// brokerCredentials reads the managed broker's credentials the operator generated for sim,
// as its publisher and listener get them.
func (e *env) brokerCredentials(sim string) (user, pass string) {
	e.t.Helper()
	name := sim + "-broker-credentials"
	user, pass = e.secretKey(name, "username"), e.secretKey(name, "password")
	if user == "" || pass == "" {
		e.t.Fatalf("Secret %s: no username or password", name)
	}
	return user, pass
}

// tryMQTT connects once with the given credentials and disconnects: nil if the broker let it in.
func tryMQTT(url, user, pass string) error {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("e2e-try-%d", time.Now().UnixNano())).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(50)
	return nil
}

// clientPublisher publishes sessions of one charger of its own through the broker, QoS 1,
// waiting for every PUBACK.
type clientPublisher struct {
	t        *testing.T
	c        mqtt.Client
	charger  string
	distinct int // distinct sessions published so far (session IDs 1..distinct)
}

func newClientPublisher(t *testing.T, url, charger, user, pass string) *clientPublisher {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID("e2e-client-" + charger).SetUsername(user).SetPassword(pass).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(250) })
	return &clientPublisher{t: t, c: c, charger: charger}
}

// publish publishes sessions first..first+n-1 (publishing a range again is a redelivery),
// gap apart, and waits for their PUBACKs.
func (p *clientPublisher) publish(first int64, n int, gap time.Duration) {
	tb := session.NewTopicBuilder("")
	// Sessions that ended yesterday: stored like any other, but outside every audit window of
	// the test and of the operator, where they would count as unexpected (not the simulation's).
	now := time.Now().UTC().Truncate(time.Second).Add(-24 * time.Hour)
	toks := make([]mqtt.Token, 0, n)
	for i := range int64(n) {
		id := first + i
		s := session.Session{SessionID: id, EnergyKWh: 12.5, DurationSeconds: 1800, CostCents: 600,
			Timestamp: now.Unix(), ChargerID: p.charger, ConnectorID: 1,
			StartedAt: now.Add(-30 * time.Minute), EndedAt: now}
		b, err := json.Marshal(s)
		if err != nil {
			p.t.Error(err)
			return
		}
		toks = append(toks, p.c.Publish(tb.Topic(p.charger, 1, id), 1, false, b))
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(2*time.Minute) || tok.Error() != nil {
			p.t.Errorf("publish: no PUBACK: %v", tok.Error())
			return
		}
	}
	if last := int(first) + n - 1; last > p.distinct {
		p.distinct = last
	}
}

// sampleAs writes config/samples/minimal.yaml's ChargerSimulation as users apply it, renamed to
// name and naming the Secret <name>-mongo, and returns the file's path.
func (e *env) sampleAs(name string) string {
	e.t.Helper()
	sample, err := os.ReadFile(filepath.Join(e.root, "config", "samples", "minimal.yaml"))
	if err != nil {
		e.t.Fatal(err)
	}
	var doc string
	for _, d := range strings.Split(string(sample), "\n---\n") {
		if strings.Contains(d, "kind: ChargerSimulation") {
			doc = d
		}
	}
	doc = strings.ReplaceAll(doc, "name: minimal-mongo", "name: "+name+"-mongo")
	doc = strings.Replace(doc, "name: minimal", "name: "+name, 1)
	f := filepath.Join(e.t.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return f
}

// auditClean audits [from, to) of the store (every simulation storing there; the test's own
// client publishes sessions that ended the day before, outside the window) in one request, and
// fails the test unless every expected session is stored exactly once and nothing else is there.
func (e *env) auditClean(api, what string, from, to time.Time) auditCounts {
	e.t.Helper()
	total := e.audit(api, from, to)
	if total.Expected == 0 || total.Stored != total.Expected || total.Missing != 0 || total.Unexpected != 0 || total.Duplicates != 0 {
		e.t.Errorf("audit of %s [%s, %s): %+v, want every expected session stored once",
			what, from.Format(time.RFC3339), to.Format(time.RFC3339), total)
	}
	return total
}
