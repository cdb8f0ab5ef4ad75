package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

const (
	applyApplied   = "applied"
	applyUnchanged = "unchanged"
	applyFailed    = "failed"
)

// Metrics are the operator's own metrics, next to controller-runtime's.
type Metrics struct {
	applies *prometheus.CounterVec
}

// NewMetrics registers the operator metrics with reg. The simulations gauge is computed at
// scrape time from the informer cache (reader), so it can never drift from the cluster.
func NewMetrics(reg prometheus.Registerer, reader client.Reader) (*Metrics, error) {
	m := &Metrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chargesim_operator_applies_total",
			Help: "Server-side applies of child objects by kind and result: applied (sent), unchanged (skipped: the live object already matched), failed.",
		}, []string{"kind", "result"}),
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "StatefulSet", "Service"} {
		for _, res := range []string{applyApplied, applyUnchanged, applyFailed} {
			m.applies.WithLabelValues(kind, res)
		}
	}
	if reg != nil {
		if err := reg.Register(m.applies); err != nil {
			return nil, err
		}
		if reader != nil {
			if err := reg.Register(&simulationsCollector{reader: reader}); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Metrics) observeApply(kind, result string) {
	if m == nil {
		return
	}
	m.applies.WithLabelValues(kind, result).Inc()
}

var simulationsDesc = prometheus.NewDesc(
	"chargesim_operator_simulations",
	"ChargerSimulations by condition type and status (True, False, Unknown: no condition yet).",
	[]string{"condition", "status"}, nil)

// simulationsCollector counts simulations per condition at scrape time.
type simulationsCollector struct {
	reader client.Reader
}

func (c *simulationsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- simulationsDesc }

func (c *simulationsCollector) Collect(ch chan<- prometheus.Metric) {
	// The cache blocks until it has synced; a scrape must not hang on that.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	list := &v1alpha1.ChargerSimulationList{}
	if err := c.reader.List(ctx, list); err != nil {
		ch <- prometheus.NewInvalidMetric(simulationsDesc, err)
		return
	}
	types := []string{v1alpha1.ConditionReady, v1alpha1.ConditionProgressing, v1alpha1.ConditionDegraded}
	counts := map[string]map[metav1.ConditionStatus]int{}
	for _, t := range types {
		counts[t] = map[metav1.ConditionStatus]int{}
	}
	for i := range list.Items {
		for _, t := range types {
			s := metav1.ConditionUnknown
			if cond := meta.FindStatusCondition(list.Items[i].Status.Conditions, t); cond != nil {
				s = cond.Status
			}
			counts[t][s]++
		}
	}
	for _, t := range types {
		for _, s := range []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown} {
			ch <- prometheus.MustNewConstMetric(simulationsDesc, prometheus.GaugeValue, float64(counts[t][s]), t, string(s))
		}
	}
}
