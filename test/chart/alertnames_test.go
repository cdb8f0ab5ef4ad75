//go:build chart

package chart

import (
	"encoding/json"
	"os"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestDisabledAlertNamesMatchRules keeps values.schema.json's prometheusRule.disabled enum equal
// to the alerts the rule file ships: a new alert missing from the enum could not be disabled,
// a stale name would be accepted and disable nothing.
func TestDisabledAlertNamesMatchRules(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	b, err := os.ReadFile("../../charts/chargesim/files/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	var shipped []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				shipped = append(shipped, r.Alert)
			}
		}
	}
	var schema struct {
		Properties struct {
			PrometheusRule struct {
				Properties struct {
					Disabled struct {
						Items struct {
							Enum []string `json:"enum"`
						} `json:"items"`
					} `json:"disabled"`
				} `json:"properties"`
			} `json:"prometheusRule"`
		} `json:"properties"`
	}
	b, err = os.ReadFile("../../charts/chargesim/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	enum := schema.Properties.PrometheusRule.Properties.Disabled.Items.Enum
	slices.Sort(shipped)
	slices.Sort(enum)
	if len(shipped) == 0 || !slices.Equal(shipped, enum) {
		t.Errorf("prometheusRule.disabled enum %v != alerts in files/alerts.yaml %v", enum, shipped)
	}
}
