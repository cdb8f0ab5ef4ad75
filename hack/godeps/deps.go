//go:build tools

// Package godeps pins modules that components are about to use, so `go mod tidy` keeps them
// while the tree grows. Delete an import once real code imports the module.
package godeps

import (
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/go-chi/chi/v5"
	_ "github.com/mochi-mqtt/server/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "k8s.io/api/apps/v1"
	_ "k8s.io/client-go/kubernetes"
	_ "sigs.k8s.io/controller-runtime"
	_ "sigs.k8s.io/controller-runtime/pkg/envtest"
)
