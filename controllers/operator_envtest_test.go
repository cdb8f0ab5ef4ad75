//go:build envtest

package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
)

var ctx = context.Background()

func createSecret(t *testing.T, ns, name string, data map[string]string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := k8s.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func simulation(ns, name string) *v1alpha1.ChargerSimulation {
	return &v1alpha1.ChargerSimulation{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.ChargerSimulationSpec{
			Mongo: v1alpha1.MongoSpec{URISecretRef: v1alpha1.URISecretRef{Name: "mongo"}},
		},
	}
}

func createSim(t *testing.T, sim *v1alpha1.ChargerSimulation) {
	t.Helper()
	if err := k8s.Create(ctx, sim); err != nil {
		t.Fatalf("create %s: %v", sim.Name, err)
	}
}

func getSim(t *testing.T, ns, name string) *v1alpha1.ChargerSimulation {
	t.Helper()
	sim := &v1alpha1.ChargerSimulation{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sim); err != nil {
		t.Fatal(err)
	}
	return sim
}

func updateSim(t *testing.T, ns, name string, mutate func(*v1alpha1.ChargerSimulation)) {
	t.Helper()
	eventually(t, "update "+name, func() error {
		sim := getSim(t, ns, name)
		mutate(sim)
		return k8s.Update(ctx, sim)
	})
}

// waitCondition waits until the simulation's condition has status and reason for its current
// generation.
func waitCondition(t *testing.T, ns, name, typ string, status metav1.ConditionStatus, reason string) *v1alpha1.ChargerSimulation {
	t.Helper()
	var sim *v1alpha1.ChargerSimulation
	eventually(t, fmt.Sprintf("%s %s=%s/%s", name, typ, status, reason), func() error {
		sim = getSim(t, ns, name)
		c := meta.FindStatusCondition(sim.Status.Conditions, typ)
		switch {
		case sim.Status.ObservedGeneration != sim.Generation:
			return fmt.Errorf("observedGeneration %d, generation %d", sim.Status.ObservedGeneration, sim.Generation)
		case c == nil:
			return errors.New("no condition")
		case c.Status != status || c.Reason != reason:
			return fmt.Errorf("condition is %s/%s: %s", c.Status, c.Reason, c.Message)
		case c.ObservedGeneration != sim.Generation:
			return fmt.Errorf("condition observedGeneration %d", c.ObservedGeneration)
		}
		return nil
	})
	return sim
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func getObj[T client.Object](t *testing.T, ns, name string, obj T) T {
	t.Helper()
	eventually(t, fmt.Sprintf("get %T %s", obj, name), func() error { return k8s.Get(ctx, key(ns, name), obj) })
	return obj
}

// configMapOf is the ConfigMap the pods of workload name read (envFrom).
func configMapOf(t *testing.T, ns, name string, obj client.Object) *corev1.ConfigMap {
	t.Helper()
	var spec corev1.PodSpec
	switch o := getObj(t, ns, name, obj).(type) {
	case *appsv1.Deployment:
		spec = o.Spec.Template.Spec
	case *appsv1.StatefulSet:
		spec = o.Spec.Template.Spec
	default:
		t.Fatalf("%s: %T has no pod template", name, obj)
	}
	from := spec.Containers[0].EnvFrom
	if len(from) != 1 || from[0].ConfigMapRef == nil {
		t.Fatalf("%s: envFrom %+v", name, from)
	}
	return getObj(t, ns, from[0].ConfigMapRef.Name, &corev1.ConfigMap{})
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// markReady plays the Deployment and StatefulSet controllers: every workload of the simulation
// reports its spec replicas updated, ready and available for its current generation.
func markReady(t *testing.T, ns, name string) {
	t.Helper()
	for _, c := range []string{"broker", "api"} {
		markDeploymentReady(t, ns, name+"-"+c)
	}
	for _, c := range []string{"listener", "publisher"} {
		markStatefulSetReady(t, ns, name+"-"+c)
	}
}

func markDeploymentReady(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "mark "+name+" ready", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, name), d); err != nil {
			return err
		}
		n := *d.Spec.Replicas
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		return k8s.Status().Update(ctx, d)
	})
}

func markStatefulSetReady(t *testing.T, ns, name string) {
	t.Helper()
	setStatefulSetReady(t, ns, name, -1)
}

// setStatefulSetReady reports ready of the StatefulSet's replicas ready and available, all of
// them on the current revision (ready < 0: all of them).
func setStatefulSetReady(t *testing.T, ns, name string, ready int32) {
	t.Helper()
	eventually(t, "mark "+name+" ready", func() error {
		s := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, name), s); err != nil {
			return err
		}
		n := *s.Spec.Replicas
		r := ready
		if r < 0 {
			r = n
		}
		rev := fmt.Sprintf("%s-%d", name, s.Generation)
		s.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: r,
			AvailableReplicas: r, CurrentReplicas: n, CurrentRevision: rev, UpdateRevision: rev}
		return k8s.Status().Update(ctx, s)
	})
}

// startPublisher reports the listener ready, which lets the operator create the publisher of a
// new simulation, and waits for the publisher StatefulSet.
func startPublisher(t *testing.T, ns, name string) {
	t.Helper()
	markStatefulSetReady(t, ns, name+"-listener")
	getObj(t, ns, name+"-publisher", &appsv1.StatefulSet{})
}

func assertOwned(t *testing.T, obj client.Object, sim *v1alpha1.ChargerSimulation) {
	t.Helper()
	refs := obj.GetOwnerReferences()
	if len(refs) != 1 {
		t.Fatalf("%s: %d owner references", obj.GetName(), len(refs))
	}
	r := refs[0]
	if r.UID != sim.UID || r.Kind != "ChargerSimulation" || r.APIVersion != "chargesim.io/v1alpha1" ||
		r.Controller == nil || !*r.Controller || r.BlockOwnerDeletion == nil || !*r.BlockOwnerDeletion {
		t.Fatalf("%s: owner reference %+v", obj.GetName(), r)
	}
	l := obj.GetLabels()
	if l[controllers.LabelManagedBy] != controllers.ManagedByValue || l[controllers.LabelSimulation] != sim.Name {
		t.Fatalf("%s: labels %v", obj.GetName(), l)
	}
}

func TestCreateRendersChildren(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "fleet")
	sim.Spec.Chargers = 100
	sim.Spec.TimeScale = ptr.To(60.0)
	sim.Spec.Publisher.Replicas = 2
	sim.Spec.API.Port = 80
	sim.Spec.Listener.BatchSize = 250
	createSim(t, sim)
	startPublisher(t, ns, "fleet")
	sim = waitCondition(t, ns, "fleet", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)

	pcm := configMapOf(t, ns, "fleet-publisher", &appsv1.StatefulSet{})
	lcm := configMapOf(t, ns, "fleet-listener", &appsv1.StatefulSet{})
	for _, cm := range []*corev1.ConfigMap{pcm, lcm} {
		assertOwned(t, cm, sim)
		if cm.Immutable == nil || !*cm.Immutable {
			t.Errorf("ConfigMap %s is not immutable", cm.Name)
		}
	}
	for cm, want := range map[*corev1.ConfigMap]map[string]string{
		pcm: {"CHARGESIM_MQTT_URL": "tcp://fleet-broker." + ns + ".svc:1883", "CHARGESIM_CHARGERS": "100",
			"CHARGESIM_TIME_SCALE": "60", "CHARGESIM_SESSION_INTERVAL": "1m0s", "CHARGESIM_SESSION_JITTER": "0.2"},
		lcm: {"CHARGESIM_BATCH_SIZE": "250", "CHARGESIM_MONGO_DATABASE": "chargesim"},
	} {
		for k, v := range want {
			if cm.Data[k] != v {
				t.Errorf("ConfigMap %s: %s = %q, want %q", cm.Name, k, cm.Data[k], v)
			}
		}
	}

	sts := getObj(t, ns, "fleet-publisher", &appsv1.StatefulSet{})
	assertOwned(t, sts, sim)
	if *sts.Spec.Replicas != 2 || sts.Spec.ServiceName != "fleet-publisher" {
		t.Errorf("publisher replicas %d service %q", *sts.Spec.Replicas, sts.Spec.ServiceName)
	}
	pc := sts.Spec.Template.Spec.Containers[0]
	penv := envOf(pc)
	if penv["CHARGESIM_SHARD_COUNT"].Value != "2" ||
		penv["CHARGESIM_SHARD_INDEX"].ValueFrom.FieldRef.FieldPath != "metadata.labels['apps.kubernetes.io/pod-index']" {
		t.Errorf("publisher shard env %+v %+v", penv["CHARGESIM_SHARD_COUNT"], penv["CHARGESIM_SHARD_INDEX"])
	}
	if pc.Image != testImage || strings.Join(pc.Args, " ") != "publisher" {
		t.Errorf("publisher image %q args %v", pc.Image, pc.Args)
	}

	lsts := getObj(t, ns, "fleet-listener", &appsv1.StatefulSet{})
	assertOwned(t, lsts, sim)
	if *lsts.Spec.Replicas != 1 || lsts.Spec.ServiceName != "fleet-listener" || lsts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("listener replicas %d service %q policy %q", *lsts.Spec.Replicas, lsts.Spec.ServiceName, lsts.Spec.PodManagementPolicy)
	}
	// Each listener pod's MQTT client ID (the key of its persistent session) is its stable
	// StatefulSet pod name, qualified by the namespace.
	lenv := envOf(lsts.Spec.Template.Spec.Containers[0])
	if lenv["CHARGESIM_MQTT_CLIENT_ID"].Value != "chargesim-"+ns+"-$(POD_NAME)" || lenv["POD_NAME"].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("listener client ID %+v from %+v", lenv["CHARGESIM_MQTT_CLIENT_ID"], lenv["POD_NAME"])
	}
	// Its own subscription group: another simulation on the same broker and topic prefix does
	// not take a share of this one's sessions.
	if g := lenv["CHARGESIM_SHARE_GROUP"].Value; g != "chargesim-"+ns+"-fleet" {
		t.Errorf("listener share group %q", g)
	}
	templates := map[string]corev1.PodTemplateSpec{"listener": lsts.Spec.Template, "publisher": sts.Spec.Template}
	for _, c := range []string{"broker", "api"} {
		d := getObj(t, ns, "fleet-"+c, &appsv1.Deployment{})
		assertOwned(t, d, sim)
		templates[c] = d.Spec.Template
	}
	for c, tmpl := range templates {
		ps := tmpl.Spec
		ctr := ps.Containers[0]
		if strings.Join(ctr.Args, " ") != c || ctr.Image != testImage {
			t.Errorf("%s: args %v image %s", c, ctr.Args, ctr.Image)
		}
		if !*ps.SecurityContext.RunAsNonRoot || *ps.SecurityContext.RunAsUser != 65532 ||
			ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
			*ps.AutomountServiceAccountToken {
			t.Errorf("%s: pod security %+v automount %v", c, ps.SecurityContext, *ps.AutomountServiceAccountToken)
		}
		sc := ctr.SecurityContext
		if *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s: container security %+v", c, sc)
		}
		if ctr.LivenessProbe.HTTPGet.Path != "/healthz" || ctr.ReadinessProbe.HTTPGet.Path != "/readyz" ||
			ctr.LivenessProbe.HTTPGet.Port.StrVal != ctr.Ports[0].Name || ctr.Ports[0].Name != wantPortName(c) {
			t.Errorf("%s: probes", c)
		}
		if ctr.Resources.Requests.Cpu().IsZero() {
			t.Errorf("%s: no cpu request", c)
		}
		if tmpl.Annotations[controllers.AnnotationConfigHash] == "" {
			t.Errorf("%s: no config hash annotation", c)
		}
	}
	if e := envOf(lsts.Spec.Template.Spec.Containers[0])["CHARGESIM_MONGO_URI_FILE"]; e.Value != "/var/run/secrets/chargesim/mongo-uri/uri" {
		t.Errorf("listener mongo uri file %q", e.Value)
	}
	// The managed broker's generated password and the store's URI.
	if v := lsts.Spec.Template.Spec.Volumes; len(v) != 2 || v[0].Secret.SecretName != controllers.BrokerCredentialsName("fleet") ||
		v[0].Secret.Items[0].Key != controllers.CredentialsPasswordKey || v[1].Secret.SecretName != "mongo" || v[1].Secret.Items[0].Key != "uri" {
		t.Errorf("listener volumes %+v", v)
	}
	for svc, port := range map[string]int32{"fleet-broker": 1883, "fleet-api": 80, "fleet-publisher": 9090, "fleet-listener": 9090} {
		s := getObj(t, ns, svc, &corev1.Service{})
		assertOwned(t, s, sim)
		if s.Spec.Ports[0].Port != port {
			t.Errorf("%s: port %d, want %d", svc, s.Spec.Ports[0].Port, port)
		}
		if headless := s.Spec.ClusterIP == corev1.ClusterIPNone; headless != (svc == "fleet-publisher" || svc == "fleet-listener") {
			t.Errorf("%s: clusterIP %q", svc, s.Spec.ClusterIP)
		}
	}

	st := sim.Status
	if st.SessionsPerSecond != "100" || st.APIAddress != "fleet-api."+ns+".svc:80" || st.BrokerURL != "tcp://fleet-broker."+ns+".svc:1883" {
		t.Errorf("status rate %q api %q broker %q", st.SessionsPerSecond, st.APIAddress, st.BrokerURL)
	}
	if st.Publisher.DesiredReplicas != 2 || st.Broker == nil || st.Publisher.Selector == "" {
		t.Errorf("status components %+v broker %+v", st.Publisher, st.Broker)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionProgressing) ||
		!meta.IsStatusConditionFalse(st.Conditions, v1alpha1.ConditionDegraded) {
		t.Errorf("conditions %+v", st.Conditions)
	}
}

func hashOf(t *testing.T, ns, name string, obj client.Object) string {
	t.Helper()
	getObj(t, ns, name, obj)
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Template.Annotations[controllers.AnnotationConfigHash]
	case *appsv1.StatefulSet:
		return o.Spec.Template.Annotations[controllers.AnnotationConfigHash]
	}
	t.Fatalf("no template in %T", obj)
	return ""
}

func TestUpdateRollsPods(t *testing.T) {
	ns := newNamespace(t)
	secret := createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "roll"))
	startPublisher(t, ns, "roll")
	waitCondition(t, ns, "roll", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)
	pub0 := hashOf(t, ns, "roll-publisher", &appsv1.StatefulSet{})
	lis0 := hashOf(t, ns, "roll-listener", &appsv1.StatefulSet{})
	api0 := hashOf(t, ns, "roll-api", &appsv1.Deployment{})

	// A publisher setting rolls the publisher only.
	updateSim(t, ns, "roll", func(s *v1alpha1.ChargerSimulation) { s.Spec.TimeScale = ptr.To(30.0) })
	eventually(t, "publisher rolled", func() error {
		if h := hashOf(t, ns, "roll-publisher", &appsv1.StatefulSet{}); h == pub0 {
			return errors.New("publisher template hash unchanged")
		}
		return nil
	})
	cm := configMapOf(t, ns, "roll-publisher", &appsv1.StatefulSet{})
	if cm.Data["CHARGESIM_TIME_SCALE"] != "30" {
		t.Errorf("ConfigMap time scale %q", cm.Data["CHARGESIM_TIME_SCALE"])
	}
	waitCondition(t, ns, "roll", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)
	if hashOf(t, ns, "roll-listener", &appsv1.StatefulSet{}) != lis0 || hashOf(t, ns, "roll-api", &appsv1.Deployment{}) != api0 {
		t.Error("a publisher setting rolled the listener or API")
	}
	pub1 := hashOf(t, ns, "roll-publisher", &appsv1.StatefulSet{})

	// A rotated Secret rolls its readers once the operator looks again (resync or any event).
	secret.StringData = map[string]string{"uri": "mongodb://other:27017"}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	updateSim(t, ns, "roll", func(s *v1alpha1.ChargerSimulation) {
		s.Annotations = map[string]string{"test/poke": "1"}
	})
	// The publisher reads the URI too (run records for the audit).
	eventually(t, "publisher, listener and API rolled", func() error {
		if hashOf(t, ns, "roll-listener", &appsv1.StatefulSet{}) == lis0 || hashOf(t, ns, "roll-api", &appsv1.Deployment{}) == api0 ||
			hashOf(t, ns, "roll-publisher", &appsv1.StatefulSet{}) == pub1 {
			return errors.New("publisher/listener/API template hash unchanged after Secret rotation")
		}
		return nil
	})

	// Replicas change the shard count: every publisher pod restarts with its new share.
	updateSim(t, ns, "roll", func(s *v1alpha1.ChargerSimulation) { s.Spec.Publisher.Replicas = 3 })
	eventually(t, "shard count 3", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "roll-publisher"), sts); err != nil {
			return err
		}
		if got := envOf(sts.Spec.Template.Spec.Containers[0])["CHARGESIM_SHARD_COUNT"].Value; got != "3" || *sts.Spec.Replicas != 3 {
			return fmt.Errorf("shard count %q replicas %d", got, *sts.Spec.Replicas)
		}
		return nil
	})
}

func TestInvalidRejected(t *testing.T) {
	ns := newNamespace(t)
	for _, tc := range []struct {
		name   string
		mutate func(*v1alpha1.ChargerSimulation)
		want   string
	}{
		{"zero time scale", func(s *v1alpha1.ChargerSimulation) { s.Spec.TimeScale = ptr.To(0.0) }, "timeScale must be greater than 0"},
		{"jitter above 1", func(s *v1alpha1.ChargerSimulation) { s.Spec.SessionJitter = ptr.To(1.5) }, "sessionJitter is a fraction of the session interval and must be between 0 and 1"},
		{"negative dc share", func(s *v1alpha1.ChargerSimulation) { s.Spec.Profile.DCShare = ptr.To(-0.1) }, "dcShare is the share of DC chargers"},
		{"interval too short", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.SessionInterval = &metav1.Duration{Duration: 500_000_000}
		}, "sessionInterval must be a duration of at least 1s"},
		{"flush interval too short", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Listener.FlushInterval = &metav1.Duration{Duration: 1_000_000}
		}, "listener.flushInterval must be a duration between 10ms and 1m"},
		{"more publishers than chargers", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Chargers = 2
			s.Spec.Publisher.Replicas = 3
		}, "spec.chargers must be at least spec.publisher.replicas"},
		{"managed broker with credentials", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Broker.CredentialsSecretRef = &v1alpha1.CredentialsSecretRef{Name: "mqtt"}
		}, "a managed broker (no broker.url) takes no tls or credentialsSecretRef"},
		{"managed broker with TLS", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Broker.TLS = &v1alpha1.BrokerTLS{CASecretRef: v1alpha1.CASecretRef{Name: "ca"}}
		}, "a managed broker (no broker.url) takes no tls or credentialsSecretRef"},
		{"external broker with managed settings", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Broker.URL = "tcp://mosquitto:1883"
			s.Spec.Broker.Managed = &v1alpha1.ManagedBrokerSpec{}
		}, "broker.managed configures the operator's own broker"},
		{"broker url scheme", func(s *v1alpha1.ChargerSimulation) { s.Spec.Broker.URL = "http://mosquitto" }, "broker.url must be <scheme>://<host>[:<port>]"},
		{"wildcard topic prefix", func(s *v1alpha1.ChargerSimulation) { s.Spec.Broker.TopicPrefix = "lab/#" }, "topicPrefix must not contain MQTT wildcards"},
		{"bad database", func(s *v1alpha1.ChargerSimulation) { s.Spec.Mongo.Database = "a.b" }, "mongo.database must not contain"},
		{"missing mongo secret name", func(s *v1alpha1.ChargerSimulation) { s.Spec.Mongo.URISecretRef.Name = "" }, "spec.mongo.uriSecretRef.name"},
		{"long name", func(s *v1alpha1.ChargerSimulation) { s.Name = strings.Repeat("a", 43) }, "metadata.name must be at most 42 characters"},
		{"name starting with a digit", func(s *v1alpha1.ChargerSimulation) { s.Name = "1fleet" }, "metadata.name must be at most 42 characters"},
		{"too many chargers", func(s *v1alpha1.ChargerSimulation) { s.Spec.Chargers = 2_000_000 }, "spec.chargers: Invalid value"},
		// The minimum speaks, not the replicas rule (the defaulted publisher.replicas is 1).
		{"negative chargers", func(s *v1alpha1.ChargerSimulation) { s.Spec.Chargers = -5 }, "spec.chargers in body should be greater than or equal to 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := simulation(ns, "invalid")
			tc.mutate(sim)
			err := k8s.Create(ctx, sim)
			if err == nil {
				_ = k8s.Delete(ctx, sim)
				t.Fatalf("accepted; want refusal with %q", tc.want)
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refused with %v; want Invalid with %q", err, tc.want)
			}
			// Every message names the field and says only what is wrong.
			for _, bad := range []string{"<nil>", "must be at least spec.publisher.replicas"} {
				if bad != tc.want && !strings.Contains(tc.want, "publisher.replicas") && strings.Contains(err.Error(), bad) {
					t.Errorf("message %q contains %q", err.Error(), bad)
				}
			}
		})
	}

	// The scale subresource goes through the same validation.
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "scaled")
	sim.Spec.Chargers = 4
	createSim(t, sim)
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, sim, scale); err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 5
	err := k8s.SubResource("scale").Update(ctx, sim, client.WithSubResourceBody(scale))
	if err == nil || !strings.Contains(err.Error(), "spec.chargers must be at least spec.publisher.replicas") {
		t.Fatalf("scaling 4 chargers to 5 publishers: %v", err)
	}
}

func TestScaleSubresource(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "scale"))
	waitCondition(t, ns, "scale", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)
	markReady(t, ns, "scale")
	waitCondition(t, ns, "scale", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	sim := getSim(t, ns, "scale")
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, sim, scale); err != nil {
		t.Fatal(err)
	}
	if scale.Spec.Replicas != 1 || scale.Status.Replicas != 1 || !strings.Contains(scale.Status.Selector, "app.kubernetes.io/component=publisher") {
		t.Fatalf("scale %+v", scale)
	}
	scale.Spec.Replicas = 3
	if err := k8s.SubResource("scale").Update(ctx, sim, client.WithSubResourceBody(scale)); err != nil {
		t.Fatal(err)
	}
	sim = waitCondition(t, ns, "scale", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)
	if sim.Status.Publisher.DesiredReplicas != 3 {
		t.Fatalf("publisher desired %d", sim.Status.Publisher.DesiredReplicas)
	}
	markReady(t, ns, "scale")
	sim = waitCondition(t, ns, "scale", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if sim.Status.Publisher.ReadyReplicas != 3 || sim.Status.Publisher.Replicas != 3 {
		t.Fatalf("publisher status %+v", sim.Status.Publisher)
	}
}

func TestStatusTracksReadiness(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "ready")
	sim.Spec.Listener.Replicas = 2
	createSim(t, sim)
	sim = waitCondition(t, ns, "ready", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady); !strings.Contains(c.Message, "listener 0/2 ready") {
		t.Errorf("Ready message %q", c.Message)
	}
	markReady(t, ns, "ready")
	sim = waitCondition(t, ns, "ready", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if !meta.IsStatusConditionFalse(sim.Status.Conditions, v1alpha1.ConditionProgressing) {
		t.Errorf("Progressing %+v", meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionProgressing))
	}
	if s := sim.Status.Listener; s.ReadyReplicas != 2 || s.DesiredReplicas != 2 {
		t.Errorf("listener status %+v", s)
	}

	// A pod of the API goes unready: the simulation is no longer Ready and says which.
	eventually(t, "api unready", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, "ready-api"), d); err != nil {
			return err
		}
		d.Status.ReadyReplicas, d.Status.AvailableReplicas = 0, 0
		return k8s.Status().Update(ctx, d)
	})
	sim = waitCondition(t, ns, "ready", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady); !strings.Contains(c.Message, "api 0/1 ready") {
		t.Errorf("Ready message %q", c.Message)
	}

	// A stuck rollout is Degraded.
	eventually(t, "api stalled", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, "ready-api"), d); err != nil {
			return err
		}
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
			Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "ready-api-1" has timed out progressing.`}}
		return k8s.Status().Update(ctx, d)
	})
	waitCondition(t, ns, "ready", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonRolloutStalled)
	markReady(t, ns, "ready")
	waitCondition(t, ns, "ready", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
}

func publisherExists(ns, name string) (bool, error) {
	err := k8s.Get(ctx, key(ns, name+"-publisher"), &appsv1.StatefulSet{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func TestPublisherWaitsForListener(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "wait")
	sim.Spec.Listener.Replicas = 2
	createSim(t, sim)

	// A new simulation: broker, listener and API are created, the publisher is not.
	sim = waitCondition(t, ns, "wait", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonWaitingForListener)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse ||
		c.Reason != v1alpha1.ReasonWaitingForListener || !strings.Contains(c.Message, "listener 0/2 ready") {
		t.Errorf("Ready %+v", c)
	}
	getObj(t, ns, "wait-listener", &appsv1.StatefulSet{})
	getObj(t, ns, "wait-api", &appsv1.Deployment{})
	if ok, err := publisherExists(ns, "wait"); ok || err != nil {
		t.Fatalf("publisher StatefulSet created before any listener was ready (%v)", err)
	}
	if p := sim.Status.Publisher; p.DesiredReplicas != 1 || p.Replicas != 0 || p.Selector == "" {
		t.Errorf("publisher status while waiting %+v", p)
	}

	// One ready listener of two is enough: the broker now has the subscription.
	setStatefulSetReady(t, ns, "wait-listener", 1)
	getObj(t, ns, "wait-publisher", &appsv1.StatefulSet{})
	waitCondition(t, ns, "wait", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)
	markReady(t, ns, "wait")
	waitCondition(t, ns, "wait", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	// Once the publisher exists, a listener outage does not hold it back: it is still updated
	// (the broker queues for the listeners' persistent sessions).
	setStatefulSetReady(t, ns, "wait-listener", 0)
	sim = waitCondition(t, ns, "wait", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady); !strings.Contains(c.Message, "listener 0/2 ready") {
		t.Errorf("Ready message %q", c.Message)
	}
	updateSim(t, ns, "wait", func(s *v1alpha1.ChargerSimulation) { s.Spec.Publisher.Replicas = 2 })
	eventually(t, "publisher scaled with no listener ready", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "wait-publisher"), sts); err != nil {
			return err
		}
		if *sts.Spec.Replicas != 2 {
			return fmt.Errorf("replicas %d", *sts.Spec.Replicas)
		}
		return nil
	})
	waitCondition(t, ns, "wait", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut)

	// A publisher deleted while no listener is ready is a new one: it waits again.
	if err := k8s.Delete(ctx, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wait-publisher"}}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "wait", v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonWaitingForListener)
	if ok, err := publisherExists(ns, "wait"); ok || err != nil {
		t.Fatalf("deleted publisher recreated with no listener ready (%v)", err)
	}
	setStatefulSetReady(t, ns, "wait-listener", 2)
	getObj(t, ns, "wait-publisher", &appsv1.StatefulSet{})
}

func TestSuspend(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	sim := simulation(ns, "pause")
	sim.Spec.Publisher.Replicas = 2
	createSim(t, sim)
	markReady(t, ns, "pause")
	waitCondition(t, ns, "pause", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	hash := hashOf(t, ns, "pause-publisher", &appsv1.StatefulSet{})

	updateSim(t, ns, "pause", func(s *v1alpha1.ChargerSimulation) { s.Spec.Suspend = true })
	eventually(t, "publisher scaled to zero", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "pause-publisher"), sts); err != nil {
			return err
		}
		if *sts.Spec.Replicas != 0 {
			return fmt.Errorf("replicas %d", *sts.Spec.Replicas)
		}
		return nil
	})
	markReady(t, ns, "pause")
	sim = waitCondition(t, ns, "pause", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonSuspended)
	if sim.Status.SessionsPerSecond != "0" || sim.Status.Publisher.DesiredReplicas != 0 {
		t.Errorf("suspended status rate %q publisher %+v", sim.Status.SessionsPerSecond, sim.Status.Publisher)
	}
	// Listener, API and broker keep running; the data stays.
	for _, c := range []string{"api", "broker"} {
		if d := getObj(t, ns, "pause-"+c, &appsv1.Deployment{}); *d.Spec.Replicas == 0 {
			t.Errorf("%s scaled to zero", c)
		}
	}
	if s := getObj(t, ns, "pause-listener", &appsv1.StatefulSet{}); *s.Spec.Replicas == 0 {
		t.Error("listener scaled to zero")
	}
	if h := hashOf(t, ns, "pause-publisher", &appsv1.StatefulSet{}); h != hash {
		t.Error("suspending changed the publisher pod template")
	}

	updateSim(t, ns, "pause", func(s *v1alpha1.ChargerSimulation) { s.Spec.Suspend = false })
	eventually(t, "publisher resumed", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "pause-publisher"), sts); err != nil {
			return err
		}
		if *sts.Spec.Replicas != 2 {
			return fmt.Errorf("replicas %d", *sts.Spec.Replicas)
		}
		return nil
	})
}

func TestDriftCorrected(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "drift"))
	startPublisher(t, ns, "drift")
	waitCondition(t, ns, "drift", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)

	// Someone edits a field the operator owns.
	eventually(t, "edit listener", func() error {
		d := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "drift-listener"), d); err != nil {
			return err
		}
		d.Spec.Template.Spec.Containers[0].Image = "evil:latest"
		d.Spec.Replicas = ptr.To[int32](5)
		return k8s.Update(ctx, d)
	})
	eventually(t, "listener restored", func() error {
		d := &appsv1.StatefulSet{}
		if err := k8s.Get(ctx, key(ns, "drift-listener"), d); err != nil {
			return err
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != testImage || *d.Spec.Replicas != 1 {
			return fmt.Errorf("image %q replicas %d", img, *d.Spec.Replicas)
		}
		return nil
	})

	// Someone deletes children.
	cmName := configMapOf(t, ns, "drift-api", &appsv1.Deployment{}).Name
	for _, obj := range []client.Object{
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "drift-api"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "drift-publisher"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: cmName}},
	} {
		old := getObj(t, ns, obj.GetName(), obj.DeepCopyObject().(client.Object))
		if err := k8s.Delete(ctx, obj); err != nil {
			t.Fatal(err)
		}
		eventually(t, "recreate "+obj.GetName(), func() error {
			cur := obj.DeepCopyObject().(client.Object)
			if err := k8s.Get(ctx, key(ns, obj.GetName()), cur); err != nil {
				return err
			}
			if cur.GetUID() == old.GetUID() {
				return errors.New("not yet deleted")
			}
			return nil
		})
	}

	// Someone strips the label the operator's cache selects on (the data of the immutable
	// ConfigMap cannot be edited).
	pubCM := configMapOf(t, ns, "drift-publisher", &appsv1.StatefulSet{}).Name
	eventually(t, "unlabel configmap", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, key(ns, pubCM), cm); err != nil {
			return err
		}
		delete(cm.Labels, controllers.LabelManagedBy)
		return k8s.Update(ctx, cm)
	})
	// The operator may restore the label between Get and Update: a Conflict, read again.
	eventually(t, "edit the data of the immutable configmap", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, key(ns, pubCM), cm); err != nil {
			return err
		}
		cm.Data["CHARGESIM_CHARGERS"] = "1"
		switch err := k8s.Update(ctx, cm); {
		case apierrors.IsConflict(err):
			return err
		case !apierrors.IsInvalid(err):
			t.Errorf("editing the data of an immutable ConfigMap: %v", err)
		}
		return nil
	})
	eventually(t, "configmap restored", func() error {
		cm := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, key(ns, pubCM), cm); err != nil {
			return err
		}
		if cm.Labels[controllers.LabelManagedBy] != controllers.ManagedByValue || cm.Data["CHARGESIM_CHARGERS"] != "10" {
			return fmt.Errorf("labels %v chargers %q", cm.Labels, cm.Data["CHARGESIM_CHARGERS"])
		}
		return nil
	})
}

// An operator before the listener StatefulSet left a listener Deployment of the same name: it
// is removed, the StatefulSet takes over.
func TestListenerDeploymentReplaced(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "upgraded"))
	sim := waitCondition(t, ns, "upgraded", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	sts := getObj(t, ns, "upgraded-listener", &appsv1.StatefulSet{})

	labels := map[string]string{}
	for k, v := range sts.Labels {
		labels[k] = v
	}
	old := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "upgraded-listener", Labels: labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(sim, v1alpha1.GroupVersion.WithKind("ChargerSimulation"))}},
		Spec: appsv1.DeploymentSpec{
			Selector: sts.Spec.Selector,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sts.Spec.Template.Labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "listener", Image: testImage}}},
			},
		},
	}
	if err := k8s.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	eventually(t, "old listener Deployment deleted", func() error {
		d := &appsv1.Deployment{}
		err := k8s.Get(ctx, key(ns, "upgraded-listener"), d)
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return err
		case d.DeletionTimestamp != nil:
			return nil
		}
		return errors.New("still there")
	})
	if cur := getObj(t, ns, "upgraded-listener", &appsv1.StatefulSet{}); cur.UID != sts.UID || cur.DeletionTimestamp != nil {
		t.Error("the listener StatefulSet was replaced or deleted along with the old Deployment")
	}
}

// writeCounter counts every write a client sends.
type writeCounter struct {
	client.Client
	writes atomic.Int64
}

func (w *writeCounter) Create(ctx context.Context, o client.Object, opts ...client.CreateOption) error {
	w.writes.Add(1)
	return w.Client.Create(ctx, o, opts...)
}

func (w *writeCounter) Update(ctx context.Context, o client.Object, opts ...client.UpdateOption) error {
	w.writes.Add(1)
	return w.Client.Update(ctx, o, opts...)
}

func (w *writeCounter) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.PatchOption) error {
	w.writes.Add(1)
	return w.Client.Patch(ctx, o, p, opts...)
}

func (w *writeCounter) Delete(ctx context.Context, o client.Object, opts ...client.DeleteOption) error {
	w.writes.Add(1)
	return w.Client.Delete(ctx, o, opts...)
}

func (w *writeCounter) Apply(ctx context.Context, o runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	w.writes.Add(1)
	return w.Client.Apply(ctx, o, opts...)
}

func (w *writeCounter) Status() client.SubResourceWriter { return &statusCounter{w.Client.Status(), w} }

type statusCounter struct {
	client.SubResourceWriter
	w *writeCounter
}

func (s *statusCounter) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
	s.w.writes.Add(1)
	return s.SubResourceWriter.Patch(ctx, o, p, opts...)
}

func (s *statusCounter) Update(ctx context.Context, o client.Object, opts ...client.SubResourceUpdateOption) error {
	s.w.writes.Add(1)
	return s.SubResourceWriter.Update(ctx, o, opts...)
}

func (s *statusCounter) Apply(ctx context.Context, o runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	s.w.writes.Add(1)
	return s.SubResourceWriter.Apply(ctx, o, opts...)
}

// wantPortName is the name of the port that serves /metrics, the one the chart's PodMonitor
// scrapes: "http" on the API (routes and ops endpoints), "metrics" elsewhere.
func wantPortName(component string) string {
	if component == "api" {
		return "http"
	}
	return "metrics"
}

func resourceVersions(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	rv := map[string]string{}
	for _, c := range []string{"broker", "api"} {
		cm := configMapOf(t, ns, name+"-"+c, &appsv1.Deployment{})
		rv["config-"+c] = cm.ResourceVersion
	}
	for _, c := range []string{"publisher", "listener"} {
		cm := configMapOf(t, ns, name+"-"+c, &appsv1.StatefulSet{})
		rv["config-"+c] = cm.ResourceVersion
	}
	objs := map[string]client.Object{
		"sim":    &v1alpha1.ChargerSimulation{},
		"broker": &appsv1.Deployment{}, "broker-svc": &corev1.Service{},
		"publisher": &appsv1.StatefulSet{}, "publisher-svc": &corev1.Service{},
		"listener": &appsv1.StatefulSet{}, "listener-svc": &corev1.Service{},
		"api": &appsv1.Deployment{}, "api-svc": &corev1.Service{},
	}
	for k, o := range objs {
		n := name
		if k != "sim" {
			n = name + "-" + strings.TrimSuffix(k, "-svc")
		}
		if err := k8s.Get(ctx, key(ns, n), o); err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		rv[k] = o.GetResourceVersion()
	}
	return rv
}

func TestNoWriteWhenNothingChanged(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "quiet"))
	waitCondition(t, ns, "quiet", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)
	markReady(t, ns, "quiet")
	waitCondition(t, ns, "quiet", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	before := resourceVersions(t, ns, "quiet")

	// Force reconciles with the operator's own client and cache, counting every write.
	mgr := operator.Manager()
	wc := &writeCounter{Client: mgr.GetClient()}
	r := &controllers.Reconciler{Client: wc, APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("test"), DefaultImage: testImage}
	for range 3 {
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "quiet")})
		if err != nil {
			t.Fatal(err)
		}
		if res.RequeueAfter != 0 {
			t.Errorf("healthy simulation requeued after %s with resync disabled", res.RequeueAfter)
		}
	}
	if n := wc.writes.Load(); n != 0 {
		t.Errorf("%d writes for a simulation that did not change", n)
	}
	after := resourceVersions(t, ns, "quiet")
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: resourceVersion %s → %s", k, v, after[k])
		}
	}
}

// A status the operator did not write last — someone else's, or its own patch computed from a
// cached copy older than the server's — is corrected by the reconcile its change triggers,
// not at the next resync.
func TestForeignStatusCorrected(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "foreign"))
	waitCondition(t, ns, "foreign", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)
	markReady(t, ns, "foreign")
	waitCondition(t, ns, "foreign", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	eventually(t, "write a wrong status", func() error {
		sim := getSim(t, ns, "foreign")
		sim.Status.Publisher.ReadyReplicas = 7
		meta.SetStatusCondition(&sim.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady,
			Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonComponentsNotReady, Message: "wrong", ObservedGeneration: sim.Generation})
		return k8s.Status().Update(ctx, sim)
	})
	sim := waitCondition(t, ns, "foreign", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	eventually(t, "publisher status restored", func() error {
		sim = getSim(t, ns, "foreign")
		if p := sim.Status.Publisher; p.ReadyReplicas != 1 {
			return fmt.Errorf("publisher status %+v", p)
		}
		return nil
	})
}

// staleClient hands out an old copy of one simulation, as a cache that lags behind the API
// server does, and counts status patches the API server refuses with a Conflict.
type staleClient struct {
	client.Client
	stale     *v1alpha1.ChargerSimulation
	conflicts atomic.Int64
	patches   atomic.Int64
}

func (s *staleClient) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if sim, ok := obj.(*v1alpha1.ChargerSimulation); ok && k == client.ObjectKeyFromObject(s.stale) {
		s.stale.DeepCopyInto(sim)
		return nil
	}
	return s.Client.Get(ctx, k, obj, opts...)
}

func (s *staleClient) Status() client.SubResourceWriter { return &patchCounter{s.Client.Status(), s} }

type patchCounter struct {
	client.SubResourceWriter
	s *staleClient
}

func (p *patchCounter) Patch(ctx context.Context, o client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	p.s.patches.Add(1)
	err := p.SubResourceWriter.Patch(ctx, o, patch, opts...)
	if apierrors.IsConflict(err) {
		p.s.conflicts.Add(1)
	}
	return err
}

// The e2e flake "publisher 2 of 3 ready for 5 minutes" while everything was ready: a reconcile
// that started from a cached simulation older than the operator's own last status patch sent a
// merge patch of the difference to that old copy; what the old copy agreed on was left out,
// and the server kept the newer, by then wrong, value. A patch from a stale copy must be
// refused and retried instead.
func TestStatusPatchFromStaleCopyRefused(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "lag"))
	waitCondition(t, ns, "lag", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener)
	markReady(t, ns, "lag")
	stale := waitCondition(t, ns, "lag", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	// The publisher loses its pods and the operator says so: the server's status moves on.
	setStatefulSetReady(t, ns, "lag-publisher", 0)
	waitCondition(t, ns, "lag", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)

	// A reconcile from the copy of before (Ready=True) computes a status that differs from it.
	mgr := operator.Manager()
	sc := &staleClient{Client: mgr.GetClient(), stale: stale}
	r := &controllers.Reconciler{Client: sc, APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("test"), DefaultImage: testImage}
	res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "lag")})
	if err != nil {
		t.Fatalf("a refused status patch is retried, not an error: %v", err)
	}
	if sc.patches.Load() != 1 || sc.conflicts.Load() != 1 {
		t.Fatalf("%d status patches, %d refused: a patch computed from a stale copy went through", sc.patches.Load(), sc.conflicts.Load())
	}
	if res.RequeueAfter <= 0 {
		t.Errorf("refused status patch not retried: %+v", res)
	}
	sim := waitCondition(t, ns, "lag", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	if sim.Status.Publisher.ReadyReplicas != 0 {
		t.Errorf("publisher status %+v", sim.Status.Publisher)
	}
}

func events(t *testing.T, ns, name, reason string) []eventsv1.Event {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Regarding.Kind == "ChargerSimulation" && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func TestMissingSecretDegradedThenRecovers(t *testing.T) {
	ns := newNamespace(t)
	createSim(t, simulation(ns, "nosecret"))
	sim := waitCondition(t, ns, "nosecret", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonSecretNotFound)
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady)
	if c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonSecretNotFound || !strings.Contains(c.Message, `Secret "mongo" named by spec.mongo.uriSecretRef does not exist`) {
		t.Errorf("Ready %+v", c)
	}
	eventually(t, "SecretNotFound event", func() error {
		if ev := events(t, ns, "nosecret", v1alpha1.ReasonSecretNotFound); len(ev) == 0 || ev[0].Type != corev1.EventTypeWarning {
			return errors.New("no Warning event")
		}
		return nil
	})
	// Nothing is started that could not run.
	if err := k8s.Get(ctx, key(ns, "nosecret-listener"), &appsv1.StatefulSet{}); !apierrors.IsNotFound(err) {
		t.Errorf("listener exists without its Secret: %v", err)
	}

	// The Secret appears without the key.
	s := createSecret(t, ns, "mongo", map[string]string{"url": "typo"})
	waitCondition(t, ns, "nosecret", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonSecretKeyNotFound)

	// Fixed: the operator notices by itself (backoff), no edit of the simulation needed.
	s.StringData = map[string]string{"uri": "mongodb://mongo:27017"}
	if err := k8s.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "nosecret", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	getObj(t, ns, "nosecret-listener", &appsv1.StatefulSet{})
	eventually(t, "Recovered event", func() error {
		if len(events(t, ns, "nosecret", "Recovered")) == 0 {
			return errors.New("no Recovered event")
		}
		return nil
	})
}

func TestExternalBroker(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSecret(t, ns, "mqtt", map[string]string{"username": "u", "password": "p", "ca.crt": "pem"})
	createSim(t, simulation(ns, "ext"))
	getObj(t, ns, "ext-broker", &appsv1.Deployment{})
	getObj(t, ns, "ext-broker", &corev1.Service{})

	// Switching to an external broker removes the managed one.
	updateSim(t, ns, "ext", func(s *v1alpha1.ChargerSimulation) {
		s.Spec.Broker = v1alpha1.BrokerSpec{
			URL:                  "ssl://mosquitto.example:8883",
			CredentialsSecretRef: &v1alpha1.CredentialsSecretRef{Name: "mqtt"},
			TLS:                  &v1alpha1.BrokerTLS{CASecretRef: v1alpha1.CASecretRef{Name: "mqtt"}},
		}
	})
	eventually(t, "managed broker removed", func() error {
		for _, o := range []client.Object{&appsv1.Deployment{}, &corev1.Service{}} {
			if err := k8s.Get(ctx, key(ns, "ext-broker"), o); err == nil {
				if o.GetDeletionTimestamp() == nil {
					return fmt.Errorf("%T still there", o)
				}
			} else if !apierrors.IsNotFound(err) {
				return err
			}
		}
		return nil
	})
	sim := waitCondition(t, ns, "ext", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	if sim.Status.Broker != nil || sim.Status.BrokerURL != "ssl://mosquitto.example:8883" {
		t.Errorf("broker status %+v url %q", sim.Status.Broker, sim.Status.BrokerURL)
	}
	lis := getObj(t, ns, "ext-listener", &appsv1.StatefulSet{})
	env := envOf(lis.Spec.Template.Spec.Containers[0])
	if env["CHARGESIM_MQTT_USERNAME"].ValueFrom.SecretKeyRef.Name != "mqtt" || env["CHARGESIM_MQTT_CA_FILE"].Value == "" || env["CHARGESIM_MQTT_PASSWORD_FILE"].Value == "" {
		t.Errorf("listener MQTT env %+v", env)
	}

	// A URL the schema lets through but that cannot work: Degraded, with an Event.
	updateSim(t, ns, "ext", func(s *v1alpha1.ChargerSimulation) { s.Spec.Broker.URL = "tcp://mosquitto:99999" })
	sim = waitCondition(t, ns, "ext", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonInvalidBrokerURL)
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionDegraded); !strings.Contains(c.Message, "port") {
		t.Errorf("message %q", c.Message)
	}
	eventually(t, "InvalidBrokerURL event", func() error {
		if len(events(t, ns, "ext", v1alpha1.ReasonInvalidBrokerURL)) == 0 {
			list := &eventsv1.EventList{}
			_ = k8s.List(ctx, list, client.InNamespace(ns))
			var got []string
			for _, e := range list.Items {
				got = append(got, e.Reason+"/"+e.Regarding.Kind+"/"+e.Regarding.Name+"/"+e.Note)
			}
			return fmt.Errorf("no event among %v", got)
		}
		return nil
	})
	// The running pipeline keeps its last good configuration.
	cm := configMapOf(t, ns, "ext-listener", &appsv1.StatefulSet{})
	if cm.Data["CHARGESIM_MQTT_URL"] != "ssl://mosquitto.example:8883" {
		t.Errorf("ConfigMap rewritten with a bad URL: %q", cm.Data["CHARGESIM_MQTT_URL"])
	}
}

func TestDeleteLeavesChildrenToGarbageCollector(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "gone"))
	startPublisher(t, ns, "gone")
	sim := waitCondition(t, ns, "gone", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady)
	// envtest runs no garbage collector (test/e2e checks the real one): what makes the children
	// go is a controller owner reference to this simulation's UID on every one of them.
	for _, o := range []client.Object{
		configMapOf(t, ns, "gone-broker", &appsv1.Deployment{}),
		configMapOf(t, ns, "gone-listener", &appsv1.StatefulSet{}),
		configMapOf(t, ns, "gone-api", &appsv1.Deployment{}),
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "gone-broker"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "gone-broker"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "gone-publisher"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "gone-publisher"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "gone-listener"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "gone-listener"}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "gone-api"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "gone-api"}},
	} {
		assertOwned(t, getObj(t, ns, o.GetName(), o), sim)
	}
	if err := k8s.Delete(ctx, sim); err != nil {
		t.Fatal(err)
	}
	eventually(t, "simulation gone", func() error {
		err := k8s.Get(ctx, key(ns, "gone"), &v1alpha1.ChargerSimulation{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %w", err)
	})
}
