//go:build envtest

package controllers_test

import (
	"flag"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/components/broker"
	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
)

// componentFlags builds each component's flag set the way its Command does.
func componentFlags() map[string]*flag.FlagSet {
	sets := map[string]*flag.FlagSet{}
	for c, ops := range map[string]string{"publisher": ":9090", "listener": ":9090", "broker": ":9090", "api": ":8080"} {
		fs := flag.NewFlagSet(c, flag.ContinueOnError)
		var common cli.Common
		common.Register(fs, ops)
		switch c {
		case "publisher":
			(&publisher.Config{}).Register(fs)
		case "listener":
			(&listener.Config{}).Register(fs)
		case "broker":
			(&broker.Config{}).Register(fs)
		case "api":
			restapi.RegisterCommandFlags(fs)
		}
		sets[c] = fs
	}
	return sets
}

// flagName is the flag a CHARGESIM_* variable sets (cli.EnvName backwards).
func flagName(env string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, cli.EnvPrefix)), "_", "-")
}

// sameValue compares a rendered value with a flag default: durations and numbers by value.
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	if da, err := time.ParseDuration(a); err == nil {
		if db, err := time.ParseDuration(b); err == nil {
			return da == db
		}
	}
	if fa, err := strconv.ParseFloat(a, 64); err == nil {
		if fb, err := strconv.ParseFloat(b, 64); err == nil {
			return fa == fb
		}
	}
	return false
}

// Guard rail (issue 9): every variable the operator renders into a pod is a flag of that
// component (a renamed flag would otherwise be ignored silently), and what a simulation with
// an empty spec gets — the CRD's defaults, applied by the real API server — is the
// component's own default, except where the operator decides on purpose (listed below).
func TestRenderedEnvironmentMatchesComponentFlags(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "flags"))
	startPublisher(t, ns, "flags")

	// Settings the operator chooses rather than defaults: where the broker is, how pods log
	// (JSON for log collectors). Anything else that differs is a default out of step.
	operatorChoice := map[string]bool{"CHARGESIM_MQTT_URL": true, "CHARGESIM_HTTP_ADDR": true, "CHARGESIM_MQTT_ADDR": true}
	sets := componentFlags()
	for comp, obj := range map[string]client.Object{
		"publisher": &appsv1.StatefulSet{}, "listener": &appsv1.StatefulSet{}, "broker": &appsv1.Deployment{}, "api": &appsv1.Deployment{},
	} {
		fs := sets[comp]
		name := "flags-" + comp
		cm := configMapOf(t, ns, name, obj)
		var spec corev1.PodSpec
		switch o := getObj(t, ns, name, obj).(type) {
		case *appsv1.StatefulSet:
			spec = o.Spec.Template.Spec
		case *appsv1.Deployment:
			spec = o.Spec.Template.Spec
		}
		env := map[string]string{}
		for k, v := range cm.Data {
			env[k] = v
		}
		for _, e := range spec.Containers[0].Env {
			env[e.Name] = e.Value
		}
		for k, v := range env {
			if !strings.HasPrefix(k, cli.EnvPrefix) {
				continue
			}
			f := fs.Lookup(flagName(k))
			if f == nil {
				t.Errorf("%s: the operator sets %s, but %s has no flag --%s", comp, k, comp, flagName(k))
				continue
			}
			if _, fromConfig := cm.Data[k]; !fromConfig || operatorChoice[k] {
				continue
			}
			if !sameValue(v, f.DefValue) {
				t.Errorf("%s: %s=%q for an empty spec (CRD default), but --%s defaults to %q", comp, k, v, f.Name, f.DefValue)
			}
		}
	}
}
