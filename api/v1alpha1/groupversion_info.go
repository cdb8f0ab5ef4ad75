// Package v1alpha1 is the chargesim.io/v1alpha1 API: the ChargerSimulation custom resource the
// operator turns into a running publisher → broker → listener → API pipeline.
//
// +kubebuilder:object:generate=true
// +groupName=chargesim.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of the chargesim resources.
	GroupVersion = schema.GroupVersion{Group: "chargesim.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
