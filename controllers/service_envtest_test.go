//go:build envtest

package controllers_test

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// Service options and PodDisruptionBudgets that make no sense are refused by the CRD, with a
// message that names the field and says what to do.
func TestServiceAndPDBValidation(t *testing.T) {
	ns := newNamespace(t)
	lb := func(s *v1alpha1.ChargerSimulation) { s.Spec.API.ServiceType = corev1.ServiceTypeLoadBalancer }
	for _, tc := range []struct {
		name   string
		mutate func(*v1alpha1.ChargerSimulation)
		want   string // "" = accepted
	}{
		{"nodePort on a ClusterIP API", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.Service = &v1alpha1.ServiceOptions{NodePort: 30080}
		}, "api.service.nodePort needs api.serviceType NodePort or LoadBalancer"},
		{"externalTrafficPolicy on a ClusterIP API", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.Service = &v1alpha1.ServiceOptions{ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}
		}, "api.service.externalTrafficPolicy needs api.serviceType NodePort or LoadBalancer"},
		{"source ranges on a NodePort API", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.ServiceType = corev1.ServiceTypeNodePort
			s.Spec.API.Service = &v1alpha1.ServiceOptions{LoadBalancerSourceRanges: []string{"10.0.0.0/8"}}
		}, "api.service.loadBalancerSourceRanges and loadBalancerClass need api.serviceType LoadBalancer"},
		{"load balancer class on a managed ClusterIP broker", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Broker.Managed = &v1alpha1.ManagedBrokerSpec{Service: &v1alpha1.ServiceOptions{LoadBalancerClass: ptr.To("x/y")}}
		}, "broker.managed.service.loadBalancerSourceRanges and loadBalancerClass need broker.managed.serviceType LoadBalancer"},
		{"a source range that is no CIDR", func(s *v1alpha1.ChargerSimulation) {
			lb(s)
			s.Spec.API.Service = &v1alpha1.ServiceOptions{LoadBalancerSourceRanges: []string{"10.0.0.1"}}
		}, "loadBalancerSourceRanges must be CIDRs such as 203.0.113.0/24"},
		{"an unknown traffic policy", func(s *v1alpha1.ChargerSimulation) {
			lb(s)
			s.Spec.API.Service = &v1alpha1.ServiceOptions{ExternalTrafficPolicy: "Nearest"}
		}, `supported values: "Cluster", "Local"`},
		{"both minAvailable and maxUnavailable", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Listener.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(1))}
		}, "podDisruptionBudget takes exactly one of minAvailable and maxUnavailable"},
		{"an empty budget", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{}
		}, "podDisruptionBudget takes exactly one of minAvailable and maxUnavailable"},
		{"a budget in no unit", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MaxUnavailable: ptr.To(intstr.FromString("half"))}
		}, "maxUnavailable must be a number of pods (0 or more) or a percentage such as 50%"},
		{"a negative budget", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Listener.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(-1))}
		}, "minAvailable must be a number of pods (0 or more)"},
		{"everything valid", func(s *v1alpha1.ChargerSimulation) {
			lb(s)
			s.Spec.API.Service = &v1alpha1.ServiceOptions{NodePort: 30080, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
				LoadBalancerSourceRanges: []string{"203.0.113.0/24", "2001:db8::/32"}, LoadBalancerClass: ptr.To("example.com/lb"),
				Annotations: map[string]string{"a": "b"}}
			s.Spec.API.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MaxUnavailable: ptr.To(intstr.FromString("50%"))}
			s.Spec.Listener.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1))}
			s.Spec.Broker.Managed = &v1alpha1.ManagedBrokerSpec{ServiceType: corev1.ServiceTypeNodePort,
				Service: &v1alpha1.ServiceOptions{NodePort: 31883}}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := simulation(ns, "svc-invalid")
			tc.mutate(sim)
			err := k8s.Create(ctx, sim)
			if err == nil {
				_ = k8s.Delete(ctx, sim)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("accepted; want refusal with %q", tc.want)
			case !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("refused with %v; want Invalid with %q", err, tc.want)
			// The API server's own note that it skipped the CEL rules of an object with schema
			// errors carries a <nil> field; any other <nil> would be a rule without a fieldPath.
			case strings.Contains(strings.ReplaceAll(err.Error(), "<nil>: Invalid value: null: some validation rules were not checked", ""), "<nil>"):
				t.Errorf("message %q", err.Error())
			}
		})
	}
}

// The Service options reach the API server's Services, and go again when the spec drops them;
// a PodDisruptionBudget exists exactly while the spec asks for one, owned by the simulation.
func TestServiceOptionsAndPDBLifecycle(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	s := simulation(ns, "exposed")
	s.Spec.API.ServiceType = corev1.ServiceTypeLoadBalancer
	s.Spec.API.Service = &v1alpha1.ServiceOptions{NodePort: 30180, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		LoadBalancerSourceRanges: []string{"203.0.113.0/24"}, Annotations: map[string]string{"example.com/lb": "internal"}}
	s.Spec.API.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MaxUnavailable: ptr.To(intstr.FromString("50%"))}
	s.Spec.Listener.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1))}
	s.Spec.Broker.Managed = &v1alpha1.ManagedBrokerSpec{ServiceType: corev1.ServiceTypeNodePort, Service: &v1alpha1.ServiceOptions{NodePort: 31883}}
	createSim(t, s)
	sim := getSim(t, ns, "exposed")

	eventually(t, "Services and budgets applied", func() error {
		api, broker := &corev1.Service{}, &corev1.Service{}
		if err := k8s.Get(ctx, key(ns, "exposed-api"), api); err != nil {
			return err
		}
		if err := k8s.Get(ctx, key(ns, "exposed-broker"), broker); err != nil {
			return err
		}
		if api.Spec.Type != corev1.ServiceTypeLoadBalancer || api.Spec.Ports[0].NodePort != 30180 ||
			api.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || len(api.Spec.LoadBalancerSourceRanges) != 1 ||
			api.Annotations["example.com/lb"] != "internal" {
			return fmt.Errorf("API Service %+v %+v", api.Annotations, api.Spec)
		}
		if broker.Spec.Type != corev1.ServiceTypeNodePort || broker.Spec.Ports[0].Name != "mqtt" || broker.Spec.Ports[0].NodePort != 31883 {
			return fmt.Errorf("broker Service %+v", broker.Spec)
		}
		for _, name := range []string{"exposed-api", "exposed-listener"} {
			pdb := &policyv1.PodDisruptionBudget{}
			if err := k8s.Get(ctx, key(ns, name), pdb); err != nil {
				return err
			}
			assertOwned(t, pdb, sim)
		}
		return nil
	})
	pdb := getObj(t, ns, "exposed-api", &policyv1.PodDisruptionBudget{})
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "50%" || pdb.Spec.MinAvailable != nil ||
		pdb.Spec.Selector == nil || pdb.Spec.Selector.MatchLabels["app.kubernetes.io/component"] != "api" {
		t.Errorf("API budget %+v", pdb.Spec)
	}

	// Options and budgets dropped: the Service is a plain ClusterIP again, the budgets go.
	updateSim(t, ns, "exposed", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.API.ServiceType = corev1.ServiceTypeClusterIP
		s.Spec.API.Service = nil
		s.Spec.API.PodDisruptionBudget = nil
		s.Spec.Listener.PodDisruptionBudget = nil
	})
	eventually(t, "options and budgets removed", func() error {
		api := &corev1.Service{}
		if err := k8s.Get(ctx, key(ns, "exposed-api"), api); err != nil {
			return err
		}
		if api.Spec.Type != corev1.ServiceTypeClusterIP || api.Spec.Ports[0].NodePort != 0 || api.Spec.ExternalTrafficPolicy != "" ||
			len(api.Spec.LoadBalancerSourceRanges) != 0 || api.Annotations["example.com/lb"] != "" {
			return fmt.Errorf("API Service %+v %+v", api.Annotations, api.Spec)
		}
		for _, name := range []string{"exposed-api", "exposed-listener"} {
			switch err := k8s.Get(ctx, key(ns, name), &policyv1.PodDisruptionBudget{}); {
			case err == nil:
				return fmt.Errorf("budget %s still there", name)
			case !apierrors.IsNotFound(err):
				return fmt.Errorf("get budget %s: %w", name, err)
			}
		}
		return nil
	})

	// A budget that is not the simulation's is never touched (nor adopted).
	foreign := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "exposed-listener"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(0))}}
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	updateSim(t, ns, "exposed", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.Listener.PodDisruptionBudget = &v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1))}
	})
	waitCondition(t, ns, "exposed", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	got := getObj(t, ns, "exposed-listener", &policyv1.PodDisruptionBudget{})
	if len(got.OwnerReferences) != 0 || got.Spec.MinAvailable.IntValue() != 0 {
		t.Errorf("a foreign budget was taken over: %+v %+v", got.OwnerReferences, got.Spec)
	}
}
