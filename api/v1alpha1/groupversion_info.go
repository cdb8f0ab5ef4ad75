// Package v1alpha1 is the chargesim.io/v1alpha1 API: the ChargerSimulation custom resource the
// operator turns into a running publisher → broker → listener → API pipeline. It depends only on
// the standard library and k8s.io/api{,machinery}, so clients can import it cheaply.
//
// +kubebuilder:object:generate=true
// +groupName=chargesim.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of the chargesim resources.
	GroupVersion = schema.GroupVersion{Group: "chargesim.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &ChargerSimulation{}, &ChargerSimulationList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
