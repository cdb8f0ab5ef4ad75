//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/test/testenv"
)

func newNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}
	if err := k8s.Create(bg, ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func getSim(t testing.TB, ns, name string) *v1alpha1.ChargerSimulation {
	t.Helper()
	sim := &v1alpha1.ChargerSimulation{}
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, sim); err != nil {
		t.Fatal(err)
	}
	return sim
}

// readyForGeneration: Ready=True, and both the status and its Ready condition describe the
// current generation.
func readyForGeneration(sim *v1alpha1.ChargerSimulation) error {
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady)
	switch {
	case c == nil:
		return errors.New("no Ready condition")
	case sim.Status.ObservedGeneration != sim.Generation || c.ObservedGeneration != sim.Generation:
		return fmt.Errorf("status is for generation %d, spec is %d", sim.Status.ObservedGeneration, sim.Generation)
	case c.Status != metav1.ConditionTrue:
		return fmt.Errorf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
	}
	return nil
}

// assertReallyAvailable checks the simulation's status against its workloads as the real
// controllers report them.
func assertReallyAvailable(t *testing.T, sim *v1alpha1.ChargerSimulation) {
	t.Helper()
	deps := map[string]v1alpha1.ComponentStatus{"api": sim.Status.API}
	if sim.Spec.Broker.URL == "" {
		deps["broker"] = *sim.Status.Broker
	}
	for c, st := range deps {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: sim.Namespace, Name: sim.Name + "-" + c}, d); err != nil {
			t.Fatal(err)
		}
		if d.Status.AvailableReplicas != *d.Spec.Replicas || d.Status.ReadyReplicas != st.ReadyReplicas || st.ReadyReplicas != st.DesiredReplicas {
			t.Errorf("%s/%s: Deployment available %d/%d, status says %d/%d", sim.Name, c,
				d.Status.AvailableReplicas, *d.Spec.Replicas, st.ReadyReplicas, st.DesiredReplicas)
		}
	}
	for c, st := range map[string]v1alpha1.ComponentStatus{"publisher": sim.Status.Publisher, "listener": sim.Status.Listener} {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: sim.Namespace, Name: sim.Name + "-" + c}, sts); err != nil {
			t.Fatal(err)
		}
		want := sim.Spec.Publisher.Replicas
		if c == "listener" {
			want = sim.Spec.Listener.Replicas
		}
		if sts.Status.AvailableReplicas != *sts.Spec.Replicas || sts.Status.ReadyReplicas != st.ReadyReplicas || *sts.Spec.Replicas != want {
			t.Errorf("%s/%s: StatefulSet available %d/%d, status says %d, spec %d", sim.Name, c,
				sts.Status.AvailableReplicas, *sts.Spec.Replicas, st.ReadyReplicas, want)
		}
	}
}

// componentPods lists the running (not terminating) pods of one component of a simulation.
func componentPods(t *testing.T, ns, sim, component string) []corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := k8s.List(bg, pods, client.InNamespace(ns), client.MatchingLabels{
		"app.kubernetes.io/instance": sim, "app.kubernetes.io/component": component,
	}); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func podEnv(p corev1.Pod) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range p.Spec.Containers[0].Env {
		m[e.Name] = e
	}
	return m
}

func TestOperatorManifestDeploys(t *testing.T) {
	// The Deployment from config/manager passes the namespace's restricted Pod Security level
	// and becomes available (kwok plays its kubelet).
	if out, err := kubectl("-n", operatorNamespace, "rollout", "status", "deployment/chargesim-operator", "--timeout=180s"); err != nil {
		t.Fatalf("operator Deployment: %v\n%s", err, out)
	}
}

func TestSamples(t *testing.T) {
	ns := newNamespace(t, "samples-")
	minimal := filepath.Join(root, "config", "samples", "minimal.yaml")
	full := filepath.Join(root, "config", "samples", "full.yaml")
	if out, err := kubectl("apply", "-n", ns, "-f", minimal, "-f", full); err != nil {
		t.Fatalf("apply samples: %v\n%s", err, out)
	}

	t.Run("ready", func(t *testing.T) {
		for _, name := range []string{"minimal", "full"} {
			testenv.Eventually(t, 5*time.Minute, name+" Ready", func() error { return readyForGeneration(getSim(t, ns, name)) })
			assertReallyAvailable(t, getSim(t, ns, name))
		}
		full := getSim(t, ns, "full")
		if full.Status.SessionsPerSecond != "100" || full.Status.APIAddress != "full-api."+ns+".svc:80" || full.Status.Broker != nil {
			t.Errorf("full: rate %q api %q broker %+v", full.Status.SessionsPerSecond, full.Status.APIAddress, full.Status.Broker)
		}
		// The listeners are a StatefulSet: stable pod names, which (with the namespace) are
		// their MQTT client IDs and so the keys of their persistent sessions.
		var names []string
		for _, p := range componentPods(t, ns, "full", "listener") {
			names = append(names, p.Name)
			env := podEnv(p)
			if id := env["CHARGESIM_MQTT_CLIENT_ID"].Value; id != "chargesim-"+ns+"-$(POD_NAME)" {
				t.Errorf("pod %s: client ID %q", p.Name, id)
			}
			if g := env["CHARGESIM_SHARE_GROUP"].Value; g != "chargesim-"+ns+"-full" {
				t.Errorf("pod %s: share group %q", p.Name, g)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"full-listener-0", "full-listener-1"}) {
			t.Errorf("listener pods %v", names)
		}
		out, err := kubectl("get", "csim", "-n", ns)
		if err != nil {
			t.Fatal(err)
		}
		header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
		if !slices.Equal(header, []string{"NAME", "CHARGERS", "SESSIONS/S", "READY", "PUBLISHED", "STORED", "REJECTED", "LAG", "AGE"}) {
			t.Errorf("kubectl get csim columns %v", header)
		}
		wide, err := kubectl("get", "csim", "-n", ns, "-o", "wide")
		if err != nil {
			t.Fatal(err)
		}
		header = strings.Fields(strings.SplitN(wide, "\n", 2)[0])
		if !slices.Equal(header, []string{"NAME", "CHARGERS", "SESSIONS/S", "READY", "REASON", "PUBLISHED", "STORED", "REJECTED", "LAG", "PUBLISHERS", "LISTENERS", "API", "MISSING", "AGE"}) {
			t.Errorf("kubectl get csim -o wide columns %v", header)
		}
		found := false
		for _, l := range strings.Split(out, "\n") {
			// The progress columns are empty until the operator has reached the simulation's API
			// (kwok runs no containers): kubectl prints nothing for them.
			if f := strings.Fields(l); len(f) >= 5 && slices.Equal(f[:4], []string{"full", "3000", "100", "True"}) {
				found = true
			}
		}
		if !found {
			t.Errorf("kubectl get csim:\n%s", out)
		}
	})

	t.Run("scale", func(t *testing.T) {
		if out, err := kubectl("scale", "-n", ns, "csim/minimal", "--replicas=3"); err != nil {
			t.Fatalf("kubectl scale: %v\n%s", err, out)
		}
		testenv.Eventually(t, 5*time.Minute, "minimal scaled and Ready", func() error {
			sim := getSim(t, ns, "minimal")
			if sim.Status.Publisher.ReadyReplicas != 3 {
				// Say whether the operator or the cluster is behind.
				out, _ := kubectl("get", "-n", ns, "statefulset/minimal-publisher", "-o", "jsonpath={.status}")
				pods, _ := kubectl("get", "-n", ns, "pods", "-l", "app.kubernetes.io/instance=minimal,app.kubernetes.io/component=publisher", "-o", "wide")
				return fmt.Errorf("status says publisher ready %d/3; StatefulSet status %s\n%s", sim.Status.Publisher.ReadyReplicas, out, pods)
			}
			return readyForGeneration(sim)
		})
		assertReallyAvailable(t, getSim(t, ns, "minimal"))
		// Each pod learns its shard from its own pod-index label (set by the StatefulSet
		// controller) and the shard count from its template: 3 pods, indexes 0..2, count 3.
		var idx []string
		for _, p := range componentPods(t, ns, "minimal", "publisher") {
			idx = append(idx, p.Labels["apps.kubernetes.io/pod-index"])
			for _, e := range p.Spec.Containers[0].Env {
				if e.Name == "CHARGESIM_SHARD_COUNT" && e.Value != "3" {
					t.Errorf("pod %s: shard count %s", p.Name, e.Value)
				}
			}
		}
		slices.Sort(idx)
		if !slices.Equal(idx, []string{"0", "1", "2"}) {
			t.Errorf("publisher pod indexes %v", idx)
		}
		out, err := kubectl("get", "csim/minimal", "-n", ns, "-o", "jsonpath={.spec.publisher.replicas} {.status.publisher.replicas}")
		if err != nil || out != "3 3" {
			t.Errorf("spec/status replicas %q %v", out, err)
		}
	})

	t.Run("drift", func(t *testing.T) {
		old := &appsv1.Deployment{}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "minimal-api"}, old); err != nil {
			t.Fatal(err)
		}
		if out, err := kubectl("delete", "-n", ns, "deployment/minimal-api", "--wait=false"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		testenv.Eventually(t, 3*time.Minute, "minimal-api recreated and Ready", func() error {
			d := &appsv1.Deployment{}
			if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "minimal-api"}, d); err != nil {
				return err
			}
			if d.UID == old.UID {
				return errors.New("not replaced yet")
			}
			if d.Status.AvailableReplicas != *d.Spec.Replicas {
				return fmt.Errorf("new Deployment available %d/%d", d.Status.AvailableReplicas, *d.Spec.Replicas)
			}
			// The status may still be the one from before the deletion for a moment; it must
			// end up Ready for the new Deployment.
			return readyForGeneration(getSim(t, ns, "minimal"))
		})
	})

	t.Run("metrics", func(t *testing.T) {
		var text string
		testenv.Eventually(t, time.Minute, "both samples counted Ready", func() error {
			var err error
			if text, err = scrape(opMetrics); err != nil {
				return err
			}
			if ready := metricValue(text, `chargesim_operator_simulations{condition="Ready",status="True"}`); ready < 2 {
				return fmt.Errorf("chargesim_operator_simulations Ready=True is %v, want ≥ 2", ready)
			}
			// Every reconcile after the first finds the children as desired and skips the
			// apply; how soon one happens depends on the cluster, so this is waited for too.
			if metricValue(text, `chargesim_operator_applies_total{kind="Deployment",result="unchanged"}`) == 0 {
				return errors.New("no unchanged applies counted")
			}
			return nil
		})
		promtool := filepath.Join(root, "bin", "promtool")
		if _, err := os.Stat(promtool); err != nil {
			t.Fatalf("bin/promtool missing: run hack/deps.sh")
		}
		var own []string
		for _, l := range strings.Split(text, "\n") {
			if strings.Contains(l, "chargesim_operator_") {
				own = append(own, l)
			}
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(strings.Join(own, "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	// In a fresh cluster this takes up to ~40s: the garbage collector picks up a newly
	// installed CRD's resource at its next discovery sync (every 30s).
	t.Run("delete garbage-collects children", func(t *testing.T) {
		if out, err := kubectl("delete", "-n", ns, "csim/full", "--wait=true", "--timeout=120s"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		testenv.Eventually(t, 3*time.Minute, "children of full collected", func() error {
			out, err := kubectl("get", "deployments,statefulsets,services,configmaps,pods", "-n", ns,
				"-l", "app.kubernetes.io/instance=full", "-o", "name")
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			if strings.TrimSpace(out) != "" {
				return fmt.Errorf("left: %s", strings.Join(strings.Fields(out), " "))
			}
			return nil
		})
		// The other simulation is untouched.
		if err := readyForGeneration(getSim(t, ns, "minimal")); err != nil {
			t.Errorf("minimal after deleting full: %v", err)
		}
	})
}

// A new simulation's publisher is created only once a listener is ready. Here the listener
// cannot be scheduled at first (it asks for more CPU than any node has), so the real
// StatefulSet controller never reports it ready until the spec is fixed.
func TestPublisherWaitsForListenerInCluster(t *testing.T) {
	ns := newNamespace(t, "waiting-")
	if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mongo"},
		StringData: map[string]string{"uri": "mongodb://m:27017"}}); err != nil {
		t.Fatal(err)
	}
	sim := &v1alpha1.ChargerSimulation{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "late"},
		Spec: v1alpha1.ChargerSimulationSpec{
			Mongo: v1alpha1.MongoSpec{URISecretRef: v1alpha1.URISecretRef{Name: "mongo"}},
			Listener: v1alpha1.ListenerSpec{Resources: &corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100000")},
			}},
		},
	}
	if err := k8s.Create(bg, sim); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Minute, "WaitingForListener", func() error {
		sim := getSim(t, ns, "late")
		c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionProgressing)
		if c == nil || c.ObservedGeneration != sim.Generation || c.Reason != v1alpha1.ReasonWaitingForListener {
			return fmt.Errorf("Progressing %+v", c)
		}
		return nil
	})
	// The operator has decided for this generation: no publisher.
	err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "late-publisher"}, &appsv1.StatefulSet{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("publisher StatefulSet with no listener ready: %v", err)
	}
	for _, p := range componentPods(t, ns, "late", "listener") {
		if p.Spec.NodeName != "" {
			t.Fatalf("listener pod %s was scheduled to %s: the test needs it unschedulable", p.Name, p.Spec.NodeName)
		}
	}

	// Schedulable: the listener becomes ready, then the publisher is created.
	if out, err := kubectl("patch", "-n", ns, "csim/late", "--type=json",
		"-p", `[{"op":"remove","path":"/spec/listener/resources"}]`); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	testenv.Eventually(t, 5*time.Minute, "late Ready", func() error { return readyForGeneration(getSim(t, ns, "late")) })
	assertReallyAvailable(t, getSim(t, ns, "late"))
}

func TestMissingSecretInCluster(t *testing.T) {
	ns := newNamespace(t, "degraded-")
	sim := &v1alpha1.ChargerSimulation{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lonely"},
		Spec:       v1alpha1.ChargerSimulationSpec{Mongo: v1alpha1.MongoSpec{URISecretRef: v1alpha1.URISecretRef{Name: "later"}}},
	}
	if err := k8s.Create(bg, sim); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "Degraded SecretNotFound", func() error {
		c := meta.FindStatusCondition(getSim(t, ns, "lonely").Status.Conditions, v1alpha1.ConditionDegraded)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSecretNotFound {
			return fmt.Errorf("Degraded %+v", c)
		}
		return nil
	})
	out, err := kubectl("get", "events", "-n", ns, "--field-selector", "reason=SecretNotFound", "-o", "name")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("no SecretNotFound event: %v %s", err, out)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "later"}, StringData: map[string]string{"uri": "mongodb://m:27017"}}
	if err := k8s.Create(bg, secret); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Minute, "recovers and becomes Ready", func() error { return readyForGeneration(getSim(t, ns, "lonely")) })
}

// metricValue returns the value of the sample with exactly this name and labels (0 if absent).
func metricValue(text, series string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err == nil {
				return v
			}
		}
	}
	return 0
}
