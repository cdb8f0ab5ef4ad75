package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Condition types of a ChargerSimulation. Reconciling and Stalled are the kstatus conditions
// (sigs.k8s.io/cli-utils/pkg/kstatus, read by Flux, kpt, Config Sync); Ready is the summary
// for people and tools that read Ready, Progressing says a rollout is under way, Degraded says
// the operator cannot make the cluster match the spec (and why).
const (
	ConditionReady       = "Ready"
	ConditionProgressing = "Progressing"
	ConditionDegraded    = "Degraded"
	// ConditionReconciling (kstatus): True while the operator works towards the spec — a
	// rollout in progress, or a retry after a transient error.
	ConditionReconciling = "Reconciling"
	// ConditionStalled (kstatus): True when the simulation cannot reach the spec without the
	// user: a missing Secret, a name conflict, an object the API server refuses, a stuck
	// rollout. Its reason is the Degraded reason.
	ConditionStalled = "Stalled"
)

// Condition reasons. A Ready=False condition carries the Degraded reason when the simulation is
// degraded, so `kubectl get csim -o wide` shows the cause in one place.
const (
	// ReasonAuditIncomplete (event): the last audit found missing, unexpected or duplicate
	// sessions in its window.
	ReasonAuditIncomplete = "AuditIncomplete"
	// ReasonAvailable: every component has all its replicas updated and available.
	ReasonAvailable = "Available"
	// ReasonSuspended: spec.suspend is set; the publisher runs zero replicas, the rest is available.
	ReasonSuspended = "Suspended"
	// ReasonComponentsNotReady: some component has fewer available replicas than desired.
	ReasonComponentsNotReady = "ComponentsNotReady"
	// ReasonRollingOut: a workload is being created, updated or scaled.
	ReasonRollingOut = "RollingOut"
	// ReasonWaitingForListener: the publisher of a new simulation is not created before a
	// listener is ready (subscribed), because the broker drops messages nobody subscribed to
	// yet. Reason of both Progressing=True and Ready=False.
	ReasonWaitingForListener = "WaitingForListener"
	// ReasonRolloutComplete: nothing is rolling out.
	ReasonRolloutComplete = "RolloutComplete"
	// ReasonAsExpected: nothing is wrong.
	ReasonAsExpected = "AsExpected"
	// ReasonSecretNotFound: a Secret named in the spec does not exist.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyNotFound: a Secret exists but lacks the key the spec names (or it is empty).
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	// ReasonInvalidBrokerURL: spec.broker.url passed the schema but cannot be used.
	ReasonInvalidBrokerURL = "InvalidBrokerURL"
	// ReasonApplyFailed: the API server refused a child object.
	ReasonApplyFailed = "ApplyFailed"
	// ReasonNameConflict: an object the simulation needs (named after it) exists and belongs
	// to someone else; the operator leaves it alone.
	ReasonNameConflict = "NameConflict"
	// ReasonRecreated (event): a child the API server refused to update (a hand edit made the
	// operator's fields invalid, or an immutable field changed) was deleted and recreated.
	ReasonRecreated = "Recreated"
	// ReasonRetrying: the last reconcile met a transient error (timeout, conflict) and is
	// retried; reason of Reconciling=True.
	ReasonRetrying = "Retrying"
	// ReasonRolloutStalled: a Deployment reports ProgressDeadlineExceeded.
	ReasonRolloutStalled = "RolloutStalled"
)

// ChargerSimulationSpec is the desired simulation: the fleet, how it charges, where its
// sessions go, and how each component of the pipeline runs.
//
// A negative or zero chargers count is the minimum's to report (the rule passes on it, so that
// the message says what is wrong).
// +kubebuilder:validation:XValidation:rule="!has(self.publisher) || !has(self.publisher.replicas) || !has(self.chargers) || self.chargers < 1 || self.chargers >= self.publisher.replicas",message="spec.chargers must be at least spec.publisher.replicas: each publisher replica simulates its own share of the chargers",fieldPath=".chargers"
type ChargerSimulationSpec struct {
	// chargers is the size of the simulated fleet (charger IDs 1..chargers). The publisher
	// replicas split it: replica i simulates the chargers c with (c-1) % replicas == i.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:default=10
	// +optional
	Chargers int32 `json:"chargers,omitempty"`

	// connectors per charger.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	// +kubebuilder:default=2
	// +optional
	Connectors int32 `json:"connectors,omitempty"`

	// sessionInterval is how often each charger starts a session, in simulated time
	// (a Go duration such as 60s, 5m or 1h30m; at least 1s).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s')",message="sessionInterval must be a duration of at least 1s, such as 30s, 5m or 1h30m"
	// +kubebuilder:default="60s"
	// +optional
	SessionInterval *metav1.Duration `json:"sessionInterval,omitempty"`

	// sessionJitter is the fraction of the interval by which each session start is randomly
	// shifted, between 0 (clockwork) and 1.
	// +kubebuilder:validation:XValidation:rule="self >= 0.0 && self <= 1.0",message="sessionJitter is a fraction of the session interval and must be between 0 and 1, e.g. 0.2"
	// +kubebuilder:default=0.2
	// +optional
	SessionJitter *float64 `json:"sessionJitter,omitempty"`

	// timeScale is the number of simulated seconds per wall-clock second (1 = real time,
	// 60 = one simulated minute per second).
	// +kubebuilder:validation:XValidation:rule="self > 0.0 && self <= 100000.0",message="timeScale must be greater than 0 and at most 100000 (1 = real time, 60 = one simulated minute per second)"
	// +kubebuilder:default=1
	// +optional
	TimeScale *float64 `json:"timeScale,omitempty"`

	// seed of the pseudo-random generator: the same seed, fleet and time scale reproduce the
	// same sessions.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=1
	// +optional
	Seed *int64 `json:"seed,omitempty"`

	// suspend stops publishing: the publisher is scaled to zero while broker, listener, API and
	// the stored data stay.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// profile is how the fleet charges: AC/DC mix and prices.
	// +kubebuilder:default={}
	// +optional
	Profile ChargingProfile `json:"profile,omitempty"`

	// broker is where sessions are published. Without a url the operator runs a broker for
	// this simulation in its namespace (`chargesim broker`, a Deployment and a Service).
	// +kubebuilder:default={}
	// +optional
	Broker BrokerSpec `json:"broker,omitempty"`

	// mongo is where the listener stores sessions and the API reads them.
	// +required
	Mongo MongoSpec `json:"mongo"`

	// publisher simulates the chargers (a StatefulSet: each pod learns its shard index from
	// its pod-index label).
	// +kubebuilder:default={}
	// +optional
	Publisher PublisherSpec `json:"publisher,omitempty"`

	// listener subscribes to the sessions and stores them.
	// +kubebuilder:default={}
	// +optional
	Listener ListenerSpec `json:"listener,omitempty"`

	// api serves the stored sessions over HTTP.
	// +kubebuilder:default={}
	// +optional
	API APISpec `json:"api,omitempty"`

	// networkPolicy restricts who may reach the simulation's pods (NetworkPolicies the
	// operator renders; they take effect only with a CNI that enforces them).
	// +kubebuilder:default={}
	// +optional
	NetworkPolicy NetworkPolicySpec `json:"networkPolicy,omitempty"`

	// image of chargesim for every component; empty means the operator's --default-image.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="!self.contains(' ')",message="image must not contain spaces"
	// +optional
	Image string `json:"image,omitempty"`

	// imagePullSecrets of every component's pods, to pull a private spec.image: Secrets of type
	// kubernetes.io/dockerconfigjson in the simulation's namespace.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=name
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// imagePullPolicy of every component; empty means Kubernetes' default for the image tag.
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// logLevel of every component.
	// +kubebuilder:validation:Enum=debug;info;warn;error
	// +kubebuilder:default=info
	// +optional
	LogLevel string `json:"logLevel,omitempty"`
}

// NetworkPolicySpec: the NetworkPolicies of a simulation. With a managed broker, the policy
// <sim>-broker admits MQTT only from this simulation's publisher and listener pods, and the
// broker's metrics port from metricsFrom (from anywhere when it is empty, so that Prometheus
// scrapes without configuration). With apiFrom set, the policy <sim>-api admits the API's port
// only from those peers.
type NetworkPolicySpec struct {
	// enabled renders the NetworkPolicies; false removes them.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// metricsFrom are the peers (e.g. the monitoring namespace) that may reach the managed
	// broker's metrics port (9090); empty means any.
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	// +optional
	MetricsFrom []networkingv1.NetworkPolicyPeer `json:"metricsFrom,omitempty"`

	// apiFrom, when set, are the only peers that may reach the API's port (8080): your
	// clients, an ingress controller, and the operator itself (its audit fills status.audit
	// through the API). Empty: the API is not restricted.
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	// +optional
	APIFrom []networkingv1.NetworkPolicyPeer `json:"apiFrom,omitempty"`
}

// ChargingProfile is the AC/DC mix of the fleet and its prices.
type ChargingProfile struct {
	// dcShare is the share of chargers that are DC fast chargers (the rest are AC), 0 to 1.
	// +kubebuilder:validation:XValidation:rule="self >= 0.0 && self <= 1.0",message="dcShare is the share of DC chargers and must be between 0 and 1, e.g. 0.3"
	// +kubebuilder:default=0.3
	// +optional
	DCShare *float64 `json:"dcShare,omitempty"`

	// acTariffCents is the AC price in cents per kWh.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	// +kubebuilder:default=35
	// +optional
	ACTariffCents *int32 `json:"acTariffCents,omitempty"`

	// dcTariffCents is the DC price in cents per kWh.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	// +kubebuilder:default=59
	// +optional
	DCTariffCents *int32 `json:"dcTariffCents,omitempty"`

	// sessionFeeCents is a fixed fee per session in cents.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	SessionFeeCents int32 `json:"sessionFeeCents,omitempty"`
}

// BrokerSpec selects the MQTT broker. With url empty the operator manages one.
//
// +kubebuilder:validation:XValidation:rule="has(self.url) || (!has(self.credentialsSecretRef) && !has(self.tls))",message="a managed broker (no broker.url) takes no tls or credentialsSecretRef: set broker.url to use an external broker with them"
// +kubebuilder:validation:XValidation:rule="!has(self.url) || !has(self.managed)",message="broker.managed configures the operator's own broker and cannot be combined with broker.url"
type BrokerSpec struct {
	// url of an external broker, e.g. tcp://mosquitto.mqtt.svc:1883 or ssl://broker:8883.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^(tcp|mqtt|ssl|tls|mqtts|ws|wss)://[^/?#@ ]+([/?#].*)?$')",message="broker.url must be <scheme>://<host>[:<port>] with scheme tcp, mqtt, ssl, tls, mqtts, ws or wss, e.g. tcp://mosquitto:1883"
	// +optional
	URL string `json:"url,omitempty"`

	// topicPrefix is prepended as <prefix>/ to every session topic.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="!self.contains('+') && !self.contains('#') && !self.startsWith('/') && !self.endsWith('/') && !self.startsWith('$')",message="topicPrefix must not contain MQTT wildcards (+, #), start with $ or start or end with /"
	// +optional
	TopicPrefix string `json:"topicPrefix,omitempty"`

	// credentialsSecretRef names a Secret with the username and password for an external broker.
	// +optional
	CredentialsSecretRef *CredentialsSecretRef `json:"credentialsSecretRef,omitempty"`

	// tls verifies an external broker with a CA bundle (and enables TLS for tcp:// URLs).
	// +optional
	TLS *BrokerTLS `json:"tls,omitempty"`

	// managed tunes the broker the operator runs when url is empty.
	// +optional
	Managed *ManagedBrokerSpec `json:"managed,omitempty"`
}

// CredentialsSecretRef names a Secret in the simulation's namespace holding MQTT credentials.
type CredentialsSecretRef struct {
	// name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// usernameKey is the key of the username.
	// +kubebuilder:default=username
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	UsernameKey string `json:"usernameKey,omitempty"`
	// passwordKey is the key of the password.
	// +kubebuilder:default=password
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	PasswordKey string `json:"passwordKey,omitempty"`
}

// BrokerTLS is the trust anchor for an external broker.
type BrokerTLS struct {
	// caSecretRef names the Secret key holding the PEM CA bundle.
	// +required
	CASecretRef CASecretRef `json:"caSecretRef"`
}

// CASecretRef names a key of a Secret in the simulation's namespace holding a PEM CA bundle.
type CASecretRef struct {
	// name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// key holding the PEM bundle.
	// +kubebuilder:default="ca.crt"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// PodOptions are the pod settings platform teams need on every component: where the pods may
// run, how they are spread, their priority, and extra labels and annotations (for a service
// mesh, a cost allocation tool, a backup policy). The operator's own labels and annotations win
// over these; selector labels cannot be changed.
type PodOptions struct {
	// nodeSelector of the pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// tolerations of the pods.
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// affinity of the pods (corev1.Affinity). Its schema is left to the API server's pod
	// validation (it would make the CRD too large for client-side kubectl apply): an invalid
	// affinity makes the simulation Stalled with the server's message.
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// topologySpreadConstraints of the pods; their labelSelector usually selects the
	// component: app.kubernetes.io/instance=<simulation>, app.kubernetes.io/component=<component>.
	// +optional
	// +listType=atomic
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// priorityClassName of the pods.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
	// labels added to the pods.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// annotations added to the pods.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ManagedBrokerSpec tunes the in-namespace broker.
// +kubebuilder:validation:XValidation:rule="!has(self.service) || !has(self.service.nodePort) || (has(self.serviceType) && self.serviceType != 'ClusterIP')",message="broker.managed.service.nodePort needs broker.managed.serviceType NodePort or LoadBalancer (a ClusterIP Service has no node port)",fieldPath=".service.nodePort"
// +kubebuilder:validation:XValidation:rule="!has(self.service) || !has(self.service.externalTrafficPolicy) || (has(self.serviceType) && self.serviceType != 'ClusterIP')",message="broker.managed.service.externalTrafficPolicy needs broker.managed.serviceType NodePort or LoadBalancer (it governs traffic from outside the cluster)",fieldPath=".service.externalTrafficPolicy"
// +kubebuilder:validation:XValidation:rule="!has(self.service) || ((!has(self.service.loadBalancerSourceRanges) || size(self.service.loadBalancerSourceRanges) == 0) && !has(self.service.loadBalancerClass)) || (has(self.serviceType) && self.serviceType == 'LoadBalancer')",message="broker.managed.service.loadBalancerSourceRanges and loadBalancerClass need broker.managed.serviceType LoadBalancer",fieldPath=".service"
type ManagedBrokerSpec struct {
	// resources of the broker container; empty means small requests and a memory limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// pod sets scheduling and metadata options of this component's pods.
	// +optional
	Pod *PodOptions `json:"pod,omitempty"`

	// serviceType of the broker Service: NodePort or LoadBalancer let MQTT clients outside the
	// cluster reach the broker (its MQTT port; nodePort applies to it).
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	ServiceType corev1.ServiceType `json:"serviceType,omitempty"`

	// service sets annotations and the type-specific options of the broker Service.
	// +optional
	Service *ServiceOptions `json:"service,omitempty"`
}

// MongoSpec is the store.
type MongoSpec struct {
	// uriSecretRef names the Secret key holding the MongoDB URI (it usually carries credentials).
	// +required
	URISecretRef URISecretRef `json:"uriSecretRef"`

	// database name.
	// +kubebuilder:default=chargesim
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="!self.contains('/') && !self.contains('.') && !self.contains(' ') && !self.contains('$')",message="mongo.database must not contain /, ., spaces or $"
	// +optional
	Database string `json:"database,omitempty"`

	// caSecretRef names the Secret key holding a PEM CA for TLS to MongoDB (the URI also needs
	// tls=true).
	// +optional
	CASecretRef *CASecretRef `json:"caSecretRef,omitempty"`
}

// URISecretRef names a key of a Secret in the simulation's namespace holding a URI.
type URISecretRef struct {
	// name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// key holding the URI.
	// +kubebuilder:default=uri
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// PublisherSpec runs the simulated fleet.
type PublisherSpec struct {
	// replicas of the publisher; the chargers are split between them without overlap.
	// Changing it restarts the publisher pods, because each pod's share depends on it.
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="publisher.replicas must be at least 1: set spec.suspend to stop publishing"
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// resources of the publisher container; empty means small requests and a memory limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// pod sets scheduling and metadata options of this component's pods.
	// +optional
	Pod *PodOptions `json:"pod,omitempty"`
}

// ListenerSpec runs the subscribers that store sessions.
type ListenerSpec struct {
	// replicas of the listener; they share one MQTT shared subscription. Each replica
	// <name>-listener-<i> keeps a persistent session on the broker: scaling down leaves the
	// removed replicas' sessions there until the broker expires them (docs/operator.md).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// resources of the listener container; empty means small requests and a memory limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// pod sets scheduling and metadata options of this component's pods.
	// +optional
	Pod *PodOptions `json:"pod,omitempty"`

	// batchSize is the maximum number of sessions per bulk write.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=500
	// +optional
	BatchSize int32 `json:"batchSize,omitempty"`

	// podDisruptionBudget, when set, gives the listener pods a PodDisruptionBudget, so that a
	// node drain does not take every subscriber at once; unset, none exists (the operator
	// deletes its own).
	// +optional
	PodDisruptionBudget *PodDisruptionBudgetSpec `json:"podDisruptionBudget,omitempty"`

	// flushInterval is the longest a session waits for its batch (a duration, at least 10ms).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('10ms') && duration(self) <= duration('1m')",message="listener.flushInterval must be a duration between 10ms and 1m, such as 200ms or 1s"
	// +kubebuilder:default="200ms"
	// +optional
	FlushInterval *metav1.Duration `json:"flushInterval,omitempty"`
}

// APISpec runs the REST API and its Service.
// +kubebuilder:validation:XValidation:rule="!has(self.service) || !has(self.service.nodePort) || (has(self.serviceType) && self.serviceType != 'ClusterIP')",message="api.service.nodePort needs api.serviceType NodePort or LoadBalancer (a ClusterIP Service has no node port)",fieldPath=".service.nodePort"
// +kubebuilder:validation:XValidation:rule="!has(self.service) || !has(self.service.externalTrafficPolicy) || (has(self.serviceType) && self.serviceType != 'ClusterIP')",message="api.service.externalTrafficPolicy needs api.serviceType NodePort or LoadBalancer (it governs traffic from outside the cluster)",fieldPath=".service.externalTrafficPolicy"
// +kubebuilder:validation:XValidation:rule="!has(self.service) || ((!has(self.service.loadBalancerSourceRanges) || size(self.service.loadBalancerSourceRanges) == 0) && !has(self.service.loadBalancerClass)) || (has(self.serviceType) && self.serviceType == 'LoadBalancer')",message="api.service.loadBalancerSourceRanges and loadBalancerClass need api.serviceType LoadBalancer",fieldPath=".service"
type APISpec struct {
	// replicas of the API.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// resources of the API container; empty means small requests and a memory limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// pod sets scheduling and metadata options of this component's pods.
	// +optional
	Pod *PodOptions `json:"pod,omitempty"`

	// serviceType of the API Service.
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +kubebuilder:default=ClusterIP
	// +optional
	ServiceType corev1.ServiceType `json:"serviceType,omitempty"`

	// port of the API Service (the container always listens on 8080).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=8080
	// +optional
	Port int32 `json:"port,omitempty"`

	// service sets annotations and the type-specific options of the API Service.
	// +optional
	Service *ServiceOptions `json:"service,omitempty"`

	// podDisruptionBudget, when set, gives the API pods a PodDisruptionBudget, so that a node
	// drain leaves enough of them serving; unset, none exists (the operator deletes its own).
	// +optional
	PodDisruptionBudget *PodDisruptionBudgetSpec `json:"podDisruptionBudget,omitempty"`
}

// ServiceOptions are the options of a Service that clients outside the simulation reach a
// component through: annotations (a cloud load balancer's settings, external-dns) and the
// options of the NodePort and LoadBalancer types. The Service's labels, selector and ports stay
// the operator's.
type ServiceOptions struct {
	// annotations added to the Service.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
	// nodePort of the Service's main port (NodePort and LoadBalancer types); unset, the
	// cluster picks one. It must lie in the cluster's node port range (30000-32767 by default).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	NodePort int32 `json:"nodePort,omitempty"`
	// externalTrafficPolicy (NodePort and LoadBalancer types): Local keeps the client's source
	// address and avoids a second hop, Cluster (the cluster's default) spreads over all nodes.
	// +kubebuilder:validation:Enum=Cluster;Local
	// +optional
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy,omitempty"`
	// loadBalancerSourceRanges are the client CIDRs a LoadBalancer admits (if the cloud
	// provider supports it); empty admits everyone.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="self.all(r, r.matches('^[0-9]{1,3}([.][0-9]{1,3}){3}/[0-9]{1,2}$') || r.matches('^[0-9a-fA-F:]*:[0-9a-fA-F:.]*/[0-9]{1,3}$'))",message="loadBalancerSourceRanges must be CIDRs such as 203.0.113.0/24 or 2001:db8::/32"
	// +listType=atomic
	// +optional
	LoadBalancerSourceRanges []string `json:"loadBalancerSourceRanges,omitempty"`
	// loadBalancerClass selects the load balancer implementation (LoadBalancer type). The API
	// server does not let it change: changing it makes the operator recreate the Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +optional
	LoadBalancerClass *string `json:"loadBalancerClass,omitempty"`
}

// PodDisruptionBudgetSpec is a component's PodDisruptionBudget: exactly one of minAvailable
// and maxUnavailable, a number of pods or a percentage of the replicas ("50%").
// +kubebuilder:validation:XValidation:rule="has(self.minAvailable) != has(self.maxUnavailable)",message="podDisruptionBudget takes exactly one of minAvailable and maxUnavailable"
type PodDisruptionBudgetSpec struct {
	// minAvailable is how many pods must stay available during a voluntary disruption (a node
	// drain). As many as there are replicas blocks drains until a replica is added.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",message="minAvailable must be a number of pods (0 or more) or a percentage such as 50%"
	// +optional
	MinAvailable *intstr.IntOrString `json:"minAvailable,omitempty"`
	// maxUnavailable is how many pods a voluntary disruption may take down at once.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",message="maxUnavailable must be a number of pods (0 or more) or a percentage such as 50%"
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// ComponentStatus is what the operator last saw of one component's workload.
type ComponentStatus struct {
	// desiredReplicas is the number of replicas the spec asks for (0 for a suspended publisher).
	// +optional
	DesiredReplicas int32 `json:"desiredReplicas"`
	// replicas is the number of pods the workload currently has.
	// +optional
	Replicas int32 `json:"replicas"`
	// readyReplicas is the number of those pods that are ready.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`
	// selector is the label selector of the component's pods (for the scale subresource).
	// +optional
	Selector string `json:"selector,omitempty"`
}

// ChargerSimulationStatus is the observed state.
type ChargerSimulationStatus struct {
	// observedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Progressing, Degraded.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// publisher workload status.
	// +optional
	Publisher ComponentStatus `json:"publisher"`
	// listener workload (StatefulSet) status.
	// +optional
	Listener ComponentStatus `json:"listener"`
	// api workload status.
	// +optional
	API ComponentStatus `json:"api"`
	// broker workload status; absent with an external broker.
	// +optional
	Broker *ComponentStatus `json:"broker,omitempty"`

	// brokerURL is the broker the publisher and listener use.
	// +optional
	BrokerURL string `json:"brokerURL,omitempty"`
	// apiAddress is the in-cluster address of the API Service, <service>.<namespace>.svc:<port>.
	// +optional
	APIAddress string `json:"apiAddress,omitempty"`
	// sessionsPerSecond is the configured session rate of the whole fleet,
	// chargers × timeScale / sessionInterval (0 while suspended).
	// +optional
	SessionsPerSecond string `json:"sessionsPerSecond,omitempty"`

	// audit is the operator's last audit of the simulation (GET /api/v1/audit of its API):
	// the sessions the publisher shards must have produced in a recent window against the
	// stored ones. Missing sessions raise an AuditIncomplete event; they do not change Ready.
	// +optional
	Audit *AuditStatus `json:"audit,omitempty"`

	// progress is whether data flows through the pipeline, as the simulation's own components
	// last reported it (every --progress-interval): published by the publisher pods, stored
	// and rejected in the store (GET /api/v1/stats of the API), and the lag of the newest
	// stored session. A probe that fails keeps the last figures with an error; it changes no
	// condition and raises no event.
	// +optional
	Progress *ProgressStatus `json:"progress,omitempty"`
}

// ProgressStatus is the pipeline's progress as its components report it.
type ProgressStatus struct {
	// published is the number of sessions the broker acknowledged to the running publisher
	// pods (chargesim_publisher_sessions_published_total summed over them). It counts since
	// each pod started, so it restarts with the pods; absent when a pod could not be asked.
	// +optional
	Published *int64 `json:"published,omitempty"`
	// stored is the number of sessions in the store.
	// +optional
	Stored int64 `json:"stored"`
	// rejected is the number of messages the listeners kept aside as invalid.
	// +optional
	Rejected int64 `json:"rejected"`
	// lastSessionTime is when the newest stored session ended.
	// +optional
	LastSessionTime *metav1.Time `json:"lastSessionTime,omitempty"`
	// lag is how old the newest stored session was when the figures were taken (lastTime −
	// lastSessionTime): a few seconds while data flows; growing while it does not (or the
	// simulation is suspended). Absent while nothing is stored.
	// +optional
	Lag *metav1.Duration `json:"lag,omitempty"`
	// lastTime is when these figures were obtained.
	// +optional
	LastTime metav1.Time `json:"lastTime,omitempty"`
	// error is why the latest attempt failed (the figures above are then from lastTime);
	// empty when it succeeded.
	// +optional
	Error string `json:"error,omitempty"`
	// lastAttemptTime is when the operator last asked.
	// +optional
	LastAttemptTime metav1.Time `json:"lastAttemptTime,omitempty"`
}

// AuditStatus is the result of the last audit of a recent window.
type AuditStatus struct {
	// from is the start of the audited window (sessions that ended in [from, to)).
	// +optional
	From metav1.Time `json:"from,omitempty"`
	// to is the end of the audited window.
	// +optional
	To metav1.Time `json:"to,omitempty"`
	// expected is the number of sessions the recorded publisher runs produced in the window.
	// +optional
	Expected int64 `json:"expected"`
	// stored is the number of those sessions found in the store.
	// +optional
	Stored int64 `json:"stored"`
	// missing is expected minus stored: sessions published but never stored.
	// +optional
	Missing int64 `json:"missing"`
	// unexpected is the number of stored sessions no recorded run produced.
	// +optional
	Unexpected int64 `json:"unexpected"`
	// duplicates is the number of sessions stored more than once.
	// +optional
	Duplicates int64 `json:"duplicates"`
	// complete: nothing missing, unexpected or duplicated in the window.
	// +optional
	Complete bool `json:"complete"`
	// missingKeys are up to 10 of the missing sessions' IDs.
	// +optional
	// +listType=atomic
	MissingKeys []string `json:"missingKeys,omitempty"`
	// lastTime is when this result was obtained.
	// +optional
	LastTime metav1.Time `json:"lastTime,omitempty"`
	// error is why the latest attempt failed (the counts above are then from lastTime); empty
	// when it succeeded.
	// +optional
	Error string `json:"error,omitempty"`
	// lastAttemptTime is when the operator last tried to audit.
	// +optional
	LastAttemptTime metav1.Time `json:"lastAttemptTime,omitempty"`
}

// ChargerSimulation runs a simulated EV charging fleet and its telemetry pipeline:
// publisher → MQTT broker → listener → MongoDB → REST API.
//
// +kubebuilder:object:root=true
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 42 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be at most 42 characters of lower-case letters, digits and '-', starting with a letter: it prefixes the names of the Services and the StatefulSet the operator creates",fieldPath=".metadata"
// +kubebuilder:resource:shortName=csim,categories=chargesim
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.publisher.replicas,statuspath=.status.publisher.replicas,selectorpath=.status.publisher.selector
// +kubebuilder:printcolumn:name="Chargers",type=integer,JSONPath=`.spec.chargers`
// +kubebuilder:printcolumn:name="Sessions/s",type=string,JSONPath=`.status.sessionsPerSecond`,description="configured session rate of the fleet"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Published",type=integer,JSONPath=`.status.progress.published`,description="sessions the broker acknowledged to the running publisher pods"
// +kubebuilder:printcolumn:name="Stored",type=integer,JSONPath=`.status.progress.stored`,description="sessions in the store"
// +kubebuilder:printcolumn:name="Rejected",type=integer,JSONPath=`.status.progress.rejected`,description="invalid messages kept aside by the listeners"
// +kubebuilder:printcolumn:name="Lag",type=string,JSONPath=`.status.progress.lag`,description="age of the newest stored session when last measured"
// +kubebuilder:printcolumn:name="Publishers",type=integer,JSONPath=`.status.publisher.readyReplicas`,priority=1
// +kubebuilder:printcolumn:name="Listeners",type=integer,JSONPath=`.status.listener.readyReplicas`,priority=1
// +kubebuilder:printcolumn:name="API",type=string,JSONPath=`.status.apiAddress`,priority=1
// +kubebuilder:printcolumn:name="Missing",type=integer,JSONPath=`.status.audit.missing`,priority=1,description="sessions missing in the last audited window"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ChargerSimulation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ChargerSimulationSpec `json:"spec"`
	// +optional
	Status ChargerSimulationStatus `json:"status,omitempty"`
}

// ChargerSimulationList is a list of ChargerSimulations.
//
// +kubebuilder:object:root=true
type ChargerSimulationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ChargerSimulation `json:"items"`
}
