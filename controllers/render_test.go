package controllers

import (
	"encoding/json"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

func testSim() *v1alpha1.ChargerSimulation {
	return &v1alpha1.ChargerSimulation{
		ObjectMeta: metav1.ObjectMeta{Name: "fleet", Namespace: "ns", UID: "uid-1", Generation: 1},
		Spec: v1alpha1.ChargerSimulationSpec{
			Chargers:  100,
			TimeScale: ptr.To(60.0),
			Mongo:     v1alpha1.MongoSpec{URISecretRef: v1alpha1.URISecretRef{Name: "mongo"}},
			Publisher: v1alpha1.PublisherSpec{Replicas: 3},
		},
	}
}

func testSecrets(sim *v1alpha1.ChargerSimulation) []secretUse {
	uses := secretUses(sim)
	for i := range uses {
		uses[i].digest = "d-" + uses[i].name + "-" + uses[i].key
	}
	return uses
}

// decode turns an apply configuration into the typed object the API server would hold.
func decode[T any](t *testing.T, ac any) *T {
	t.Helper()
	b, err := json.Marshal(ac)
	if err != nil {
		t.Fatal(err)
	}
	var obj T
	if err := json.Unmarshal(b, &obj); err != nil {
		t.Fatal(err)
	}
	return &obj
}

func envMap(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func TestPublisherStatefulSet(t *testing.T) {
	sim := testSim()
	d := newDesired(sim, "img:1", managedBrokerURL(sim), testSecrets(sim))
	stsAC, svcAC := d.publisherObjects()
	sts := decode[appsv1.StatefulSet](t, stsAC)
	svc := decode[corev1.Service](t, svcAC)

	if sts.Name != "fleet-publisher" || sts.Namespace != "ns" {
		t.Fatalf("name %s/%s", sts.Namespace, sts.Name)
	}
	if *sts.Spec.Replicas != 3 || sts.Spec.ServiceName != "fleet-publisher" || sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Fatalf("spec: replicas %d service %q policy %q", *sts.Spec.Replicas, sts.Spec.ServiceName, sts.Spec.PodManagementPolicy)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("publisher service must be headless, clusterIP %q", svc.Spec.ClusterIP)
	}
	c := sts.Spec.Template.Spec.Containers[0]
	env := envMap(c)
	idx := env[envShardIndex]
	if idx.ValueFrom == nil || idx.ValueFrom.FieldRef == nil || idx.ValueFrom.FieldRef.FieldPath != "metadata.labels['apps.kubernetes.io/pod-index']" {
		t.Fatalf("shard index env: %+v", idx)
	}
	if env[envShardCount].Value != "3" {
		t.Fatalf("shard count %q", env[envShardCount].Value)
	}
	if len(c.Args) != 1 || c.Args[0] != "publisher" || c.Image != "img:1" {
		t.Fatalf("args %v image %s", c.Args, c.Image)
	}
	// The publisher records its runs (audit): the Mongo URI from the spec's Secret, as a
	// mounted file like the listener's, and --record-runs.
	if env[envRecordRuns].Value != "true" {
		t.Fatalf("record runs %+v", env[envRecordRuns])
	}
	if env[envMongoURIFile].Value != secretsDir+"/mongo-uri/uri" {
		t.Fatalf("mongo URI file %+v", env[envMongoURIFile])
	}
	mounted := false
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == "mongo-uri" {
			mounted = v.Secret != nil && v.Secret.SecretName == sim.Spec.Mongo.URISecretRef.Name &&
				len(v.Secret.Items) == 1 && v.Secret.Items[0].Key == sim.Spec.Mongo.URISecretRef.KeyOrDefault()
		}
	}
	if !mounted {
		t.Fatalf("publisher does not mount the Mongo URI Secret: %+v", sts.Spec.Template.Spec.Volumes)
	}
	if _, ok := d.componentConfig(Publisher)[envEpoch]; !ok {
		t.Fatal("the publisher's ConfigMap pins no epoch")
	}
	owner := sts.OwnerReferences
	if len(owner) != 1 || owner[0].UID != "uid-1" || !*owner[0].Controller || owner[0].Kind != "ChargerSimulation" {
		t.Fatalf("owner refs %+v", owner)
	}
	for k, v := range map[string]string{LabelManagedBy: ManagedByValue, LabelSimulation: "fleet", LabelComponent: "publisher"} {
		if sts.Labels[k] != v || sts.Spec.Template.Labels[k] != v {
			t.Fatalf("label %s: %q / %q", k, sts.Labels[k], sts.Spec.Template.Labels[k])
		}
	}
}

func TestListenerStatefulSet(t *testing.T) {
	sim := testSim()
	sim.Spec.Listener.Replicas = 2
	d := newDesired(sim, "img:1", managedBrokerURL(sim), testSecrets(sim))
	stsAC, svcAC := d.listenerObjects()
	sts := decode[appsv1.StatefulSet](t, stsAC)
	svc := decode[corev1.Service](t, svcAC)

	if sts.Name != "fleet-listener" || *sts.Spec.Replicas != 2 || sts.Spec.ServiceName != "fleet-listener" ||
		sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Fatalf("listener StatefulSet %s: replicas %d service %q policy %q", sts.Name, *sts.Spec.Replicas, sts.Spec.ServiceName, sts.Spec.PodManagementPolicy)
	}
	if svc.Name != "fleet-listener" || svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Selector[LabelComponent] != "listener" {
		t.Fatalf("listener Service %s: clusterIP %q selector %v", svc.Name, svc.Spec.ClusterIP, svc.Spec.Selector)
	}
	if sts.Spec.Selector.MatchLabels[LabelComponent] != "listener" || sts.Spec.Template.Labels[LabelComponent] != "listener" {
		t.Fatalf("selector %v template labels %v", sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels)
	}
	owner := sts.OwnerReferences
	if len(owner) != 1 || owner[0].UID != "uid-1" || !*owner[0].Controller {
		t.Fatalf("owner refs %+v", owner)
	}
	c := sts.Spec.Template.Spec.Containers[0]
	if len(c.Args) != 1 || c.Args[0] != "listener" {
		t.Fatalf("args %v", c.Args)
	}
	// The pod name is the stable part of the MQTT client ID: it comes from the downward API
	// and is expanded by the kubelet, which needs the variable listed first.
	pos := map[string]int{}
	for i, e := range c.Env {
		pos[e.Name] = i
	}
	env := envMap(c)
	if f := env[envPodName].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "metadata.name" {
		t.Fatalf("%s: %+v", envPodName, env[envPodName])
	}
	if got := env[envMQTTClientID].Value; got != "chargesim-ns-$(POD_NAME)" || pos[envPodName] > pos[envMQTTClientID] {
		t.Fatalf("client ID %q (POD_NAME at %d, client ID at %d)", got, pos[envPodName], pos[envMQTTClientID])
	}
	if got := env[envShareGroup].Value; got != "chargesim-ns-fleet" {
		t.Fatalf("share group %q", got)
	}
}

func TestShareGroupPerSimulation(t *testing.T) {
	groups := map[string]bool{}
	for _, nn := range [][2]string{{"a", "fleet"}, {"b", "fleet"}, {"a", "other"}, {strings.Repeat("n", 63), strings.Repeat("s", 42)}} {
		sim := testSim()
		sim.Namespace, sim.Name = nn[0], nn[1]
		g := shareGroup(sim)
		// A topic level of the subscription $share/<group>/<filter> (listener --share-group).
		if g == "" || strings.ContainsAny(g, "/+#\x00") {
			t.Errorf("%s/%s: share group %q is not a valid topic level", nn[0], nn[1], g)
		}
		if groups[g] {
			t.Errorf("%s/%s: share group %q used twice", nn[0], nn[1], g)
		}
		groups[g] = true
	}
	// The publisher does not subscribe.
	sim := testSim()
	sts, _ := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim)).publisherObjects()
	if _, ok := envMap(decode[appsv1.StatefulSet](t, sts).Spec.Template.Spec.Containers[0])[envShareGroup]; ok {
		t.Error("publisher gets a share group")
	}
}

func TestMQTTClientIDFits(t *testing.T) {
	sim := testSim()
	sim.Name = strings.Repeat("n", 42)
	sim.Namespace = strings.Repeat("x", 63)
	for _, c := range []Component{Publisher, Listener} {
		id := mqttClientIDPrefix(sim, c) + workloadName(sim.Name, c) + "-999"
		if len(id) > maxMQTTClientID {
			t.Errorf("%s: client ID of %d characters: %s", c, len(id), id)
		}
		if !strings.HasPrefix(id, "chargesim-xxxx") {
			t.Errorf("%s: client ID %s lost the namespace", c, id)
		}
	}
	// Equally named simulations in two namespaces never share a client ID.
	a, b := testSim(), testSim()
	a.Namespace, b.Namespace = "team-a", "team-b"
	if mqttClientIDPrefix(a, Listener) == mqttClientIDPrefix(b, Listener) {
		t.Error("same client ID prefix in two namespaces")
	}
}

func TestSuspendKeepsShardCount(t *testing.T) {
	sim := testSim()
	d := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim))
	running, _ := d.publisherObjects()
	sim.Spec.Suspend = true
	suspended, _ := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim)).publisherObjects()
	a := decode[appsv1.StatefulSet](t, running)
	b := decode[appsv1.StatefulSet](t, suspended)
	if *b.Spec.Replicas != 0 {
		t.Fatalf("suspended replicas %d", *b.Spec.Replicas)
	}
	ja, _ := json.Marshal(a.Spec.Template)
	jb, _ := json.Marshal(b.Spec.Template)
	if string(ja) != string(jb) {
		t.Fatal("suspending changes the pod template: resuming would roll the publisher")
	}
	if sessionRate(sim) != "0" {
		t.Fatalf("rate while suspended %q", sessionRate(sim))
	}
}

// volumeNamed finds a volume of the pod and the first container's mount of it.
func volumeNamed(ps corev1.PodSpec, name string) (*corev1.Volume, *corev1.VolumeMount) {
	var v *corev1.Volume
	var m *corev1.VolumeMount
	for i := range ps.Volumes {
		if ps.Volumes[i].Name == name {
			v = &ps.Volumes[i]
		}
	}
	for i := range ps.Containers[0].VolumeMounts {
		if ps.Containers[0].VolumeMounts[i].Name == name {
			m = &ps.Containers[0].VolumeMounts[i]
		}
	}
	return v, m
}

// TestManagedBrokerCredentials: the managed broker requires the generated credentials (its
// password file a Secret volume without subPath, so that the kubelet updates it in place);
// publisher and listener get username and password; the API gets nothing of them. A new
// client password rolls the clients, new accepted passwords do not roll the broker.
func TestManagedBrokerCredentials(t *testing.T) {
	sim := testSim()
	creds := BrokerCredentialsName(sim.Name)
	templates, err := PodTemplates(sim, "img")
	if err != nil {
		t.Fatal(err)
	}
	bt := templates[Broker].Spec
	env := envMap(bt.Containers[0])
	if u := env[envBrokerUsername]; u.ValueFrom == nil || u.ValueFrom.SecretKeyRef == nil ||
		u.ValueFrom.SecretKeyRef.Name != creds || u.ValueFrom.SecretKeyRef.Key != CredentialsUsernameKey {
		t.Errorf("broker username: %+v", u)
	}
	vol, mnt := volumeNamed(bt, "broker-credentials")
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != creds || len(vol.Secret.Items) != 1 ||
		vol.Secret.Items[0].Key != CredentialsAcceptedKey || mnt == nil || mnt.SubPath != "" || !mnt.ReadOnly ||
		env[envBrokerPasswordFile].Value != mnt.MountPath+"/"+vol.Secret.Items[0].Path {
		t.Errorf("broker password file: volume %+v mount %+v env %+v", vol, mnt, env[envBrokerPasswordFile])
	}
	for _, c := range []Component{Publisher, Listener} {
		ps := templates[c].Spec
		env := envMap(ps.Containers[0])
		if u := env[envMQTTUsername]; u.ValueFrom == nil || u.ValueFrom.SecretKeyRef == nil || u.ValueFrom.SecretKeyRef.Name != creds {
			t.Errorf("%s username: %+v", c, u)
		}
		vol, mnt := volumeNamed(ps, "mqtt-credentials")
		if vol == nil || vol.Secret.SecretName != creds || vol.Secret.Items[0].Key != CredentialsPasswordKey || mnt == nil ||
			env[envMQTTPassword].Value != mnt.MountPath+"/"+vol.Secret.Items[0].Path {
			t.Errorf("%s password file: volume %+v mount %+v", c, vol, mnt)
		}
	}
	b, err := json.Marshal(templates[API])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), creds) {
		t.Errorf("the API's pod references the broker credentials: %s", b)
	}

	base := testSecrets(sim)
	hash := func(uses []secretUse) map[Component]string {
		return newDesired(sim, "img", managedBrokerURL(sim), uses).configHash
	}
	before := hash(base)
	bump := func(key string) map[Component]string {
		uses := append([]secretUse(nil), base...)
		for i := range uses {
			if uses[i].name == creds && uses[i].key == key {
				uses[i].digest += "-rotated"
			}
		}
		return hash(uses)
	}
	afterAccepted := bump(CredentialsAcceptedKey)
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		if afterAccepted[c] != before[c] {
			t.Errorf("new accepted passwords roll the %s", c)
		}
	}
	afterPassword := bump(CredentialsPasswordKey)
	for c, want := range map[Component]bool{Broker: false, Publisher: true, Listener: true, API: false} {
		if (afterPassword[c] != before[c]) != want {
			t.Errorf("new client password: %s rolls = %v, want %v", c, afterPassword[c] != before[c], want)
		}
	}
}

func TestPodHardening(t *testing.T) {
	sim := testSim()
	d := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim))
	bdep, _ := d.brokerObjects()
	adep, _ := d.apiObjects()
	sts, _ := d.publisherObjects()
	lsts, _ := d.listenerObjects()
	templates := map[Component]corev1.PodTemplateSpec{
		Broker:    decode[appsv1.Deployment](t, bdep).Spec.Template,
		Listener:  decode[appsv1.StatefulSet](t, lsts).Spec.Template,
		API:       decode[appsv1.Deployment](t, adep).Spec.Template,
		Publisher: decode[appsv1.StatefulSet](t, sts).Spec.Template,
	}
	// The managed broker persists what it acknowledged to a writable volume (its root fs is
	// read-only): a killed broker container loses no queued message.
	bt := templates[Broker].Spec
	vol, mnt := volumeNamed(bt, "broker-data")
	if e := envMap(bt.Containers[0])[envBrokerDataDir]; e.Value != brokerDataDir ||
		vol == nil || vol.EmptyDir == nil || mnt == nil || mnt.MountPath != brokerDataDir || mnt.ReadOnly {
		t.Errorf("broker data dir: env %+v volumes %+v mounts %+v", e, bt.Volumes, bt.Containers[0].VolumeMounts)
	}
	if e := envMap(templates[API].Spec.Containers[0])[envAuditEvery]; e.Value != "1m0s" {
		t.Errorf("API %s %+v: the API exports no audit gauges", envAuditEvery, e)
	}
	for comp, tmpl := range templates {
		ps := tmpl.Spec
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Errorf("%s: service account token mounted", comp)
		}
		sc := ps.SecurityContext
		if sc == nil || !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod security context %+v", comp, sc)
		}
		c := ps.Containers[0]
		csc := c.SecurityContext
		if csc == nil || *csc.AllowPrivilegeEscalation || !*csc.ReadOnlyRootFilesystem || len(csc.Capabilities.Drop) != 1 || csc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s: container security context %+v", comp, csc)
		}
		if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: probes %s %s", comp, c.LivenessProbe.HTTPGet.Path, c.ReadinessProbe.HTTPGet.Path)
		}
		wantPort := int32(opsPort)
		if comp == API {
			wantPort = apiPort
		}
		if c.Ports[0].Name != opsPortName(comp) || c.Ports[0].ContainerPort != wantPort || envMap(c)[envHTTPAddr].Value != ":"+strconv.Itoa(int(wantPort)) {
			t.Errorf("%s: port %+v http addr %q", comp, c.Ports[0], envMap(c)[envHTTPAddr].Value)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no default resource requests", comp)
		}
		if tmpl.Annotations[AnnotationConfigHash] == "" {
			t.Errorf("%s: no config hash", comp)
		}
		if len(c.EnvFrom) != 1 || !strings.HasPrefix(c.EnvFrom[0].ConfigMapRef.Name, "fleet-"+string(comp)+"-config-") {
			t.Errorf("%s: envFrom %+v", comp, c.EnvFrom)
		}
		if len(c.Args) != 1 || c.Args[0] != string(comp) {
			t.Errorf("%s: args %v", comp, c.Args)
		}
	}
}

func TestSecretsReachPodsAsFilesAndRefs(t *testing.T) {
	sim := testSim()
	sim.Spec.Broker = v1alpha1.BrokerSpec{
		URL:                  "ssl://broker.example:8883",
		CredentialsSecretRef: &v1alpha1.CredentialsSecretRef{Name: "mqtt"},
		TLS:                  &v1alpha1.BrokerTLS{CASecretRef: v1alpha1.CASecretRef{Name: "mqtt-ca"}},
	}
	sim.Spec.Mongo.CASecretRef = &v1alpha1.CASecretRef{Name: "mongo-ca", Key: "root.pem"}
	u, err := brokerURL(sim)
	if err != nil {
		t.Fatal(err)
	}
	d := newDesired(sim, "img", u, testSecrets(sim))
	lsts, _ := d.listenerObjects()
	lis := decode[appsv1.StatefulSet](t, lsts).Spec.Template
	env := envMap(lis.Spec.Containers[0])
	if ref := env[envMQTTUsername].ValueFrom.SecretKeyRef; ref.Name != "mqtt" || ref.Key != "username" {
		t.Fatalf("username ref %+v", ref)
	}
	want := map[string]string{
		envMQTTPassword: "/var/run/secrets/chargesim/mqtt-credentials/password",
		envMQTTCA:       "/var/run/secrets/chargesim/mqtt-ca/ca.crt",
		envMongoURIFile: "/var/run/secrets/chargesim/mongo-uri/uri",
		envMongoCA:      "/var/run/secrets/chargesim/mongo-ca/ca.crt",
	}
	for k, v := range want {
		if env[k].Value != v {
			t.Errorf("%s = %q, want %q", k, env[k].Value, v)
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range lis.Spec.Volumes {
		vols[v.Name] = v
	}
	if v := vols["mongo-ca"]; v.Secret == nil || v.Secret.SecretName != "mongo-ca" || v.Secret.Items[0].Key != "root.pem" || v.Secret.Items[0].Path != "ca.crt" {
		t.Fatalf("mongo-ca volume %+v", v)
	}
	if v := vols["mqtt-credentials"]; v.Secret == nil || v.Secret.Items[0].Key != "password" {
		t.Fatalf("mqtt-credentials volume %+v", v)
	}
	for _, m := range lis.Spec.Containers[0].VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s writable", m.Name)
		}
	}
	// The API reads only MongoDB.
	adep, _ := d.apiObjects()
	apiEnv := envMap(decode[appsv1.Deployment](t, adep).Spec.Template.Spec.Containers[0])
	if _, ok := apiEnv[envMQTTUsername]; ok {
		t.Fatal("API gets MQTT credentials")
	}
	if d.config[envMQTTURL] != "ssl://broker.example:8883" {
		t.Fatalf("mqtt url %q", d.config[envMQTTURL])
	}
}

func TestConfigHashScope(t *testing.T) {
	sim := testSim()
	base := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim)).configHash

	sim.Spec.Listener.BatchSize = 1000
	batch := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim)).configHash
	if batch[Listener] == base[Listener] {
		t.Error("listener batch size does not change the listener hash")
	}
	if batch[Publisher] != base[Publisher] || batch[API] != base[API] {
		t.Error("listener batch size changes the publisher or API hash")
	}

	secrets := testSecrets(sim)
	secrets[0].digest = "rotated" // the Mongo URI
	rotated := newDesired(sim, "img", managedBrokerURL(sim), secrets).configHash
	if rotated[Listener] == batch[Listener] || rotated[API] == batch[API] || rotated[Publisher] == batch[Publisher] {
		t.Error("a rotated Mongo URI does not roll publisher, listener and API")
	}

	sim.Spec.TimeScale = ptr.To(120.0)
	scaled := newDesired(sim, "img", managedBrokerURL(sim), secrets).configHash
	if scaled[Publisher] == rotated[Publisher] {
		t.Error("time scale does not roll the publisher")
	}
}

func TestRenderConfig(t *testing.T) {
	sim := testSim()
	sim.Spec.SessionInterval = &metav1.Duration{Duration: 90 * time.Second}
	sim.Spec.SessionJitter = ptr.To(0.0)
	sim.Spec.Broker.TopicPrefix = "lab/a"
	got := renderConfig(sim, "tcp://b:1883")
	want := map[string]string{
		envLogLevel: "info", envLogFormat: "json", envMQTTURL: "tcp://b:1883", envTopicPrefix: "lab/a",
		envChargers: "100", envConnectors: "2", envSessionInterval: "1m30s", envSessionJitter: "0",
		envTimeScale: "60", envSeed: "1", envEpoch: "2026-01-01T00:00:00Z", envDCShare: "0.3", envACTariff: "35", envDCTariff: "59",
		envSessionFee: "0", envMongoDatabase: "chargesim", envBatchSize: "500", envFlushInterval: "200ms",
	}
	if !maps.Equal(got, want) {
		t.Fatalf("config\n got %v\nwant %v", got, want)
	}
}

func TestBrokerURL(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"", true},
		{"tcp://mosquitto:1883", true},
		{"wss://broker.example/mqtt", true},
		{"tcp://mosquitto:99999", false},
		{"tcp://mosquitto:", false},
		{"tcp://user:pw@mosquitto:1883", false},
		{"http://mosquitto", false},
		{"tcp://:1883", false},
	} {
		sim := testSim()
		sim.Spec.Broker.URL = tc.url
		got, err := brokerURL(sim)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v", tc.url, err)
		}
		if tc.url == "" && got != "tcp://fleet-broker.ns.svc:1883" {
			t.Errorf("managed broker url %q", got)
		}
	}
}

func TestSessionRate(t *testing.T) {
	for _, tc := range []struct {
		chargers int32
		scale    float64
		interval time.Duration
		want     string
	}{
		{10, 1, time.Minute, "0.1667"},
		{100, 60, time.Minute, "100"},
		{1_000_000, 100_000, time.Second, "100000000000"},
		{1, 1, time.Hour, "0.0002778"},
	} {
		sim := testSim()
		sim.Spec.Chargers = tc.chargers
		sim.Spec.TimeScale = &tc.scale
		sim.Spec.SessionInterval = &metav1.Duration{Duration: tc.interval}
		if got := sessionRate(sim); got != tc.want {
			t.Errorf("%d chargers × %g / %s = %q, want %q", tc.chargers, tc.scale, tc.interval, got, tc.want)
		}
	}
}

func TestContainsFields(t *testing.T) {
	sim := testSim()
	d := newDesired(sim, "img", managedBrokerURL(sim), testSecrets(sim))
	ac, _ := d.listenerObjects()
	live := decode[appsv1.StatefulSet](t, ac)
	// What the API server adds must not count as a difference.
	live.ResourceVersion = "7"
	live.Spec.Template.Spec.Containers[0].TerminationMessagePath = "/dev/termination-log"
	live.Spec.Template.Spec.DNSPolicy = corev1.DNSClusterFirst
	live.Status.ReadyReplicas = 1
	live.Labels["extra"] = "someone else's"
	ok, err := containsFields(ac, live)
	if err != nil || !ok {
		t.Fatalf("defaulted live object reported as different: %v %v", ok, err)
	}
	// Drift must.
	drifted := live.DeepCopy()
	drifted.Spec.Template.Spec.Containers[0].Image = "evil"
	if ok, _ := containsFields(ac, drifted); ok {
		t.Fatal("changed image not detected")
	}
	drifted = live.DeepCopy()
	delete(drifted.Labels, LabelManagedBy)
	if ok, _ := containsFields(ac, drifted); ok {
		t.Fatal("removed label not detected")
	}
	drifted = live.DeepCopy()
	drifted.Spec.Template.Spec.Containers[0].Env = drifted.Spec.Template.Spec.Containers[0].Env[1:]
	if ok, _ := containsFields(ac, drifted); ok {
		t.Fatal("removed env var not detected")
	}
}

func TestDegradedBackoff(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		0: time.Second, 500 * time.Millisecond: time.Second, 8 * time.Second: 8 * time.Second, time.Hour: time.Minute,
	} {
		if got := degradedBackoff(in); got != want {
			t.Errorf("degradedBackoff(%s) = %s, want %s", in, got, want)
		}
	}
	for range 100 {
		if j := jitter(time.Minute); j < 54*time.Second || j > 66*time.Second {
			t.Fatalf("jitter(1m) = %s", j)
		}
	}
}

func TestStatusChangedPredicate(t *testing.T) {
	p := statusChanged()
	old := testSim()
	old.ResourceVersion = "1"
	old.Status.Publisher.ReadyReplicas = 2

	same := old.DeepCopy()
	if p.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: same}) {
		t.Error("an update with the same status (a resync) passes")
	}
	changed := old.DeepCopy()
	changed.ResourceVersion = "2"
	changed.Status.Publisher.ReadyReplicas = 3
	if !p.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: changed}) {
		t.Error("a status change (the operator's own patch included) does not trigger a reconcile")
	}
	cond := old.DeepCopy()
	cond.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue}}
	if !p.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: cond}) {
		t.Error("a condition change does not trigger a reconcile")
	}
	for name, mutate := range map[string]func(*v1alpha1.ChargerSimulationStatus){
		"status.progress": func(st *v1alpha1.ChargerSimulationStatus) { st.Progress = &v1alpha1.ProgressStatus{Stored: 5} },
		"status.audit":    func(st *v1alpha1.ChargerSimulationStatus) { st.Audit = &v1alpha1.AuditStatus{Stored: 5} },
	} {
		probe := old.DeepCopy()
		probe.ResourceVersion = "3"
		mutate(&probe.Status)
		if p.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: probe}) {
			t.Errorf("a change of %s only (another writer's, every probe) triggers a reconcile", name)
		}
	}
	fin := old.DeepCopy()
	fin.Finalizers = []string{"example.com/hold"}
	if p.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: fin}) {
		t.Error("a metadata-only change passes the status predicate")
	}
}

// Pod options reach exactly their component's pods; the operator's labels and annotations
// (selectors, config hash) cannot be overridden; image pull Secrets reach every pod.
func TestPodOptions(t *testing.T) {
	sim := testSim()
	sim.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "registry"}}
	sim.Spec.Listener.Pod = &v1alpha1.PodOptions{
		NodeSelector:      map[string]string{"pool": "ingest"},
		Tolerations:       []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ingest", Effect: corev1.TaintEffectNoSchedule}},
		PriorityClassName: "high",
		Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}}}}}},
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "zone", WhenUnsatisfiable: corev1.DoNotSchedule,
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelComponent: "listener"}}}},
		Labels:      map[string]string{"team": "ingest", LabelComponent: "evil"},
		Annotations: map[string]string{"mesh/inject": "false", AnnotationConfigHash: "evil"},
	}
	tmpls, err := PodTemplates(sim, "img")
	if err != nil {
		t.Fatal(err)
	}
	l := tmpls[Listener]
	ps := l.Spec
	if ps.NodeSelector["pool"] != "ingest" || ps.PriorityClassName != "high" || len(ps.Tolerations) != 1 || ps.Tolerations[0].Value != "ingest" ||
		ps.Affinity == nil || ps.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != "a" ||
		len(ps.TopologySpreadConstraints) != 1 || ps.TopologySpreadConstraints[0].LabelSelector.MatchLabels[LabelComponent] != "listener" {
		t.Errorf("listener pod spec lacks its options: %+v", ps)
	}
	if l.Labels["team"] != "ingest" || l.Labels[LabelComponent] != "listener" || l.Annotations["mesh/inject"] != "false" || l.Annotations[AnnotationConfigHash] == "evil" {
		t.Errorf("listener labels %v annotations %v", l.Labels, l.Annotations)
	}
	for c, tmpl := range tmpls {
		if len(tmpl.Spec.ImagePullSecrets) != 1 || tmpl.Spec.ImagePullSecrets[0].Name != "registry" {
			t.Errorf("%s: imagePullSecrets %v", c, tmpl.Spec.ImagePullSecrets)
		}
		if c != Listener && (len(tmpl.Spec.NodeSelector) > 0 || tmpl.Labels["team"] != "") {
			t.Errorf("%s got the listener's options", c)
		}
	}
}

func TestRecommendedLabels(t *testing.T) {
	for image, want := range map[string]string{
		"ghcr.io/chargesim/chargesim:v1.2.3": "v1.2.3", "localhost:5000/chargesim": "", "chargesim@sha256:abc": "", "chargesim:latest": "latest",
	} {
		if got := imageVersion(image); got != want {
			t.Errorf("imageVersion(%q) = %q, want %q", image, got, want)
		}
	}
	tmpls, err := PodTemplates(testSim(), "ghcr.io/chargesim/chargesim:v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	for c, tmpl := range tmpls {
		if tmpl.Labels[LabelPartOf] != "chargesim" || tmpl.Labels[LabelVersion] != "v1.2.3" {
			t.Errorf("%s: labels %v", c, tmpl.Labels)
		}
	}
}

// Service options, table-driven: the spec's options in; the API and broker Services out. The
// operator's labels, selector and ports stay; nodePort lands on the main port.
func TestServiceOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*v1alpha1.ChargerSimulation)
		check  func(t *testing.T, api, broker *corev1.Service)
	}{
		{"defaults: ClusterIP, nothing else", func(*v1alpha1.ChargerSimulation) {}, func(t *testing.T, api, broker *corev1.Service) {
			for _, s := range []*corev1.Service{api, broker} {
				if s.Spec.Type != corev1.ServiceTypeClusterIP || len(s.Annotations) != 0 || s.Spec.ExternalTrafficPolicy != "" ||
					s.Spec.LoadBalancerSourceRanges != nil || s.Spec.LoadBalancerClass != nil || s.Spec.Ports[0].NodePort != 0 {
					t.Errorf("%s: %+v %+v", s.Name, s.Annotations, s.Spec)
				}
			}
		}},
		{"API LoadBalancer with every option", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.API.ServiceType = corev1.ServiceTypeLoadBalancer
			s.Spec.API.Service = &v1alpha1.ServiceOptions{
				Annotations: map[string]string{"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
				NodePort:    31080, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
				LoadBalancerSourceRanges: []string{"203.0.113.0/24", "2001:db8::/32"}, LoadBalancerClass: ptr.To("example.com/lb"),
			}
		}, func(t *testing.T, api, broker *corev1.Service) {
			if api.Spec.Type != corev1.ServiceTypeLoadBalancer || api.Annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] != "true" ||
				api.Spec.Ports[0].NodePort != 31080 || api.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
				len(api.Spec.LoadBalancerSourceRanges) != 2 || ptr.Deref(api.Spec.LoadBalancerClass, "") != "example.com/lb" {
				t.Errorf("api: %+v %+v", api.Annotations, api.Spec)
			}
			if api.Labels[LabelSimulation] != "fleet" || !reflect.DeepEqual(api.Spec.Selector, selectorLabels("fleet", API)) || api.Spec.Ports[0].Name != HTTPPortName {
				t.Errorf("the operator's labels, selector or port changed: %+v %+v", api.Labels, api.Spec)
			}
			if broker.Spec.Type != corev1.ServiceTypeClusterIP || len(broker.Annotations) != 0 {
				t.Errorf("the API's options reached the broker: %+v", broker.Spec)
			}
		}},
		{"broker NodePort: the node port is MQTT's", func(s *v1alpha1.ChargerSimulation) {
			s.Spec.Broker.Managed = &v1alpha1.ManagedBrokerSpec{ServiceType: corev1.ServiceTypeNodePort,
				Service: &v1alpha1.ServiceOptions{NodePort: 31883, Annotations: map[string]string{"a": "b"}}}
		}, func(t *testing.T, api, broker *corev1.Service) {
			if broker.Spec.Type != corev1.ServiceTypeNodePort || broker.Spec.Ports[0].Name != MQTTPortName ||
				broker.Spec.Ports[0].NodePort != 31883 || broker.Spec.Ports[1].NodePort != 0 || broker.Annotations["a"] != "b" {
				t.Errorf("broker: %+v %+v", broker.Annotations, broker.Spec)
			}
			if api.Spec.Type != corev1.ServiceTypeClusterIP || len(api.Annotations) != 0 {
				t.Errorf("the broker's options reached the API: %+v", api.Spec)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := testSim()
			tc.mutate(sim)
			d := newDesired(sim, "img:1", managedBrokerURL(sim), testSecrets(sim))
			_, asvc := d.apiObjects()
			_, bsvc := d.brokerObjects()
			tc.check(t, decode[corev1.Service](t, asvc), decode[corev1.Service](t, bsvc))
		})
	}
}

// PodDisruptionBudgets: none unless asked for; one of minAvailable or maxUnavailable, selecting
// exactly the component's pods, owned by the simulation.
func TestPodDisruptionBudgets(t *testing.T) {
	sim := testSim()
	d := newDesired(sim, "img:1", managedBrokerURL(sim), testSecrets(sim))
	if d.podDisruptionBudget(Listener, sim.Spec.Listener.PodDisruptionBudget) != nil {
		t.Fatal("a budget nobody asked for")
	}
	for _, tc := range []struct {
		c    Component
		spec v1alpha1.PodDisruptionBudgetSpec
	}{
		{Listener, v1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1))}},
		{API, v1alpha1.PodDisruptionBudgetSpec{MaxUnavailable: ptr.To(intstr.FromString("50%"))}},
	} {
		pdb := decode[policyv1.PodDisruptionBudget](t, d.podDisruptionBudget(tc.c, &tc.spec))
		if pdb.Name != workloadName("fleet", tc.c) || pdb.Namespace != "ns" || len(pdb.OwnerReferences) != 1 ||
			!ptr.Deref(pdb.OwnerReferences[0].Controller, false) || pdb.Labels[LabelManagedBy] != ManagedByValue {
			t.Errorf("%s: metadata %+v", tc.c, pdb.ObjectMeta)
		}
		if !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, selectorLabels("fleet", tc.c)) ||
			!reflect.DeepEqual(pdb.Spec.MinAvailable, tc.spec.MinAvailable) || !reflect.DeepEqual(pdb.Spec.MaxUnavailable, tc.spec.MaxUnavailable) {
			t.Errorf("%s: spec %+v", tc.c, pdb.Spec)
		}
	}
}

// TestNetworkPolicies: the broker admits MQTT from this simulation's publisher and listener
// pods only, and metrics from metricsFrom (anyone when empty); the API policy exists only with
// apiFrom; external brokers and enabled=false get none.
func TestNetworkPolicies(t *testing.T) {
	sim := testSim()
	pols, err := NetworkPolicies(sim)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 1 || pols[0].Name != sim.Name+"-broker" {
		t.Fatalf("default: %+v, want only the broker's", pols)
	}
	p := pols[0]
	templates, err := PodTemplates(sim, "img")
	if err != nil {
		t.Fatal(err)
	}
	sel := func(ls *metav1.LabelSelector, l map[string]string) bool {
		s, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			t.Fatal(err)
		}
		return s.Matches(labels.Set(l))
	}
	if !sel(&p.Spec.PodSelector, templates[Broker].Labels) || sel(&p.Spec.PodSelector, templates[API].Labels) {
		t.Errorf("policy selects the wrong pods: %+v", p.Spec.PodSelector)
	}
	if len(p.Spec.Ingress) != 2 {
		t.Fatalf("ingress rules: %+v", p.Spec.Ingress)
	}
	mqtt, metrics := p.Spec.Ingress[0], p.Spec.Ingress[1]
	if len(mqtt.Ports) != 1 || mqtt.Ports[0].Port.IntValue() != mqttPort || len(mqtt.From) != 1 {
		t.Fatalf("mqtt rule: %+v", mqtt)
	}
	for c, want := range map[Component]bool{Publisher: true, Listener: true, API: false, Broker: false} {
		if got := sel(mqtt.From[0].PodSelector, templates[c].Labels); got != want {
			t.Errorf("mqtt from %s: %v, want %v", c, got, want)
		}
	}
	other := testSim()
	other.Name = "other"
	otherTemplates, err := PodTemplates(other, "img")
	if err != nil {
		t.Fatal(err)
	}
	if sel(mqtt.From[0].PodSelector, otherTemplates[Publisher].Labels) {
		t.Error("another simulation's publisher may reach the broker")
	}
	if len(metrics.Ports) != 1 || metrics.Ports[0].Port.IntValue() != opsPort || len(metrics.From) != 0 {
		t.Errorf("metrics rule without metricsFrom should admit anyone on %d: %+v", opsPort, metrics)
	}

	peer := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}}}
	sim.Spec.NetworkPolicy.MetricsFrom = []networkingv1.NetworkPolicyPeer{peer}
	sim.Spec.NetworkPolicy.APIFrom = []networkingv1.NetworkPolicyPeer{peer}
	pols, err = NetworkPolicies(sim)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 2 || !equality.Semantic.DeepEqual(pols[0].Spec.Ingress[1].From, []networkingv1.NetworkPolicyPeer{peer}) ||
		pols[1].Name != sim.Name+"-api" || !equality.Semantic.DeepEqual(pols[1].Spec.Ingress[0].From, []networkingv1.NetworkPolicyPeer{peer}) ||
		pols[1].Spec.Ingress[0].Ports[0].Port.IntValue() != apiPort {
		t.Errorf("with metricsFrom and apiFrom: %+v", pols)
	}

	off := false
	sim.Spec.NetworkPolicy.Enabled = &off
	if pols, _ := NetworkPolicies(sim); len(pols) != 0 {
		t.Errorf("disabled: %+v", pols)
	}
	ext := testSim()
	ext.Spec.Broker.URL = "tcp://mosquitto:1883"
	if pols, _ := NetworkPolicies(ext); len(pols) != 0 {
		t.Errorf("external broker: %+v", pols)
	}
}
