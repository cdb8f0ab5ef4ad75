package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	"k8s.io/apimachinery/pkg/api/equality"
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
