package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"

	"k8s.io/apimachinery/pkg/api/equality"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// statusPatcher is the patch-helper pattern (cluster-api, Flux): snapshot the object when the
// reconcile starts, mutate status freely, and send one merge patch of the difference at the
// end, or nothing when status did not change, so a reconcile that changes nothing writes
// nothing.
//
// The snapshot comes from the cache, which can lag behind the API server — typically it has
// not seen this controller's own previous status patch yet. A difference computed against such
// a snapshot leaves out every field the snapshot happens to agree on, and the server keeps
// whatever the newer version says there: a status could claim Ready=True next to
// "publisher 2/3 ready" for good. So the patch carries the snapshot's resourceVersion
// (optimistic lock) and the API server refuses it with a Conflict when the snapshot is stale;
// the reconcile then runs again with a fresher copy (Reconcile, SetupWithManager).
type statusPatcher struct {
	c      client.Client
	before *v1alpha1.ChargerSimulation
}

func newStatusPatcher(c client.Client, obj *v1alpha1.ChargerSimulation) *statusPatcher {
	return &statusPatcher{c: c, before: obj.DeepCopy()}
}

func (p *statusPatcher) patch(ctx context.Context, obj *v1alpha1.ChargerSimulation) error {
	if equality.Semantic.DeepEqual(p.before.Status, obj.Status) {
		return nil
	}
	patch := client.MergeFromWithOptions(p.before, client.MergeFromWithOptimisticLock{})
	if err := p.c.Status().Patch(ctx, obj, patch); err != nil {
		return fmt.Errorf("patch status of %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	p.before = obj.DeepCopy()
	return nil
}

// AnnotationAppliedHash on every child is a hash of the apply configuration the operator last
// sent for it. containsFields alone cannot see a field the operator stopped applying (a
// nodeSelector, a pod annotation, resources removed from the spec): the live object still has
// it, so it still "contains" everything and the apply that would remove it was skipped forever.
// With the hash in the desired configuration, any change of what the operator applies, removals
// included, differs from the live annotation and is sent; server-side apply then drops the
// fields the operator owned and no longer applies.
const AnnotationAppliedHash = "chargesim.io/applied-hash"

// stampApplied sets AnnotationAppliedHash on ac to the hash of ac's content (without it).
func stampApplied(ac applyConfig) error {
	b, err := json.Marshal(ac)
	if err != nil {
		return fmt.Errorf("marshal %T: %w", ac, err)
	}
	sum := sha256.Sum256(b)
	m := map[string]string{AnnotationAppliedHash: hex.EncodeToString(sum[:16])}
	// The typed WithAnnotations of each kind: the embedded ObjectMeta's is shadowed.
	switch a := ac.(type) {
	case *appsv1ac.DeploymentApplyConfiguration:
		a.WithAnnotations(m)
	case *appsv1ac.StatefulSetApplyConfiguration:
		a.WithAnnotations(m)
	case *corev1ac.ServiceApplyConfiguration:
		a.WithAnnotations(m)
	case *corev1ac.ConfigMapApplyConfiguration:
		a.WithAnnotations(m)
	case *policyv1ac.PodDisruptionBudgetApplyConfiguration:
		a.WithAnnotations(m)
	case *networkingv1ac.NetworkPolicyApplyConfiguration:
		a.WithAnnotations(m)
	default:
		return fmt.Errorf("stampApplied: unsupported apply configuration %T", ac)
	}
	return nil
}

// containsFields reports whether live already has every field desired sets, with the same
// value. desired is an apply configuration, so it holds only the fields the operator owns;
// live may have more (server defaults, other managers' fields). Lists must match element by
// element. When it reports true, a server-side apply would be a no-op and is skipped; when in
// doubt it reports false and the apply (a no-op for the server at worst) goes ahead.
func containsFields(desired, live any) (bool, error) {
	d, err := toMap(desired)
	if err != nil {
		return false, err
	}
	l, err := toMap(live)
	if err != nil {
		return false, err
	}
	// Typed objects read from the cache carry no apiVersion/kind.
	delete(d, "apiVersion")
	delete(d, "kind")
	return subset(d, l), nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", v, err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("unmarshal %T: %w", v, err)
	}
	return m, nil
}

func subset(d, l any) bool {
	switch dv := d.(type) {
	case map[string]any:
		lv, ok := l.(map[string]any)
		if !ok {
			return false
		}
		for k, v := range dv {
			w, ok := lv[k]
			if !ok || !subset(v, w) {
				return false
			}
		}
		return true
	case []any:
		lv, ok := l.([]any)
		if !ok || len(lv) != len(dv) {
			return false
		}
		for i := range dv {
			if !subset(dv[i], lv[i]) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(d, l)
	}
}
