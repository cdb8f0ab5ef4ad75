//go:build envtest

package controllers_test

import (
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
)

// TestRemovedSpecFieldRemovedFromChild: a pod option taken out of the spec goes away from the
// child too. The operator skips an apply when the live object already holds every field it
// would send; a field it stopped sending is still "held", so before the applied-hash annotation
// a nodeSelector removed from the spec stayed on the StatefulSet for good (found on the real
// cluster: a listener made unschedulable never came back).
func TestRemovedSpecFieldRemovedFromChild(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "removal")
	sim.Spec.Listener.Pod = &v1alpha1.PodOptions{NodeSelector: map[string]string{"pool": "none"}}
	sim.Spec.API.Pod = &v1alpha1.PodOptions{Annotations: map[string]string{"team": "ev"}}
	createSim(t, sim)
	eventually(t, "pod options on the children", func() error {
		sts := getObj(t, ns, "removal-listener", &appsv1.StatefulSet{})
		dep := getObj(t, ns, "removal-api", &appsv1.Deployment{})
		if sts.Spec.Template.Spec.NodeSelector["pool"] != "none" || dep.Spec.Template.Annotations["team"] != "ev" {
			return fmt.Errorf("nodeSelector %v, API pod annotations %v", sts.Spec.Template.Spec.NodeSelector, dep.Spec.Template.Annotations)
		}
		return nil
	})
	hash := getObj(t, ns, "removal-listener", &appsv1.StatefulSet{}).Annotations[controllers.AnnotationAppliedHash]

	updateSim(t, ns, "removal", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.Listener.Pod = nil
		s.Spec.API.Pod = nil
	})
	eventually(t, "pod options gone from the children", func() error {
		sts := getObj(t, ns, "removal-listener", &appsv1.StatefulSet{})
		dep := getObj(t, ns, "removal-api", &appsv1.Deployment{})
		if len(sts.Spec.Template.Spec.NodeSelector) != 0 {
			return fmt.Errorf("listener nodeSelector still %v", sts.Spec.Template.Spec.NodeSelector)
		}
		if _, ok := dep.Spec.Template.Annotations["team"]; ok {
			return fmt.Errorf("API pod annotations still %v", dep.Spec.Template.Annotations)
		}
		return nil
	})
	if h := getObj(t, ns, "removal-listener", &appsv1.StatefulSet{}).Annotations[controllers.AnnotationAppliedHash]; h == "" || h == hash {
		t.Errorf("%s %q after the change, %q before: want a new hash", controllers.AnnotationAppliedHash, h, hash)
	}
}
