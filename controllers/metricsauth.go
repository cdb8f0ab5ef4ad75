package controllers

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/chargesim/chargesim/components/cli"
)

// /metrics is served like kube-controller-manager serves its own: over HTTPS, to callers whose
// bearer token the API server accepts (TokenReview) and who may `get` the non-resource URL
// /metrics (SubjectAccessReview), e.g. through the chargesim-metrics-reader ClusterRole
// (config/rbac/metrics_reader_role.yaml). Both reviews are cluster-scoped, so even a namespaced
// install keeps this one small ClusterRole.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Certificate file names in --metrics-cert-dir: those of a kubernetes.io/tls Secret, which is
// what cert-manager writes.
const (
	metricsCertName = "tls.crt"
	metricsKeyName  = "tls.key"
)

// metricsOptions is the metrics server of the manager: plain HTTP for anyone with
// --metrics-secure=false (local development), else HTTPS with authentication and authorization.
// The certificate is the one in --metrics-cert-dir (reloaded when the mounted Secret changes), or
// a self-signed one generated in memory at start (valid for localhost only: a scraper then has to
// skip verification).
func metricsOptions(cfg Config) metricsserver.Options {
	opts := metricsserver.Options{BindAddress: orDefault(cfg.MetricsAddr, "0")}
	if !cfg.MetricsSecure {
		return opts
	}
	opts.SecureServing = true
	opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	if cfg.MetricsCertDir != "" {
		opts.CertDir = cfg.MetricsCertDir
		opts.CertName = metricsCertName
		opts.KeyName = metricsKeyName
	}
	return opts
}

// validateMetrics checks the metrics flags. A --metrics-cert-dir without the certificate would
// make controller-runtime fall back to a self-signed certificate without a word, and every
// scraper that verifies the certificate would fail: refuse to start instead.
func (c *Config) validateMetrics() error {
	if c.MetricsCertDir == "" {
		return nil
	}
	if !c.MetricsSecure {
		return cli.Invalid("metrics-cert-dir", c.MetricsCertDir, "needs --metrics-secure (plain HTTP uses no certificate)")
	}
	for _, name := range []string{metricsCertName, metricsKeyName} {
		if _, err := os.Stat(filepath.Join(c.MetricsCertDir, name)); err != nil {
			return cli.Invalid("metrics-cert-dir", c.MetricsCertDir, fmt.Sprintf("must hold %s and %s (a kubernetes.io/tls Secret): %v", metricsCertName, metricsKeyName, err))
		}
	}
	return nil
}

// watchNamespaces splits --watch-namespace (a comma-separated list; empty: every namespace).
func watchNamespaces(v string) ([]string, error) {
	var out []string
	for _, ns := range strings.Split(v, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			continue
		}
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, cli.Invalid("watch-namespace", v, fmt.Sprintf("%q is not a namespace name: %s", ns, strings.Join(errs, "; ")))
		}
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out, nil
}

// namespacedCache restricts every informer to the watched namespaces: the operator then lists
// and watches (and needs RBAC) in those namespaces only, and simulations elsewhere are never seen.
func namespacedCache(opts *cache.Options, namespaces []string) {
	if len(namespaces) == 0 {
		return
	}
	opts.DefaultNamespaces = make(map[string]cache.Config, len(namespaces))
	for _, ns := range namespaces {
		opts.DefaultNamespaces[ns] = cache.Config{}
	}
}
