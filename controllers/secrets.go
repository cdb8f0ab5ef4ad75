package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// secretUse is one Secret key a simulation's pods read, and which pods read it.
type secretUse struct {
	field      string // where the spec names it, for messages
	name       string
	key        string
	components []Component
	digest     string // sha256 of the value, filled in by resolveSecrets
	// hotReload: the components re-read it while running (the managed broker's accepted
	// passwords), so a change must not roll them.
	hotReload bool
}

func (s secretUse) usedBy(c Component) bool { return slices.Contains(s.components, c) }

// secretUses lists the Secret keys the spec references.
func secretUses(sim *v1alpha1.ChargerSimulation) []secretUse {
	s := &sim.Spec
	mongo := []Component{Publisher, Listener, API} // the publisher records its runs
	mqtt := []Component{Publisher, Listener}
	uses := []secretUse{{
		field: "spec.mongo.uriSecretRef", name: s.Mongo.URISecretRef.Name,
		key: s.Mongo.URISecretRef.KeyOrDefault(), components: mongo,
	}}
	if ref := s.Mongo.CASecretRef; ref != nil {
		uses = append(uses, secretUse{field: "spec.mongo.caSecretRef", name: ref.Name, key: ref.KeyOrDefault(), components: mongo})
	}
	if ref := credentialsRef(sim); ref != nil {
		field := "spec.broker.credentialsSecretRef"
		if s.Broker.IsManaged() {
			field = brokerCredentialsField
			// The broker's username is an environment variable (fixed at start; it never
			// changes); its passwords a file it re-reads, so a rotation does not restart it.
			uses = append(uses,
				secretUse{field: field, name: ref.Name, key: CredentialsUsernameKey, components: []Component{Broker}},
				secretUse{field: field, name: ref.Name, key: CredentialsAcceptedKey, components: []Component{Broker}, hotReload: true})
		}
		uses = append(uses,
			secretUse{field: field, name: ref.Name, key: ref.UsernameKeyOrDefault(), components: mqtt},
			secretUse{field: field, name: ref.Name, key: ref.PasswordKeyOrDefault(), components: mqtt})
	}
	if t := s.Broker.TLS; t != nil {
		uses = append(uses, secretUse{field: "spec.broker.tls.caSecretRef", name: t.CASecretRef.Name, key: t.CASecretRef.KeyOrDefault(), components: mqtt})
	}
	return uses
}

// configError is a problem only the user can fix (a missing Secret, an unusable URL). It makes
// the simulation Degraded with reason; the operator retries with backoff instead of failing.
type configError struct {
	reason  string
	message string
}

func (e *configError) Error() string { return e.message }

// resolveSecrets reads each referenced Secret once, straight from the API server: a Secret
// informer would cache the data of every Secret of the cluster (the operator's cache holds
// only their metadata).
func resolveSecrets(ctx context.Context, r client.Reader, sim *v1alpha1.ChargerSimulation) ([]secretUse, error) {
	uses := secretUses(sim)
	got := map[string]*corev1.Secret{}
	for i := range uses {
		u := &uses[i]
		sec, ok := got[u.name]
		if !ok {
			sec = &corev1.Secret{}
			err := r.Get(ctx, types.NamespacedName{Namespace: sim.Namespace, Name: u.name}, sec)
			if apierrors.IsNotFound(err) {
				return nil, &configError{reason: v1alpha1.ReasonSecretNotFound,
					message: fmt.Sprintf("Secret %q named by %s does not exist in namespace %q", u.name, u.field, sim.Namespace)}
			}
			if err != nil {
				return nil, fmt.Errorf("get Secret %s/%s (%s): %w", sim.Namespace, u.name, u.field, err)
			}
			got[u.name] = sec
		}
		v, ok := sec.Data[u.key]
		if !ok || len(v) == 0 {
			return nil, &configError{reason: v1alpha1.ReasonSecretKeyNotFound,
				message: fmt.Sprintf("Secret %q named by %s has no key %q (or it is empty)", u.name, u.field, u.key)}
		}
		sum := sha256.Sum256(v)
		u.digest = hex.EncodeToString(sum[:])
	}
	return uses, nil
}

// secretIndex indexes simulations by the names of the Secrets they reference.
const secretIndex = "chargesim.io/secret-names"

// secretNames is the index function of secretIndex.
func secretNames(o client.Object) []string {
	sim, ok := o.(*v1alpha1.ChargerSimulation)
	if !ok {
		return nil
	}
	var names []string
	for _, u := range secretUses(sim) {
		if !slices.Contains(names, u.name) {
			names = append(names, u.name)
		}
	}
	return names
}

// secretToSimulations maps a Secret (its metadata: the watch never sees data) to the
// simulations of its namespace that reference it.
func (r *Reconciler) secretToSimulations(ctx context.Context, o client.Object) []reconcile.Request {
	var sims v1alpha1.ChargerSimulationList
	if err := r.Client.List(ctx, &sims, client.InNamespace(o.GetNamespace()), client.MatchingFields{secretIndex: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list simulations referencing a Secret", "secret", o.GetName(), "namespace", o.GetNamespace())
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(sims.Items))
	for i := range sims.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: sims.Items[i].Namespace, Name: sims.Items[i].Name}})
	}
	return reqs
}
