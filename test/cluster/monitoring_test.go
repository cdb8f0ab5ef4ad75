//go:build cluster

package cluster

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The monitoring stack users run next to the chart: a real prometheus-operator (built from its
// Go module by hack/kube-tools.sh monitoring, imaged by hack/cluster.sh) reconciling the chart's
// PodMonitor, ServiceMonitor and PrometheusRule into a real Prometheus, installed with the
// operator's own CRDs and RBAC of the same release.
const (
	monNamespace = "chargesim-monitoring"
	promName     = "chargesim" // the Prometheus CR; its pods are prometheus-chargesim-<n>
	// Scrape and rule evaluation interval of the Prometheus CR and of the chart's monitors
	// (monitoringValues): alerts fire within their `for` plus about this.
	promInterval = 5 * time.Second
)

// monitoringValues are the chart values of the release under test: every monitoring object
// on, scraped every promInterval, and two operator replicas (a hot standby must not double
// any number on the dashboards).
var monitoringValues = []string{
	"--set", "podMonitor.enabled=true",
	"--set", "podMonitor.interval=5s",
	"--set", "serviceMonitor.enabled=true",
	"--set", "serviceMonitor.interval=5s",
	"--set", "prometheusRule.enabled=true",
	// The shipped alert expressions with a `for` and rate windows a test can wait for (alerts_test.go).
	"--set", "prometheusRule.for=30s",
	"--set", "prometheusRule.window=1m",
	"--set", "dashboards.enabled=true",
	"--set", "operator.replicas=2",
	// The operator's /metrics wants a token allowed to read it (HTTPS + TokenReview/SubjectAccessReview):
	// the ServiceMonitor sends Prometheus' own, so its ServiceAccount is bound as a reader.
	"--set", "metrics.readerServiceAccounts[0].name=prometheus",
	"--set", "metrics.readerServiceAccounts[0].namespace=" + monNamespace,
}

// promSample is one element of an instant query's vector (or its scalar, with no labels).
type promSample struct {
	Metric map[string]string
	Value  float64
}

// promAlert is one alert of GET /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"` // pending or firing
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

// installMonitoring installs the operator's CRDs (server-side: they are too large for the
// last-applied annotation), the operator with its RBAC, and a Prometheus selecting the
// chart's monitors and rules in every namespace; waits until Prometheus answers through a
// port-forward (e.prom). Call it before installing the chart: the chart's monitoring objects
// need the CRDs.
func (e *env) installMonitoring() {
	e.t.Helper()
	start := time.Now()
	// hack/cluster.sh up writes them to bin/cluster.env; hack/test-e2e-kind.sh exports them.
	cenv, err := readEnvFile(filepath.Join(e.root, "bin", "cluster.env"))
	if err != nil && os.Getenv("CHARGESIM_CLUSTER_PROMETHEUS_IMAGE") == "" {
		e.t.Fatal(err)
	}
	need := func(k string) string {
		v := os.Getenv(k)
		if v == "" {
			v = cenv[k]
		}
		if v == "" {
			e.t.Fatalf("%s is not set and not in bin/cluster.env (hack/cluster.sh up writes it)", k)
		}
		return v
	}
	examples := need("CHARGESIM_CLUSTER_PROMETHEUS_OPERATOR_EXAMPLES")
	opImage := need("CHARGESIM_CLUSTER_PROMETHEUS_OPERATOR_IMAGE")
	reloaderImage := need("CHARGESIM_CLUSTER_PROMETHEUS_CONFIG_RELOADER_IMAGE")
	promImage := need("CHARGESIM_CLUSTER_PROMETHEUS_IMAGE")
	promVersion := need("CHARGESIM_CLUSTER_PROMETHEUS_VERSION")

	// test/chart validates the chart against copies of three of these CRDs: the same release.
	for _, f := range []string{"podmonitors", "servicemonitors", "prometheusrules"} {
		name := "monitoring.coreos.com_" + f + ".yaml"
		a, errA := os.ReadFile(filepath.Join(examples, "prometheus-operator-crd", name))
		b, errB := os.ReadFile(filepath.Join(e.root, "test", "chart", "crds", name))
		if errA != nil || errB != nil || string(a) != string(b) {
			e.t.Errorf("test/chart/crds/%s is not the installed operator's CRD (%v, %v): copy it again (test/chart/crds/README.md)", name, errA, errB)
		}
	}
	e.must(e.kubectl("apply", "--server-side", "--force-conflicts", "-f", filepath.Join(examples, "prometheus-operator-crd")))
	e.must(e.kubectl("wait", "--for=condition=Established", "--timeout=60s",
		"crd/prometheuses.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"))
	// Upstream's ClusterRoles as they are; ServiceAccounts, bindings and workloads in our namespace.
	e.must(e.kubectl("apply", "-f", filepath.Join(examples, "rbac", "prometheus-operator", "prometheus-operator-cluster-role.yaml"),
		"-f", filepath.Join(examples, "rbac", "prometheus", "prometheus-cluster-role.yaml")))
	manifests := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus-operator, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: chargesim-e2e-prometheus-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-operator}
subjects: [{kind: ServiceAccount, name: prometheus-operator, namespace: %[1]s}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: prometheus-operator, namespace: %[1]s, labels: {app.kubernetes.io/name: prometheus-operator}}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: prometheus-operator}}
  template:
    metadata: {labels: {app.kubernetes.io/name: prometheus-operator}}
    spec:
      serviceAccountName: prometheus-operator
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: prometheus-operator
          image: %[2]s
          imagePullPolicy: Never
          args:
            - --prometheus-config-reloader=%[3]s
            - --log-level=info
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}
          resources: {requests: {cpu: 20m, memory: 64Mi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: chargesim-e2e-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: %[1]s}]
`, monNamespace, opImage, reloaderImage)
	e.applyYAML(manifests)
	e.must(e.kubectl("-n", monNamespace, "rollout", "status", "deployment/prometheus-operator", "--timeout=180s"))

	// Selects what the chart renders (its common label) in every namespace, as a cluster-wide
	// Prometheus (kube-prometheus-stack with its selectors opened up) would.
	sel := "{matchLabels: {app.kubernetes.io/name: chargesim}}"
	every := promInterval.String()
	e.applyYAML(fmt.Sprintf(`apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  image: %[3]s
  version: %[4]s
  replicas: 1
  serviceAccountName: prometheus
  scrapeInterval: %[5]s
  evaluationInterval: %[5]s
  retention: 2h
  podMonitorSelector: %[6]s
  podMonitorNamespaceSelector: {}
  serviceMonitorSelector: %[6]s
  serviceMonitorNamespaceSelector: {}
  ruleSelector: %[6]s
  ruleNamespaceSelector: {}
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  resources: {requests: {cpu: 50m, memory: 128Mi}}
`, promName, monNamespace, promImage, promVersion, every, sel))
	e.waitFor("prometheus-operator creates the Prometheus StatefulSet", func() (bool, string) {
		out, err := e.kubectl("-n", monNamespace, "get", "statefulset", "prometheus-"+promName, "-o", "name")
		return err == nil && strings.TrimSpace(out) != "", fmt.Sprint(err)
	})
	e.must(e.kubectl("-n", monNamespace, "rollout", "status", "statefulset/prometheus-"+promName, "--timeout=180s"))
	e.prom = startPortForward(e.t, e.kubec, e.kc, monNamespace, "svc/prometheus-operated", 9090)
	e.waitFor("Prometheus answers queries", func() (bool, string) {
		_, err := e.promQuery("vector(1)")
		return err == nil, fmt.Sprint(err)
	})
	e.t.Logf("monitoring: prometheus-operator and Prometheus %s up in %s", promVersion, time.Since(start).Round(time.Second))
}

// applyYAML applies a multi-document manifest.
func (e *env) applyYAML(doc string) {
	e.t.Helper()
	f, err := os.CreateTemp(e.t.TempDir(), "manifest-*.yaml")
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := f.WriteString(doc); err != nil {
		e.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.must(e.kubectl("apply", "-f", f.Name()))
}

// promAPI GETs /api/v1/<path> from Prometheus and decodes the data of a successful answer.
func (e *env) promAPI(path string, params url.Values, data any) error {
	if e.prom == "" {
		return fmt.Errorf("prometheus: installMonitoring has not run")
	}
	u := "http://" + e.prom + "/api/v1/" + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	b, err := e.get(u)
	if err != nil {
		return fmt.Errorf("prometheus: %w", err)
	}
	var resp struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &resp); err != nil {
		return fmt.Errorf("prometheus %s: decoding %q: %w", path, b, err)
	}
	if resp.Status != "success" {
		return fmt.Errorf("prometheus %s: %s: %s", path, resp.Status, resp.Error)
	}
	if err := json.Unmarshal(resp.Data, data); err != nil {
		return fmt.Errorf("prometheus %s: decoding data: %w", path, err)
	}
	return nil
}

// promQuery evaluates an instant query now. A vector gives one sample per series; a scalar one
// sample without labels.
func (e *env) promQuery(q string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := e.promAPI("query", url.Values{"query": {q}}, &data); err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	switch data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &vec); err != nil {
			return nil, fmt.Errorf("query %s: %w", q, err)
		}
		out := make([]promSample, 0, len(vec))
		for _, s := range vec {
			v, err := sampleValue(s.Value)
			if err != nil {
				return nil, fmt.Errorf("query %s: %w", q, err)
			}
			out = append(out, promSample{Metric: s.Metric, Value: v})
		}
		return out, nil
	case "scalar":
		var sc [2]any
		if err := json.Unmarshal(data.Result, &sc); err != nil {
			return nil, fmt.Errorf("query %s: %w", q, err)
		}
		v, err := sampleValue(sc)
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", q, err)
		}
		return []promSample{{Metric: map[string]string{}, Value: v}}, nil
	default:
		return nil, fmt.Errorf("query %s: result type %q, want vector or scalar", q, data.ResultType)
	}
}

// sampleValue reads [<unix time>, "<value>"].
func sampleValue(p [2]any) (float64, error) {
	s, ok := p[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", p[1])
	}
	return strconv.ParseFloat(s, 64)
}

// promAlerts returns the active (pending or firing) alerts.
func (e *env) promAlerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := e.promAPI("alerts", nil, &data); err != nil {
		return nil, err
	}
	return data.Alerts, nil
}

// promRange is a range query: one series of (time, value) points per label set.
type promSeries struct {
	Metric map[string]string
	Points [][2]float64 // unix seconds, value
}

func (e *env) promRange(q string, from, to time.Time, step time.Duration) ([]promSeries, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
		} `json:"result"`
	}
	params := url.Values{"query": {q}, "start": {strconv.FormatInt(from.Unix(), 10)},
		"end": {strconv.FormatInt(to.Unix(), 10)}, "step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}}
	if err := e.promAPI("query_range", params, &data); err != nil {
		return nil, fmt.Errorf("range query %s: %w", q, err)
	}
	out := make([]promSeries, 0, len(data.Result))
	for _, r := range data.Result {
		s := promSeries{Metric: r.Metric}
		for _, p := range r.Values {
			t, ok := p[0].(float64)
			v, err := sampleValue(p)
			if !ok || err != nil {
				return nil, fmt.Errorf("range query %s: bad point %v", q, p)
			}
			s.Points = append(s.Points, [2]float64{t, v})
		}
		out = append(out, s)
	}
	return out, nil
}
