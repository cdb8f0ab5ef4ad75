package audit

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names; the dashboards and alerts query exactly these.
const (
	MetricExpected    = "chargesim_audit_expected_sessions"
	MetricStored      = "chargesim_audit_stored_sessions"
	MetricMissing     = "chargesim_audit_missing_sessions"
	MetricUnexpected  = "chargesim_audit_unexpected_sessions"
	MetricDuplicates  = "chargesim_audit_duplicate_sessions"
	MetricOutsideRuns = "chargesim_audit_outside_runs_sessions"
	MetricLastSuccess = "chargesim_audit_last_success_timestamp_seconds"
	MetricDuration    = "chargesim_audit_duration_seconds"
	MetricErrors      = "chargesim_audit_errors_total"
)

// Metrics are the gauges of the last audit: what an alert on "missing > 0" reads.
type Metrics struct {
	Expected, Stored, Missing, Unexpected, Duplicates, OutsideRuns prometheus.Gauge
	LastSuccess, Duration                                          prometheus.Gauge
	Errors                                                         prometheus.Counter
}

// NewMetrics registers the audit metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &Metrics{
		Expected:    g(MetricExpected, "Sessions the simulation produced in the last audited window (by the publishers' run records)."),
		Stored:      g(MetricStored, "Expected sessions of the last audited window found in the store."),
		Missing:     g(MetricMissing, "Expected sessions of the last audited window not in the store."),
		Unexpected:  g(MetricUnexpected, "Stored sessions of the last audited window the simulation never produced."),
		Duplicates:  g(MetricDuplicates, "Stored sessions of the last audited window that repeat an expected session under another key."),
		OutsideRuns: g(MetricOutsideRuns, "Stored sessions of the last audited window with a simulation key outside every recorded run."),
		LastSuccess: g(MetricLastSuccess, "Unix time the last audit completed."),
		Duration:    g(MetricDuration, "How long the last audit took."),
		Errors: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricErrors,
			Help: "Audits that failed (store unreachable, window too large)."}),
	}
	for _, c := range []prometheus.Collector{m.Expected, m.Stored, m.Missing, m.Unexpected, m.Duplicates,
		m.OutsideRuns, m.LastSuccess, m.Duration, m.Errors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register audit metrics: %w", err)
		}
	}
	return m, nil
}

// Observe records an audit's outcome: its report, or err (the gauges then keep the last good
// report, and the error counter moves).
func (m *Metrics) Observe(r Report, err error, took time.Duration) {
	m.Duration.Set(took.Seconds())
	if err != nil {
		m.Errors.Inc()
		return
	}
	m.Expected.Set(float64(r.Expected))
	m.Stored.Set(float64(r.Stored))
	m.Missing.Set(float64(r.Missing))
	m.Unexpected.Set(float64(r.Unexpected))
	m.Duplicates.Set(float64(r.Duplicates))
	m.OutsideRuns.Set(float64(r.OutsideRuns))
	m.LastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
}
