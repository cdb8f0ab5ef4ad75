//go:build envtest

package controllers_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
	"github.com/chargesim/chargesim/test/testenv"
)

// startExtraOperator runs a second operator next to the suite's, as identity operatorRestConfig,
// with cfg's metrics and namespace settings. With the suite's Lease it stands by (only its
// metrics server and caches run); with its own Lease it reconciles too.
func startExtraOperator(t *testing.T, cfg controllers.Config) (*controllers.Operator, *prometheus.Registry) {
	t.Helper()
	cfg.LogLevel, cfg.LogFormat = "info", "text"
	if cfg.ProbeAddr == "" {
		cfg.ProbeAddr = "0"
	}
	if cfg.LeaderElectionID == "" {
		cfg.LeaderElectionID = "chargesim-operator.chargesim.io"
	}
	cfg.LeaderElect, cfg.LeaderElectionNamespace = true, operatorNamespace
	cfg.DefaultImage, cfg.MaxConcurrentReconciles = testImage, 2
	cfg.KubeAPIQPS, cfg.KubeAPIBurst, cfg.ShutdownTimeout = 50, 100, time.Second
	cfg.SkipNameValidation = true
	if cfg.RestConfig == nil {
		cfg.RestConfig = operatorRestConfig
	}
	reg := prometheus.NewRegistry()
	op, err := controllers.New(cfg, slog.New(&denialCounter{Handler: slog.NewTextHandler(io.Discard, nil)}), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	eventually(t, "second operator's cache synced", func() error { return op.Ready(ctx) })
	return op, reg
}

// serviceAccountToken creates ServiceAccount ns/name and returns a bound token for it, as a
// pod's projected token would be.
func serviceAccountToken(t *testing.T, ns, name string) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := k8s.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}
	if err := k8s.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("token for %s/%s: %v", ns, name, err)
	}
	return tr.Status.Token
}

// bindMetricsReader binds config/rbac's chargesim-metrics-reader ClusterRole to ns/sa.
func bindMetricsReader(t *testing.T, ns, sa string) {
	t.Helper()
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-reader-" + ns + "-" + sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "chargesim-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}
	if err := k8s.Create(context.Background(), crb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), crb) })
}

func scrapeWith(c *http.Client, url, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Issue 9: /metrics over HTTPS with authentication and authorization. No token: 401; a valid
// token without RBAC: 403; a token bound to chargesim-metrics-reader: 200 with the metrics. The
// operator makes the TokenReviews and SubjectAccessReviews as its ServiceAccount, with only
// config/rbac's permissions.
func TestMetricsRequireAuthorizedToken(t *testing.T) {
	ns := newNamespace(t)
	reader := serviceAccountToken(t, ns, "prometheus")
	stranger := serviceAccountToken(t, ns, "stranger")
	bindMetricsReader(t, ns, "prometheus")

	check := func(t *testing.T, c *http.Client, url string) {
		t.Helper()
		for _, tc := range []struct {
			who   string
			token string
			want  int
		}{
			{"no token", "", http.StatusUnauthorized},
			// controller-runtime v0.25 answers a token the API server rejects with 500
			// "Authentication failed" (the authenticator reports it as an error); refused all the same.
			{"token the API server rejects", "not-a-token", http.StatusInternalServerError},
			{"token without RBAC", stranger, http.StatusForbidden},
			{"metrics reader", reader, http.StatusOK},
		} {
			// RBAC changes reach the authorizer within a moment; the answer then stays.
			var body string
			eventually(t, tc.who+" gets "+fmt.Sprint(tc.want), func() error {
				code, b, err := scrapeWith(c, url, tc.token)
				if err != nil {
					return err
				}
				if code != tc.want {
					return fmt.Errorf("status %d: %.200s", code, b)
				}
				body = b
				return nil
			})
			if tc.want == http.StatusOK && !strings.Contains(body, "controller_runtime_reconcile_total") {
				t.Errorf("%s: 200 without the controller's metrics:\n%.500s", tc.who, body)
			}
			if tc.want != http.StatusOK && strings.Contains(body, "controller_runtime") {
				t.Errorf("%s: got %d but also metrics", tc.who, tc.want)
			}
		}
	}

	t.Run("certificate from --metrics-cert-dir", func(t *testing.T) {
		// A cert-manager Certificate's Secret, mounted: tls.crt and tls.key.
		dir := t.TempDir()
		ca := testenv.NewCA(t, "")
		cert, key := ca.Issue(t, "metrics", []string{"127.0.0.1"}, false)
		for src, dst := range map[string]string{cert: "tls.crt", key: "tls.key"} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		startExtraOperator(t, controllers.Config{MetricsAddr: addr, MetricsSecure: true, MetricsCertDir: dir})
		// The client trusts only the CA: the served certificate is the mounted one.
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientTLSConfig(t, "", "")}}
		check(t, c, "https://"+addr+"/metrics")
		// Plain HTTP on the same port gets nothing.
		if code, _, err := scrapeWith(&http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/metrics", reader); err == nil && code == http.StatusOK {
			t.Errorf("plain HTTP served metrics")
		}
	})

	t.Run("self-signed certificate", func(t *testing.T) {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		startExtraOperator(t, controllers.Config{MetricsAddr: addr, MetricsSecure: true})
		var leaf *x509.Certificate
		tlsCfg := &tls.Config{
			InsecureSkipVerify: true, //nolint:gosec // the point: nobody can verify a self-signed certificate
			VerifyConnection: func(cs tls.ConnectionState) error {
				leaf = cs.PeerCertificates[0]
				return nil
			},
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
		check(t, c, "https://"+addr+"/metrics")
		// Generated at start with a throw-away CA, for localhost only: no Service name in it.
		if leaf == nil || !slices.Equal(leaf.DNSNames, []string{"localhost"}) {
			t.Errorf("expected controller-runtime's generated localhost certificate, got %v", leaf.DNSNames)
		}
		// Verifying fails: this is why a scraper needs a CA (--metrics-cert-dir) or must skip
		// verification.
		strict := &http.Client{Timeout: 5 * time.Second}
		if _, _, err := scrapeWith(strict, "https://"+addr+"/metrics", reader); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("self-signed certificate verified: %v", err)
		}
	})

	t.Run("--metrics-secure=false serves plain HTTP to anyone", func(t *testing.T) {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		startExtraOperator(t, controllers.Config{MetricsAddr: addr, MetricsSecure: false})
		eventually(t, "plain /metrics without a token", func() error {
			code, body, err := scrapeWith(&http.Client{Timeout: 10 * time.Second}, "http://"+addr+"/metrics", "")
			if err != nil {
				return fmt.Errorf("plain HTTP: %w", err)
			}
			if code != http.StatusOK || !strings.Contains(body, "controller_runtime_reconcile_total") {
				return fmt.Errorf("plain HTTP: %d %.200s", code, body)
			}
			return nil
		})
	})
}

// Issue 9: the namespaced install. An operator started with --watch-namespace=a,b whose
// ServiceAccount has Roles in a and b only (config/rbac's rules, as the chart's namespaced mode
// renders them) syncs its caches without a single RBAC denial, caches the simulation in a and
// never the one in c, and can read Secrets in a but not in c.
func TestWatchNamespacesOnly(t *testing.T) {
	ctx := context.Background()
	a, b, c := newNamespace(t), newNamespace(t), newNamespace(t)
	const saName = "ns-operator"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: saName}}
	if err := k8s.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, sa) })
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: operatorNamespace, Name: saName}}
	roleObjs, err := loadYAML(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cr := roleObjs[0].(*rbacv1.ClusterRole)
	var nsRules, clusterRules []rbacv1.PolicyRule
	for _, r := range cr.Rules {
		if isClusterScoped(r) {
			clusterRules = append(clusterRules, r)
		} else {
			nsRules = append(nsRules, r)
		}
	}
	// Namespaced rules in the watched namespaces, the leader-election Role in the operator's,
	// and only the review rules cluster-wide.
	var objs []client.Object
	for _, ns := range []string{a, b} {
		objs = append(objs,
			&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: saName}, Rules: nsRules},
			&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: saName}, Subjects: subject,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: saName}})
	}
	objs = append(objs,
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: saName + "-leader"}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "chargesim-operator-leader-election"}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: saName + "-reviews"}, Rules: clusterRules},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: saName + "-reviews"}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: saName + "-reviews"}})
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
		t.Cleanup(func() { _ = k8s.Delete(ctx, o) })
	}

	for _, ns := range []string{a, c} {
		createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
		createSim(t, simulation(ns, "sim"))
	}

	before := forbidden.Load()
	cfg := rest.CopyConfig(operatorRestConfig)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + operatorNamespace + ":" + saName,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"},
	}
	// The suite's Lease: it stands by, so only its caches run (the suite's operator reconciles;
	// the kwok chart test runs a namespaced operator alone, to Ready).
	op, _ := startExtraOperator(t, controllers.Config{
		MetricsAddr: "0", MetricsSecure: true, WatchNamespace: a + "," + b, RestConfig: cfg,
	})
	var list v1alpha1.ChargerSimulationList
	if err := op.Manager().GetCache().List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if s.Namespace != a {
			t.Errorf("the namespaced operator caches simulation %s/%s", s.Namespace, s.Name)
		}
	}
	if len(list.Items) != 1 {
		t.Errorf("namespaced operator caches %d simulations, want 1 (in %s)", len(list.Items), a)
	}
	// Secrets: readable in the watched namespaces only.
	reader := op.Manager().GetAPIReader()
	if err := reader.Get(ctx, key(a, "mongo"), &corev1.Secret{}); err != nil {
		t.Errorf("the namespaced operator cannot read its Secret in %s: %v", a, err)
	}
	if err := reader.Get(ctx, key(c, "mongo"), &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("the namespaced operator reading a Secret in unwatched namespace %s: %v, want forbidden", c, err)
	}
	if n := forbidden.Load() - before; n > 0 {
		t.Errorf("the namespaced operator was denied %d request(s); last: %v", n, lastDenied.Load())
	}
}

// isClusterScoped reports whether a rule is about cluster-scoped resources (the reviews a
// namespaced Role cannot grant).
func isClusterScoped(r rbacv1.PolicyRule) bool {
	for _, g := range r.APIGroups {
		if g == "authentication.k8s.io" || g == "authorization.k8s.io" {
			return true
		}
	}
	return len(r.NonResourceURLs) > 0
}
