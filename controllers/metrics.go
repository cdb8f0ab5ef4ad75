package controllers

import (
	"context"
	"strconv"
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

// NewMetrics registers the operator metrics with reg. The simulation gauges are computed at
// scrape time from the informer cache (reader), so they can never drift from the cluster, and
// only while leader() says this replica is the leader: a hot standby's cache holds the same
// simulations, and `sum by (status)` over all replicas would count each of them twice.
// chargesim_operator_leader tells the replicas apart. leader nil: always the leader.
func NewMetrics(reg prometheus.Registerer, reader client.Reader, leader func() bool) (*Metrics, error) {
	if leader == nil {
		leader = func() bool { return true }
	}
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
			if err := reg.Register(&simulationsCollector{reader: reader, leader: leader}); err != nil {
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

// Per-simulation series from status, labelled with the simulation's namespace and name, so a
// dashboard can put "configured" next to what the simulation's own components report
// (their series carry the same simulation label).
var (
	leaderDesc = prometheus.NewDesc("chargesim_operator_leader",
		"1 on the replica that holds the leader-election Lease (the only one that reconciles and reports the simulation series), 0 on standbys.",
		nil, nil)
	simReadyDesc = prometheus.NewDesc("chargesim_simulation_ready",
		"1 when the simulation's Ready condition is True, else 0.",
		[]string{"namespace", "simulation"}, nil)
	simRateDesc = prometheus.NewDesc("chargesim_simulation_configured_sessions_per_second",
		"Session rate the simulation's spec asks of its fleet (0 while suspended): status.sessionsPerSecond.",
		[]string{"namespace", "simulation"}, nil)
	simReplicasDesc = prometheus.NewDesc("chargesim_simulation_replicas",
		"Replicas of a simulation's component from its status: desired, or ready.",
		[]string{"namespace", "simulation", "component", "state"}, nil)
)

// simulationsCollector reports simulations at scrape time: counts per condition and one set
// of series per simulation.
type simulationsCollector struct {
	reader client.Reader
	leader func() bool
}

func (c *simulationsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{simulationsDesc, leaderDesc, simReadyDesc, simRateDesc, simReplicasDesc} {
		ch <- d
	}
}

func (c *simulationsCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.leader() {
		ch <- prometheus.MustNewConstMetric(leaderDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(leaderDesc, prometheus.GaugeValue, 1)
	// The cache blocks until it has synced; a scrape must not hang on that.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	list := &v1alpha1.ChargerSimulationList{}
	if err := c.reader.List(ctx, list); err != nil {
		ch <- prometheus.NewInvalidMetric(simulationsDesc, err)
		return
	}
	types := []string{v1alpha1.ConditionReady, v1alpha1.ConditionProgressing, v1alpha1.ConditionDegraded,
		v1alpha1.ConditionReconciling, v1alpha1.ConditionStalled}
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
	for i := range list.Items {
		sim := &list.Items[i]
		ns, name := sim.Namespace, sim.Name
		ready := 0.0
		if meta.IsStatusConditionTrue(sim.Status.Conditions, v1alpha1.ConditionReady) {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(simReadyDesc, prometheus.GaugeValue, ready, ns, name)
		if rate, err := strconv.ParseFloat(sim.Status.SessionsPerSecond, 64); err == nil {
			ch <- prometheus.MustNewConstMetric(simRateDesc, prometheus.GaugeValue, rate, ns, name)
		}
		comps := map[Component]v1alpha1.ComponentStatus{Publisher: sim.Status.Publisher, Listener: sim.Status.Listener, API: sim.Status.API}
		if sim.Status.Broker != nil {
			comps[Broker] = *sim.Status.Broker
		}
		for comp, st := range comps {
			ch <- prometheus.MustNewConstMetric(simReplicasDesc, prometheus.GaugeValue, float64(st.DesiredReplicas), ns, name, string(comp), "desired")
			ch <- prometheus.MustNewConstMetric(simReplicasDesc, prometheus.GaugeValue, float64(st.ReadyReplicas), ns, name, string(comp), "ready")
		}
	}
}
