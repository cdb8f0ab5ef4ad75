package controllers

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// Every kind of child the operator applies can carry the applied-hash stamp: an unsupported one
// fails every reconcile of every simulation (it happened when budgets and policies were added).
func TestStampAppliedEveryChildKind(t *testing.T) {
	sim := testSim()
	sim.Spec.NetworkPolicy.APIFrom = []networkingv1.NetworkPolicyPeer{{}}
	d := newDesired(sim, "img:1", managedBrokerURL(sim), testSecrets(sim))
	bd, bs := d.brokerObjects()
	ps, phs := d.publisherObjects()
	ls, lhs := d.listenerObjects()
	ad, as := d.apiObjects()
	one := intstr.FromInt32(1)
	acs := []applyConfig{bd, bs, ps, phs, ls, lhs, ad, as, d.configMap(Listener),
		d.podDisruptionBudget(Listener, &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: &one}),
		d.brokerNetworkPolicy(), d.apiNetworkPolicy()}
	for _, ac := range acs {
		if err := stampApplied(ac); err != nil {
			t.Errorf("%s %s: %v", *ac.GetKind(), *ac.GetName(), err)
		}
	}
}
