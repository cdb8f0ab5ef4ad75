package controllers

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/cli"
)

// ImageRepository is where the default component image comes from; --default-image defaults to
// ImageRepository:<version of this binary>. main may override both before calling Command.
var (
	ImageRepository = "ghcr.io/chargesim/chargesim"
	ImageTag        = ""
)

func defaultImage() string {
	tag := ImageTag
	if tag == "" {
		tag = "latest"
		if bi, ok := debug.ReadBuildInfo(); ok && strings.HasPrefix(bi.Main.Version, "v") {
			tag = bi.Main.Version
		}
	}
	return ImageRepository + ":" + tag
}

// Config is the operator's configuration (flags with CHARGESIM_* equivalents).
type Config struct {
	LogLevel                string
	LogFormat               string
	MetricsAddr             string        // --metrics-bind-address
	MetricsSecure           bool          // --metrics-secure
	MetricsCertDir          string        // --metrics-cert-dir
	ProbeAddr               string        // --health-probe-bind-address
	PprofAddr               string        // --pprof-bind-address
	LeaderElect             bool          // --leader-elect
	LeaderElectionID        string        // --leader-election-id
	LeaderElectionNamespace string        // --leader-election-namespace
	DefaultImage            string        // --default-image
	Kubeconfig              string        // --kubeconfig
	WatchNamespace          string        // --watch-namespace (comma-separated)
	MaxConcurrentReconciles int           // --max-concurrent-reconciles
	ResyncInterval          time.Duration // --resync-interval
	KubeAPIQPS              float64       // --kube-api-qps
	KubeAPIBurst            int           // --kube-api-burst
	ShutdownTimeout         time.Duration // --shutdown-timeout
	AuditInterval           time.Duration // --audit-interval
	ProgressInterval        time.Duration // --progress-interval
	CredentialPropagation   time.Duration // --credential-propagation

	// RestConfig, when set, is used instead of --kubeconfig / in-cluster discovery (tests).
	RestConfig *rest.Config
	// SkipNameValidation lets tests start several managers in one process.
	SkipNameValidation bool
}

// Register adds the operator's flags.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", ":8443", "listen address of /metrics (\"0\" disables it)")
	fs.BoolVar(&c.MetricsSecure, "metrics-secure", true, "serve /metrics over HTTPS, only to bearer tokens allowed to get the non-resource URL /metrics (TokenReview and SubjectAccessReview; e.g. the chargesim-metrics-reader ClusterRole); false serves plain HTTP to anyone, for local development only")
	fs.StringVar(&c.MetricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for /metrics (a mounted kubernetes.io/tls Secret, e.g. from cert-manager; reloaded when it changes); empty: a self-signed certificate generated at start")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", ":8081", "listen address of /healthz and /readyz")
	fs.StringVar(&c.PprofAddr, "pprof-bind-address", "", "listen address of /debug/pprof (empty disables it; keep it on localhost)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", runningInCluster(), "elect a leader among operator replicas (a Lease); only the leader reconciles (default: on in a cluster, off outside)")
	fs.StringVar(&c.LeaderElectionID, "leader-election-id", "chargesim-operator.chargesim.io", "name of the leader-election Lease")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the Lease (default: the operator's own namespace when in a cluster)")
	fs.StringVar(&c.DefaultImage, "default-image", defaultImage(), "chargesim image for simulations that do not set spec.image")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&c.WatchNamespace, "watch-namespace", "", "only watch and reconcile simulations in these namespaces, comma-separated (default: all); the operator then needs RBAC in those namespaces only")
	fs.IntVar(&c.MaxConcurrentReconciles, "max-concurrent-reconciles", 4, "simulations reconciled in parallel")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", 10*time.Minute, "re-read the Secrets of healthy simulations this often, to roll pods when their content changed")
	fs.Float64Var(&c.KubeAPIQPS, "kube-api-qps", 50, "sustained requests per second to the API server")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", 100, "burst of requests to the API server")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "grace period for running reconciles on shutdown")
	fs.DurationVar(&c.CredentialPropagation, "credential-propagation", defaultCredentialDelay, "a rotation of a managed broker's credentials waits this long between making the broker accept the new password and rolling the clients onto it (the time a kubelet takes to update a mounted Secret)")
	fs.DurationVar(&c.AuditInterval, "audit-interval", DefaultAuditEvery, "audit every simulation this often through its API (last 5 minutes, ending 30s ago) into status.audit; 0 disables it")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", DefaultProgressEvery, "read every simulation's pipeline progress (published, stored, rejected, lag) this often from its API and publisher pods into status.progress; 0 disables it")
}

// runningInCluster reports whether the process runs in a pod (the in-cluster configuration is
// there). Leader election is on by default then: two operators reconciling the same
// simulations with different settings (say --default-image) would rewrite each other's
// objects for ever, and a second replica or a leftover Deployment is all it takes.
var runningInCluster = func() bool {
	_, err := rest.InClusterConfig()
	return err == nil
}

// Validate checks the settings; errors name the flag.
func (c *Config) Validate() error {
	common := cli.Common{LogLevel: c.LogLevel, LogFormat: c.LogFormat, ShutdownTimeout: c.ShutdownTimeout}
	if err := common.Validate(); err != nil {
		return err
	}
	switch {
	case c.DefaultImage == "" || strings.ContainsAny(c.DefaultImage, " \t\n"):
		return cli.Invalid("default-image", c.DefaultImage, "must be an image reference such as ghcr.io/chargesim/chargesim:v1.0.0")
	case c.MaxConcurrentReconciles < 1:
		return cli.Invalid("max-concurrent-reconciles", c.MaxConcurrentReconciles, "must be ≥ 1")
	case c.ResyncInterval < 0:
		return cli.Invalid("resync-interval", c.ResyncInterval, "must be ≥ 0 (0 disables it)")
	case c.CredentialPropagation < 0:
		return cli.Invalid("credential-propagation", c.CredentialPropagation, "must be ≥ 0")
	case c.AuditInterval < 0:
		return cli.Invalid("audit-interval", c.AuditInterval, "must be ≥ 0 (0 disables it)")
	case c.ProgressInterval < 0:
		return cli.Invalid("progress-interval", c.ProgressInterval, "must be ≥ 0 (0 disables it)")
	case c.KubeAPIQPS <= 0:
		return cli.Invalid("kube-api-qps", c.KubeAPIQPS, "must be > 0")
	case c.KubeAPIBurst < 1:
		return cli.Invalid("kube-api-burst", c.KubeAPIBurst, "must be ≥ 1")
	case c.LeaderElect && c.LeaderElectionID == "":
		return cli.Invalid("leader-election-id", c.LeaderElectionID, "must be set with --leader-elect")
	}
	if _, err := watchNamespaces(c.WatchNamespace); err != nil {
		return err
	}
	return c.validateMetrics()
}

// Scheme knows the built-in types and chargesim.io/v1alpha1.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// ManagedSelector selects the objects the operator created; it is the cache's label selector
// for every child kind, so unrelated Deployments, Services and ConfigMaps are never cached.
func ManagedSelector() labels.Selector {
	return labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedByValue})
}

// Operator is the controller manager with the ChargerSimulation controller.
type Operator struct {
	mgr ctrl.Manager
	log *slog.Logger
}

// New builds the manager. reg receives the operator's own metrics; Command passes
// controller-runtime's registry so they are served next to its metrics.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Operator, error) {
	restCfg := cfg.RestConfig
	if restCfg == nil {
		var err error
		restCfg, err = loadRestConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
	}
	restCfg = rest.CopyConfig(restCfg)
	if cfg.KubeAPIQPS > 0 {
		restCfg.QPS = float32(cfg.KubeAPIQPS)
	}
	if cfg.KubeAPIBurst > 0 {
		restCfg.Burst = cfg.KubeAPIBurst
	}
	restCfg.UserAgent = "chargesim-operator"

	logger := logr.FromSlogHandler(log.Handler())
	ctrl.SetLogger(logger)
	klog.SetLogger(logger.WithName("client-go"))

	managed := ManagedSelector()
	cacheOpts := cache.Options{
		// The operator compares desired and live objects field by field; managed fields are
		// large and never needed, so they are dropped before objects enter the cache.
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.Deployment{}:            {Label: managed},
			&appsv1.StatefulSet{}:           {Label: managed},
			&corev1.Service{}:               {Label: managed},
			&corev1.ConfigMap{}:             {Label: managed},
			&policyv1.PodDisruptionBudget{}: {Label: managed},
			&networkingv1.NetworkPolicy{}:   {Label: managed},
			// Pods carry the labels of their template: only the simulations' pods are cached.
			&corev1.Pod{}: {Label: managed},
		},
	}
	watched, err := watchNamespaces(cfg.WatchNamespace)
	if err != nil {
		return nil, err
	}
	namespacedCache(&cacheOpts, watched)
	grace := cfg.ShutdownTimeout
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        Scheme(),
		Logger:                        logger,
		Metrics:                       metricsOptions(cfg),
		HealthProbeBindAddress:        orDefault(cfg.ProbeAddr, "0"),
		PprofBindAddress:              cfg.PprofAddr,
		LeaderElection:                cfg.LeaderElect,
		LeaderElectionID:              cfg.LeaderElectionID,
		LeaderElectionNamespace:       cfg.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &grace,
		Cache:                         cacheOpts,
		Client: client.Options{Cache: &client.CacheOptions{
			// Never start an informer for Secrets, whatever code path asks for one.
			DisableFor: []client.Object{&corev1.Secret{}},
		}},
		Controller: ctrlconfig.Controller{SkipNameValidation: &cfg.SkipNameValidation},
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	elected := mgr.Elected()
	leader := func() bool {
		select {
		case <-elected:
			return true
		default:
			return false
		}
	}
	metrics, err := NewMetrics(reg, mgr.GetCache(), leader)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	r := &Reconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                mgr.GetEventRecorder("chargesim-operator"),
		Metrics:                 metrics,
		DefaultImage:            cfg.DefaultImage,
		ResyncInterval:          cfg.ResyncInterval,
		MaxConcurrentReconciles: cfg.MaxConcurrentReconciles,
		CredentialPropagation:   cfg.CredentialPropagation,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("set up controller: %w", err)
	}
	if cfg.AuditInterval > 0 {
		aud := &Auditor{Client: mgr.GetClient(), Recorder: r.Recorder, Log: logger.WithName("audit"), Every: cfg.AuditInterval}
		if err := mgr.Add(aud); err != nil {
			return nil, fmt.Errorf("add auditor: %w", err)
		}
	}
	if cfg.ProgressInterval > 0 {
		prog := &Progress{Client: mgr.GetClient(), Log: logger.WithName("progress"), Every: cfg.ProgressInterval}
		if err := mgr.Add(prog); err != nil {
			return nil, fmt.Errorf("add progress probe: %w", err)
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, fmt.Errorf("add healthz check: %w", err)
	}
	op := &Operator{mgr: mgr, log: log}
	if err := mgr.AddReadyzCheck("cache", func(req *http.Request) error { return op.Ready(req.Context()) }); err != nil {
		return nil, fmt.Errorf("add readyz check: %w", err)
	}
	return op, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func loadRestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("invalid --kubeconfig=%s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("find a Kubernetes API server (in-cluster, $KUBECONFIG or ~/.kube/config; or --kubeconfig): %w", err)
	}
	return c, nil
}

// Manager exposes the controller-runtime manager (tests use its client and cache).
func (o *Operator) Manager() ctrl.Manager { return o.mgr }

// Run starts the manager and blocks until ctx is done; then running reconciles finish (within
// --shutdown-timeout), the Lease is released and Run returns nil.
func (o *Operator) Run(ctx context.Context) error {
	o.log.Info("operator starting")
	if err := o.mgr.Start(ctx); err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	o.log.Info("operator stopped")
	return nil
}

// Ready reports whether the informer caches have synced (before that, reconciles would act on
// an empty picture of the cluster).
func (o *Operator) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if !o.mgr.GetCache().WaitForCacheSync(ctx) {
		return errors.New("informer caches not synced")
	}
	return nil
}

// Command is `chargesim operator`.
func Command(ctx context.Context, args []string) error {
	var cfg Config
	fs := cli.NewFlagSet("operator", "Run the ChargerSimulation operator: turns chargesim.io/v1alpha1 ChargerSimulations into running publisher, broker, listener and API workloads.")
	cfg.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	common := cli.Common{LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat}
	log, err := common.Logger(os.Stderr, "operator")
	if err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	op, err := New(cfg, log, ctrlmetrics.Registry)
	if err != nil {
		return err
	}
	return op.Run(ctx)
}
