//go:build chart

package chart

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// operatorArgs returns the operator container's args.
func operatorArgs(t testing.TB, objs []obj) []string {
	t.Helper()
	c := dig(one(t, objs, "Deployment"), "spec", "template", "spec", "containers").([]any)[0]
	var args []string
	for _, a := range dig(c, "args").([]any) {
		args = append(args, a.(string))
	}
	return args
}

func named(objs []obj, kind, name string) obj {
	for _, o := range find(objs, kind) {
		if o.name() == name {
			return o
		}
	}
	return nil
}

func smEndpoint(t testing.TB, objs []obj) map[string]any {
	t.Helper()
	eps := dig(one(t, objs, "ServiceMonitor"), "spec", "endpoints").([]any)
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor has %d endpoints", len(eps))
	}
	return eps[0].(map[string]any)
}

// TestMetricsServiceMonitor (issue 9): by default the operator serves /metrics over HTTPS with
// the chart's generated certificate, and the ServiceMonitor scrapes it with https, Prometheus's
// ServiceAccount token and a tlsConfig that verifies the certificate (CA and server name) — a
// certificate that really is valid for that name under that CA.
func TestMetricsServiceMonitor(t *testing.T) {
	objs, _ := render(t, "serviceMonitor.enabled=true",
		"metrics.readerServiceAccounts[0].name=prometheus", "metrics.readerServiceAccounts[0].namespace=monitoring")
	ep := smEndpoint(t, objs)
	if ep["scheme"] != "https" || ep["bearerTokenFile"] != "/var/run/secrets/kubernetes.io/serviceaccount/token" || ep["authorization"] != nil {
		t.Errorf("endpoint scheme/token: %v", ep)
	}
	const secret, svcName = "cs-chargesim-metrics-tls", "cs-chargesim-operator-metrics"
	serverName := svcName + "." + testNamespace + ".svc"
	tc := ep["tlsConfig"].(map[string]any)
	if tc["insecureSkipVerify"] != nil || tc["serverName"] != serverName ||
		dig(tc, "ca", "secret", "name") != secret || dig(tc, "ca", "secret", "key") != "ca.crt" {
		t.Errorf("tlsConfig %v", tc)
	}
	if svc := named(objs, "Service", svcName); svc == nil || dig(svc, "spec", "ports").([]any)[0].(map[string]any)["port"] != float64(8443) {
		t.Errorf("metrics Service %v", svc)
	}
	// The generated certificate: valid for the serverName, signed by ca.crt, key usage server.
	s := named(objs, "Secret", secret)
	if s == nil || s["type"] != "kubernetes.io/tls" {
		t.Fatalf("metrics TLS Secret %v", s)
	}
	pemOf := func(k string) []byte {
		b, err := base64.StdEncoding.DecodeString(dig(s, "data", k).(string))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemOf("ca.crt")) {
		t.Fatal("ca.crt is not a PEM certificate")
	}
	blk, _ := pem.Decode(pemOf("tls.crt"))
	if blk == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: serverName, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("generated certificate does not verify for %s: %v", serverName, err)
	}
	if len(pemOf("tls.key")) == 0 {
		t.Error("no tls.key")
	}
	// The operator reads it from the mounted Secret.
	args := operatorArgs(t, objs)
	if !slices.Contains(args, "--metrics-cert-dir=/etc/chargesim/metrics-tls") || slices.Contains(args, "--metrics-secure=false") {
		t.Errorf("operator args %v", args)
	}
	pod := dig(one(t, objs, "Deployment"), "spec", "template", "spec")
	if v := dig(pod, "volumes").([]any)[0]; dig(v, "secret", "secretName") != secret {
		t.Errorf("volume %v", v)
	}
	// Prometheus's ServiceAccount may read /metrics.
	crb := named(objs, "ClusterRoleBinding", "cs-chargesim-metrics-reader")
	if crb == nil || dig(crb, "roleRef", "name") != "cs-chargesim-metrics-reader" ||
		!reflect.DeepEqual(dig(crb, "subjects"), []any{map[string]any{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}}) {
		t.Errorf("metrics-reader binding %v", crb)
	}
	if named(objs, "ClusterRole", "cs-chargesim-metrics-reader") == nil {
		t.Error("no metrics-reader ClusterRole")
	}

	// insecureSkipVerify (with the operator's self-signed certificate): no CA, no Secret.
	objs, _ = render(t, "serviceMonitor.enabled=true", "metrics.tls.generate=false", "serviceMonitor.tlsConfig.insecureSkipVerify=true")
	tc = smEndpoint(t, objs)["tlsConfig"].(map[string]any)
	if !reflect.DeepEqual(tc, map[string]any{"insecureSkipVerify": true}) {
		t.Errorf("insecure tlsConfig %v", tc)
	}
	if len(find(objs, "Secret")) != 0 || slices.ContainsFunc(operatorArgs(t, objs), func(a string) bool { return strings.HasPrefix(a, "--metrics-cert-dir") }) {
		t.Errorf("self-signed mode renders a certificate Secret or --metrics-cert-dir")
	}

	// A cert-manager Secret and a token Secret.
	objs, _ = render(t, "serviceMonitor.enabled=true", "metrics.tls.existingSecret=operator-metrics-cert",
		"serviceMonitor.bearerTokenSecret.name=prom-token", "serviceMonitor.bearerTokenSecret.key=token")
	ep = smEndpoint(t, objs)
	if dig(ep, "tlsConfig", "ca", "secret", "name") != "operator-metrics-cert" || ep["bearerTokenFile"] != nil ||
		!reflect.DeepEqual(ep["authorization"], map[string]any{"type": "Bearer", "credentials": map[string]any{"name": "prom-token", "key": "token"}}) {
		t.Errorf("existingSecret/bearerTokenSecret endpoint %v", ep)
	}
	if len(find(objs, "Secret")) != 0 {
		t.Error("existingSecret still renders a generated Secret")
	}
	if v := dig(one(t, objs, "Deployment"), "spec", "template", "spec", "volumes").([]any)[0]; dig(v, "secret", "secretName") != "operator-metrics-cert" {
		t.Errorf("volume %v", v)
	}

	// The documented development mode: plain HTTP on 8080, no reader role, a plain ServiceMonitor.
	objs, _ = render(t, "serviceMonitor.enabled=true", "metrics.secure=false", "metrics.service.port=8080")
	args = operatorArgs(t, objs)
	if !slices.Contains(args, "--metrics-secure=false") || !slices.Contains(args, "--metrics-bind-address=:8080") {
		t.Errorf("insecure args %v", args)
	}
	ep = smEndpoint(t, objs)
	if ep["scheme"] != nil || ep["tlsConfig"] != nil || ep["bearerTokenFile"] != nil {
		t.Errorf("plain endpoint %v", ep)
	}
	if named(objs, "ClusterRole", "cs-chargesim-metrics-reader") != nil || len(find(objs, "Secret")) != 0 {
		t.Error("metrics.secure=false still renders the reader role or a certificate")
	}
}

// TestNamespacedRBAC (issue 9): with operator.watchNamespaces the operator's rules are Roles in
// those namespaces; the only ClusterRoles left are what must be cluster-wide (token and access
// reviews for /metrics, the metrics reader, the user roles aggregated into admin/edit/view).
// Nothing cluster-wide grants Secrets or workloads.
func TestNamespacedRBAC(t *testing.T) {
	gen := readYAMLDocs(t, root+"/config/rbac/role.yaml")[0]
	var wantNS, wantCluster []any
	for _, r := range dig(gen, "rules").([]any) {
		groups := dig(r, "apiGroups").([]any)
		if slices.Contains(groups, any("authentication.k8s.io")) || slices.Contains(groups, any("authorization.k8s.io")) {
			wantCluster = append(wantCluster, r)
		} else {
			wantNS = append(wantNS, r)
		}
	}
	if len(wantCluster) != 2 {
		t.Fatalf("config/rbac/role.yaml: %d review rules, want tokenreviews and subjectaccessreviews", len(wantCluster))
	}

	objs, _ := render(t, "operator.watchNamespaces={team-a,team-b}", "rbac.aggregateToDefaultRoles=false")
	if args := operatorArgs(t, objs); !slices.Contains(args, "--watch-namespace=team-a,team-b") {
		t.Errorf("args %v", args)
	}
	roles := map[string]obj{}
	for _, r := range find(objs, "Role") {
		roles[dig(r, "metadata", "namespace").(string)+"/"+r.name()] = r
	}
	for _, ns := range []string{"team-a", "team-b"} {
		r := roles[ns+"/cs-chargesim-operator"]
		if r == nil {
			t.Fatalf("no operator Role in %s: %v", ns, roles)
		}
		if got, want := normRules(t, dig(r, "rules")), normRules(t, wantNS); !reflect.DeepEqual(got, want) {
			t.Errorf("Role in %s:\n  %s\nwant\n  %s", ns, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		var bound bool
		for _, b := range find(objs, "RoleBinding") {
			if dig(b, "metadata", "namespace") == ns && dig(b, "roleRef", "name") == "cs-chargesim-operator" && dig(b, "roleRef", "kind") == "Role" {
				bound = dig(b, "subjects").([]any)[0].(map[string]any)["name"] == "cs-chargesim"
			}
		}
		if !bound {
			t.Errorf("operator Role in %s not bound to the operator's ServiceAccount", ns)
		}
	}
	if roles[testNamespace+"/cs-chargesim-leader-election"] == nil || len(roles) != 3 {
		t.Errorf("Roles %v: want the operator's in team-a and team-b and leader election in %s", roles, testNamespace)
	}
	var names []string
	for _, cr := range find(objs, "ClusterRole") {
		names = append(names, cr.name())
		for _, r := range normRules(t, dig(cr, "rules")) {
			if strings.Contains(r, "secrets") || strings.Contains(r, "deployments") || strings.Contains(r, "chargersimulations") {
				t.Errorf("ClusterRole %s grants cluster-wide: %s", cr.name(), r)
			}
		}
	}
	slices.Sort(names)
	if !reflect.DeepEqual(names, []string{"cs-chargesim-metrics-reader", "cs-chargesim-operator"}) {
		t.Errorf("ClusterRoles %v", names)
	}
	if got, want := normRules(t, dig(named(objs, "ClusterRole", "cs-chargesim-operator"), "rules")), normRules(t, wantCluster); !reflect.DeepEqual(got, want) {
		t.Errorf("cluster-wide operator rules %v, want only %v", got, want)
	}
	// Plain-HTTP metrics need no reviews: no operator ClusterRole at all.
	objs, _ = render(t, "operator.watchNamespaces={team-a}", "rbac.aggregateToDefaultRoles=false", "metrics.secure=false")
	if n := len(find(objs, "ClusterRole")) + len(find(objs, "ClusterRoleBinding")); n != 0 {
		t.Errorf("namespaced install with metrics.secure=false renders %d cluster-wide RBAC objects", n)
	}
}
