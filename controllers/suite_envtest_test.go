//go:build envtest

// The envtest suite runs the operator against a real kube-apiserver and etcd (no controllers,
// no kubelet: the tests play the Deployment/StatefulSet controllers by patching status). The
// operator runs as the ServiceAccount of config/rbac, bound to exactly config/rbac/role.yaml and
// the leader-election Role, through impersonation: every test also proves the RBAC is enough.
//
//	hack/kube-tools.sh envtest && KUBEBUILDER_ASSETS=$PWD/bin/k8s go test -tags envtest ./controllers/
package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/chargesim/chargesim/controllers"
	"github.com/chargesim/chargesim/test/testenv"
)

const (
	operatorNamespace = "chargesim-system"
	operatorSA        = "chargesim-operator"
	testImage         = "ghcr.io/chargesim/chargesim:envtest"
)

var (
	k8s      client.Client // cluster admin: plays the user and the missing controllers
	operator *controllers.Operator
	opReg    *prometheus.Registry
	// operatorRestConfig is the operator's identity (its ServiceAccount, impersonated).
	operatorRestConfig *rest.Config
	// forbidden counts operator log records that mention an RBAC denial.
	forbidden  atomic.Int64
	lastDenied atomic.Value
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	assets, err := kubebuilderAssets()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest: start control plane:", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "envtest: stop control plane:", err)
		}
	}()
	k8s, err = client.New(cfg, client.Options{Scheme: controllers.Scheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest: client:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := installRBAC(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "envtest: install config/rbac:", err)
		return 1
	}

	// The operator acts as its ServiceAccount, with nothing but the manifests' RBAC.
	opCfg := rest.CopyConfig(cfg)
	opCfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + operatorNamespace + ":" + operatorSA,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"},
	}
	// Every request the operator makes for Secrets is recorded: the cache must only ever list
	// and watch their metadata (TestSecretCacheHoldsNoData).
	opCfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &secretRequests{next: rt} })
	operatorRestConfig = opCfg
	level := slog.LevelWarn
	if os.Getenv("OPERATOR_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(&denialCounter{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})})
	opReg = prometheus.NewRegistry()
	operator, err = controllers.New(controllers.Config{
		LogLevel:                "info",
		LogFormat:               "text",
		MetricsAddr:             "0",
		ProbeAddr:               "0",
		LeaderElect:             true,
		LeaderElectionID:        "chargesim-operator.chargesim.io",
		LeaderElectionNamespace: operatorNamespace,
		DefaultImage:            testImage,
		MaxConcurrentReconciles: 4,
		ResyncInterval:          10 * time.Minute,
		KubeAPIQPS:              200,
		KubeAPIBurst:            400,
		ShutdownTimeout:         5 * time.Second,
		CredentialPropagation:   credentialPropagation,
		RestConfig:              opCfg,
	}, log, opReg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest: operator:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- operator.Run(ctx) }()

	code := m.Run()

	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "envtest: operator stopped with:", err)
		code = 1
	}
	if n := forbidden.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "envtest: the operator was denied %d request(s) by RBAC (config/rbac is not enough), last: %v\n", n, lastDenied.Load())
		code = 1
	}
	return code
}

// credentialPropagation is the operator's wait between the phases of a credentials rotation.
const credentialPropagation = 3 * time.Second

// secretRequest is one request of the operator for Secrets: method, URL and Accept header.
type secretRequest struct{ method, url, accept string }

var (
	secretReqMu sync.Mutex
	secretReqs  []secretRequest
)

// secretRequests records the operator's requests for Secrets.
type secretRequests struct{ next http.RoundTripper }

func (s *secretRequests) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.Contains(req.URL.Path, "/secrets") {
		secretReqMu.Lock()
		secretReqs = append(secretReqs, secretRequest{method: req.Method, url: req.URL.String(), accept: req.Header.Get("Accept")})
		secretReqMu.Unlock()
	}
	return s.next.RoundTrip(req)
}

func recordedSecretRequests() []secretRequest {
	secretReqMu.Lock()
	defer secretReqMu.Unlock()
	return append([]secretRequest(nil), secretReqs...)
}

// kubebuilderAssets finds etcd, kube-apiserver and kubectl: $KUBEBUILDER_ASSETS or bin/k8s.
func kubebuilderAssets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		abs, err := filepath.Abs(filepath.Join("..", "bin", "k8s"))
		if err != nil {
			return "", err
		}
		dir = abs
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s not found in %s (KUBEBUILDER_ASSETS): run hack/kube-tools.sh envtest", b, dir)
		}
	}
	return dir, nil
}

// denialCounter counts log records about RBAC denials (reconcile errors, watch errors).
type denialCounter struct{ slog.Handler }

func (d *denialCounter) Handle(ctx context.Context, r slog.Record) error {
	text := r.Message
	r.Attrs(func(a slog.Attr) bool {
		text += " " + a.Value.String()
		return true
	})
	if strings.Contains(text, "forbidden") || strings.Contains(text, "is forbidden") {
		forbidden.Add(1)
		lastDenied.Store(text)
	}
	return d.Handler.Handle(ctx, r)
}

func (d *denialCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &denialCounter{d.Handler.WithAttrs(as)}
}

func (d *denialCounter) WithGroup(g string) slog.Handler {
	return &denialCounter{d.Handler.WithGroup(g)}
}

// installRBAC creates the operator's namespace and the RBAC objects of config/rbac exactly as
// the manifests declare them.
func installRBAC(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}
	if err := k8s.Create(ctx, ns); err != nil {
		return err
	}
	files := []string{"service_account.yaml", "role.yaml", "role_binding.yaml",
		"leader_election_role.yaml", "leader_election_role_binding.yaml", "metrics_reader_role.yaml"}
	for _, f := range files {
		objs, err := loadYAML(filepath.Join("..", "config", "rbac", f))
		if err != nil {
			return err
		}
		for _, o := range objs {
			if err := k8s.Create(ctx, o); err != nil {
				return fmt.Errorf("create %s from %s: %w", o.GetName(), f, err)
			}
		}
	}
	return nil
}

func loadYAML(path string) ([]client.Object, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []client.Object
	for _, doc := range bytes.Split(b, []byte("\n---")) {
		doc = bytes.TrimPrefix(bytes.TrimSpace(doc), []byte("---"))
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var obj client.Object
		switch tm.Kind {
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "Role":
			obj = &rbacv1.Role{}
		case "RoleBinding":
			obj = &rbacv1.RoleBinding{}
		default:
			return nil, fmt.Errorf("%s: unexpected kind %q", path, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

// eventually waits for the operator (or the API server) to get there; one minute bounds a
// hung test.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	testenv.Eventually(t, time.Minute, what, check)
}

// newNamespace gives each test its own namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}
