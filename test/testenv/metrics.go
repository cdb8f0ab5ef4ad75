package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricSum gathers g and returns the sum of every series of the counter or gauge family name
// (all label values), and whether the family exists.
func MetricSum(tb testing.TB, g prometheus.Gatherer, name string) (float64, bool) {
	tb.Helper()
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatalf("testenv: gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			return sum, true
		}
	}
	return 0, false
}
