//go:build chart

package chart

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/controllers"
)

// podMonitorSpec is the part of a PodMonitor this test evaluates.
type podMonitorSpec struct {
	Selector  metav1.LabelSelector `json:"selector"`
	Endpoints []struct {
		Port        string `json:"port"`
		Path        string `json:"path"`
		Relabelings []struct {
			SourceLabels []string `json:"sourceLabels"`
			Regex        string   `json:"regex"`
			Action       string   `json:"action"`
		} `json:"relabelings"`
	} `json:"podMetricsEndpoints"`
}

// podLabelMeta is Prometheus' Kubernetes SD meta label for a pod label.
func podLabelMeta(pod map[string]string, meta string) (string, bool) {
	const prefix = "__meta_kubernetes_pod_label_"
	if !strings.HasPrefix(meta, prefix) {
		return "", false
	}
	sanitize := regexp.MustCompile(`[^a-zA-Z0-9_]`)
	for k, v := range pod {
		if sanitize.ReplaceAllString(k, "_") == strings.TrimPrefix(meta, prefix) {
			return v, true
		}
	}
	return "", true
}

// TestPodMonitorScrapesRenderedPods matches the chart's PodMonitor against the pods the
// operator really renders: every component's pod is selected, and exactly one of the
// monitor's endpoints scrapes it, on a port the container declares, serving /metrics. A port
// renamed on one side only (issue 8: the monitor kept "metrics", the pods said "http") fails
// here instead of leaving the dashboards empty on a real cluster.
func TestPodMonitorScrapesRenderedPods(t *testing.T) {
	objs, _ := render(t, "podMonitor.enabled=true")
	var pm *podMonitorSpec
	for _, o := range objs {
		if o.kind() != "PodMonitor" {
			continue
		}
		b, err := yaml.Marshal(o["spec"])
		if err != nil {
			t.Fatal(err)
		}
		pm = &podMonitorSpec{}
		if err := yaml.Unmarshal(b, pm); err != nil {
			t.Fatal(err)
		}
	}
	if pm == nil {
		t.Fatal("no PodMonitor rendered")
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Selector)
	if err != nil {
		t.Fatal(err)
	}

	sim := &v1alpha1.ChargerSimulation{ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "lab"}}
	sim.Spec.Mongo.URISecretRef.Name = "mongo"
	tmpls, err := controllers.PodTemplates(sim, "chargesim:test")
	if err != nil {
		t.Fatal(err)
	}
	if len(tmpls) != 4 {
		t.Fatalf("%d components rendered", len(tmpls))
	}
	for c, tmpl := range tmpls {
		t.Run(string(c), func(t *testing.T) {
			if !sel.Matches(labels.Set(tmpl.Labels)) {
				t.Fatalf("PodMonitor selector %s does not select pod labels %v", sel, tmpl.Labels)
			}
			var scraped []string
			for _, ep := range pm.Endpoints {
				port := containerPort(tmpl.Spec, ep.Port)
				if port == nil {
					continue // Prometheus makes no target for a port the pod does not have
				}
				keep := true
				for _, rl := range ep.Relabelings {
					if rl.Action != "keep" {
						continue
					}
					var vals []string
					for _, s := range rl.SourceLabels {
						v, _ := podLabelMeta(tmpl.Labels, s)
						vals = append(vals, v)
					}
					if !regexp.MustCompile("^(?:" + rl.Regex + ")$").MatchString(strings.Join(vals, ";")) {
						keep = false
					}
				}
				if keep {
					scraped = append(scraped, fmt.Sprintf("%s:%d%s", ep.Port, port.ContainerPort, ep.Path))
				}
			}
			if len(scraped) != 1 {
				t.Fatalf("scraped by %d endpoints %v; want exactly one (container ports %+v)", len(scraped), scraped, tmpl.Spec.Containers[0].Ports)
			}
			// The scraped port is the one whose HTTP address the pod is given (it serves /metrics).
			env := map[string]string{}
			for _, e := range tmpl.Spec.Containers[0].Env {
				env[e.Name] = e.Value
			}
			ep := scraped[0]
			if !strings.HasSuffix(ep, "/metrics") || !strings.Contains(ep, env["CHARGESIM_HTTP_ADDR"]+"/") {
				t.Errorf("scrapes %s, but the component serves /metrics on %q", ep, env["CHARGESIM_HTTP_ADDR"])
			}
		})
	}
}

func containerPort(spec corev1.PodSpec, name string) *corev1.ContainerPort {
	for _, c := range spec.Containers {
		for i := range c.Ports {
			if c.Ports[i].Name == name {
				return &c.Ports[i]
			}
		}
	}
	return nil
}
