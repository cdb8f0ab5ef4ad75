package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// Least privilege: children are written only with server-side apply (create + patch) and the
// managed broker is deleted when the spec switches to an external one; Secrets are only read
// one by one (get), never listed or watched; status is merge-patched.
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations,verbs=get;list;watch
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations/status,verbs=patch
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconciler turns a ChargerSimulation into its ConfigMap, broker, publisher, listener and API
// workloads, and reports what it sees in the simulation's status.
//
// Only the children (label app.kubernetes.io/managed-by=chargesim-operator) are cached; Secrets
// are read through APIReader and never cached.
type Reconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  events.EventRecorder
	Metrics   *Metrics

	// DefaultImage runs the components of simulations that name no image.
	DefaultImage string
	// ResyncInterval re-reads the referenced Secrets of a healthy simulation this often, to
	// roll its pods when a Secret's content changes (Secrets are not watched).
	ResyncInterval time.Duration
	// MaxConcurrentReconciles bounds parallel reconciles.
	MaxConcurrentReconciles int
}

// SetupWithManager registers the controller. Changes of any owned child trigger a reconcile,
// which is what corrects drift and tracks readiness; so do changes of a simulation's spec,
// labels, annotations and status (statusChanged).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("chargersimulation").
		For(&v1alpha1.ChargerSimulation{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{},
			predicate.AnnotationChangedPredicate{},
			predicate.LabelChangedPredicate{},
			statusChanged(),
		))).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, r.MaxConcurrentReconciles)}).
		Complete(r)
}

// statusChanged passes updates that change a simulation's status, the operator's own status
// patches included. Each of them costs one more reconcile, which normally finds nothing to
// change and writes nothing (no loop). It is what makes the status converge: a reconcile may
// start from a cached copy older than the operator's last patch (a child's event came first),
// and its result may then be stale or refused (statusPatcher); the reconcile that the patch's
// own event triggers runs on a cache that has seen that patch. Without it, the last status
// written from an old copy could stand until the next resync.
func statusChanged() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*v1alpha1.ChargerSimulation)
			n, ok2 := e.ObjectNew.(*v1alpha1.ChargerSimulation)
			return ok1 && ok2 && !equality.Semantic.DeepEqual(o.Status, n.Status)
		},
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// observation is what one reconcile learned, summarised into conditions at the end.
type observation struct {
	degraded   *configError
	components map[Component]*componentObservation
	// waitingForListener: a new simulation's publisher is held back until a listener is ready.
	waitingForListener bool
}

type componentObservation struct {
	status   v1alpha1.ComponentStatus
	complete bool   // rolled out: every desired replica updated and available, nothing else left
	stalled  string // non-empty: why the rollout cannot progress
}

// Reconcile reads top to bottom: fetch, arrange for the status patch, reconcile the children in
// dependency order, and let the deferred summary turn observations into conditions.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	sim := &v1alpha1.ChargerSimulation{}
	if err := r.Client.Get(ctx, req.NamespacedName, sim); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sim.DeletionTimestamp.IsZero() {
		// Children carry controller owner references: the garbage collector removes them.
		return ctrl.Result{}, nil
	}

	obs := &observation{components: map[Component]*componentObservation{}}
	patcher := newStatusPatcher(r.Client, sim)
	defer func() {
		result, retErr = r.summarize(ctx, sim, obs, result, retErr)
		if err := patcher.patch(ctx, sim); err != nil {
			if apierrors.IsConflict(err) && retErr == nil {
				// The cached copy was stale. The newer version's own event brings a reconcile
				// with a fresh copy; looking again soon also covers a change the watch filters.
				ctrl.LoggerFrom(ctx).V(1).Info("status patch refused, the cached simulation was stale; reconciling again", "error", err.Error())
				result = ctrl.Result{RequeueAfter: conflictRetry}
				return
			}
			retErr = errors.Join(retErr, err)
		}
	}()

	d, err := r.reconcileConfig(ctx, sim)
	if err != nil {
		return r.fail(obs, err)
	}
	for _, step := range []func(context.Context, *desired, *observation) error{
		r.reconcileBroker,
		r.reconcileListener, // before the publisher, which waits for it the first time
		r.reconcilePublisher,
		r.reconcileAPI,
	} {
		if err := step(ctx, d, obs); err != nil {
			return r.fail(obs, err)
		}
	}
	return ctrl.Result{}, nil
}

// fail records err: a configError is the user's to fix (Degraded, retried with backoff by
// summarize), anything else is returned so controller-runtime retries with its rate limiter.
func (r *Reconciler) fail(obs *observation, err error) (ctrl.Result, error) {
	var ce *configError
	if errors.As(err, &ce) {
		obs.degraded = ce
		return ctrl.Result{}, nil
	}
	obs.degraded = &configError{reason: v1alpha1.ReasonApplyFailed, message: err.Error()}
	return ctrl.Result{}, err
}

// reconcileConfig resolves what the pods need (Secrets, broker address) and applies the
// ConfigMap. Nothing else is touched when it fails: running workloads keep their last good
// configuration instead of being rolled onto one that cannot start.
func (r *Reconciler) reconcileConfig(ctx context.Context, sim *v1alpha1.ChargerSimulation) (*desired, error) {
	broker, err := brokerURL(sim)
	if err != nil {
		return nil, &configError{reason: v1alpha1.ReasonInvalidBrokerURL, message: err.Error()}
	}
	secrets, err := resolveSecrets(ctx, r.APIReader, sim)
	if err != nil {
		return nil, err
	}
	d := newDesired(sim, r.DefaultImage, broker, secrets)
	if _, err := applyChild(ctx, r, d.configMap(), &corev1.ConfigMap{}); err != nil {
		return nil, err
	}
	return d, nil
}

// reconcileBroker runs the managed broker, or removes it once the spec names an external one.
func (r *Reconciler) reconcileBroker(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	if !sim.Spec.Broker.IsManaged() {
		for _, obj := range []client.Object{&appsv1.Deployment{}, &corev1.Service{}} {
			if err := r.deleteOwned(ctx, sim, workloadName(sim.Name, Broker), obj); err != nil {
				return err
			}
		}
		return nil
	}
	dep, svc := d.brokerObjects()
	if _, err := applyChild(ctx, r, svc, &corev1.Service{}); err != nil {
		return err
	}
	live, err := applyChild(ctx, r, dep, &appsv1.Deployment{})
	if err != nil {
		return err
	}
	obs.components[Broker] = observeDeployment(live, 1, selectorString(sim.Name, Broker))
	return nil
}

// reconcilePublisher runs the publisher, but does not create it before a listener is ready:
// a broker discards messages that no subscription matches, so the first sessions of a new
// simulation would be lost if the publisher started before any listener had subscribed. Once
// the StatefulSet exists it is never held back again: from then on the listeners' persistent
// sessions make the broker queue what a listener outage leaves unacknowledged.
func (r *Reconciler) reconcilePublisher(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	sts, svc := d.publisherObjects()
	if _, err := applyChild(ctx, r, svc, &corev1.Service{}); err != nil {
		return err
	}
	wait, err := r.publisherMustWait(ctx, sim, obs)
	if err != nil {
		return err
	}
	if wait {
		obs.waitingForListener = true
		obs.components[Publisher] = observeStatefulSet(&appsv1.StatefulSet{}, publisherReplicas(sim), selectorString(sim.Name, Publisher))
		return nil
	}
	live, err := applyChild(ctx, r, sts, &appsv1.StatefulSet{})
	if err != nil {
		return err
	}
	obs.components[Publisher] = observeStatefulSet(live, publisherReplicas(sim), selectorString(sim.Name, Publisher))
	return nil
}

// publisherMustWait: no listener is ready and the publisher StatefulSet does not exist yet.
func (r *Reconciler) publisherMustWait(ctx context.Context, sim *v1alpha1.ChargerSimulation, obs *observation) (bool, error) {
	if l, ok := obs.components[Listener]; ok && l.status.ReadyReplicas > 0 {
		return false, nil
	}
	key := types.NamespacedName{Namespace: sim.Namespace, Name: workloadName(sim.Name, Publisher)}
	err := r.Client.Get(ctx, key, &appsv1.StatefulSet{})
	switch {
	case err == nil:
		return false, nil
	case apierrors.IsNotFound(err):
		return true, nil
	default:
		return false, fmt.Errorf("get StatefulSet %s: %w", key, err)
	}
}

func (r *Reconciler) reconcileListener(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	sts, svc := d.listenerObjects()
	if _, err := applyChild(ctx, r, svc, &corev1.Service{}); err != nil {
		return err
	}
	live, err := applyChild(ctx, r, sts, &appsv1.StatefulSet{})
	if err != nil {
		return err
	}
	obs.components[Listener] = observeStatefulSet(live, sim.Spec.Listener.DesiredReplicas(), selectorString(sim.Name, Listener))
	// Operators before the StatefulSet ran the listener as a Deployment of the same name. It
	// goes once its successor exists, so that a subscriber is there all along.
	return r.deleteOwned(ctx, sim, workloadName(sim.Name, Listener), &appsv1.Deployment{})
}

func (r *Reconciler) reconcileAPI(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	dep, svc := d.apiObjects()
	if _, err := applyChild(ctx, r, svc, &corev1.Service{}); err != nil {
		return err
	}
	live, err := applyChild(ctx, r, dep, &appsv1.Deployment{})
	if err != nil {
		return err
	}
	obs.components[API] = observeDeployment(live, sim.Spec.API.DesiredReplicas(), selectorString(sim.Name, API))
	return nil
}

// applyConfig is what every client-go apply configuration offers.
type applyConfig interface {
	runtime.ApplyConfiguration
	GetName() *string
	GetNamespace() *string
	GetKind() *string
}

// applyChild server-side-applies ac under the operator's field owner, unless the cached live
// object already holds every field of ac (then nothing is sent at all). It returns the object
// as the server (or the cache) has it, with status.
func applyChild[T client.Object](ctx context.Context, r *Reconciler, ac applyConfig, live T) (T, error) {
	kind := *ac.GetKind()
	key := types.NamespacedName{Namespace: *ac.GetNamespace(), Name: *ac.GetName()}
	err := r.Client.Get(ctx, key, live)
	switch {
	case err == nil:
		same, cerr := containsFields(ac, live)
		if cerr != nil {
			return live, cerr
		}
		if same {
			r.Metrics.observeApply(kind, applyUnchanged)
			return live, nil
		}
	case apierrors.IsNotFound(err):
	default:
		return live, fmt.Errorf("get %s %s: %w", kind, key, err)
	}
	if err := r.Client.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		r.Metrics.observeApply(kind, applyFailed)
		return live, fmt.Errorf("apply %s %s: %w", kind, key, err)
	}
	r.Metrics.observeApply(kind, applyApplied)
	// The apply response (decoded into ac) is fresher than the cache, which may not have seen
	// this write yet: read the generation and status from it.
	b, err := json.Marshal(ac)
	if err != nil {
		return live, fmt.Errorf("marshal applied %s %s: %w", kind, key, err)
	}
	if err := json.Unmarshal(b, live); err != nil {
		return live, fmt.Errorf("decode applied %s %s: %w", kind, key, err)
	}
	return live, nil
}

// deleteOwned deletes the named object if this simulation controls it.
func (r *Reconciler) deleteOwned(ctx context.Context, sim *v1alpha1.ChargerSimulation, name string, obj client.Object) error {
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: sim.Namespace, Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %T %s/%s: %w", obj, sim.Namespace, name, err)
	}
	if !metav1.IsControlledBy(obj, sim) {
		return nil
	}
	uid := obj.GetUID()
	if err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %T %s/%s: %w", obj, sim.Namespace, name, err)
	}
	return nil
}

func observeDeployment(d *appsv1.Deployment, desired int32, selector string) *componentObservation {
	s := d.Status
	o := &componentObservation{status: v1alpha1.ComponentStatus{
		DesiredReplicas: desired, Replicas: s.Replicas, ReadyReplicas: s.ReadyReplicas, Selector: selector,
	}}
	o.complete = d.Generation > 0 && s.ObservedGeneration >= d.Generation &&
		s.UpdatedReplicas == desired && s.Replicas == desired && s.AvailableReplicas == desired
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			o.stalled = fmt.Sprintf("Deployment %s: %s", d.Name, c.Message)
		}
	}
	return o
}

func observeStatefulSet(st *appsv1.StatefulSet, desired int32, selector string) *componentObservation {
	s := st.Status
	o := &componentObservation{status: v1alpha1.ComponentStatus{
		DesiredReplicas: desired, Replicas: s.Replicas, ReadyReplicas: s.ReadyReplicas, Selector: selector,
	}}
	o.complete = st.Generation > 0 && s.ObservedGeneration >= st.Generation &&
		s.Replicas == desired && s.UpdatedReplicas == desired && s.AvailableReplicas == desired &&
		(s.UpdateRevision == "" || s.CurrentRevision == s.UpdateRevision)
	return o
}

// observeFromCache fills in components the reconcile did not reach (it stopped on an error),
// so status keeps reporting what is actually running.
func (r *Reconciler) observeFromCache(ctx context.Context, sim *v1alpha1.ChargerSimulation, obs *observation) {
	get := func(c Component, obj client.Object) bool {
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: sim.Namespace, Name: workloadName(sim.Name, c)}, obj)
		return err == nil && metav1.IsControlledBy(obj, sim)
	}
	for c, want := range map[Component]int32{Broker: 1, API: sim.Spec.API.DesiredReplicas()} {
		if _, ok := obs.components[c]; ok || (c == Broker && !sim.Spec.Broker.IsManaged()) {
			continue
		}
		dep := &appsv1.Deployment{}
		if !get(c, dep) {
			dep = &appsv1.Deployment{}
		}
		obs.components[c] = observeDeployment(dep, want, selectorString(sim.Name, c))
	}
	for c, want := range map[Component]int32{Publisher: publisherReplicas(sim), Listener: sim.Spec.Listener.DesiredReplicas()} {
		if _, ok := obs.components[c]; ok {
			continue
		}
		sts := &appsv1.StatefulSet{}
		if !get(c, sts) {
			sts = &appsv1.StatefulSet{}
		}
		obs.components[c] = observeStatefulSet(sts, want, selectorString(sim.Name, c))
	}
}

// summarize writes status from the observation: replica counts, conditions stamped with the
// generation they describe, events on transitions, and when to look again.
func (r *Reconciler) summarize(ctx context.Context, sim *v1alpha1.ChargerSimulation, obs *observation, result ctrl.Result, err error) (ctrl.Result, error) {
	r.observeFromCache(ctx, sim, obs)
	st := &sim.Status
	gen := sim.Generation
	st.ObservedGeneration = gen
	st.Publisher = obs.components[Publisher].status
	st.Listener = obs.components[Listener].status
	st.API = obs.components[API].status
	st.Broker = nil
	if b, ok := obs.components[Broker]; ok {
		bs := b.status
		st.Broker = &bs
	}
	st.SessionsPerSecond = sessionRate(sim)
	st.APIAddress = apiAddress(sim)
	if u, uerr := brokerURL(sim); uerr == nil {
		st.BrokerURL = u
	}

	var notReady, stalled []string
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		o, ok := obs.components[c]
		if !ok {
			continue
		}
		if !o.complete {
			notReady = append(notReady, fmt.Sprintf("%s %d/%d ready", c, o.status.ReadyReplicas, o.status.DesiredReplicas))
		}
		if o.stalled != "" {
			stalled = append(stalled, o.stalled)
		}
	}
	deg := obs.degraded
	if deg == nil && len(stalled) > 0 {
		deg = &configError{reason: v1alpha1.ReasonRolloutStalled, message: strings.Join(stalled, "; ")}
	}

	// A copy: FindStatusCondition points into the slice that SetStatusCondition rewrites.
	var wasDegraded *metav1.Condition
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c != nil {
		wasDegraded = c.DeepCopy()
	}
	wasReady := meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady)
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
	switch {
	case deg != nil:
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, deg.reason, deg.message)
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, deg.reason, deg.message)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, deg.reason, "cannot progress: "+deg.message)
	case len(notReady) > 0:
		msg := "waiting for " + strings.Join(notReady, ", ")
		notReadyReason, progressReason := v1alpha1.ReasonComponentsNotReady, v1alpha1.ReasonRollingOut
		if obs.waitingForListener {
			notReadyReason, progressReason = v1alpha1.ReasonWaitingForListener, v1alpha1.ReasonWaitingForListener
			msg = "the publisher starts once a listener is ready (the broker drops messages nobody has subscribed to yet); " + msg
		}
		set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, notReadyReason, msg)
		set(v1alpha1.ConditionProgressing, metav1.ConditionTrue, progressReason, msg)
	default:
		reason, msg := v1alpha1.ReasonAvailable, "all components are available"
		if sim.Spec.Suspend {
			reason, msg = v1alpha1.ReasonSuspended, "publisher suspended; broker, listener and API are available"
		}
		set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, reason, msg)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonRolloutComplete, "")
	}

	switch {
	case deg != nil && (wasDegraded == nil || wasDegraded.Status != metav1.ConditionTrue || wasDegraded.Reason != deg.reason || wasDegraded.Message != deg.message):
		r.Recorder.Eventf(sim, nil, corev1.EventTypeWarning, deg.reason, "Reconcile", "%s", deg.message)
	case deg == nil && wasDegraded != nil && wasDegraded.Status == metav1.ConditionTrue:
		r.Recorder.Eventf(sim, nil, corev1.EventTypeNormal, "Recovered", "Reconcile", "no longer degraded (was %s)", wasDegraded.Reason)
	}
	if !wasReady && meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady) {
		r.Recorder.Eventf(sim, nil, corev1.EventTypeNormal, v1alpha1.ReasonAvailable, "Reconcile", "all components are available")
	}

	if err != nil {
		return ctrl.Result{}, err // controller-runtime logs it and retries with backoff
	}
	if deg != nil {
		ctrl.LoggerFrom(ctx).Info("simulation degraded", "reason", deg.reason, "message", deg.message)
		since := time.Now()
		if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c != nil {
			since = c.LastTransitionTime.Time
		}
		return ctrl.Result{RequeueAfter: degradedBackoff(time.Since(since))}, nil
	}
	if result.RequeueAfter > 0 {
		return result, nil
	}
	return ctrl.Result{RequeueAfter: jitter(r.ResyncInterval)}, nil
}

// conflictRetry is when a reconcile whose status patch met a newer simulation looks again.
const conflictRetry = time.Second

// degradedBackoff is how long to wait before looking again at a simulation that has been
// degraded for the given time: about as long again, so retries double from 1s, capped at a
// minute. The operator does not watch Secrets (that would cache every Secret of the cluster),
// so this is how it notices a Secret that appears or is fixed.
func degradedBackoff(degradedFor time.Duration) time.Duration {
	return min(max(degradedFor, time.Second), time.Minute)
}

// jitter spreads periodic resyncs of many simulations over ±10% so they do not arrive together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}
