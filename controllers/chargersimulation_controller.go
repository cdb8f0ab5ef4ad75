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
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// Least privilege: children are written only with server-side apply (create + patch) and the
// managed broker is deleted when the spec switches to an external one; status is merge-patched.
// Secrets: get (read one by one, never cached), list + watch for the metadata-only watch (the
// operator's cache holds Secrets' metadata, never their data: RBAC cannot tell the two apart,
// the code does), create + update for the managed broker's generated credentials only.
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations,verbs=get;list;watch
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations/status,verbs=patch
// +kubebuilder:rbac:groups=chargesim.io,resources=chargersimulations/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconciler turns a ChargerSimulation into its ConfigMap, broker, publisher, listener and API
// workloads, and reports what it sees in the simulation's status.
//
// Only the children (label app.kubernetes.io/managed-by=chargesim-operator) are cached, and
// the metadata of Secrets (names, resourceVersions: to notice a referenced Secret created or
// changed at once); Secret data is read through APIReader and never cached.
type Reconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  events.EventRecorder
	Metrics   *Metrics

	// DefaultImage runs the components of simulations that name no image.
	DefaultImage string
	// ResyncInterval re-reads the referenced Secrets of a healthy simulation this often, a
	// safety net behind the metadata watch of Secrets (a missed event).
	ResyncInterval time.Duration
	// MaxConcurrentReconciles bounds parallel reconciles.
	MaxConcurrentReconciles int
	// CredentialPropagation is how long a rotation of the managed broker's credentials waits
	// between making the broker accept the new password and rolling the clients onto it: the
	// time a kubelet may take to update the broker's mounted Secret (0: 2 minutes).
	CredentialPropagation time.Duration
}

// SetupWithManager registers the controller. Changes of any owned child trigger a reconcile,
// which is what corrects drift and tracks readiness; so do changes of a simulation's spec,
// labels, annotations and status (statusChanged).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.ChargerSimulation{}, secretIndex, secretNames); err != nil {
		return fmt.Errorf("index simulations by Secret: %w", err)
	}
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
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&networkingv1.NetworkPolicy{}).
		// The metadata of every Secret (never the data: a PartialObjectMetadata informer), mapped
		// to the simulations that reference it by name (secretIndex): a Secret created, rotated
		// or deleted is noticed at once, not at the next resync or backoff.
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.secretToSimulations)).
		// Pods are owned by ReplicaSets and StatefulSets, not by the simulation: they are mapped
		// to it by label, so that a pod stuck in ImagePullBackOff or Unschedulable is reported.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToSimulation)).
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
//
// status.audit and status.progress are left out: the Auditor and the Progress probe write
// them every minute or so, the reconciler neither reads nor writes them, and each would
// otherwise cost every simulation a reconcile per probe.
func statusChanged() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*v1alpha1.ChargerSimulation)
			n, ok2 := e.ObjectNew.(*v1alpha1.ChargerSimulation)
			return ok1 && ok2 && !equality.Semantic.DeepEqual(reconciledStatus(o.Status), reconciledStatus(n.Status))
		},
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// reconciledStatus is st without the fields other writers than the reconciler own.
func reconciledStatus(st v1alpha1.ChargerSimulationStatus) v1alpha1.ChargerSimulationStatus {
	st.Audit, st.Progress = nil, nil
	return st
}

// observation is what one reconcile learned, summarised into conditions at the end.
type observation struct {
	degraded *configError
	// transient is an error retrying should fix (a timeout, a conflict): logged and retried
	// with backoff, neither an event nor a condition change.
	transient  error
	components map[Component]*componentObservation
	// waitingForListener: a new simulation's publisher is held back until a listener is ready.
	waitingForListener bool
	// recheck: a pod may count as stuck after this long (nothing else would wake a reconcile).
	recheck time.Duration
}

type componentObservation struct {
	stalledReason string // the pod's reason (ImagePullBackOff, Unschedulable, …); RolloutStalled if empty
	status        v1alpha1.ComponentStatus
	updated       int32  // replicas on the newest revision
	complete      bool   // rolled out: every desired replica updated and available, nothing else left
	stalled       string // non-empty: why the rollout cannot progress
}

// Reconcile reads top to bottom: fetch, arrange for the status patch, reconcile each component
// (one failing does not stop the others), and let the deferred summary turn observations into
// conditions.
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
		if ctx.Err() != nil {
			// Shutting down (or the reconcile timed out): what failed failed because of that, not
			// because of the simulation; the next leader looks again.
			result, retErr = ctrl.Result{}, nil
			return
		}
		var evs []pendingEvent
		result, evs, retErr = r.summarize(ctx, sim, obs, result, retErr)
		if err := patcher.patch(ctx, sim); err != nil {
			if apierrors.IsConflict(err) && retErr == nil {
				// The cached copy was stale. The newer version's own event brings a reconcile
				// with a fresh copy; looking again soon also covers a change the watch filters.
				// No events: they describe a transition judged against the stale copy.
				ctrl.LoggerFrom(ctx).V(1).Info("status patch refused, the cached simulation was stale; reconciling again", "error", err.Error())
				result = ctrl.Result{RequeueAfter: conflictRetry}
				return
			}
			retErr = errors.Join(retErr, err)
			return
		}
		// Events only once the status that records the transition is written, so that a
		// reconcile from a stale copy cannot announce the same transition twice.
		for _, e := range evs {
			r.Recorder.Eventf(sim, e.related, e.typ, e.reason, e.action, "%s", e.note)
		}
	}()

	wait, err := r.ensureBrokerCredentials(ctx, sim)
	if err != nil {
		return r.fail(obs, err)
	}
	if wait > 0 {
		obs.recheck = wait
	}
	d, err := r.resolve(ctx, sim)
	if err != nil {
		return r.fail(obs, err)
	}
	var errs []error
	for _, step := range []func(context.Context, *desired, *observation) error{
		r.reconcileBroker,
		r.reconcileListener, // before the publisher, which waits for it the first time
		r.reconcilePublisher,
		r.reconcileAPI,
		r.reconcileNetworkPolicies,
	} {
		if err := step(ctx, d, obs); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := r.collectConfigMaps(ctx, d, obs); err != nil {
			errs = append(errs, err)
		}
		if err := r.finishRotation(ctx, sim, obs); err != nil {
			errs = append(errs, err)
		}
	}
	return r.fail(obs, errs...)
}

// fail records errs: configErrors are the user's to fix (Degraded, retried with backoff by
// summarize); anything else is transient and returned, so controller-runtime retries with its
// rate limiter without the simulation being called Degraded.
func (r *Reconciler) fail(obs *observation, errs ...error) (ctrl.Result, error) {
	var transient []error
	for _, err := range flatten(errs) {
		if err == nil {
			continue
		}
		var ce *configError
		if errors.As(err, &ce) {
			if obs.degraded == nil {
				obs.degraded = &configError{reason: ce.reason, message: ce.message}
			} else {
				obs.degraded.message += "; " + ce.message
			}
			continue
		}
		transient = append(transient, err)
	}
	obs.transient = errors.Join(transient...)
	return ctrl.Result{}, obs.transient
}

// flatten unpacks errors.Join, so that each error is judged on its own.
func flatten(errs []error) []error {
	var out []error
	for _, err := range errs {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			out = append(out, flatten(j.Unwrap())...)
			continue
		}
		out = append(out, err)
	}
	return out
}

// resolve reads what the pods need (Secrets, broker address). Nothing is touched when it
// fails: running workloads keep their last good configuration instead of being rolled onto
// one that cannot start.
func (r *Reconciler) resolve(ctx context.Context, sim *v1alpha1.ChargerSimulation) (*desired, error) {
	broker, err := brokerURL(sim)
	if err != nil {
		return nil, &configError{reason: v1alpha1.ReasonInvalidBrokerURL, message: err.Error()}
	}
	secrets, err := resolveSecrets(ctx, r.APIReader, sim)
	if err != nil {
		return nil, err
	}
	return newDesired(sim, r.DefaultImage, broker, secrets), nil
}

// applyConfigMap applies component c's content-named ConfigMap; it comes before the workload
// whose template names it.
func (r *Reconciler) applyConfigMap(ctx context.Context, d *desired, c Component) error {
	_, err := applyChild(ctx, r, d.sim, d.configMap(c), &corev1.ConfigMap{})
	return err
}

// collectConfigMaps deletes the simulation's ConfigMaps that no current template names, once
// every component has rolled out: until then, old pods may still restart and read theirs.
func (r *Reconciler) collectConfigMaps(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	for _, o := range obs.components {
		if !o.complete {
			return nil
		}
	}
	keep := map[string]bool{}
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		keep[d.configMapName(c)] = true
	}
	var list corev1.ConfigMapList
	if err := r.Client.List(ctx, &list, client.InNamespace(sim.Namespace), client.MatchingLabels{LabelSimulation: sim.Name}); err != nil {
		return fmt.Errorf("list ConfigMaps of %s/%s: %w", sim.Namespace, sim.Name, err)
	}
	for i := range list.Items {
		cm := &list.Items[i]
		if keep[cm.Name] || !metav1.IsControlledBy(cm, sim) {
			continue
		}
		uid := cm.UID
		if err := r.Client.Delete(ctx, cm, client.Preconditions{UID: &uid}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete old ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
	}
	return nil
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
	// A Service that cannot be applied (say, a name conflict) does not hold the workload back.
	_, svcErr := applyChild(ctx, r, sim, svc, &corev1.Service{})
	if err := r.applyConfigMap(ctx, d, Broker); err != nil {
		return errors.Join(svcErr, err)
	}
	live, err := applyChild(ctx, r, sim, dep, &appsv1.Deployment{})
	if err != nil {
		return errors.Join(svcErr, err)
	}
	obs.components[Broker] = observeDeployment(live, 1, selectorString(sim.Name, Broker))
	return svcErr
}

// reconcilePublisher runs the publisher, but does not create it before a listener is ready:
// a broker discards messages that no subscription matches, so the first sessions of a new
// simulation would be lost if the publisher started before any listener had subscribed. Once
// the StatefulSet exists it is never held back again: from then on the listeners' persistent
// sessions make the broker queue what a listener outage leaves unacknowledged.
func (r *Reconciler) reconcilePublisher(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	sts, svc := d.publisherObjects()
	// A Service that cannot be applied (say, a name conflict) does not hold the workload back.
	_, svcErr := applyChild(ctx, r, sim, svc, &corev1.Service{})
	if err := r.applyConfigMap(ctx, d, Publisher); err != nil {
		return errors.Join(svcErr, err)
	}
	wait, err := r.publisherMustWait(ctx, sim, obs)
	if err != nil {
		return errors.Join(svcErr, err)
	}
	if wait {
		obs.waitingForListener = true
		obs.components[Publisher] = observeStatefulSet(&appsv1.StatefulSet{}, publisherReplicas(sim), selectorString(sim.Name, Publisher))
		return svcErr
	}
	live, err := applyChild(ctx, r, sim, sts, &appsv1.StatefulSet{})
	if err != nil {
		return errors.Join(svcErr, err)
	}
	obs.components[Publisher] = observeStatefulSet(live, publisherReplicas(sim), selectorString(sim.Name, Publisher))
	return svcErr
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
	// A Service that cannot be applied (say, a name conflict) does not hold the workload back.
	_, svcErr := applyChild(ctx, r, sim, svc, &corev1.Service{})
	if err := r.applyConfigMap(ctx, d, Listener); err != nil {
		return errors.Join(svcErr, err)
	}
	live, err := applyChild(ctx, r, sim, sts, &appsv1.StatefulSet{})
	if err != nil {
		return errors.Join(svcErr, err)
	}
	obs.components[Listener] = observeStatefulSet(live, sim.Spec.Listener.DesiredReplicas(), selectorString(sim.Name, Listener))
	// Operators before the StatefulSet ran the listener as a Deployment of the same name. It
	// goes once its successor exists, so that a subscriber is there all along.
	return errors.Join(svcErr, r.deleteOwned(ctx, sim, workloadName(sim.Name, Listener), &appsv1.Deployment{}),
		r.reconcilePDB(ctx, d, Listener, sim.Spec.Listener.PodDisruptionBudget))
}

// reconcilePDB applies component c's PodDisruptionBudget, or deletes the simulation's own
// when the spec asks for none. It comes after the workload: a budget protects running pods,
// and one that cannot be applied does not hold the workload back.
func (r *Reconciler) reconcilePDB(ctx context.Context, d *desired, c Component, spec *v1alpha1.PodDisruptionBudgetSpec) error {
	pdb := d.podDisruptionBudget(c, spec)
	if pdb == nil {
		return r.deleteOwned(ctx, d.sim, workloadName(d.sim.Name, c), &policyv1.PodDisruptionBudget{})
	}
	_, err := applyChild(ctx, r, d.sim, pdb, &policyv1.PodDisruptionBudget{})
	return err
}

func (r *Reconciler) reconcileAPI(ctx context.Context, d *desired, obs *observation) error {
	sim := d.sim
	dep, svc := d.apiObjects()
	// A Service that cannot be applied (say, a name conflict) does not hold the workload back.
	_, svcErr := applyChild(ctx, r, sim, svc, &corev1.Service{})
	if err := r.applyConfigMap(ctx, d, API); err != nil {
		return errors.Join(svcErr, err)
	}
	live, err := applyChild(ctx, r, sim, dep, &appsv1.Deployment{})
	if err != nil {
		return errors.Join(svcErr, err)
	}
	obs.components[API] = observeDeployment(live, sim.Spec.API.DesiredReplicas(), selectorString(sim.Name, API))
	return errors.Join(svcErr, r.reconcilePDB(ctx, d, API, sim.Spec.API.PodDisruptionBudget))
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
//
// It never touches an object of that name the simulation does not control: the cache sees
// only labelled objects, so a miss is checked against the API server before anything is
// created (server-side apply would otherwise adopt a user's object, content and all). When the
// server refuses the update of an object the simulation controls as invalid (a hand edit left
// it in a state the operator's fields cannot be applied onto, such as a rollingUpdate next to
// the broker's Recreate strategy, or an immutable field), the object is deleted and
// recreated: the operator owns it, and an apply that fails forever wedges the simulation.
func applyChild[T client.Object](ctx context.Context, r *Reconciler, sim *v1alpha1.ChargerSimulation, ac applyConfig, live T) (T, error) {
	kind := *ac.GetKind()
	key := types.NamespacedName{Namespace: *ac.GetNamespace(), Name: *ac.GetName()}
	if err := stampApplied(ac); err != nil {
		return live, err
	}
	exists := false
	err := r.Client.Get(ctx, key, live)
	switch {
	case err == nil:
		if !metav1.IsControlledBy(live, sim) {
			return live, nameConflict(kind, key, live)
		}
		exists = true
		same, cerr := containsFields(ac, live)
		if cerr != nil {
			return live, cerr
		}
		if same {
			r.Metrics.observeApply(kind, applyUnchanged)
			return live, nil
		}
	case apierrors.IsNotFound(err):
		switch err := r.APIReader.Get(ctx, key, live); {
		case err == nil && !metav1.IsControlledBy(live, sim):
			return live, nameConflict(kind, key, live)
		case err == nil:
			exists = true // ours, but its labels were removed: the apply puts them back
		case !apierrors.IsNotFound(err):
			return live, fmt.Errorf("get %s %s: %w", kind, key, err)
		}
	default:
		return live, fmt.Errorf("get %s %s: %w", kind, key, err)
	}
	err = r.Client.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership)
	if err != nil && exists && apierrors.IsInvalid(err) && r.validAsNew(ctx, ac) {
		r.Metrics.observeApply(kind, applyFailed)
		uid := live.GetUID()
		derr := r.Client.Delete(ctx, live, client.Preconditions{UID: &uid}, client.PropagationPolicy(metav1.DeletePropagationBackground))
		if derr != nil && !apierrors.IsNotFound(derr) {
			return live, fmt.Errorf("delete %s %s to recreate it: %w", kind, key, derr)
		}
		ctrl.LoggerFrom(ctx).Info("recreating a child the server refused to update", "kind", kind, "name", key.Name, "error", err.Error())
		r.Recorder.Eventf(sim, nil, corev1.EventTypeWarning, v1alpha1.ReasonRecreated, "Repair",
			"%s %s was recreated: the server refused to apply the operator's fields to it (%s)", kind, key.Name, apiMessage(err))
		err = r.Client.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership)
	}
	if err != nil {
		r.Metrics.observeApply(kind, applyFailed)
		if apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
			// The server refuses the object itself: retrying cannot help until the spec changes.
			return live, &configError{reason: v1alpha1.ReasonApplyFailed,
				message: fmt.Sprintf("%s %s refused by the API server: %s", kind, key.Name, apiMessage(err))}
		}
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

// validAsNew reports whether the API server accepts ac as a new object (a dry-run create
// under a generated name). When it does, an update refused as invalid is the live object's
// fault (drift), and recreating it repairs it; when it does not, the spec asks for something
// invalid (a bad pod option), and the running object must be left alone.
func (r *Reconciler) validAsNew(ctx context.Context, ac applyConfig) bool {
	b, err := json.Marshal(ac)
	if err != nil {
		return false
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return false
	}
	u.SetGenerateName(u.GetName() + "-")
	u.SetName("")
	err = r.Client.Create(ctx, u, client.DryRunAll, client.FieldOwner(FieldOwner))
	return err == nil
}

// nameConflict: an object the operator would create exists and belongs to someone else.
func nameConflict(kind string, key types.NamespacedName, obj client.Object) error {
	owner := "no controller"
	if ref := metav1.GetControllerOf(obj); ref != nil {
		owner = fmt.Sprintf("controlled by %s %s", ref.Kind, ref.Name)
	}
	return &configError{reason: v1alpha1.ReasonNameConflict, message: fmt.Sprintf(
		"%s %s already exists and is not this simulation's (%s): the operator leaves it alone; delete or rename it, or rename the simulation",
		kind, key.Name, owner)}
}

// apiMessage is the API server's message for err, without the request details around it.
func apiMessage(err error) string {
	var s apierrors.APIStatus
	if errors.As(err, &s) && s.Status().Message != "" {
		return s.Status().Message
	}
	return err.Error()
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
	}, updated: s.UpdatedReplicas}
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
	}, updated: s.UpdatedReplicas}
	o.complete = st.Generation > 0 && s.ObservedGeneration >= st.Generation &&
		s.Replicas == desired && s.UpdatedReplicas == desired && s.AvailableReplicas == desired &&
		(s.UpdateRevision == "" || s.CurrentRevision == s.UpdateRevision)
	return o
}

// podToSimulation maps a pod to the simulation its labels name.
func podToSimulation(_ context.Context, o client.Object) []reconcile.Request {
	sim := o.GetLabels()[LabelSimulation]
	if sim == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: sim}}}
}

// Deadlines after which a pod that is not getting anywhere stalls its simulation. An image that
// cannot be pulled or a container that crash-loops is reported at once (the kubelet has
// already retried); a pod may wait for the scheduler for a while (a node being added) and a
// slow component may take a while to pass its readiness probe.
const (
	unschedulableDeadline = 2 * time.Minute
	notReadyDeadline      = 5 * time.Minute
)

// stuckWaitingReasons are container waiting reasons that do not resolve by waiting.
var stuckWaitingReasons = map[string]bool{
	"ImagePullBackOff": true, "ErrImagePull": true, "InvalidImageName": true,
	"CrashLoopBackOff": true, "CreateContainerConfigError": true, "CreateContainerError": true,
}

// podStuck says why pod p cannot become ready without someone changing something (reason,
// message), or, when it may still get there, how long until it would count as stuck (recheck).
func podStuck(p *corev1.Pod, now time.Time) (reason, message string, recheck time.Duration) {
	if !p.DeletionTimestamp.IsZero() {
		return "", "", 0
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, cs := range list {
			if w := cs.State.Waiting; w != nil && stuckWaitingReasons[w.Reason] {
				return w.Reason, fmt.Sprintf("pod %s: container %s: %s: %s", p.Name, cs.Name, w.Reason, w.Message), 0
			}
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			if left := unschedulableDeadline - now.Sub(c.LastTransitionTime.Time); left > 0 {
				return "", "", left
			}
			return corev1.PodReasonUnschedulable, fmt.Sprintf("pod %s: Unschedulable: %s", p.Name, c.Message), 0
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if r := cs.State.Running; r != nil && !cs.Ready {
			if left := notReadyDeadline - now.Sub(r.StartedAt.Time); left > 0 {
				return "", "", left
			}
			return "ProbeFailing", fmt.Sprintf("pod %s: container %s running for %s without passing its readiness probe",
				p.Name, cs.Name, now.Sub(r.StartedAt.Time).Round(time.Second)), 0
		}
	}
	return "", "", 0
}

// observePods looks at the pods of a component that has not rolled out, and marks the
// component stalled when one of them is stuck.
func (r *Reconciler) observePods(ctx context.Context, sim *v1alpha1.ChargerSimulation, c Component, o *componentObservation, obs *observation) {
	if o.complete || o.stalled != "" {
		return
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(sim.Namespace), client.MatchingLabels(selectorLabels(sim.Name, c))); err != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("list pods", "component", c, "error", err.Error())
		return
	}
	now := time.Now()
	for i := range pods.Items {
		reason, msg, recheck := podStuck(&pods.Items[i], now)
		if reason != "" {
			o.stalled, o.stalledReason = msg, reason
			return
		}
		if recheck > 0 && (obs.recheck == 0 || recheck < obs.recheck) {
			obs.recheck = recheck
		}
	}
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

// pendingEvent is an event summarize decided on; Reconcile records it once status is written.
type pendingEvent struct {
	related                   runtime.Object
	typ, reason, action, note string
}

// summarize completes the observation from the cache and writes status from it.
func (r *Reconciler) summarize(ctx context.Context, sim *v1alpha1.ChargerSimulation, obs *observation, result ctrl.Result, err error) (ctrl.Result, []pendingEvent, error) {
	r.observeFromCache(ctx, sim, obs)
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		if o, ok := obs.components[c]; ok {
			r.observePods(ctx, sim, c, o, obs)
		}
	}
	res, evs := summarizeStatus(sim, obs, time.Now())
	if err != nil {
		// Transient: controller-runtime logs it and retries with backoff. No event (a storm
		// of Warnings for a timeout helps nobody), and Ready says what the workloads do.
		return ctrl.Result{}, evs, err
	}
	if obs.degraded != nil || res.RequeueAfter > 0 {
		if obs.degraded != nil {
			ctrl.LoggerFrom(ctx).Info("simulation degraded", "reason", obs.degraded.reason, "message", obs.degraded.message)
		}
		return res, evs, nil
	}
	if result.RequeueAfter > 0 {
		return result, evs, nil
	}
	return ctrl.Result{RequeueAfter: jitter(r.ResyncInterval)}, evs, nil
}

// componentMessage says how far component c is from done, in words that hold mid-rollout
// too (never "3/1 ready" while scaling down).
func componentMessage(c Component, o *componentObservation) string {
	s := o.status
	switch {
	case s.Replicas > s.DesiredReplicas:
		return fmt.Sprintf("%s scaling down to %d (%d running)", c, s.DesiredReplicas, s.Replicas)
	case s.ReadyReplicas >= s.DesiredReplicas && s.DesiredReplicas > 0:
		return fmt.Sprintf("%s rolling out (%d/%d updated)", c, min(o.updated, s.DesiredReplicas), s.DesiredReplicas)
	default:
		return fmt.Sprintf("%s %d/%d ready", c, s.ReadyReplicas, s.DesiredReplicas)
	}
}

// summarizeStatus is the status summary: observations in; replica counts, conditions (stamped
// with the generation they describe), the events of the transitions and when to look again
// out. It follows kstatus: Reconciling=True while the operator works towards the spec,
// Stalled=True when it cannot get there without the user (kstatus reads only these two and
// observedGeneration); Ready, Progressing and Degraded say the same for people and for tools
// that read Ready. A transient error (obs.transient) is neither Degraded nor Stalled: the
// simulation is Reconciling, and Ready keeps describing the workloads.
func summarizeStatus(sim *v1alpha1.ChargerSimulation, obs *observation, now time.Time) (ctrl.Result, []pendingEvent) {
	st := &sim.Status
	gen := sim.Generation
	st.ObservedGeneration = gen
	comp := func(c Component) v1alpha1.ComponentStatus {
		if o, ok := obs.components[c]; ok {
			return o.status
		}
		return v1alpha1.ComponentStatus{}
	}
	st.Publisher = comp(Publisher)
	st.Listener = comp(Listener)
	st.API = comp(API)
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
	stalledReason := v1alpha1.ReasonRolloutStalled
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		o, ok := obs.components[c]
		if !ok {
			continue
		}
		if !o.complete {
			notReady = append(notReady, componentMessage(c, o))
		}
		if o.stalled != "" {
			if len(stalled) == 0 && o.stalledReason != "" {
				stalledReason = o.stalledReason
			}
			stalled = append(stalled, o.stalled)
		}
	}
	deg := obs.degraded
	if deg == nil && len(stalled) > 0 {
		deg = &configError{reason: stalledReason, message: strings.Join(stalled, "; ")}
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
			LastTransitionTime: metav1.NewTime(now),
		})
	}
	switch {
	case deg != nil:
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, deg.reason, deg.message)
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, deg.reason, deg.message)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, deg.reason, "cannot progress: "+deg.message)
		set(v1alpha1.ConditionStalled, metav1.ConditionTrue, deg.reason, deg.message)
		set(v1alpha1.ConditionReconciling, metav1.ConditionFalse, deg.reason, "")
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
		set(v1alpha1.ConditionStalled, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
		set(v1alpha1.ConditionReconciling, metav1.ConditionTrue, progressReason, msg)
	default:
		reason, msg := v1alpha1.ReasonAvailable, "all components are available"
		if sim.Spec.Suspend {
			reason, msg = v1alpha1.ReasonSuspended, "publisher suspended; broker, listener and API are available"
		}
		set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, reason, msg)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonRolloutComplete, "")
		set(v1alpha1.ConditionStalled, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
		set(v1alpha1.ConditionReconciling, metav1.ConditionFalse, v1alpha1.ReasonRolloutComplete, "")
	}
	if obs.transient != nil && deg == nil {
		set(v1alpha1.ConditionReconciling, metav1.ConditionTrue, v1alpha1.ReasonRetrying,
			"retrying after a transient error: "+obs.transient.Error())
	}

	var evs []pendingEvent
	switch {
	case deg != nil && (wasDegraded == nil || wasDegraded.Status != metav1.ConditionTrue || wasDegraded.Reason != deg.reason || wasDegraded.Message != deg.message):
		evs = append(evs, pendingEvent{typ: corev1.EventTypeWarning, reason: deg.reason, action: "Reconcile", note: deg.message})
	case deg == nil && wasDegraded != nil && wasDegraded.Status == metav1.ConditionTrue:
		evs = append(evs, pendingEvent{typ: corev1.EventTypeNormal, reason: "Recovered", action: "Reconcile",
			note: fmt.Sprintf("no longer degraded (was %s)", wasDegraded.Reason)})
	}
	if !wasReady && meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReady) {
		evs = append(evs, pendingEvent{typ: corev1.EventTypeNormal, reason: v1alpha1.ReasonAvailable, action: "Reconcile", note: "all components are available"})
	}

	if deg != nil {
		since := now
		if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c != nil {
			since = c.LastTransitionTime.Time
		}
		return ctrl.Result{RequeueAfter: degradedBackoff(now.Sub(since))}, evs
	}
	if obs.recheck > 0 {
		return ctrl.Result{RequeueAfter: obs.recheck}, evs
	}
	return ctrl.Result{}, evs
}

// conflictRetry is when a reconcile whose status patch met a newer simulation looks again.
const conflictRetry = time.Second

// degradedBackoff is how long to wait before looking again at a simulation that has been
// degraded for the given time: about as long again, so retries double from 1s, capped at a
// minute. A Secret that appears or is fixed is noticed at once through the metadata watch;
// this covers what no event announces (a workload the user fixes by other means).
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
