package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/publisher"
)

// Names, labels and annotations the operator puts on what it creates. The managed-by label is
// also the manager's cache selector: objects without it are invisible to the operator.
const (
	FieldOwner = "chargesim-operator"

	LabelManagedBy  = "app.kubernetes.io/managed-by"
	ManagedByValue  = "chargesim-operator"
	LabelSimulation = "chargesim.io/simulation"
	LabelName       = "app.kubernetes.io/name"
	LabelInstance   = "app.kubernetes.io/instance"
	LabelComponent  = "app.kubernetes.io/component"
	LabelPartOf     = "app.kubernetes.io/part-of"
	LabelVersion    = "app.kubernetes.io/version"
	// LabelConfig marks a component's ConfigMap (its other labels are the component's).
	LabelConfig = "chargesim.io/config"
	// LabelPodIndex is set by the StatefulSet controller on each pod (Kubernetes ≥ 1.28).
	LabelPodIndex = "apps.kubernetes.io/pod-index"

	// AnnotationConfigHash on a pod template changes whenever the configuration the pods read at
	// start (ConfigMap keys, Secret contents) changes, so the workload rolls.
	AnnotationConfigHash = "chargesim.io/config-hash"

	// RunAsID is the uid/gid of the distroless "nonroot" user the image runs as.
	RunAsID int64 = 65532

	secretsDir = "/var/run/secrets/chargesim" //nolint:gosec // a mount path, not a credential
)

// Component is one workload of a simulation.
type Component string

// The workloads of a simulation.
const (
	Broker    Component = "broker"
	Publisher Component = "publisher"
	Listener  Component = "listener"
	API       Component = "api"
)

// Ports the components listen on (docs/configuration.md), and their names. The ops port of
// publisher, listener and broker is named "metrics", the API's port "http": these are the
// names the chart's PodMonitor scrapes (test/chart matches it against rendered pods).
const (
	MetricsPortName = "metrics"
	HTTPPortName    = "http"
	MQTTPortName    = "mqtt"

	opsPort  = 9090 // publisher, listener, broker: /healthz, /readyz, /metrics
	apiPort  = 8080 // api: routes and ops endpoints
	mqttPort = 1883 // managed broker
)

// Object names, all derived from the simulation's name (at most 42 characters, enforced by the
// CRD, so "<name>-publisher-<revision hash>" stays a valid label value).
func workloadName(sim string, c Component) string { return sim + "-" + string(c) }

// configMapName is the name of component c's ConfigMap: content-named and immutable, so that
// a pod always starts with the configuration its template was rendered with. A changed
// configuration is a new ConfigMap and a new template, applied together; the old ConfigMap
// stays for the old pods until the rollout is complete (collectConfigMaps).
func configMapName(sim string, c Component, data map[string]string) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%q\n", k, data[k])
	}
	return workloadName(sim, c) + "-config-" + hex.EncodeToString(h.Sum(nil))[:10]
}

// selectorLabels select one component's pods. They must never change: a workload's selector is
// immutable.
func selectorLabels(sim string, c Component) map[string]string {
	return map[string]string{
		LabelName:      "chargesim",
		LabelInstance:  sim,
		LabelComponent: string(c),
	}
}

// objectLabels go on every child and pod template.
func objectLabels(sim string, c Component) map[string]string {
	l := selectorLabels(sim, c)
	l[LabelManagedBy] = ManagedByValue
	l[LabelSimulation] = sim
	l[LabelPartOf] = "chargesim"
	return l
}

func selectorString(sim string, c Component) string {
	l := selectorLabels(sim, c)
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ","
		}
		s += k + "=" + l[k]
	}
	return s
}

func ownerRef(sim *v1alpha1.ChargerSimulation) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(v1alpha1.GroupVersion.String()).
		WithKind("ChargerSimulation").
		WithName(sim.Name).
		WithUID(sim.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// brokerDataDir is where the managed broker keeps its state (an emptyDir volume).
const brokerDataDir = "/var/lib/chargesim/broker"

// Environment variables (docs/configuration.md: --flag ⇔ CHARGESIM_FLAG).
const (
	envLogLevel      = "CHARGESIM_LOG_LEVEL"
	envLogFormat     = "CHARGESIM_LOG_FORMAT"
	envHTTPAddr      = "CHARGESIM_HTTP_ADDR"
	envMQTTURL       = "CHARGESIM_MQTT_URL"
	envMQTTAddr      = "CHARGESIM_MQTT_ADDR"
	envBrokerDataDir = "CHARGESIM_DATA_DIR"
	envMQTTUsername  = "CHARGESIM_MQTT_USERNAME"
	envMQTTPassword  = "CHARGESIM_MQTT_PASSWORD_FILE" //nolint:gosec // a variable name, not a credential
	envMQTTCA        = "CHARGESIM_MQTT_CA_FILE"
	// The managed broker's --username and --password-file.
	envBrokerUsername     = "CHARGESIM_USERNAME"
	envBrokerPasswordFile = "CHARGESIM_PASSWORD_FILE" //nolint:gosec // a variable name, not a credential
	envMQTTClientID       = "CHARGESIM_MQTT_CLIENT_ID"
	envPodName            = "POD_NAME" // not CHARGESIM_*: no flag reads it, it only feeds $(POD_NAME)
	envTopicPrefix        = "CHARGESIM_TOPIC_PREFIX"
	envChargers           = "CHARGESIM_CHARGERS"
	envConnectors         = "CHARGESIM_CONNECTORS"
	envShardIndex         = "CHARGESIM_SHARD_INDEX"
	envShardCount         = "CHARGESIM_SHARD_COUNT"
	envSessionInterval    = "CHARGESIM_SESSION_INTERVAL"
	envSessionJitter      = "CHARGESIM_SESSION_JITTER"
	envTimeScale          = "CHARGESIM_TIME_SCALE"
	envSeed               = "CHARGESIM_SEED"
	envDCShare            = "CHARGESIM_DC_SHARE"
	envACTariff           = "CHARGESIM_AC_TARIFF"
	envDCTariff           = "CHARGESIM_DC_TARIFF"
	envSessionFee         = "CHARGESIM_SESSION_FEE"
	envMongoURIFile       = "CHARGESIM_MONGO_URI_FILE"
	envMongoDatabase      = "CHARGESIM_MONGO_DATABASE"
	envMongoCA            = "CHARGESIM_MONGO_CA_FILE"
	envBatchSize          = "CHARGESIM_BATCH_SIZE"
	envFlushInterval      = "CHARGESIM_FLUSH_INTERVAL"
	envShareGroup         = "CHARGESIM_SHARE_GROUP"
	envEpoch              = "CHARGESIM_EPOCH"
	envRecordRuns         = "CHARGESIM_RECORD_RUNS"
	envAuditEvery         = "CHARGESIM_AUDIT_EVERY"
)

// componentKeys are the ConfigMap keys each component reads. Each component has its own
// ConfigMap with only these keys, so a listener setting does not restart the publisher.
var componentKeys = map[Component][]string{
	Broker: {envLogLevel, envLogFormat},
	Publisher: {envLogLevel, envLogFormat, envMQTTURL, envTopicPrefix, envChargers, envConnectors,
		envSessionInterval, envSessionJitter, envTimeScale, envSeed, envEpoch, envDCShare, envACTariff,
		envDCTariff, envSessionFee, envMongoDatabase},
	Listener: {envLogLevel, envLogFormat, envMQTTURL, envTopicPrefix, envMongoDatabase,
		envBatchSize, envFlushInterval},
	API: {envLogLevel, envLogFormat, envMongoDatabase},
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// managedBrokerURL is the address of the broker the operator runs for sim.
func managedBrokerURL(sim *v1alpha1.ChargerSimulation) string {
	return fmt.Sprintf("tcp://%s.%s.svc:%d", workloadName(sim.Name, Broker), sim.Namespace, mqttPort)
}

// maxMQTTClientID is the longest client ID the components accept (--mqtt-client-id).
const maxMQTTClientID = 128

// mqttClientIDPrefix goes before the pod name in a publisher's or listener's MQTT client ID:
// chargesim-<namespace>-<sim>-<component>-<i>. The components' default,
// chargesim-<component>-<hostname>, is the same for equally named simulations in two
// namespaces; on one external broker they would take each other's connections over, and two
// listeners would even resume each other's persistent session with both simulations'
// subscriptions in it. The namespace is shortened when the longest pod name (ordinal 999, the
// CRD's replica maximum) would not fit in 128 characters.
func mqttClientIDPrefix(sim *v1alpha1.ChargerSimulation, c Component) string {
	const prefix = "chargesim-"
	longestPod := len(workloadName(sim.Name, c)) + len("-999")
	ns := sim.Namespace
	if room := maxMQTTClientID - len(prefix) - len("-") - longestPod; len(ns) > room {
		ns = ns[:max(room, 0)]
	}
	return prefix + ns + "-"
}

// brokerURL is the broker publisher and listener connect to. The schema has checked the shape
// of an external URL; this catches what a regular expression cannot (ports, hosts).
func brokerURL(sim *v1alpha1.ChargerSimulation) (string, error) {
	if sim.Spec.Broker.IsManaged() {
		return managedBrokerURL(sim), nil
	}
	raw := sim.Spec.Broker.URL
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("broker.url %q: %w", raw, err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return "", fmt.Errorf("broker.url %q: unsupported scheme %q", raw, u.Scheme)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("broker.url %q: no host", raw)
	}
	if u.User != nil {
		return "", fmt.Errorf("broker.url %q: credentials belong in broker.credentialsSecretRef, not in the URL", raw)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("broker.url %q: port %q is not between 1 and 65535", raw, p)
		}
	} else if _, _, err := net.SplitHostPort(u.Host); err == nil {
		return "", fmt.Errorf("broker.url %q: empty port", raw)
	}
	return raw, nil
}

// renderConfig is the ConfigMap data: every non-secret setting of every component.
func renderConfig(sim *v1alpha1.ChargerSimulation, broker string) map[string]string {
	s := &sim.Spec
	d := map[string]string{
		envLogLevel:        s.Level(),
		envLogFormat:       "json",
		envMQTTURL:         broker,
		envChargers:        strconv.Itoa(int(s.FleetSize())),
		envConnectors:      strconv.Itoa(int(s.ConnectorsPerCharger())),
		envSessionInterval: s.Interval().String(),
		envSessionJitter:   formatFloat(s.Jitter()),
		envTimeScale:       formatFloat(s.Scale()),
		envSeed:            strconv.FormatInt(s.PRNGSeed(), 10),
		// The slot grid's anchor, pinned here rather than left to each pod's default: with the
		// seed it fixes every session's ID, so all shards (and the audit) must agree on it even
		// if a later image changed its default.
		envEpoch:         publisher.DefaultEpoch.Format(time.RFC3339),
		envDCShare:       formatFloat(s.Profile.DC()),
		envACTariff:      strconv.Itoa(int(s.Profile.ACTariff())),
		envDCTariff:      strconv.Itoa(int(s.Profile.DCTariff())),
		envSessionFee:    strconv.Itoa(int(s.Profile.SessionFeeCents)),
		envMongoDatabase: s.Mongo.DatabaseOrDefault(),
		envBatchSize:     strconv.Itoa(int(s.Listener.Batch())),
		envFlushInterval: s.Listener.Flush().String(),
	}
	if s.Broker.TopicPrefix != "" {
		d[envTopicPrefix] = s.Broker.TopicPrefix
	}
	return d
}

// configHash digests what component c reads at start: its ConfigMap keys and the contents of
// the Secret keys it uses (contents, not resourceVersions: relabelling a Secret must not
// restart anything).
func configHash(c Component, config map[string]string, secrets []secretUse) string {
	h := sha256.New()
	fmt.Fprintf(h, "component=%s\n", c)
	for _, k := range componentKeys[c] {
		if v, ok := config[k]; ok {
			fmt.Fprintf(h, "%s=%q\n", k, v)
		}
	}
	for _, s := range secrets {
		if s.usedBy(c) && !s.hotReload {
			fmt.Fprintf(h, "secret %s/%s=%s\n", s.name, s.key, s.digest)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// desired is everything the workloads are rendered from.
type desired struct {
	sim        *v1alpha1.ChargerSimulation
	image      string
	brokerURL  string
	config     map[string]string
	secrets    []secretUse
	configHash map[Component]string
}

func newDesired(sim *v1alpha1.ChargerSimulation, defaultImage, broker string, secrets []secretUse) *desired {
	img := sim.Spec.Image
	if img == "" {
		img = defaultImage
	}
	cfg := renderConfig(sim, broker)
	d := &desired{sim: sim, image: img, brokerURL: broker, config: cfg, secrets: secrets,
		configHash: map[Component]string{}}
	for _, c := range []Component{Broker, Publisher, Listener, API} {
		d.configHash[c] = configHash(c, cfg, secrets)
	}
	return d
}

// componentConfig is the part of the configuration component c reads.
func (d *desired) componentConfig(c Component) map[string]string {
	out := map[string]string{}
	for _, k := range componentKeys[c] {
		if v, ok := d.config[k]; ok {
			out[k] = v
		}
	}
	return out
}

func (d *desired) configMapName(c Component) string {
	return configMapName(d.sim.Name, c, d.componentConfig(c))
}

// configMap is component c's immutable, content-named ConfigMap.
func (d *desired) configMap(c Component) *corev1ac.ConfigMapApplyConfiguration {
	sim := d.sim
	l := objectLabels(sim.Name, c)
	l[LabelConfig] = "true"
	return corev1ac.ConfigMap(d.configMapName(c), sim.Namespace).
		WithLabels(l).
		WithOwnerReferences(ownerRef(sim)).
		WithImmutable(true).
		WithData(d.componentConfig(c))
}

// defaultResources keep a simulation schedulable on a small cluster while giving the scheduler
// something to go on; the memory limit stops a runaway component from starving its node.
func defaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
}

func resourcesAC(r *corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	if r == nil || (len(r.Requests) == 0 && len(r.Limits) == 0) {
		def := defaultResources()
		r = &def
	}
	ac := corev1ac.ResourceRequirements()
	if len(r.Requests) > 0 {
		ac.WithRequests(r.Requests)
	}
	if len(r.Limits) > 0 {
		ac.WithLimits(r.Limits)
	}
	return ac
}

// secretVolume mounts one key of a Secret as a read-only file.
type secretVolume struct {
	volume string // volume name
	secret string
	key    string
	dir    string
	file   string
}

func (v secretVolume) path() string { return v.dir + "/" + v.file }

// opsPortName names the port that serves /healthz, /readyz and /metrics.
func opsPortName(c Component) string {
	if c == API {
		return HTTPPortName
	}
	return MetricsPortName
}

// pod builds the pod template shared by every component.
func (d *desired) pod(c Component, port int32, res *corev1.ResourceRequirements, env []*corev1ac.EnvVarApplyConfiguration, vols []secretVolume) *corev1ac.PodTemplateSpecApplyConfiguration {
	sim := d.sim
	portName := opsPortName(c)
	ports := []*corev1ac.ContainerPortApplyConfiguration{
		corev1ac.ContainerPort().WithName(portName).WithContainerPort(port).WithProtocol(corev1.ProtocolTCP),
	}
	if c == Broker {
		ports = append(ports, corev1ac.ContainerPort().WithName(MQTTPortName).WithContainerPort(mqttPort).WithProtocol(corev1.ProtocolTCP))
	}
	env = append([]*corev1ac.EnvVarApplyConfiguration{
		corev1ac.EnvVar().WithName(envHTTPAddr).WithValue(fmt.Sprintf(":%d", port)),
	}, env...)
	container := corev1ac.Container().
		WithName(string(c)).
		WithImage(d.image).
		WithArgs(string(c)).
		WithPorts(ports...).
		WithEnvFrom(corev1ac.EnvFromSource().WithConfigMapRef(corev1ac.ConfigMapEnvSource().WithName(d.configMapName(c)))).
		WithEnv(env...).
		WithResources(resourcesAC(res)).
		WithLivenessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString(portName))).
			WithPeriodSeconds(10).WithTimeoutSeconds(2).WithFailureThreshold(3)).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString(portName))).
			WithPeriodSeconds(5).WithTimeoutSeconds(3).WithFailureThreshold(3)).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(RunAsID).
			WithRunAsGroup(RunAsID).
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")))
	if sim.Spec.ImagePullPolicy != "" {
		container.WithImagePullPolicy(sim.Spec.ImagePullPolicy)
	}
	spec := corev1ac.PodSpec().
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false). // service links would inject variables into the CHARGESIM_ namespace
		WithTerminationGracePeriodSeconds(30).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(RunAsID).
			WithRunAsGroup(RunAsID).
			WithFSGroup(RunAsID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	for _, v := range vols {
		container.WithVolumeMounts(corev1ac.VolumeMount().WithName(v.volume).WithMountPath(v.dir).WithReadOnly(true))
		spec.WithVolumes(corev1ac.Volume().WithName(v.volume).WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(v.secret).
			WithItems(corev1ac.KeyToPath().WithKey(v.key).WithPath(v.file)).
			WithDefaultMode(0o440)))
	}
	spec.WithContainers(container)
	for _, s := range sim.Spec.ImagePullSecrets {
		spec.WithImagePullSecrets(corev1ac.LocalObjectReference().WithName(s.Name))
	}
	podLabels, podAnnotations := objectLabels(sim.Name, c), map[string]string{AnnotationConfigHash: d.configHash[c]}
	if v := imageVersion(d.image); v != "" {
		podLabels[LabelVersion] = v
	}
	if o := podOptions(sim, c); o != nil {
		applyPodOptions(spec, o)
		// The operator's labels and annotations win: selectors and the config hash must hold.
		for k, v := range o.Labels {
			if _, ours := podLabels[k]; !ours {
				podLabels[k] = v
			}
		}
		for k, v := range o.Annotations {
			if _, ours := podAnnotations[k]; !ours {
				podAnnotations[k] = v
			}
		}
	}
	return corev1ac.PodTemplateSpec().
		WithLabels(podLabels).
		WithAnnotations(podAnnotations).
		WithSpec(spec)
}

// imageVersion is the tag of image as a label value (app.kubernetes.io/version), or "" when
// it has none that fits one (a digest, an over-long tag).
func imageVersion(image string) string {
	if strings.Contains(image, "@") {
		return ""
	}
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return ""
	}
	tag := image[i+1:]
	if len(tag) > 63 || !labelValue.MatchString(tag) {
		return ""
	}
	return tag
}

var labelValue = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)

// podOptions are component c's spec.<component>.pod.
func podOptions(sim *v1alpha1.ChargerSimulation, c Component) *v1alpha1.PodOptions {
	switch c {
	case Broker:
		if m := sim.Spec.Broker.Managed; m != nil {
			return m.Pod
		}
	case Publisher:
		return sim.Spec.Publisher.Pod
	case Listener:
		return sim.Spec.Listener.Pod
	case API:
		return sim.Spec.API.Pod
	}
	return nil
}

// applyPodOptions sets the scheduling options of o on spec. Tolerations, affinity and spread
// constraints are Kubernetes types the CRD's schema has already validated: they reach the apply
// configuration through their JSON form, which is the same.
func applyPodOptions(spec *corev1ac.PodSpecApplyConfiguration, o *v1alpha1.PodOptions) {
	if len(o.NodeSelector) > 0 {
		spec.WithNodeSelector(o.NodeSelector)
	}
	if o.PriorityClassName != "" {
		spec.WithPriorityClassName(o.PriorityClassName)
	}
	for i := range o.Tolerations {
		spec.WithTolerations(viaJSON(&o.Tolerations[i], &corev1ac.TolerationApplyConfiguration{}))
	}
	if o.Affinity != nil {
		spec.WithAffinity(viaJSON(o.Affinity, &corev1ac.AffinityApplyConfiguration{}))
	}
	for i := range o.TopologySpreadConstraints {
		spec.WithTopologySpreadConstraints(viaJSON(&o.TopologySpreadConstraints[i], &corev1ac.TopologySpreadConstraintApplyConfiguration{}))
	}
}

// viaJSON converts a typed Kubernetes object into its apply configuration. Both have the same
// JSON form, so this cannot fail for values that came from a validated object.
func viaJSON[T any](from any, to *T) *T {
	b, err := json.Marshal(from)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", from, err))
	}
	if err := json.Unmarshal(b, to); err != nil {
		panic(fmt.Sprintf("unmarshal into %T: %v", to, err))
	}
	return to
}

// mqttClient is the env and files publisher and listener need to reach the broker.
func (d *desired) mqttClient(c Component) ([]*corev1ac.EnvVarApplyConfiguration, []secretVolume) {
	b := &d.sim.Spec.Broker
	// The kubelet expands $(POD_NAME) only from variables listed before it.
	env := []*corev1ac.EnvVarApplyConfiguration{
		corev1ac.EnvVar().WithName(envPodName).WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath("metadata.name"))),
		corev1ac.EnvVar().WithName(envMQTTClientID).WithValue(mqttClientIDPrefix(d.sim, c) + "$(" + envPodName + ")"),
	}
	var vols []secretVolume
	if ref := credentialsRef(d.sim); ref != nil {
		env = append(env, corev1ac.EnvVar().WithName(envMQTTUsername).WithValueFrom(corev1ac.EnvVarSource().
			WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(ref.Name).WithKey(ref.UsernameKeyOrDefault()))))
		v := secretVolume{volume: "mqtt-credentials", secret: ref.Name, key: ref.PasswordKeyOrDefault(),
			dir: secretsDir + "/mqtt-credentials", file: "password"}
		vols = append(vols, v)
		env = append(env, corev1ac.EnvVar().WithName(envMQTTPassword).WithValue(v.path()))
	}
	if b.TLS != nil {
		ref := b.TLS.CASecretRef
		v := secretVolume{volume: "mqtt-ca", secret: ref.Name, key: ref.KeyOrDefault(),
			dir: secretsDir + "/mqtt-ca", file: "ca.crt"}
		vols = append(vols, v)
		env = append(env, corev1ac.EnvVar().WithName(envMQTTCA).WithValue(v.path()))
	}
	return env, vols
}

// mongoClient is the env and files publisher (run records), listener and API need to reach MongoDB. The URI is read
// from a file so it never shows up in the environment of the process.
func (d *desired) mongoClient() ([]*corev1ac.EnvVarApplyConfiguration, []secretVolume) {
	m := &d.sim.Spec.Mongo
	uri := secretVolume{volume: "mongo-uri", secret: m.URISecretRef.Name, key: m.URISecretRef.KeyOrDefault(),
		dir: secretsDir + "/mongo-uri", file: "uri"}
	env := []*corev1ac.EnvVarApplyConfiguration{corev1ac.EnvVar().WithName(envMongoURIFile).WithValue(uri.path())}
	vols := []secretVolume{uri}
	if m.CASecretRef != nil {
		v := secretVolume{volume: "mongo-ca", secret: m.CASecretRef.Name, key: m.CASecretRef.KeyOrDefault(),
			dir: secretsDir + "/mongo-ca", file: "ca.crt"}
		vols = append(vols, v)
		env = append(env, corev1ac.EnvVar().WithName(envMongoCA).WithValue(v.path()))
	}
	return env, vols
}

func (d *desired) deployment(c Component, replicas int32, tmpl *corev1ac.PodTemplateSpecApplyConfiguration) *appsv1ac.DeploymentApplyConfiguration {
	sim := d.sim
	spec := appsv1ac.DeploymentSpec().
		WithReplicas(replicas).
		WithRevisionHistoryLimit(3).
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(sim.Name, c))).
		WithTemplate(tmpl)
	if c == Broker {
		// One broker at a time: two behind the Service would split publishers and subscribers.
		spec.WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType))
	}
	return appsv1ac.Deployment(workloadName(sim.Name, c), sim.Namespace).
		WithLabels(objectLabels(sim.Name, c)).
		WithOwnerReferences(ownerRef(sim)).
		WithSpec(spec)
}

func (d *desired) service(c Component, typ corev1.ServiceType, headless bool, ports ...*corev1ac.ServicePortApplyConfiguration) *corev1ac.ServiceApplyConfiguration {
	sim := d.sim
	if typ == "" {
		typ = corev1.ServiceTypeClusterIP
	}
	spec := corev1ac.ServiceSpec().
		WithType(typ).
		WithSelector(selectorLabels(sim.Name, c)).
		WithPorts(ports...)
	if headless {
		spec.WithClusterIP(corev1.ClusterIPNone)
	}
	return corev1ac.Service(workloadName(sim.Name, c), sim.Namespace).
		WithLabels(objectLabels(sim.Name, c)).
		WithOwnerReferences(ownerRef(sim)).
		WithSpec(spec)
}

// withServiceOptions adds the user's Service options to svc: annotations (the operator's own
// labels are untouched), and the type-specific fields, which the CRD admits only with a type
// that has them. nodePort applies to the Service's first port, the component's main one (MQTT,
// HTTP).
func withServiceOptions(svc *corev1ac.ServiceApplyConfiguration, o *v1alpha1.ServiceOptions) {
	if o == nil {
		return
	}
	if len(o.Annotations) > 0 {
		svc.WithAnnotations(o.Annotations)
	}
	if o.NodePort != 0 && len(svc.Spec.Ports) > 0 {
		svc.Spec.Ports[0].WithNodePort(o.NodePort)
	}
	if o.ExternalTrafficPolicy != "" {
		svc.Spec.WithExternalTrafficPolicy(o.ExternalTrafficPolicy)
	}
	if len(o.LoadBalancerSourceRanges) > 0 {
		svc.Spec.WithLoadBalancerSourceRanges(o.LoadBalancerSourceRanges...)
	}
	if o.LoadBalancerClass != nil {
		svc.Spec.WithLoadBalancerClass(*o.LoadBalancerClass)
	}
}

// podDisruptionBudget is component c's PodDisruptionBudget, or nil when the spec asks for none.
// It selects exactly the component's pods (the workload's selector).
func (d *desired) podDisruptionBudget(c Component, p *v1alpha1.PodDisruptionBudgetSpec) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	if p == nil {
		return nil
	}
	sim := d.sim
	spec := policyv1ac.PodDisruptionBudgetSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(sim.Name, c)))
	if p.MinAvailable != nil {
		spec.WithMinAvailable(*p.MinAvailable)
	}
	if p.MaxUnavailable != nil {
		spec.WithMaxUnavailable(*p.MaxUnavailable)
	}
	return policyv1ac.PodDisruptionBudget(workloadName(sim.Name, c), sim.Namespace).
		WithLabels(objectLabels(sim.Name, c)).
		WithOwnerReferences(ownerRef(sim)).
		WithSpec(spec)
}

func servicePort(name string, port int32, target string) *corev1ac.ServicePortApplyConfiguration {
	return corev1ac.ServicePort().WithName(name).WithPort(port).WithTargetPort(intstr.FromString(target)).WithProtocol(corev1.ProtocolTCP)
}

// brokerObjects: the managed broker's Deployment and Service.
func (d *desired) brokerObjects() (*appsv1ac.DeploymentApplyConfiguration, *corev1ac.ServiceApplyConfiguration) {
	var res *corev1.ResourceRequirements
	if m := d.sim.Spec.Broker.Managed; m != nil {
		res = m.Resources
	}
	// Clients authenticate (credentials generated by the operator, brokerauth.go). The
	// password file is a Secret volume without subPath, which the kubelet updates in place:
	// the broker re-reads it, and a rotation does not restart it.
	creds := BrokerCredentialsName(d.sim.Name)
	accepted := secretVolume{volume: "broker-credentials", secret: creds, key: CredentialsAcceptedKey,
		dir: secretsDir + "/broker-credentials", file: "accepted-passwords"}
	env := []*corev1ac.EnvVarApplyConfiguration{
		corev1ac.EnvVar().WithName(envMQTTAddr).WithValue(fmt.Sprintf(":%d", mqttPort)),
		corev1ac.EnvVar().WithName(envBrokerDataDir).WithValue(brokerDataDir),
		corev1ac.EnvVar().WithName(envBrokerUsername).WithValueFrom(corev1ac.EnvVarSource().
			WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(creds).WithKey(CredentialsUsernameKey))),
		corev1ac.EnvVar().WithName(envBrokerPasswordFile).WithValue(accepted.path()),
	}
	tmpl := d.pod(Broker, opsPort, res, env, []secretVolume{accepted})
	// The broker keeps its sessions and queued messages in --data-dir, so that a crashed or
	// killed broker container (restarted by the kubelet in the same pod) loses none of the
	// messages it already acknowledged to a publisher. An emptyDir lives as long as the pod;
	// messages of a deleted pod are re-published by the publishers' replay after reconnecting
	// (docs/architecture.md). The root filesystem stays read-only.
	tmpl.Spec.Containers[0].WithVolumeMounts(corev1ac.VolumeMount().WithName("broker-data").WithMountPath(brokerDataDir))
	tmpl.Spec.WithVolumes(corev1ac.Volume().WithName("broker-data").WithEmptyDir(corev1ac.EmptyDirVolumeSource()))
	dep := d.deployment(Broker, 1, tmpl)
	var typ corev1.ServiceType
	var opts *v1alpha1.ServiceOptions
	if m := d.sim.Spec.Broker.Managed; m != nil {
		typ, opts = m.ServiceType, m.Service
	}
	svc := d.service(Broker, typ, false,
		servicePort(MQTTPortName, mqttPort, MQTTPortName), servicePort(MetricsPortName, opsPort, MetricsPortName))
	withServiceOptions(svc, opts)
	return dep, svc
}

// publisherReplicas is what the StatefulSet runs: the spec, or zero while suspended.
func publisherReplicas(sim *v1alpha1.ChargerSimulation) int32 {
	if sim.Spec.Suspend {
		return 0
	}
	return sim.Spec.Publisher.DesiredReplicas()
}

// publisherObjects: the publisher StatefulSet and the headless Service that governs it.
//
// The shard count is spec.publisher.replicas even while suspended, so suspending and resuming
// changes only .spec.replicas and does not roll the pods; changing the replica count changes
// the shard count of every pod and therefore rolls them all.
func (d *desired) publisherObjects() (*appsv1ac.StatefulSetApplyConfiguration, *corev1ac.ServiceApplyConfiguration) {
	sim := d.sim
	env := []*corev1ac.EnvVarApplyConfiguration{
		corev1ac.EnvVar().WithName(envShardIndex).WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").
				WithFieldPath(fmt.Sprintf("metadata.labels['%s']", LabelPodIndex)))),
		corev1ac.EnvVar().WithName(envShardCount).WithValue(strconv.Itoa(int(sim.Spec.Publisher.DesiredReplicas()))),
	}
	mqttEnv, vols := d.mqttClient(Publisher)
	env = append(env, mqttEnv...)
	// Run records (issue 10, audit): each shard records in the store which chargers it
	// simulated when, which is what makes the simulation auditable (status.audit), and resumes
	// where earlier runs stopped. It needs the same store access as the listener.
	env = append(env, corev1ac.EnvVar().WithName(envRecordRuns).WithValue("true"))
	menv, mvols := d.mongoClient()
	env = append(env, menv...)
	vols = append(vols, mvols...)
	tmpl := d.pod(Publisher, opsPort, sim.Spec.Publisher.Resources, env, vols)
	return d.statefulSet(Publisher, publisherReplicas(sim), tmpl), d.headlessService(Publisher)
}

// listenerObjects: the listener StatefulSet and its headless Service.
//
// A StatefulSet, not a Deployment, because each listener keeps a persistent MQTT session
// (clean session off) under its client ID, which is derived from the pod name: a Deployment's
// pods get new names on every rollout, and each rollout would strand the old sessions on the
// broker, where they keep receiving their share of the $share group and never acknowledge it.
// A StatefulSet's pod <sim>-listener-<i> comes back under the same name and resumes its own
// session, and never runs twice at the same time.
func (d *desired) listenerObjects() (*appsv1ac.StatefulSetApplyConfiguration, *corev1ac.ServiceApplyConfiguration) {
	sim := d.sim
	env, vols := d.mqttClient(Listener)
	env = append(env, corev1ac.EnvVar().WithName(envShareGroup).WithValue(shareGroup(sim)))
	menv, mvols := d.mongoClient()
	env = append(env, menv...)
	vols = append(vols, mvols...)
	tmpl := d.pod(Listener, opsPort, sim.Spec.Listener.Resources, env, vols)
	return d.statefulSet(Listener, sim.Spec.Listener.DesiredReplicas(), tmpl), d.headlessService(Listener)
}

// shareGroup is the listeners' shared-subscription group, $share/<group>/...: one per
// simulation. With the components' default group, two simulations on one external broker with
// the same topic prefix would be one group, and each would store a part of the other's
// sessions. Namespaces and names are DNS labels, so the group has none of / + # in it.
func shareGroup(sim *v1alpha1.ChargerSimulation) string {
	return "chargesim-" + sim.Namespace + "-" + sim.Name
}

// statefulSet gives a component stable pod names <sim>-<component>-<i>, started and stopped
// all at once (Parallel: the replicas do not depend on each other), governed by the headless
// Service of the same name.
func (d *desired) statefulSet(c Component, replicas int32, tmpl *corev1ac.PodTemplateSpecApplyConfiguration) *appsv1ac.StatefulSetApplyConfiguration {
	sim := d.sim
	name := workloadName(sim.Name, c)
	return appsv1ac.StatefulSet(name, sim.Namespace).
		WithLabels(objectLabels(sim.Name, c)).
		WithOwnerReferences(ownerRef(sim)).
		WithSpec(appsv1ac.StatefulSetSpec().
			WithReplicas(replicas).
			WithServiceName(name).
			WithPodManagementPolicy(appsv1.ParallelPodManagement).
			WithUpdateStrategy(appsv1ac.StatefulSetUpdateStrategy().WithType(appsv1.RollingUpdateStatefulSetStrategyType)).
			WithRevisionHistoryLimit(3).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(sim.Name, c))).
			WithTemplate(tmpl))
}

func (d *desired) headlessService(c Component) *corev1ac.ServiceApplyConfiguration {
	return d.service(c, corev1.ServiceTypeClusterIP, true, servicePort(MetricsPortName, opsPort, MetricsPortName))
}

func (d *desired) apiObjects() (*appsv1ac.DeploymentApplyConfiguration, *corev1ac.ServiceApplyConfiguration) {
	sim := d.sim
	env, vols := d.mongoClient()
	// The API audits the recent sessions and exports chargesim_audit_* gauges, as `chargesim
	// run` does; the operator's status.audit asks the same API (Auditor).
	env = append(env, corev1ac.EnvVar().WithName(envAuditEvery).WithValue(apiAuditEvery.String()))
	dep := d.deployment(API, sim.Spec.API.DesiredReplicas(), d.pod(API, apiPort, sim.Spec.API.Resources, env, vols))
	svc := d.service(API, sim.Spec.API.ServiceType, false, servicePort(HTTPPortName, sim.Spec.API.ServicePort(), HTTPPortName))
	withServiceOptions(svc, sim.Spec.API.Service)
	return dep, svc
}

// apiAuditEvery is how often each API replica audits for its metrics.
const apiAuditEvery = time.Minute

// apiAddress is the in-cluster address of the API Service.
func apiAddress(sim *v1alpha1.ChargerSimulation) string {
	return fmt.Sprintf("%s.%s.svc:%d", workloadName(sim.Name, API), sim.Namespace, sim.Spec.API.ServicePort())
}

// sessionRate is status.sessionsPerSecond: the configured rate, 0 while suspended.
func sessionRate(sim *v1alpha1.ChargerSimulation) string {
	if sim.Spec.Suspend {
		return "0"
	}
	return formatRate(sim.Spec.SessionsPerSecond())
}

// formatRate prints a rate with four significant digits and never in exponent form, which
// reads badly in a kubectl column.
func formatRate(r float64) string {
	if r <= 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return "0"
	}
	if r >= 1000 {
		return strconv.FormatFloat(math.Round(r), 'f', 0, 64)
	}
	exp := math.Floor(math.Log10(r))
	scale := math.Pow(10, 3-exp)
	return strconv.FormatFloat(math.Round(r*scale)/scale, 'f', -1, 64)
}

// PodTemplates renders the pod template of every component of sim as the operator would
// (Secret contents read as empty), for tests that check what selects these pods: the chart's
// monitors, NetworkPolicies.
func PodTemplates(sim *v1alpha1.ChargerSimulation, image string) (map[Component]corev1.PodTemplateSpec, error) {
	broker, err := brokerURL(sim)
	if err != nil {
		return nil, err
	}
	d := newDesired(sim, image, broker, secretUses(sim))
	bdep, _ := d.brokerObjects()
	pub, _ := d.publisherObjects()
	lis, _ := d.listenerObjects()
	api, _ := d.apiObjects()
	out := map[Component]corev1.PodTemplateSpec{}
	for c, ac := range map[Component]any{Broker: bdep.Spec.Template, Publisher: pub.Spec.Template, Listener: lis.Spec.Template, API: api.Spec.Template} {
		b, err := json.Marshal(ac)
		if err != nil {
			return nil, fmt.Errorf("marshal %s template: %w", c, err)
		}
		var t corev1.PodTemplateSpec
		if err := json.Unmarshal(b, &t); err != nil {
			return nil, fmt.Errorf("decode %s template: %w", c, err)
		}
		out[c] = t
	}
	return out, nil
}
