//go:build envtest

package controllers_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
)

const (
	annPhase = "chargesim.io/rotation-phase"
)

func credentials(t *testing.T, ns, sim string) *corev1.Secret {
	t.Helper()
	return getObj(t, ns, controllers.BrokerCredentialsName(sim), &corev1.Secret{})
}

func podSpecOf(t *testing.T, ns, name string, obj any) corev1.PodTemplateSpec {
	t.Helper()
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return getObj(t, ns, name, o).Spec.Template
	case *appsv1.StatefulSet:
		return getObj(t, ns, name, o).Spec.Template
	}
	t.Fatalf("%T", obj)
	return corev1.PodTemplateSpec{}
}

// TestBrokerCredentialsGenerated: a managed broker gets an owned credentials Secret with a
// random password; broker, publisher and listener reference it, the API does not.
func TestBrokerCredentialsGenerated(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "auth"))
	createSim(t, simulation(ns, "auth2"))
	startPublisher(t, ns, "auth")
	sim := getSim(t, ns, "auth")
	sec := credentials(t, ns, "auth")
	assertOwned(t, sec, sim)
	pw := string(sec.Data[controllers.CredentialsPasswordKey])
	if string(sec.Data[controllers.CredentialsUsernameKey]) == "" || len(pw) < 40 ||
		string(sec.Data[controllers.CredentialsAcceptedKey]) != pw+"\n" {
		t.Fatalf("credentials: username %q, password of %d characters, accepted %d bytes",
			sec.Data[controllers.CredentialsUsernameKey], len(pw), len(sec.Data[controllers.CredentialsAcceptedKey]))
	}
	if other := credentials(t, ns, "auth2"); string(other.Data[controllers.CredentialsPasswordKey]) == pw {
		t.Fatal("two simulations got the same password")
	}

	name := sec.Name
	for _, w := range []struct {
		name string
		obj  any
		want bool
	}{
		{"auth-broker", &appsv1.Deployment{}, true},
		{"auth-publisher", &appsv1.StatefulSet{}, true},
		{"auth-listener", &appsv1.StatefulSet{}, true},
		{"auth-api", &appsv1.Deployment{}, false},
	} {
		b, err := json.Marshal(podSpecOf(t, ns, w.name, w.obj))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(b), `"`+name+`"`); got != w.want {
			t.Errorf("%s references %s: %v, want %v", w.name, name, got, w.want)
		}
		if strings.Contains(string(b), pw) {
			t.Errorf("%s carries the password itself in its spec", w.name)
		}
	}
	env := envOf(podSpecOf(t, ns, "auth-broker", &appsv1.Deployment{}).Spec.Containers[0])
	if env["CHARGESIM_USERNAME"].ValueFrom == nil || env["CHARGESIM_PASSWORD_FILE"].Value == "" {
		t.Errorf("broker runs without authentication: %+v", env)
	}

	// Deleted by hand: recreated at once (the Secret watch), with a new password.
	if err := k8s.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, "credentials recreated", func() error {
		s := &corev1.Secret{}
		if err := k8s.Get(ctx, key(ns, name), s); err != nil {
			return err
		}
		if s.UID == sec.UID {
			return errors.New("still the old one")
		}
		return nil
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("deleted credentials recreated after %s", d)
	}
}

// TestBrokerCredentialsNameConflict: a Secret of that name the simulation does not control is
// never overwritten; the simulation is Stalled with NameConflict.
func TestBrokerCredentialsNameConflict(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	mine := createSecret(t, ns, controllers.BrokerCredentialsName("taken"), map[string]string{"password": "users-own"})
	createSim(t, simulation(ns, "taken"))
	sim := waitCondition(t, ns, "taken", v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonNameConflict)
	if c := sim.Status.Conditions; !strings.Contains(fmt.Sprint(c), "Secret "+mine.Name) {
		t.Errorf("conditions do not name the Secret: %+v", c)
	}
	got := credentials(t, ns, "taken")
	if string(got.Data["password"]) != "users-own" || len(got.OwnerReferences) != 0 || got.ResourceVersion != mine.ResourceVersion {
		t.Errorf("the user's Secret was touched: %+v", got)
	}
}

// TestBrokerCredentialsRotation drives a rotation: the broker first accepts both passwords
// (nothing rolls), then the clients roll onto the new one, and once they have rolled out the
// old one is dropped. The broker's pod template never changes: its queues stay.
func TestBrokerCredentialsRotation(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "rot"))
	startPublisher(t, ns, "rot")
	markReady(t, ns, "rot")
	waitCondition(t, ns, "rot", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	old := string(credentials(t, ns, "rot").Data[controllers.CredentialsPasswordKey])
	hashes := func() map[string]string {
		return map[string]string{
			"broker":    hashOf(t, ns, "rot-broker", &appsv1.Deployment{}),
			"publisher": hashOf(t, ns, "rot-publisher", &appsv1.StatefulSet{}),
			"listener":  hashOf(t, ns, "rot-listener", &appsv1.StatefulSet{}),
			"api":       hashOf(t, ns, "rot-api", &appsv1.Deployment{}),
		}
	}
	before := hashes()
	brokerGen := getObj(t, ns, "rot-broker", &appsv1.Deployment{}).Generation

	updateSim(t, ns, "rot", func(s *v1alpha1.ChargerSimulation) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[controllers.AnnotationRotateBrokerCredentials] = "2026-12-03"
	})
	var newPW string
	eventually(t, "phase 1: both accepted", func() error {
		s := credentials(t, ns, "rot")
		lines := strings.Split(strings.TrimSpace(string(s.Data[controllers.CredentialsAcceptedKey])), "\n")
		if s.Annotations[annPhase] != "accepting-both" || len(lines) != 2 {
			return fmt.Errorf("phase %q, %d accepted", s.Annotations[annPhase], len(lines))
		}
		if lines[1] != old || lines[0] == old || string(s.Data[controllers.CredentialsPasswordKey]) != old {
			return errors.New("accepted passwords are not new + old, or the clients' password changed early")
		}
		newPW = lines[0]
		return nil
	})
	if h := hashes(); h["publisher"] != before["publisher"] || h["listener"] != before["listener"] || h["broker"] != before["broker"] {
		t.Fatalf("something rolled before the broker could know the new password: %v → %v", before, h)
	}

	eventually(t, "phase 2: clients switched", func() error {
		s := credentials(t, ns, "rot")
		if s.Annotations[annPhase] != "clients-switched" || string(s.Data[controllers.CredentialsPasswordKey]) != newPW {
			return fmt.Errorf("phase %q", s.Annotations[annPhase])
		}
		return nil
	})
	eventually(t, "clients roll", func() error {
		h := hashes()
		if h["publisher"] == before["publisher"] || h["listener"] == before["listener"] {
			return fmt.Errorf("hashes %v", h)
		}
		if h["broker"] != before["broker"] || h["api"] != before["api"] {
			return fmt.Errorf("broker or API rolled: %v → %v", before, h)
		}
		return nil
	})
	// Until the clients have rolled out, the old password stays accepted.
	time.Sleep(2 * time.Second)
	if s := credentials(t, ns, "rot"); !strings.Contains(string(s.Data[controllers.CredentialsAcceptedKey]), old) {
		t.Fatal("old password dropped before the clients rolled out")
	}
	markStatefulSetReady(t, ns, "rot-publisher")
	markStatefulSetReady(t, ns, "rot-listener")
	eventually(t, "phase 3: only the new password", func() error {
		s := credentials(t, ns, "rot")
		if _, ok := s.Annotations[annPhase]; ok || string(s.Data[controllers.CredentialsAcceptedKey]) != newPW+"\n" {
			return fmt.Errorf("phase %q", s.Annotations[annPhase])
		}
		return nil
	})
	eventually(t, "CredentialsRotated event", func() error {
		if len(events(t, ns, "rot", "CredentialsRotated")) == 0 {
			return errors.New("none")
		}
		return nil
	})
	if g := getObj(t, ns, "rot-broker", &appsv1.Deployment{}).Generation; g != brokerGen {
		t.Errorf("the broker Deployment changed during the rotation (generation %d → %d)", brokerGen, g)
	}
	waitCondition(t, ns, "rot", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	// The same token again rotates nothing.
	time.Sleep(credentialPropagation)
	if s := credentials(t, ns, "rot"); string(s.Data[controllers.CredentialsPasswordKey]) != newPW {
		t.Error("rotated again without a new token")
	}
}

// TestExternalBrokerNoGeneratedCredentials: with the user's broker nothing is generated and no
// broker NetworkPolicy is rendered.
func TestExternalBrokerNoGeneratedCredentials(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSecret(t, ns, "mqtt", map[string]string{"username": "u", "password": "p"})
	sim := simulation(ns, "byob")
	sim.Spec.Broker = v1alpha1.BrokerSpec{URL: "tcp://mosquitto:1883", CredentialsSecretRef: &v1alpha1.CredentialsSecretRef{Name: "mqtt"}}
	createSim(t, sim)
	lst := podSpecOf(t, ns, "byob-listener", &appsv1.StatefulSet{})
	if u := envOf(lst.Spec.Containers[0])["CHARGESIM_MQTT_USERNAME"]; u.ValueFrom == nil || u.ValueFrom.SecretKeyRef.Name != "mqtt" {
		t.Errorf("listener username %+v", u)
	}
	if err := k8s.Get(ctx, key(ns, controllers.BrokerCredentialsName("byob")), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("credentials generated for an external broker: %v", err)
	}
	if err := k8s.Get(ctx, key(ns, "byob-broker"), &networkingv1.NetworkPolicy{}); !apierrors.IsNotFound(err) {
		t.Errorf("broker NetworkPolicy for an external broker: %v", err)
	}
}

// TestNetworkPolicyRendered: the broker's policy is owned and selects the broker; apiFrom adds
// the API's; enabled=false removes both.
func TestNetworkPolicyRendered(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "np"))
	sim := getSim(t, ns, "np")
	pol := getObj(t, ns, "np-broker", &networkingv1.NetworkPolicy{})
	assertOwned(t, pol, sim)
	if pol.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] != "broker" || len(pol.Spec.Ingress) != 2 ||
		pol.Spec.Ingress[0].Ports[0].Port.IntValue() != 1883 || len(pol.Spec.Ingress[0].From) != 1 {
		t.Fatalf("policy %+v", pol.Spec)
	}
	if err := k8s.Get(ctx, key(ns, "np-api"), &networkingv1.NetworkPolicy{}); !apierrors.IsNotFound(err) {
		t.Errorf("API policy without apiFrom: %v", err)
	}
	peer := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}}}
	updateSim(t, ns, "np", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.NetworkPolicy.APIFrom = []networkingv1.NetworkPolicyPeer{peer}
		s.Spec.NetworkPolicy.MetricsFrom = []networkingv1.NetworkPolicyPeer{peer}
	})
	api := getObj(t, ns, "np-api", &networkingv1.NetworkPolicy{})
	assertOwned(t, api, sim)
	eventually(t, "metricsFrom applied", func() error {
		p := &networkingv1.NetworkPolicy{}
		if err := k8s.Get(ctx, key(ns, "np-broker"), p); err != nil {
			return err
		}
		if len(p.Spec.Ingress) != 2 || len(p.Spec.Ingress[1].From) != 1 || p.Spec.Ingress[1].From[0].NamespaceSelector == nil {
			return fmt.Errorf("metrics rule %+v", p.Spec.Ingress)
		}
		return nil
	})
	updateSim(t, ns, "np", func(s *v1alpha1.ChargerSimulation) { s.Spec.NetworkPolicy.Enabled = ptr.To(false) })
	eventually(t, "policies removed", func() error {
		for _, n := range []string{"np-broker", "np-api"} {
			if err := k8s.Get(ctx, key(ns, n), &networkingv1.NetworkPolicy{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s: %w", n, err)
			}
		}
		return nil
	})
}

// TestSecretNoticedAtOnce: a simulation degraded for a while (its retry backoff has grown to
// several seconds) recovers within a couple of seconds of its missing Secret being created:
// the Secret's metadata watch, not the backoff, brings the reconcile.
func TestSecretNoticedAtOnce(t *testing.T) {
	ns := newNamespace(t)
	createSim(t, simulation(ns, "late"))
	waitCondition(t, ns, "late", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonSecretNotFound)
	// Retries of a degraded simulation come 1, 2, 4, 8, 16, 32 s after it became degraded:
	// created at 17 s, the Secret would wait about 15 s for the next one.
	time.Sleep(17 * time.Second)
	start := time.Now()
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	waitCondition(t, ns, "late", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a created Secret was noticed after %s", d)
	}
	t.Logf("created Secret noticed after %s", time.Since(start).Round(time.Millisecond))

	// Rotated content (a new URI) rolls the pods at once too.
	markReady(t, ns, "late")
	before := hashOf(t, ns, "late-listener", &appsv1.StatefulSet{})
	sec := &corev1.Secret{}
	if err := k8s.Get(ctx, key(ns, "mongo"), sec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	sec.Data = map[string][]byte{"uri": []byte("mongodb://mongo-2:27017")}
	if err := k8s.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	eventually(t, "listener rolls", func() error {
		if hashOf(t, ns, "late-listener", &appsv1.StatefulSet{}) == before {
			return errors.New("same hash")
		}
		return nil
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a changed Secret was noticed after %s", d)
	}
}

// TestSecretCacheHoldsNoData: every list and watch of Secrets the operator has made asked for
// metadata only (PartialObjectMetadata): no informer holds Secret data. Single GETs (reading a
// referenced Secret, uncached) and the writes of the generated credentials are the only other
// requests.
func TestSecretCacheHoldsNoData(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "meta"))
	credentials(t, ns, "meta")
	var watches int
	for _, r := range recordedSecretRequests() {
		list := r.method == "GET" && (strings.HasSuffix(strings.SplitN(r.url, "?", 2)[0], "/secrets") || strings.Contains(r.url, "watch=true"))
		if !list {
			continue
		}
		if !strings.Contains(r.accept, "as=PartialObjectMetadata") {
			t.Errorf("the operator listed or watched Secrets with their data: %s %s (Accept %q)", r.method, r.url, r.accept)
		}
		if strings.Contains(r.url, "watch=true") {
			watches++
		}
	}
	if watches == 0 {
		t.Error("no metadata watch of Secrets was made")
	}
}
