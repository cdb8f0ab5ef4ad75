//go:build chart

package chart

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chargesim/chargesim/test/testenv"
)

var (
	staticOnce sync.Once
	staticErr  error
)

// staticCRDs returns the kubeconfig of the static-test cluster with the chart's CRDs and the
// prometheus-operator's CRDs (test/chart/crds, the real ones of the pinned release) installed
// and Established.
func staticCRDs(t testing.TB) string {
	t.Helper()
	kc := cluster(t, staticCluster)
	staticOnce.Do(func() {
		r := kubectlResult(t, kc, nil, "apply", "--server-side", "--force-conflicts",
			"-f", filepath.Join(chartDir, "files", "crds"), "-f", filepath.Join(root, "test", "chart", "crds"))
		if r.err != nil {
			staticErr = fmt.Errorf("install CRDs: %v", r)
			return
		}
		r = kubectlResult(t, kc, nil, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
		if r.err != nil {
			staticErr = fmt.Errorf("CRDs not established: %v", r)
			return
		}
		r = kubectlResult(t, kc, nil, "create", "namespace", testNamespace)
		if r.err != nil && !strings.Contains(r.stderr, "AlreadyExists") {
			staticErr = fmt.Errorf("create namespace: %v", r)
		}
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return kc
}

// TestServerDryRun: every manifest of every toggle is accepted by a real kube-apiserver
// (admission, defaulting, CRD schemas including the ChargerSimulation's CEL rules).
func TestServerDryRun(t *testing.T) {
	kc := staticCRDs(t)
	for _, tg := range toggles {
		t.Run(tg.name, func(t *testing.T) {
			_, out := render(t, tg.set...)
			r := kubectlResult(t, kc, []byte(out), "apply", "--dry-run=server", "-n", testNamespace, "-f", "-")
			if r.err != nil {
				t.Fatalf("server dry-run rejected the manifests: %v", r)
			}
			objs, _ := render(t, tg.set...)
			// One line per object: nothing silently skipped.
			if n := strings.Count(strings.TrimSpace(r.stdout), "\n") + 1; n != len(objs) {
				t.Errorf("kubectl reported %d objects, chart rendered %d:\n%s", n, len(objs), r.stdout)
			}
		})
	}
	// The test must be able to fail: a ChargerSimulation the CRD's CEL rules refuse.
	_, out := render(t, "mongodb.enabled=true", "example.enabled=true", "example.spec.chargers=1", "example.spec.publisher.replicas=3")
	r := kubectlResult(t, kc, []byte(out), "apply", "--dry-run=server", "-n", testNamespace, "-f", "-")
	if r.err == nil || !strings.Contains(r.stderr, "spec.chargers must be at least spec.publisher.replicas") {
		t.Errorf("invalid example accepted or refused for another reason: %v", r)
	}
}

// TestKubeconform validates the rendered manifests offline with kubeconform. The JSON schemas
// are generated from the test API server's own OpenAPI document (with the CRDs installed), as
// the public schema repository cannot be downloaded here; they are strict (unknown fields fail).
func TestKubeconform(t *testing.T) {
	kc := staticCRDs(t)
	schemaDir := t.TempDir()
	kinds := writeKubeconformSchemas(t, kc, schemaDir)
	for _, k := range []string{"apps/v1/deployment", "v1/v1/service", "apiextensions.k8s.io/v1/customresourcedefinition",
		"chargesim.io/v1alpha1/chargersimulation", "monitoring.coreos.com/v1/podmonitor"} {
		if !kinds[k] {
			t.Fatalf("no schema for %s in the API server's OpenAPI", k)
		}
	}
	location := filepath.Join(schemaDir, "{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json")
	kubeconform := func(manifests string) result {
		return run(t.Context(), nil, []byte(manifests), tool(t, "kubeconform"),
			"-strict", "-summary", "-schema-location", location, "-")
	}
	for _, tg := range toggles {
		t.Run(tg.name, func(t *testing.T) {
			_, out := render(t, tg.set...)
			r := kubeconform(out)
			if r.err != nil {
				t.Fatalf("kubeconform: %v", r)
			}
			objs, _ := render(t, tg.set...)
			if want := fmt.Sprintf("Valid: %d, Invalid: 0, Errors: 0, Skipped: 0", len(objs)); !strings.Contains(r.stdout, want) {
				t.Errorf("kubeconform summary %q, want %q", strings.TrimSpace(r.stdout), want)
			}
		})
	}
	// The schemas must catch a misspelt field and a wrong type.
	for _, bad := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: eighty}]}\n",
	} {
		if r := kubeconform(bad); r.err == nil {
			t.Errorf("kubeconform accepted an invalid manifest:\n%s\n%v", bad, r)
		}
	}
}

// writeKubeconformSchemas turns the API server's /openapi/v2 into one standalone JSON schema per
// kind at dir/<group>/<version>/<kind>.json (core group: v1/v1/<kind>.json, kubeconform's
// {{ .Group }} for "v1"), and returns the set of "<group>/<version>/<kind>" written.
func writeKubeconformSchemas(t testing.TB, kc, dir string) map[string]bool {
	t.Helper()
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	// CRD schemas reach the OpenAPI document a moment after the CRD is Established.
	testenv.Eventually(t, 60*time.Second, "CRDs in /openapi/v2", func() error {
		raw := kubectl(t, kc, nil, "get", "--raw", "/openapi/v2")
		doc.Definitions = nil
		if err := json.Unmarshal([]byte(raw), &doc); err != nil {
			return err
		}
		for _, want := range []string{"io.chargesim.v1alpha1.ChargerSimulation", "com.coreos.monitoring.v1.PodMonitor",
			"com.coreos.monitoring.v1.ServiceMonitor", "com.coreos.monitoring.v1.PrometheusRule"} {
			if _, ok := doc.Definitions[want]; !ok {
				return fmt.Errorf("%s not published yet", want)
			}
		}
		return nil
	})
	defs := map[string]any{}
	for name, d := range doc.Definitions {
		defs[name] = jsonSchemaOf(name, d)
	}
	written := map[string]bool{}
	for name, d := range doc.Definitions {
		gvks, _ := d["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk := g.(map[string]any)
			group, version, kind := gvk["group"].(string), gvk["version"].(string), gvk["kind"].(string)
			// kubeconform splits apiVersion "v1" into Group "v1" (there is no group part).
			if group == "" {
				group = version
			}
			key := strings.ToLower(group + "/" + version + "/" + kind)
			if written[key] {
				continue
			}
			// The kind's own schema at the root, the definitions it refers to beside it.
			root := map[string]any{"$schema": "http://json-schema.org/draft-07/schema#", "definitions": refClosure(defs, name)}
			for k, v := range defs[name].(map[string]any) {
				root[k] = v
			}
			b, err := json.Marshal(root)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, key+".json")
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			written[key] = true
		}
	}
	return written
}

// jsonSchemaOf converts one OpenAPI v2 definition to JSON schema the way openapi2jsonschema
// --strict does: int-or-string and quantities accept numbers, objects with properties refuse
// unknown fields unless they preserve them, and nulls are allowed where Kubernetes allows
// them (optional fields).
func jsonSchemaOf(name string, d map[string]any) any {
	switch name {
	case "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
	case "io.k8s.apimachinery.pkg.api.resource.Quantity":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
	}
	return convert(d)
}

func convert(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, vv := range x {
			switch k {
			case "x-kubernetes-group-version-kind", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
				"x-kubernetes-patch-merge-key", "x-kubernetes-patch-strategy", "x-kubernetes-map-type",
				"x-kubernetes-unions", "x-kubernetes-validations", "x-kubernetes-embedded-resource":
				continue
			case "format":
				// int32, byte, date-time...: type is what matters; formats are not asserted.
				continue
			case "properties":
				props := map[string]any{}
				for pk, pv := range vv.(map[string]any) {
					props[pk] = convert(pv)
				}
				out[k] = props
				continue
			}
			out[k] = convert(vv)
		}
		if x["x-kubernetes-int-or-string"] == true {
			delete(out, "type")
			out["oneOf"] = []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}
		}
		if _, hasProps := x["properties"]; hasProps && x["x-kubernetes-preserve-unknown-fields"] != true {
			if _, ok := x["additionalProperties"]; !ok {
				out["additionalProperties"] = false
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, vv := range x {
			out[i] = convert(vv)
		}
		return out
	default:
		return v
	}
}

// refClosure returns the definitions reachable through $ref from definition name.
func refClosure(defs map[string]any, name string) map[string]any {
	out := map[string]any{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				n := strings.TrimPrefix(ref, "#/definitions/")
				if _, seen := out[n]; !seen {
					out[n] = defs[n]
					walk(defs[n])
				}
			}
			for _, vv := range x {
				walk(vv)
			}
		case []any:
			for _, vv := range x {
				walk(vv)
			}
		}
	}
	walk(defs[name])
	return out
}
