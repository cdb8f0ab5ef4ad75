//go:build envtest

package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
)

// Issue 9, bug 1: a user's Service named like a simulation's child existed first. Server-side
// apply would have adopted it (owner reference, selector and all; deleting the simulation would
// have deleted it). The operator must refuse, say so, and still run the other components.
func TestForeignObjectNeverTakenOver(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	mine := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "victim-api", Labels: map[string]string{"team": "payments"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "payments"},
			Ports: []corev1.ServicePort{{Name: "web", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := k8s.Create(ctx, mine); err != nil {
		t.Fatal(err)
	}
	before := getObj(t, ns, "victim-api", &corev1.Service{})

	createSim(t, simulation(ns, "victim"))
	sim := waitCondition(t, ns, "victim", v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionDegraded)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonNameConflict || !strings.Contains(c.Message, "Service victim-api") {
		t.Fatalf("Degraded condition %+v: want NameConflict naming Service victim-api", c)
	}
	eventually(t, "NameConflict event", func() error {
		if len(events(t, ns, "victim", v1alpha1.ReasonNameConflict)) == 0 {
			return errors.New("no event")
		}
		return nil
	})
	// The other components are reconciled all the same.
	getObj(t, ns, "victim-broker", &appsv1.Deployment{})
	getObj(t, ns, "victim-listener", &appsv1.StatefulSet{})
	if err := k8s.Get(ctx, key(ns, "victim-api"), &appsv1.Deployment{}); err != nil {
		t.Errorf("API Deployment not created next to the conflicting Service: %v", err)
	}

	// A few more reconciles (a spec change) and the Service is still exactly the user's.
	updateSim(t, ns, "victim", func(s *v1alpha1.ChargerSimulation) { s.Spec.Chargers = 20 })
	waitCondition(t, ns, "victim", v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	after := getObj(t, ns, "victim-api", &corev1.Service{})
	if after.ResourceVersion != before.ResourceVersion || len(after.OwnerReferences) != 0 ||
		after.Spec.Selector["app"] != "payments" || len(after.Spec.Selector) != 1 {
		t.Fatalf("the user's Service was touched: rv %s→%s, owners %v, selector %v",
			before.ResourceVersion, after.ResourceVersion, after.OwnerReferences, after.Spec.Selector)
	}

	// Once the user's Service is gone, the simulation gets its own and recovers.
	if err := k8s.Delete(ctx, after); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "victim", v1alpha1.ConditionStalled, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	assertOwned(t, getObj(t, ns, "victim-api", &corev1.Service{}), getSim(t, ns, "victim"))
}

// Issue 9, bug 2: a hand edit of the broker's strategy makes the operator's apply invalid
// (rollingUpdate next to Recreate). The operator repairs it, and a later scale of the
// simulation is applied — a failing child does not hold the others back.
func TestHandEditDoesNotWedge(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "wedge")
	sim.Spec.Chargers = 10
	createSim(t, sim)
	startPublisher(t, ns, "wedge")
	broker := getObj(t, ns, "wedge-broker", &appsv1.Deployment{})

	// kubectl patch deploy wedge-broker -p '{"spec":{"strategy":{"type":"RollingUpdate"}}}'
	patch := client.RawPatch(types.StrategicMergePatchType, []byte(`{"spec":{"strategy":{"type":"RollingUpdate"}}}`))
	if err := k8s.Patch(ctx, broker.DeepCopy(), patch, client.FieldOwner("kubectl-patch")); err != nil {
		t.Fatal(err)
	}
	updateSim(t, ns, "wedge", func(s *v1alpha1.ChargerSimulation) { s.Spec.Publisher.Replicas = 2 })

	eventually(t, "publisher scaled", func() error {
		sts := getObj(t, ns, "wedge-publisher", &appsv1.StatefulSet{})
		if *sts.Spec.Replicas != 2 {
			return fmt.Errorf("publisher replicas %d", *sts.Spec.Replicas)
		}
		return nil
	})
	eventually(t, "broker repaired", func() error {
		d := getObj(t, ns, "wedge-broker", &appsv1.Deployment{})
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate != nil {
			return fmt.Errorf("strategy %+v", d.Spec.Strategy)
		}
		return nil
	})
	if len(events(t, ns, "wedge", v1alpha1.ReasonRecreated)) == 0 {
		t.Error("no Recreated event")
	}
	markReady(t, ns, "wedge")
	waitCondition(t, ns, "wedge", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
}

// Issue 9, bug 3: configuration and template change together. Each pod template names an
// immutable ConfigMap named after its content, so a pod that restarts reads the configuration
// its template was rendered with, whatever step of a later change failed; the old ConfigMap
// goes once the rollout is complete.
func TestConfigChangesWithTemplate(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "cfg"))
	startPublisher(t, ns, "cfg")
	markReady(t, ns, "cfg")
	waitCondition(t, ns, "cfg", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	old := configMapOf(t, ns, "cfg-publisher", &appsv1.StatefulSet{})
	oldScale := old.Data["CHARGESIM_TIME_SCALE"]

	updateSim(t, ns, "cfg", func(s *v1alpha1.ChargerSimulation) { s.Spec.TimeScale = ptr.To(30.0) })
	var cur *corev1.ConfigMap
	eventually(t, "publisher template names a new ConfigMap", func() error {
		cur = configMapOf(t, ns, "cfg-publisher", &appsv1.StatefulSet{})
		if cur.Name == old.Name {
			return errors.New("same ConfigMap")
		}
		return nil
	})
	if cur.Data["CHARGESIM_TIME_SCALE"] != "30" {
		t.Errorf("new ConfigMap: time scale %q", cur.Data["CHARGESIM_TIME_SCALE"])
	}
	// Mid-rollout, old pods still read the old configuration.
	waitCondition(t, ns, "cfg", v1alpha1.ConditionReconciling, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)
	kept := getObj(t, ns, old.Name, &corev1.ConfigMap{})
	if kept.Data["CHARGESIM_TIME_SCALE"] != oldScale {
		t.Errorf("old ConfigMap changed: time scale %q, was %q", kept.Data["CHARGESIM_TIME_SCALE"], oldScale)
	}
	markReady(t, ns, "cfg")
	eventually(t, "old ConfigMap collected", func() error {
		err := k8s.Get(ctx, key(ns, old.Name), &corev1.ConfigMap{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%w)", err)
	})
	// The listener's and API's ConfigMaps did not change and stay.
	configMapOf(t, ns, "cfg-listener", &appsv1.StatefulSet{})
	configMapOf(t, ns, "cfg-api", &appsv1.Deployment{})
}

// eventCounter counts the events a reconciler records, by reason.
type eventCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (e *eventCounter) Eventf(_ runtime.Object, _ runtime.Object, _, reason, _, _ string, _ ...interface{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.counts == nil {
		e.counts = map[string]int{}
	}
	e.counts[reason]++
}

func (e *eventCounter) count(reason string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[reason]
}

// Issue 9, bug 5: a reconcile that starts from a cached copy older than the operator's last
// status patch announced "Available" a second time. Events now follow the status write, which
// a stale copy cannot make.
func TestNoDuplicateAvailableEvent(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "dup"))
	startPublisher(t, ns, "dup")
	stale := waitCondition(t, ns, "dup", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	markReady(t, ns, "dup")
	waitCondition(t, ns, "dup", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	mgr := operator.Manager()
	rec := &eventCounter{}
	r := &controllers.Reconciler{Client: &staleClient{Client: mgr.GetClient(), stale: stale}, APIReader: mgr.GetAPIReader(),
		Recorder: rec, DefaultImage: testImage}
	if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "dup")}); err != nil {
		t.Fatal(err)
	}
	if n := rec.count(v1alpha1.ReasonAvailable); n != 0 {
		t.Errorf("a reconcile from a stale copy recorded %d Available event(s)", n)
	}
}

// Issue 9, bug 5: on shutdown, requests fail with "context canceled"; that is not the
// simulation's fault and must neither raise a Warning nor change its status.
func TestShutdownIsNotAFailure(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "calm"))
	startPublisher(t, ns, "calm")
	markReady(t, ns, "calm")
	waitCondition(t, ns, "calm", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	// A spec change, so that the reconcile has something to apply when it is cancelled.
	updateSim(t, ns, "calm", func(s *v1alpha1.ChargerSimulation) { s.Spec.Chargers = 30 })
	before := getSim(t, ns, "calm")

	mgr := operator.Manager()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rec := &eventCounter{}
	r := &controllers.Reconciler{Client: &cancellingClient{Client: mgr.GetClient(), cancel: cancel}, APIReader: mgr.GetAPIReader(),
		Recorder: rec, DefaultImage: testImage}
	if _, err := r.Reconcile(rctx, ctrl.Request{NamespacedName: key(ns, "calm")}); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("reconcile: %v", err)
	}
	if len(rec.counts) != 0 {
		t.Errorf("events on shutdown: %v", rec.counts)
	}
	after := getSim(t, ns, "calm")
	if after.ResourceVersion != before.ResourceVersion {
		c := meta.FindStatusCondition(after.Status.Conditions, v1alpha1.ConditionReady)
		t.Errorf("status written on shutdown: Ready %+v", c)
	}
}

// cancellingClient is a shutdown arriving in the middle of a reconcile: the first apply
// cancels the context and fails the way client-go fails then.
type cancellingClient struct {
	client.Client
	cancel context.CancelFunc
}

func (c *cancellingClient) Apply(ctx context.Context, o runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	c.cancel()
	return fmt.Errorf("apply: %w", ctx.Err())
}

// Issue 9, bug 5: scaling down, the message said "publisher 3/1 ready".
func TestScaleDownMessage(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "down")
	sim.Spec.Publisher.Replicas = 3
	createSim(t, sim)
	startPublisher(t, ns, "down")
	markReady(t, ns, "down")
	waitCondition(t, ns, "down", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	updateSim(t, ns, "down", func(s *v1alpha1.ChargerSimulation) { s.Spec.Publisher.Replicas = 1 })
	// The StatefulSet controller has not caught up: three pods still run and are ready.
	eventually(t, "publisher status lags", func() error {
		s := getObj(t, ns, "down-publisher", &appsv1.StatefulSet{})
		if *s.Spec.Replicas != 1 {
			return errors.New("not scaled yet")
		}
		s.Status.Replicas, s.Status.ReadyReplicas, s.Status.AvailableReplicas = 3, 3, 3
		return k8s.Status().Update(ctx, s)
	})
	got := waitCondition(t, ns, "down", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	msg := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady).Message
	if strings.Contains(msg, "3/1") || !strings.Contains(msg, "publisher scaling down to 1 (3 running)") {
		t.Errorf("message %q", msg)
	}
}

// gauges gathers reg and returns every sample of the named metric, keyed by its labels.
func gauges(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var l []string
			for _, lp := range m.GetLabel() {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			out[strings.Join(l, ",")] = m.GetGauge().GetValue()
		}
	}
	return out
}

// Issue 8: a hot standby exported the same chargesim_operator_simulations as the leader, and
// `sum by (status)` over the replicas doubled. Only the leader reports simulations; each
// simulation has its own series from status.
func TestOnlyTheLeaderReportsSimulations(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "seen")
	sim.Spec.Publisher.Replicas = 2
	createSim(t, sim)
	startPublisher(t, ns, "seen")
	markReady(t, ns, "seen")
	waitCondition(t, ns, "seen", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	standbyReg := prometheus.NewRegistry()
	standby, err := controllers.New(controllers.Config{
		LogLevel: "info", LogFormat: "text", MetricsAddr: "0", ProbeAddr: "0",
		LeaderElect: true, LeaderElectionID: "chargesim-operator.chargesim.io", LeaderElectionNamespace: operatorNamespace,
		DefaultImage: "other:image", MaxConcurrentReconciles: 1, KubeAPIQPS: 50, KubeAPIBurst: 100,
		ShutdownTimeout: time.Second, RestConfig: operatorRestConfig, SkipNameValidation: true,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)), standbyReg)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- standby.Run(sctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "standby's cache synced", func() error { return standby.Ready(ctx) })

	if g := gauges(t, standbyReg, "chargesim_operator_leader"); g[""] != 0 || len(g) != 1 {
		t.Errorf("standby leader gauge %v", g)
	}
	if g := gauges(t, standbyReg, "chargesim_operator_simulations"); len(g) != 0 {
		t.Errorf("standby reports simulations: %v", g)
	}
	if g := gauges(t, opReg, "chargesim_operator_leader"); g[""] != 1 {
		t.Errorf("leader gauge %v", g)
	}
	if g := gauges(t, opReg, "chargesim_operator_simulations"); g["condition=Ready,status=True"] < 1 {
		t.Errorf("leader simulations %v", g)
	}
	id := "namespace=" + ns + ",simulation=seen"
	if g := gauges(t, opReg, "chargesim_simulation_ready"); g[id] != 1 {
		t.Errorf("chargesim_simulation_ready %v", g)
	}
	if g := gauges(t, opReg, "chargesim_simulation_configured_sessions_per_second"); g[id] <= 0 {
		t.Errorf("configured rate %v", g)
	}
	rep := gauges(t, opReg, "chargesim_simulation_replicas")
	for _, want := range []string{"component=publisher," + id + ",state=desired", "component=publisher," + id + ",state=ready"} {
		if rep[want] != 2 {
			t.Errorf("%s = %v in %v", want, rep[want], rep)
		}
	}
}

// Issue 9: a rollout that cannot progress is Stalled with the pod's reason — a listener whose
// image cannot be pulled, a publisher that cannot be scheduled (past the deadline) — instead of
// WaitingForListener or RollingOut for ever.
func TestStuckPodsStallTheSimulation(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "stuck"))
	waitCondition(t, ns, "stuck", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)

	// The StatefulSet controller's pod, with the kubelet's verdict (envtest runs neither).
	sts := getObj(t, ns, "stuck-listener", &appsv1.StatefulSet{})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stuck-listener-0", Labels: sts.Spec.Template.Labels},
		Spec:       sts.Spec.Template.Spec,
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "listener", Image: testImage, State: corev1.ContainerState{
		Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: `Back-off pulling image "` + testImage + `"`}}}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	sim := waitCondition(t, ns, "stuck", v1alpha1.ConditionStalled, metav1.ConditionTrue, "ImagePullBackOff")
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady)
	if c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "pod stuck-listener-0: container listener: ImagePullBackOff") {
		t.Errorf("Ready %+v", c)
	}

	// Fixed: no longer stalled.
	pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "stuck", v1alpha1.ConditionStalled, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)

	// Unschedulable for longer than the deadline.
	pod.Status.ContainerStatuses = nil
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/3 nodes are available: 3 Insufficient cpu.", LastTransitionTime: metav1.NewTime(time.Now().Add(-10 * time.Minute))}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	sim = waitCondition(t, ns, "stuck", v1alpha1.ConditionStalled, metav1.ConditionTrue, corev1.PodReasonUnschedulable)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionStalled); !strings.Contains(c.Message, "Insufficient cpu") {
		t.Errorf("Stalled %+v", c)
	}
}

// kstatusOf is what kstatus tools (Flux, kpt, Config Sync) make of a simulation.
func kstatusOf(ns, name string) (kstatus.Status, string, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("ChargerSimulation"))
	if err := k8s.Get(ctx, key(ns, name), u); err != nil {
		return "", "", err
	}
	res, err := kstatus.Compute(u)
	if err != nil {
		return "", "", err
	}
	return res.Status, res.Message, nil
}

// Issue 9: with neither Reconciling nor Stalled, kstatus called a simulation with a missing
// Secret Current. cli-utils' own status.Compute now says Failed, then InProgress while it
// rolls out, then Current.
func TestKstatus(t *testing.T) {
	ns := newNamespace(t)
	createSim(t, simulation(ns, "ks"))
	want := func(s kstatus.Status) {
		t.Helper()
		eventually(t, "kstatus "+string(s), func() error {
			got, msg, err := kstatusOf(ns, "ks")
			if err != nil {
				return err
			}
			if got != s {
				return fmt.Errorf("kstatus %s (%s)", got, msg)
			}
			return nil
		})
	}
	want(kstatus.FailedStatus)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	want(kstatus.InProgressStatus)
	startPublisher(t, ns, "ks")
	markReady(t, ns, "ks")
	want(kstatus.CurrentStatus)
}

// Issue 9: a pod option the server rejects reports Stalled with the server's message, and the
// running workload is left as it was (not deleted to be recreated).
func TestRejectedPodOptionStalls(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "opts"))
	before := getObj(t, ns, "opts-listener", &appsv1.StatefulSet{})
	updateSim(t, ns, "opts", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.Listener.Pod = &v1alpha1.PodOptions{Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{}}}}
	})
	sim := waitCondition(t, ns, "opts", v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonApplyFailed)
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionStalled)
	if !strings.Contains(c.Message, "StatefulSet opts-listener refused by the API server") || !strings.Contains(c.Message, "nodeSelectorTerms") {
		t.Errorf("Stalled message %q", c.Message)
	}
	if after := getObj(t, ns, "opts-listener", &appsv1.StatefulSet{}); after.UID != before.UID {
		t.Error("the running listener was deleted and recreated for an option the server refuses")
	}
	// The other components are reconciled: the API Deployment exists.
	getObj(t, ns, "opts-api", &appsv1.Deployment{})
	// Fixed: recovers.
	updateSim(t, ns, "opts", func(s *v1alpha1.ChargerSimulation) { s.Spec.Listener.Pod = nil })
	waitCondition(t, ns, "opts", v1alpha1.ConditionStalled, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
}
