package publisher

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names; the dashboards query exactly these.
const (
	MetricScheduled     = "chargesim_publisher_sessions_scheduled_total"
	MetricPublished     = "chargesim_publisher_sessions_published_total"
	MetricFailed        = "chargesim_publisher_sessions_failed_total"
	MetricRetries       = "chargesim_publisher_publish_retries_total"
	MetricInflight      = "chargesim_publisher_inflight"
	MetricPubackLatency = "chargesim_publisher_puback_latency_seconds"
	MetricConnected     = "chargesim_publisher_connected"
	MetricChargers      = "chargesim_publisher_chargers"
	MetricSessionRate   = "chargesim_publisher_configured_session_rate"
	MetricReplayed      = "chargesim_publisher_sessions_replayed_total"
)

type metrics struct {
	scheduled, published, failed, retries prometheus.Counter
	replayed                              prometheus.Counter
	inflight, connected, chargers, rate   prometheus.Gauge
	latency                               prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		scheduled: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricScheduled,
			Help: "Sessions generated and handed to the MQTT client."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricPublished,
			Help: "Sessions the broker acknowledged (QoS 1 PUBACK)."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricFailed,
			Help: "Sessions given up on: still unacknowledged when the shutdown timeout ran out."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricRetries,
			Help: "Publishes sent again after the MQTT client reported an error."}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReplayed,
			Help: "Sessions published again after a reconnect (also counted in scheduled): same keys, stored once."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricInflight,
			Help: "Publishes sent and not yet acknowledged (bounded by --max-inflight)."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricConnected,
			Help: "1 while connected to the MQTT broker, else 0."}),
		chargers: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricChargers,
			Help: "Chargers this process simulates (its shard of the fleet)."}),
		rate: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricSessionRate,
			Help: "Sessions per wall-clock second this process is configured for: chargers × time scale / interval."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricPubackLatency,
			Help:    "Time from publishing a session to its PUBACK (including time spent waiting for a reconnect).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}), // 0.5 ms … ~65 s
	}
	for _, c := range []prometheus.Collector{m.scheduled, m.published, m.failed, m.retries, m.replayed,
		m.inflight, m.connected, m.chargers, m.rate, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register publisher metrics: %w", err)
		}
	}
	return m, nil
}
