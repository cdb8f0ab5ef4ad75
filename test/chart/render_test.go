//go:build chart

package chart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// obj is one rendered manifest.
type obj map[string]any

func (o obj) kind() string { s, _ := o["kind"].(string); return s }
func (o obj) name() string { s, _ := dig(o, "metadata", "name").(string); return s }
func (o obj) id() string   { return o.kind() + "/" + o.name() }

// dig walks nested maps; nil when a key is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			if o, ok2 := v.(obj); ok2 {
				m = o
			} else {
				return nil
			}
		}
		v = m[k]
	}
	return v
}

// toggle is one configuration of the chart the tests render, lint, validate and dry-run.
type toggle struct {
	name    string
	set     []string // --set arguments
	want    []string // kinds that must be rendered
	without []string // kinds that must not be
}

// Kinds rendered by the default values.
var baseKinds = []string{"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
	"Role", "RoleBinding", "Service", "Deployment", "Secret"} // Secret: the metrics certificate

var optionalKinds = []string{"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "StatefulSet",
	"ChargerSimulation"}

var toggles = []toggle{
	{name: "default", want: baseKinds, without: optionalKinds},
	{name: "serviceMonitor", set: []string{"serviceMonitor.enabled=true"}, want: []string{"ServiceMonitor"}},
	{name: "podMonitor", set: []string{"podMonitor.enabled=true"}, want: []string{"PodMonitor"}},
	{name: "prometheusRule", set: []string{"prometheusRule.enabled=true"}, want: []string{"PrometheusRule"}},
	{name: "dashboards", set: []string{"dashboards.enabled=true"}, want: []string{"ConfigMap"}},
	{name: "mongodb", set: []string{"mongodb.enabled=true"}, want: []string{"StatefulSet", "Secret"}, without: []string{"ChargerSimulation"}},
	{name: "example", set: []string{"mongodb.enabled=true", "example.enabled=true"}, want: []string{"ChargerSimulation", "StatefulSet"}},
	{name: "crds.keep=false", set: []string{"crds.keep=false"}, want: []string{"CustomResourceDefinition"}},
	{name: "crds.install=false", set: []string{"crds.install=false"}, without: []string{"CustomResourceDefinition"}},
	{name: "mongodb-no-persistence", set: []string{"mongodb.enabled=true", "mongodb.persistence.enabled=false", "mongodb.auth.rootPassword=s3cret-Passw0rd"}, want: []string{"StatefulSet"}},
	{name: "no-rbac-no-leader-election", set: []string{"rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops", "operator.leaderElect=false"},
		want: []string{"Deployment"}, without: []string{"ClusterRole", "Role", "ServiceAccount"}},
	{name: "metrics-plain-http", set: []string{"metrics.secure=false", "serviceMonitor.enabled=true"}, want: []string{"ServiceMonitor"}, without: []string{"Secret"}},
	{name: "metrics-self-signed", set: []string{"metrics.tls.generate=false", "serviceMonitor.enabled=true", "serviceMonitor.tlsConfig.insecureSkipVerify=true"}, want: []string{"ServiceMonitor"}, without: []string{"Secret"}},
	// The release namespace itself: the dry-run cluster has no other namespace.
	{name: "namespaced", set: []string{"operator.watchNamespaces={" + testNamespace + "}", "metrics.readerServiceAccounts[0].name=prometheus", "metrics.readerServiceAccounts[0].namespace=monitoring"},
		want: []string{"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}},
	{name: "everything", set: []string{"serviceMonitor.enabled=true", "podMonitor.enabled=true", "prometheusRule.enabled=true",
		"dashboards.enabled=true", "mongodb.enabled=true", "example.enabled=true", "crds.keep=false", "operator.replicas=2"},
		want: append(slices.Clone(baseKinds), optionalKinds...)},
}

func setArgs(set []string) []string {
	var a []string
	for _, s := range set {
		a = append(a, "--set", s)
	}
	return a
}

const testNamespace = "chargesim-system"

// renderWith runs `<helm> template` and returns the manifests.
func renderWith(t testing.TB, helmBin, release string, set []string) ([]obj, string) {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", testNamespace}, setArgs(set)...)
	out := mustRun(t, nil, nil, helmBin, args...)
	objs, err := splitYAML([]byte(out))
	if err != nil {
		t.Fatalf("rendered manifests: %v\n%s", err, out)
	}
	return objs, out
}

func render(t testing.TB, set ...string) ([]obj, string) {
	t.Helper()
	return renderWith(t, tool(t, "helm"), "cs", set)
}

func splitYAML(data []byte) ([]obj, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []obj
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		var o obj
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, fmt.Errorf("%w in document:\n%s", err, doc)
		}
		if len(o) == 0 {
			continue
		}
		out = append(out, o)
	}
}

func kinds(objs []obj) map[string]int {
	m := map[string]int{}
	for _, o := range objs {
		m[o.kind()]++
	}
	return m
}

func find(objs []obj, kind string) []obj {
	var out []obj
	for _, o := range objs {
		if o.kind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func one(t testing.TB, objs []obj, kind string) obj {
	t.Helper()
	f := find(objs, kind)
	if len(f) != 1 {
		t.Fatalf("want exactly one %s, got %d", kind, len(f))
	}
	return f[0]
}

func TestLint(t *testing.T) {
	for _, h := range []struct{ name, bin string }{{"helm3", tool(t, "helm")}, {"helm4", helm4(t)}} {
		for _, tg := range toggles {
			t.Run(h.name+"/"+tg.name, func(t *testing.T) {
				args := append([]string{"lint", "--strict", chartDir, "--namespace", testNamespace}, setArgs(tg.set)...)
				out := mustRun(t, nil, nil, h.bin, args...)
				if !strings.Contains(out, "0 chart(s) failed") {
					t.Fatalf("helm lint: %s", out)
				}
				// --strict turns warnings into failures, but INFO lines pass: keep the output clean
				// of anything but the icon recommendation.
				for _, line := range strings.Split(out, "\n") {
					if strings.HasPrefix(line, "[") && !strings.Contains(line, "icon is recommended") {
						t.Errorf("lint finding: %s", line)
					}
				}
			})
		}
	}
}

func TestTemplateToggles(t *testing.T) {
	for _, tg := range toggles {
		t.Run(tg.name, func(t *testing.T) {
			objs, _ := render(t, tg.set...)
			k := kinds(objs)
			for _, w := range tg.want {
				if k[w] == 0 {
					t.Errorf("%s not rendered; got %v", w, k)
				}
			}
			for _, w := range tg.without {
				if k[w] != 0 {
					t.Errorf("%s rendered, want none; got %v", w, k)
				}
			}
			seen := map[string]bool{}
			for _, o := range objs {
				if seen[o.id()] {
					t.Errorf("%s rendered twice", o.id())
				}
				seen[o.id()] = true
				if dig(o, "metadata", "labels", "app.kubernetes.io/instance") != "cs" {
					t.Errorf("%s lacks label app.kubernetes.io/instance=cs", o.id())
				}
			}
		})
	}
}

// TestHelm4RendersTheSame: the chart avoids anything Helm 4 changed; both render the same
// objects (generated passwords aside).
func TestHelm4RendersTheSame(t *testing.T) {
	normalize := func(objs []obj) map[string]string {
		m := map[string]string{}
		for _, o := range objs {
			if o.kind() == "Secret" {
				delete(o, "data")
			}
			b, _ := json.Marshal(o)
			m[o.id()] = string(b)
		}
		return m
	}
	for _, tg := range toggles {
		t.Run(tg.name, func(t *testing.T) {
			o3, _ := renderWith(t, tool(t, "helm"), "cs", tg.set)
			o4, _ := renderWith(t, helm4(t), "cs", tg.set)
			n3, n4 := normalize(o3), normalize(o4)
			if len(n3) != len(n4) {
				t.Fatalf("helm 3 rendered %d objects, helm 4 %d", len(n3), len(n4))
			}
			for id, v := range n3 {
				if n4[id] != v {
					t.Errorf("%s differs:\nhelm3: %s\nhelm4: %s", id, v, n4[id])
				}
			}
		})
	}
}

// TestValuesSchemaRejects: a wrong value fails `helm template` (so `helm install`) with a
// message naming it.
func TestValuesSchemaRejects(t *testing.T) {
	cases := []struct {
		name string
		set  []string // --set
		str  []string // --set-string, or --set-json for entries starting with "json:"
		want string
	}{
		{"unknown top-level key", []string{"mongo.enabled=true"}, nil, "additional properties 'mongo' not allowed"},
		{"unknown nested key", []string{"operator.replica=2"}, nil, "at '/operator': additional properties 'replica' not allowed"},
		{"replicas not a number", nil, []string{"operator.replicas=two"}, "at '/operator/replicas': got string, want integer"},
		{"replicas zero", []string{"operator.replicas=0"}, nil, "at '/operator/replicas': minimum: got 0, want 1"},
		{"pull policy", []string{"image.pullPolicy=Sometimes"}, nil, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"},
		{"digest", []string{"image.digest=sha256:xyz"}, nil, "at '/image/digest'"},
		{"image tag with a space", nil, []string{"image.tag=1.0 beta"}, "at '/image/tag'"},
		{"log level", []string{"operator.logLevel=verbose"}, nil, "at '/operator/logLevel': value must be one of 'debug', 'info', 'warn', 'error'"},
		{"crds.keep not a bool", nil, []string{"crds.keep=yes"}, "at '/crds/keep': got string, want boolean"},
		{"scrape interval without unit", []string{"serviceMonitor.interval=30"}, nil, "at '/serviceMonitor/interval': got number, want string"},
		{"scrape interval garbage", []string{"podMonitor.interval=often"}, nil, "at '/podMonitor/interval': 'often' does not match pattern"},
		{"namespace selector typo", []string{"podMonitor.namespaceSelector.all=true"}, nil, "at '/podMonitor/namespaceSelector': additional properties 'all' not allowed"},
		{"unknown alert disabled", []string{"prometheusRule.disabled[0]=ChargesimEverythingOnFire"}, nil, "at '/prometheusRule/disabled/0': value must be one of"},
		{"dashboard label not a string", []string{"dashboards.labels.grafana_dashboard=1"}, nil, "at '/dashboards/labels/grafana_dashboard': got number, want string"},
		{"short password", []string{"mongodb.auth.rootPassword=short"}, nil, "at '/mongodb/auth/rootPassword': 'short' does not match pattern"},
		{"password needing URI escapes", []string{"mongodb.auth.rootPassword=p@ss:word/123"}, nil, "at '/mongodb/auth/rootPassword'"},
		{"volume size", []string{"mongodb.persistence.size=lots"}, nil, "at '/mongodb/persistence/size': 'lots' does not match pattern"},
		{"access mode", []string{"mongodb.persistence.accessModes[0]=ReadWriteSometimes"}, nil, "at '/mongodb/persistence/accessModes/0': value must be one of"},
		{"cache too small", nil, []string{"json:mongodb.wiredTigerCacheSizeGB=0.1"}, "at '/mongodb/wiredTigerCacheSizeGB': minimum: got 0.1, want 0.25"},
		{"resources not an object", nil, []string{`json:operator.resources=["cpu"]`}, "at '/operator/resources': got array, want object"},
		{"cpu limit garbage", []string{"operator.resources.limits.cpu=lots"}, nil, "at '/operator/resources/limits/cpu'"},
		{"example name", []string{"example.name=Demo_1"}, nil, "at '/example/name': 'Demo_1' does not match pattern"},
		{"fullnameOverride too long", []string{"fullnameOverride=a-very-long-release-name-that-does-not-fit-anywhere"}, nil, "at '/fullnameOverride': maxLength: got 51, want 40"},
		{"extra arg not a flag", []string{"operator.extraArgs[0]=verbose"}, nil, "at '/operator/extraArgs/0': 'verbose' does not match pattern"},
		// Cross-field rules (templates/validate.yaml, example.yaml).
		{"replicas without leader election", []string{"operator.replicas=2", "operator.leaderElect=false"}, nil, "operator.replicas > 1 needs operator.leaderElect=true"},
		{"service monitor without service", []string{"serviceMonitor.enabled=true", "metrics.service.enabled=false"}, nil, "serviceMonitor.enabled needs metrics.service.enabled=true"},
		{"password and existing secret", []string{"mongodb.enabled=true", "mongodb.auth.existingSecret=mine", "mongodb.auth.rootPassword=abcdefgh"}, nil, "mongodb.auth.rootPassword and mongodb.auth.existingSecret exclude each other"},
		{"example without a store", []string{"example.enabled=true"}, nil, "example.enabled needs a store"},
		{"watched namespace name", []string{"operator.watchNamespaces[0]=Team_A"}, nil, "at '/operator/watchNamespaces/0': 'Team_A' does not match pattern"},
		{"reader without namespace", []string{"metrics.readerServiceAccounts[0].name=prometheus"}, nil, "at '/metrics/readerServiceAccounts/0': missing property 'namespace'"},
		{"unverifiable metrics certificate", []string{"serviceMonitor.enabled=true", "metrics.tls.generate=false"}, nil, "the operator's self-signed certificate (metrics.tls.generate=false, no metrics.tls.existingSecret) cannot be verified"},
		{"example outside the watched namespaces", []string{"mongodb.enabled=true", "example.enabled=true", "operator.watchNamespaces[0]=elsewhere"}, nil, "which operator.watchNamespaces does not include"},
	}
	for _, h := range []struct{ name, bin string }{{"helm3", tool(t, "helm")}, {"helm4", helm4(t)}} {
		for _, c := range cases {
			t.Run(h.name+"/"+c.name, func(t *testing.T) {
				args := append([]string{"template", "cs", chartDir}, setArgs(c.set)...)
				for _, s := range c.str {
					if j, ok := strings.CutPrefix(s, "json:"); ok {
						args = append(args, "--set-json", j)
					} else {
						args = append(args, "--set-string", s)
					}
				}
				r := run(context.Background(), nil, nil, h.bin, args...)
				if r.err == nil {
					t.Fatalf("helm template accepted %v %v", c.set, c.str)
				}
				if !strings.Contains(r.stderr, c.want) {
					t.Fatalf("error does not say %q:\n%s", c.want, r.stderr)
				}
			})
		}
	}
}

// TestSecureDefaults: every pod the chart runs is non-root with a read-only root filesystem,
// no capabilities, the RuntimeDefault seccomp profile, probes and resources.
func TestSecureDefaults(t *testing.T) {
	objs, _ := render(t, "mongodb.enabled=true", "example.enabled=true")
	var pods int
	for _, o := range objs {
		if o.kind() != "Deployment" && o.kind() != "StatefulSet" {
			continue
		}
		pods++
		spec := dig(o, "spec", "template", "spec")
		if dig(spec, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", o.id())
		}
		if dig(spec, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s: pod seccompProfile is not RuntimeDefault", o.id())
		}
		if uid, _ := dig(spec, "securityContext", "runAsUser").(float64); uid == 0 {
			t.Errorf("%s: runAsUser is root or unset", o.id())
		}
		containers, _ := dig(spec, "containers").([]any)
		if len(containers) == 0 {
			t.Fatalf("%s: no containers", o.id())
		}
		for _, c := range containers {
			name := fmt.Sprintf("%s container %v", o.id(), dig(c, "name"))
			sc := dig(c, "securityContext")
			if dig(sc, "readOnlyRootFilesystem") != true {
				t.Errorf("%s: readOnlyRootFilesystem is not true", name)
			}
			if dig(sc, "allowPrivilegeEscalation") != false {
				t.Errorf("%s: allowPrivilegeEscalation is not false", name)
			}
			if drop, _ := dig(sc, "capabilities", "drop").([]any); !reflect.DeepEqual(drop, []any{"ALL"}) {
				t.Errorf("%s: capabilities.drop = %v, want [ALL]", name, drop)
			}
			for _, kind := range []string{"requests", "limits"} {
				for _, res := range []string{"cpu", "memory"} {
					if dig(c, "resources", kind, res) == nil {
						t.Errorf("%s: no resources.%s.%s", name, kind, res)
					}
				}
			}
			if dig(c, "readinessProbe") == nil || dig(c, "livenessProbe") == nil {
				t.Errorf("%s: readiness or liveness probe missing", name)
			}
			if img, _ := dig(c, "image").(string); strings.HasSuffix(img, ":latest") || !strings.Contains(img, ":") {
				t.Errorf("%s: image %q is not pinned to a tag", name, img)
			}
		}
	}
	if pods != 2 {
		t.Fatalf("checked %d workloads, want 2 (operator Deployment, MongoDB StatefulSet)", pods)
	}
}

// TestOperatorDeployment: the operator runs with the flags the issue asks for, and the
// default image follows image.*.
func TestOperatorDeployment(t *testing.T) {
	objs, _ := render(t, "image.repository=registry.example/chargesim", "image.tag=1.2.3")
	d := one(t, objs, "Deployment")
	c := dig(d, "spec", "template", "spec", "containers").([]any)[0]
	var args []string
	for _, a := range dig(c, "args").([]any) {
		args = append(args, a.(string))
	}
	want := []string{"operator", "--leader-elect", "--metrics-bind-address=:8443", "--metrics-cert-dir=/etc/chargesim/metrics-tls",
		"--health-probe-bind-address=:8081", "--default-image=registry.example/chargesim:1.2.3"}
	if !reflect.DeepEqual(args, want) {
		t.Errorf("args = %q, want %q", args, want)
	}
	if img := dig(c, "image"); img != "registry.example/chargesim:1.2.3" {
		t.Errorf("image = %v", img)
	}
	objs, _ = render(t, "image.digest=sha256:"+strings.Repeat("ab", 32), "operator.defaultImage=other/img:9")
	c = dig(one(t, objs, "Deployment"), "spec", "template", "spec", "containers").([]any)[0]
	if img := dig(c, "image").(string); !strings.HasSuffix(img, "@sha256:"+strings.Repeat("ab", 32)) {
		t.Errorf("digest not used: %s", img)
	}
	if a := dig(c, "args").([]any); a[len(a)-1] != "--default-image=other/img:9" {
		t.Errorf("operator.defaultImage not passed: %v", a)
	}
	svc := one(t, objs, "Service")
	if !reflect.DeepEqual(dig(svc, "spec", "selector"), dig(d, "spec", "selector", "matchLabels")) {
		t.Errorf("metrics Service selector %v does not select the operator pods %v", dig(svc, "spec", "selector"), dig(d, "spec", "selector", "matchLabels"))
	}
}

// normRules makes RBAC rules comparable: controller-gen and templates may order lists
// differently.
func normRules(t testing.TB, rules any) []string {
	t.Helper()
	list, _ := rules.([]any)
	var out []string
	for _, r := range list {
		m := r.(map[string]any)
		var parts []string
		for _, k := range []string{"apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs"} {
			var vs []string
			if l, ok := m[k].([]any); ok {
				for _, v := range l {
					vs = append(vs, v.(string))
				}
			}
			sort.Strings(vs)
			parts = append(parts, k+"="+strings.Join(vs, ","))
		}
		for k := range m {
			if !slices.Contains([]string{"apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs"}, k) {
				t.Errorf("unexpected rule field %q", k)
			}
		}
		out = append(out, strings.Join(parts, " "))
	}
	sort.Strings(out)
	return out
}

func readYAMLDocs(t testing.TB, path string) []obj {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generated by controller-gen: make manifests)", err)
	}
	objs, err := splitYAML(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

// TestRBACMatchesGenerated: the chart's ClusterRole grants exactly what controller-gen derived
// from the operator's +kubebuilder:rbac markers (config/rbac/role.yaml): least privilege
// means no more, and the operator works only with no less.
func TestRBACMatchesGenerated(t *testing.T) {
	mustRun(t, nil, nil, filepath.Join(root, "hack", "sync-chart-crds.sh"), "--check")
	gen := readYAMLDocs(t, filepath.Join(root, "config", "rbac", "role.yaml"))
	objs, _ := render(t)
	var genRules []any
	for _, g := range gen {
		if g.kind() != "ClusterRole" {
			t.Fatalf("config/rbac/role.yaml holds a %s; the chart only maps one ClusterRole", g.kind())
		}
		genRules = append(genRules, dig(g, "rules").([]any)...)
	}
	byName := map[string]obj{}
	for _, o := range find(objs, "ClusterRole") {
		byName[o.name()] = o
	}
	operatorRole, ok := byName["cs-chargesim-operator"]
	if !ok {
		t.Fatalf("ClusterRole cs-chargesim-operator not rendered; got %v", byName)
	}
	got := normRules(t, dig(operatorRole, "rules"))
	want := normRules(t, genRules)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("chart ClusterRole rules differ from config/rbac/role.yaml\nchart:\n  %s\ngenerated:\n  %s",
			strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, r := range got {
		if strings.Contains(r, "=*") || strings.Contains(r, ",*") {
			t.Errorf("wildcard in rule %s", r)
		}
	}
	le := readYAMLDocs(t, filepath.Join(root, "config", "rbac", "leader_election_role.yaml"))[0]
	if got, want := normRules(t, dig(one(t, objs, "Role"), "rules")), normRules(t, dig(le, "rules")); !reflect.DeepEqual(got, want) {
		t.Errorf("leader-election Role differs from config/rbac/leader_election_role.yaml:\n%v\n%v", got, want)
	}
	// User-facing roles aggregated into admin/edit/view.
	users := readYAMLDocs(t, filepath.Join(root, "config", "rbac", "user_roles.yaml"))
	if len(users) == 0 || len(byName) != 2+len(users) {
		t.Errorf("%d ClusterRoles rendered, want the operator's, the metrics reader and %d user roles", len(byName), len(users))
	}
	reader := readYAMLDocs(t, filepath.Join(root, "config", "rbac", "metrics_reader_role.yaml"))[0]
	if r, ok := byName["cs-chargesim-metrics-reader"]; !ok || !reflect.DeepEqual(normRules(t, dig(r, "rules")), normRules(t, dig(reader, "rules"))) {
		t.Errorf("metrics-reader ClusterRole missing or differs from config/rbac/metrics_reader_role.yaml: %v", r)
	}
	for _, u := range users {
		name := "cs-chargesim-" + strings.TrimPrefix(u.name(), "chargesim-")
		r, ok := byName[name]
		if !ok {
			t.Errorf("user role %s (from %s) not rendered", name, u.name())
			continue
		}
		if !reflect.DeepEqual(normRules(t, dig(r, "rules")), normRules(t, dig(u, "rules"))) {
			t.Errorf("%s rules differ from config/rbac/user_roles.yaml %s", name, u.name())
		}
		for k, v := range dig(u, "metadata", "labels").(map[string]any) {
			if strings.HasPrefix(k, "rbac.authorization.k8s.io/") && dig(r, "metadata", "labels", k) != v {
				t.Errorf("%s lacks aggregation label %s=%v", name, k, v)
			}
		}
	}
	objs2, _ := render(t, "rbac.aggregateToDefaultRoles=false")
	if n := len(find(objs2, "ClusterRole")); n != 2 {
		t.Errorf("rbac.aggregateToDefaultRoles=false renders %d ClusterRoles, want 2 (operator, metrics reader)", n)
	}
	// The bindings give those rules to the operator's ServiceAccount.
	sa := one(t, objs, "ServiceAccount").name()
	for _, b := range append(find(objs, "ClusterRoleBinding"), find(objs, "RoleBinding")...) {
		subj := dig(b, "subjects").([]any)[0]
		if dig(subj, "name") != sa || dig(subj, "namespace") != testNamespace {
			t.Errorf("%s binds %v, want ServiceAccount %s/%s", b.id(), subj, testNamespace, sa)
		}
	}
	if dig(one(t, objs, "Deployment"), "spec", "template", "spec", "serviceAccountName") != sa {
		t.Errorf("operator pods do not run as ServiceAccount %s", sa)
	}
}

// TestCRDsMatchGenerated: the CRDs the chart installs are config/crd/bases (controller-gen),
// plus labels and, with crds.keep, the keep policy.
func TestCRDsMatchGenerated(t *testing.T) {
	mustRun(t, nil, nil, filepath.Join(root, "hack", "sync-chart-crds.sh"), "--check")
	paths, _ := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	if len(paths) == 0 {
		t.Fatal("no CRDs in config/crd/bases")
	}
	for _, keep := range []bool{true, false} {
		objs, _ := render(t, fmt.Sprintf("crds.keep=%t", keep))
		crds := map[string]obj{}
		for _, o := range find(objs, "CustomResourceDefinition") {
			crds[o.name()] = o
		}
		if len(crds) != len(paths) {
			t.Errorf("chart renders %d CRDs, config/crd/bases has %d", len(crds), len(paths))
		}
		for _, p := range paths {
			gen := readYAMLDocs(t, p)[0]
			got, ok := crds[gen.name()]
			if !ok {
				t.Errorf("CRD %s (%s) not rendered", gen.name(), p)
				continue
			}
			if !reflect.DeepEqual(got["spec"], gen["spec"]) {
				t.Errorf("CRD %s spec differs from %s", gen.name(), p)
			}
			policy := dig(got, "metadata", "annotations", "helm.sh/resource-policy")
			if keep && policy != "keep" {
				t.Errorf("crds.keep=true: %s has resource-policy %v", gen.name(), policy)
			}
			if !keep && policy != nil {
				t.Errorf("crds.keep=false: %s has resource-policy %v", gen.name(), policy)
			}
		}
	}
}

// TestPrometheusRuleMatchesAlertsFile: the PrometheusRule is files/alerts.yaml (which promtool
// tests), minus disabled alerts, plus labels.
func TestPrometheusRuleMatchesAlertsFile(t *testing.T) {
	var file struct {
		Groups []map[string]any `json:"groups"`
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	objs, _ := render(t, "prometheusRule.enabled=true")
	got := dig(one(t, objs, "PrometheusRule"), "spec", "groups")
	want := []any{}
	var names []string
	for _, g := range file.Groups {
		want = append(want, any(g))
		for _, r := range g["rules"].([]any) {
			names = append(names, r.(map[string]any)["alert"].(string))
		}
	}
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Errorf("PrometheusRule groups differ from files/alerts.yaml:\n%s\n%s", gj, wj)
	}

	// The schema's enum of alert names is the list in the file.
	var schema map[string]any
	sb, _ := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err := json.Unmarshal(sb, &schema); err != nil {
		t.Fatal(err)
	}
	var enum []string
	for _, v := range dig(schema, "properties", "prometheusRule", "properties", "disabled", "items", "enum").([]any) {
		enum = append(enum, v.(string))
	}
	if !reflect.DeepEqual(enum, names) {
		t.Errorf("values.schema.json prometheusRule.disabled enum %v, alerts in files/alerts.yaml %v", enum, names)
	}

	objs, _ = render(t, "prometheusRule.enabled=true", "prometheusRule.disabled[0]=ChargesimOperatorReconcileErrors",
		"prometheusRule.additionalAlertLabels.team=ev", "prometheusRule.additionalAlertLabels.severity=page")
	var alerts []string
	for _, g := range dig(one(t, objs, "PrometheusRule"), "spec", "groups").([]any) {
		for _, r := range dig(g, "rules").([]any) {
			alerts = append(alerts, dig(r, "alert").(string))
			if dig(r, "labels", "team") != "ev" || dig(r, "labels", "severity") != "page" {
				t.Errorf("%v: labels %v lack additionalAlertLabels", dig(r, "alert"), dig(r, "labels"))
			}
		}
	}
	if slices.Contains(alerts, "ChargesimOperatorReconcileErrors") || len(alerts) != len(names)-1 {
		t.Errorf("disabled alert still rendered: %v", alerts)
	}
}

// TestPrometheusRuleShortWindows: prometheusRule.for and .window replace every alert's `for`
// and every range selector's window, and nothing else, so a test cluster can see each alert
// fire within a minute with the shipped expressions; the schema refuses a non-duration.
func TestPrometheusRuleShortWindows(t *testing.T) {
	var file struct {
		Groups []struct {
			Rules []map[string]any `json:"rules"`
		} `json:"groups"`
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	window := regexp.MustCompile(`\[[0-9]+[smhdwy]\]`)
	want := map[string]map[string]any{}
	windows := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			r = maps.Clone(r)
			windows += len(window.FindAllString(r["expr"].(string), -1))
			r["expr"] = window.ReplaceAllString(r["expr"].(string), "[1m]")
			r["for"] = "30s"
			want[r["alert"].(string)] = r
		}
	}
	if windows == 0 {
		t.Fatal("files/alerts.yaml has no range selector: the window override is untested")
	}
	objs, _ := render(t, "prometheusRule.enabled=true", "prometheusRule.for=30s", "prometheusRule.window=1m")
	n := 0
	for _, g := range dig(one(t, objs, "PrometheusRule"), "spec", "groups").([]any) {
		for _, r := range dig(g, "rules").([]any) {
			n++
			name := dig(r, "alert").(string)
			gj, _ := json.Marshal(r)
			wj, _ := json.Marshal(want[name])
			if string(gj) != string(wj) {
				t.Errorf("%s with for=30s window=1m:\n got %s\nwant %s", name, gj, wj)
			}
		}
	}
	if n != len(want) {
		t.Errorf("%d rules rendered, %d in files/alerts.yaml", n, len(want))
	}

	for _, bad := range []string{"prometheusRule.for=5 minutes", "prometheusRule.window=1m]"} {
		args := append([]string{"template", "cs", chartDir}, setArgs([]string{"prometheusRule.enabled=true", bad})...)
		if r := run(context.Background(), nil, nil, tool(t, "helm"), args...); r.err == nil {
			t.Errorf("helm template --set %s: accepted, want a values.schema.json error", bad)
		}
	}
}

// TestDashboardConfigMaps: every dashboard JSON is valid, has a unique uid, uses the
// datasource variable, and is shipped byte for byte in a ConfigMap the Grafana sidecar picks up.
func TestDashboardConfigMaps(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(chartDir, "dashboards", "*.json"))
	if len(files) < 2 {
		t.Fatalf("want overview and operator dashboards, found %v", files)
	}
	objs, _ := render(t, "dashboards.enabled=true", "dashboards.namespace=monitoring", "dashboards.annotations.grafana_folder=chargesim")
	cms := find(objs, "ConfigMap")
	if len(cms) != len(files) {
		t.Fatalf("%d ConfigMaps for %d dashboards", len(cms), len(files))
	}
	data := map[string]string{}
	for _, cm := range cms {
		if dig(cm, "metadata", "labels", "grafana_dashboard") != "1" {
			t.Errorf("%s lacks label grafana_dashboard=1", cm.id())
		}
		if dig(cm, "metadata", "namespace") != "monitoring" || dig(cm, "metadata", "annotations", "grafana_folder") != "chargesim" {
			t.Errorf("%s: namespace/annotations not applied", cm.id())
		}
		for k, v := range dig(cm, "data").(map[string]any) {
			data[k] = v.(string)
		}
	}
	uids := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || uids[d.UID] {
			t.Errorf("%s: uid %q empty or duplicate", f, d.UID)
		}
		uids[d.UID] = true
		if got := data["chargesim-"+filepath.Base(f)]; got != strings.TrimRight(string(b), "\n") {
			t.Errorf("%s is not shipped verbatim (ConfigMap key chargesim-%s)", f, filepath.Base(f))
		}
		for _, p := range d.panels() {
			if p.Type == "row" {
				continue
			}
			if p.Datasource.UID != "${datasource}" {
				t.Errorf("%s panel %q: datasource %q, want ${datasource}", f, p.Title, p.Datasource.UID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s panel %q has no query", f, p.Title)
			}
			if p.Description == "" {
				t.Errorf("%s panel %q has no description", f, p.Title)
			}
		}
	}
}

// TestNotes: NOTES.txt tells how to reach the API and Grafana.
func TestNotes(t *testing.T) {
	// `install --dry-run` maps objects through the cluster even client-side; the CRDs are
	// installed there by hand, so the release must not bring its own.
	kc := "--kubeconfig=" + staticCRDs(t)
	out := mustRun(t, nil, nil, tool(t, "helm"), "install", "cs", chartDir, kc, "--namespace", testNamespace, "--dry-run=client",
		"--set", "mongodb.enabled=true", "--set", "example.enabled=true", "--set", "dashboards.enabled=true",
		"--set", "podMonitor.enabled=true", "--set", "crds.install=false")
	notes := out[strings.Index(out, "NOTES:"):]
	for _, want := range []string{
		"kubectl -n chargesim-system port-forward svc/demo-api 8080",
		"curl http://127.0.0.1:8080/api/v1/stats",
		"kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80",
		`labelled {"grafana_dashboard":"1"}`,
		"Secret cs-chargesim-mongodb",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES lack %q:\n%s", want, notes)
		}
	}
	out = mustRun(t, nil, nil, tool(t, "helm"), "install", "cs", chartDir, kc, "--namespace", testNamespace, "--dry-run=client", "--set", "crds.install=false",
		"--set", "serviceMonitor.enabled=true")
	if !strings.Contains(out, "bind Prometheus's ServiceAccount") {
		t.Errorf("NOTES do not say the operator's ServiceMonitor needs Prometheus bound to the metrics reader:\n%s", out)
	}
	if !strings.Contains(out, "port-forward svc/<simulation>-api 8080") {
		t.Errorf("NOTES without example lack the generic port-forward:\n%s", out)
	}
}
