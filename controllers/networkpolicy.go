package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// brokerNetworkPolicy admits MQTT to the managed broker only from this simulation's publisher
// and listener pods (the only holders of its credentials: defence in depth), and the metrics
// port from spec.networkPolicy.metricsFrom (anyone when empty). Everything else to the broker
// pod is dropped by a CNI that enforces NetworkPolicies; kubelet probes come from the node,
// which common CNIs (Calico, Cilium, kindnet) always admit.
func (d *desired) brokerNetworkPolicy() *networkingv1ac.NetworkPolicyApplyConfiguration {
	sim := d.sim
	clients := metav1ac.LabelSelector().
		WithMatchLabels(map[string]string{LabelName: "chargesim", LabelInstance: sim.Name}).
		WithMatchExpressions(metav1ac.LabelSelectorRequirement().
			WithKey(LabelComponent).WithOperator(metav1.LabelSelectorOpIn).
			WithValues(string(Publisher), string(Listener)))
	mqtt := networkingv1ac.NetworkPolicyIngressRule().
		WithFrom(networkingv1ac.NetworkPolicyPeer().WithPodSelector(clients)).
		WithPorts(policyPort(mqttPort))
	metrics := networkingv1ac.NetworkPolicyIngressRule().WithPorts(policyPort(opsPort))
	for i := range sim.Spec.NetworkPolicy.MetricsFrom {
		metrics.WithFrom(viaJSON(&sim.Spec.NetworkPolicy.MetricsFrom[i], &networkingv1ac.NetworkPolicyPeerApplyConfiguration{}))
	}
	return d.networkPolicy(Broker, mqtt, metrics)
}

// apiNetworkPolicy admits the API's port only from spec.networkPolicy.apiFrom.
func (d *desired) apiNetworkPolicy() *networkingv1ac.NetworkPolicyApplyConfiguration {
	sim := d.sim
	rule := networkingv1ac.NetworkPolicyIngressRule().WithPorts(policyPort(apiPort))
	for i := range sim.Spec.NetworkPolicy.APIFrom {
		rule.WithFrom(viaJSON(&sim.Spec.NetworkPolicy.APIFrom[i], &networkingv1ac.NetworkPolicyPeerApplyConfiguration{}))
	}
	return d.networkPolicy(API, rule)
}

func (d *desired) networkPolicy(c Component, rules ...*networkingv1ac.NetworkPolicyIngressRuleApplyConfiguration) *networkingv1ac.NetworkPolicyApplyConfiguration {
	sim := d.sim
	return networkingv1ac.NetworkPolicy(workloadName(sim.Name, c), sim.Namespace).
		WithLabels(objectLabels(sim.Name, c)).
		WithOwnerReferences(ownerRef(sim)).
		WithSpec(networkingv1ac.NetworkPolicySpec().
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(sim.Name, c))).
			WithPolicyTypes(networkingv1.PolicyTypeIngress).
			WithIngress(rules...))
}

func policyPort(port int32) *networkingv1ac.NetworkPolicyPortApplyConfiguration {
	return networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(port))
}

// reconcileNetworkPolicies applies the simulation's NetworkPolicies, or removes the ones the
// spec no longer asks for. It runs after the workloads: a policy that cannot be applied (a name
// conflict) never holds a component back.
func (r *Reconciler) reconcileNetworkPolicies(ctx context.Context, d *desired, _ *observation) error {
	sim := d.sim
	np := &sim.Spec.NetworkPolicy
	want := map[Component]func() *networkingv1ac.NetworkPolicyApplyConfiguration{}
	if np.IsEnabled() && sim.Spec.Broker.IsManaged() {
		want[Broker] = d.brokerNetworkPolicy
	}
	if np.IsEnabled() && len(np.APIFrom) > 0 {
		want[API] = d.apiNetworkPolicy
	}
	var errs []error
	for _, c := range []Component{Broker, API} {
		if render, ok := want[c]; ok {
			if _, err := applyChild(ctx, r, sim, render(), &networkingv1.NetworkPolicy{}); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := r.deleteOwned(ctx, sim, workloadName(sim.Name, c), &networkingv1.NetworkPolicy{}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NetworkPolicies renders the NetworkPolicies of sim as the operator would, for tests (the
// chart's tests match them against the rendered pods).
func NetworkPolicies(sim *v1alpha1.ChargerSimulation) ([]networkingv1.NetworkPolicy, error) {
	d := newDesired(sim, "", "", nil)
	var out []networkingv1.NetworkPolicy
	np := &sim.Spec.NetworkPolicy
	var acs []*networkingv1ac.NetworkPolicyApplyConfiguration
	if np.IsEnabled() && sim.Spec.Broker.IsManaged() {
		acs = append(acs, d.brokerNetworkPolicy())
	}
	if np.IsEnabled() && len(np.APIFrom) > 0 {
		acs = append(acs, d.apiNetworkPolicy())
	}
	for _, ac := range acs {
		b, err := json.Marshal(ac)
		if err != nil {
			return nil, fmt.Errorf("marshal NetworkPolicy: %w", err)
		}
		var p networkingv1.NetworkPolicy
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("decode NetworkPolicy: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}
