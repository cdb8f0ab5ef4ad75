//go:build chart

package chart

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chargesim/chargesim/test/testenv"
)

// TestLifecycleNamespaced (issue 9) installs the chart in namespaced mode on kwok
// (operator.watchNamespaces=[team-a]) and runs the operator as the chart's ServiceAccount with
// the Deployment's own flags: a simulation in team-a becomes Ready, one in team-b is never
// touched, Secrets are readable in team-a only; the operator's /metrics, served with the chart's
// generated certificate, answers 401 without a token, 403 to a ServiceAccount without the
// reader role and 200 to the one metrics.readerServiceAccounts names, over TLS verified like the
// ServiceMonitor verifies it (CA from the Secret, the Service's DNS name).
func TestLifecycleNamespaced(t *testing.T) {
	chargesimBin(t, "operator")
	kc := cluster(t, lifecycleCluster)
	const (
		rel     = "nsop"
		ns      = "nsop-system"
		watched = "team-a"
		ignored = "team-b"
		sa      = "nsop-chargesim"
	)
	for _, n := range []string{ns, watched, ignored} {
		kubectl(t, kc, nil, "create", "namespace", n)
	}
	t.Cleanup(func() {
		kubectlResult(t, kc, nil, "delete", "namespace", watched, ignored, ns, "--wait=false")
	})
	kubectl(t, kc, nil, "-n", ns, "create", "serviceaccount", "scraper")
	kubectl(t, kc, nil, "-n", ns, "create", "serviceaccount", "stranger")
	helmIn(t, kc, "install", rel, chartDir, "-n", ns, "--wait", "--timeout", "3m",
		"--set", "operator.watchNamespaces={"+watched+"}", "--set", "crds.keep=false",
		"--set", "metrics.readerServiceAccounts[0].name=scraper", "--set", "metrics.readerServiceAccounts[0].namespace="+ns,
		"--set", "image.repository=chargesim", "--set", "image.tag=kwok")

	// What the chart granted, asked of the API server as the operator's ServiceAccount.
	opKC := impersonatingKubeconfig(t, kc, "system:serviceaccount:"+ns+":"+sa)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "secrets", "-n", watched}, "yes"},
		{[]string{"patch", "deployments", "-n", watched}, "yes"},
		{[]string{"get", "secrets", "-n", ignored}, "no"},
		{[]string{"list", "chargersimulations.chargesim.io", "-n", ignored}, "no"},
		{[]string{"get", "secrets", "-n", ns}, "no"},
		{[]string{"list", "chargersimulations.chargesim.io", "-A"}, "no"},
		{[]string{"create", "tokenreviews.authentication.k8s.io"}, "yes"},
		{[]string{"create", "subjectaccessreviews.authorization.k8s.io"}, "yes"},
	} {
		r := kubectlResult(t, opKC, nil, append([]string{"auth", "can-i"}, c.args...)...)
		if got := strings.TrimSpace(r.stdout); got != c.want {
			t.Errorf("operator can-i %v: %q, want %s", c.args, got, c.want)
		}
	}
	// Cluster-wide: only the reviews, the metrics reader and the user roles aggregated into
	// admin/edit/view (they grant nothing until a namespace binds admin/edit/view).
	cr := jsonpath(t, kc, "get", "clusterroles", "-l", "app.kubernetes.io/instance="+rel, "-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{end}`)
	if want := "nsop-chargesim-chargersimulation-editor nsop-chargesim-chargersimulation-viewer nsop-chargesim-metrics-reader nsop-chargesim-operator"; cr != want {
		t.Errorf("ClusterRoles %q, want %q", cr, want)
	}

	// The operator's flags, as the chart renders them.
	var watchArg string
	for _, a := range strings.Fields(jsonpath(t, kc, "-n", ns, "get", "deployment", rel+"-chargesim-operator", "-o", `jsonpath={range .spec.template.spec.containers[0].args[*]}{@}{" "}{end}`)) {
		if strings.HasPrefix(a, "--watch-namespace=") {
			watchArg = a
		}
	}
	if watchArg != "--watch-namespace="+watched {
		t.Fatalf("operator Deployment watch flag %q", watchArg)
	}
	// The chart's generated certificate, mounted as in the pod.
	certDir := t.TempDir()
	secretName := rel + "-chargesim-metrics-tls"
	files := map[string][]byte{}
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		b, err := base64.StdEncoding.DecodeString(jsonpath(t, kc, "-n", ns, "get", "secret", secretName, "-o", `jsonpath={.data.`+strings.ReplaceAll(k, ".", `\.`)+`}`))
		if err != nil || len(b) == 0 {
			t.Fatalf("Secret %s key %s: %v", secretName, k, err)
		}
		files[k] = b
		if err := os.WriteFile(filepath.Join(certDir, k), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for _, n := range []string{watched, ignored} {
		kubectl(t, kc, []byte(`apiVersion: v1
kind: Secret
metadata: {name: mongo}
stringData: {uri: "mongodb://mongo.example:27017"}
`), "-n", n, "apply", "-f", "-")
	}
	op, metrics := runOperator(t, opKC, "--leader-elect", "--leader-election-namespace="+ns, watchArg, "--metrics-cert-dir="+certDir)
	kubectl(t, kc, simulationYAML("inside", watched, "mongo"), "apply", "-f", "-")
	kubectl(t, kc, simulationYAML("outside", ignored, "mongo"), "apply", "-f", "-")
	waitReady(t, kc, watched, "inside")
	// By the time the watched one is Ready the operator has long seen every event it will get;
	// give it as long again, then nothing may have happened in team-b.
	time.Sleep(5 * time.Second)
	if s := jsonpath(t, kc, "-n", ignored, "get", "chargersimulation", "outside", "-o", "jsonpath={.status}"); s != "" {
		t.Errorf("simulation in unwatched namespace %s has status %s", ignored, s)
	}
	if out := jsonpath(t, kc, "-n", ignored, "get", "deployments,statefulsets,services,configmaps", "-l", "chargesim.io/simulation=outside", "-o", "name"); out != "" {
		t.Errorf("the operator created in unwatched namespace %s: %s", ignored, out)
	}
	if l := op.log(); strings.Contains(strings.ToLower(l), "forbidden") {
		t.Errorf("the namespaced RBAC is not enough for the operator:\n%s", tail([]byte(l), 4000))
	}

	// /metrics: verified like the ServiceMonitor does it.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files["ca.crt"])
	serverName := rel + "-chargesim-operator-metrics." + ns + ".svc"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}}}
	scrapeAs := func(token string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+metrics+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	tokens := map[string]string{}
	for _, s := range []string{"scraper", "stranger"} {
		tokens[s] = strings.TrimSpace(kubectl(t, kc, nil, "-n", ns, "create", "token", s))
	}
	for _, c := range []struct {
		who, token string
		want       int
	}{{"no token", "", http.StatusUnauthorized}, {"stranger", tokens["stranger"], http.StatusForbidden}, {"scraper", tokens["scraper"], http.StatusOK}} {
		testenv.Eventually(t, time.Minute, c.who+" scraping /metrics", func() error {
			code, body, err := scrapeAs(c.token)
			if err != nil {
				return err
			}
			if code != c.want {
				return fmt.Errorf("status %d, want %d: %.200s", code, c.want, body)
			}
			if c.want == http.StatusOK && !strings.Contains(body, "chargesim_simulation_ready") {
				return fmt.Errorf("200 without chargesim_simulation_ready")
			}
			return nil
		})
	}

	op.stop(t)
	kubectl(t, kc, nil, "-n", watched, "delete", "chargersimulation", "inside", "--wait")
	kubectl(t, kc, nil, "-n", ignored, "delete", "chargersimulation", "outside", "--wait")
	helmIn(t, kc, "uninstall", rel, "-n", ns, "--wait", "--timeout", "3m")
	testenv.Eventually(t, time.Minute, "release's RBAC gone", func() error {
		out := jsonpath(t, kc, "get", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance="+rel, "-o", "name")
		out += jsonpath(t, kc, "get", "roles,rolebindings", "-A", "-l", "app.kubernetes.io/instance="+rel, "-o", "name")
		if out != "" {
			return fmt.Errorf("left: %s", out)
		}
		return nil
	})
}
