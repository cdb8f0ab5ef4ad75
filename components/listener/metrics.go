package listener

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/session"
)

// Metric names; dashboards query these exact names.
const (
	MetricReceived        = "chargesim_listener_messages_received_total"
	MetricStored          = "chargesim_listener_sessions_stored_total"
	MetricDuplicates      = "chargesim_listener_duplicates_total"
	MetricRejected        = "chargesim_listener_rejected_total"
	MetricBatchSize       = "chargesim_listener_batch_size"
	MetricWriteDuration   = "chargesim_listener_write_duration_seconds"
	MetricWriteErrors     = "chargesim_listener_write_errors_total"
	MetricLag             = "chargesim_listener_lag_seconds"
	MetricPending         = "chargesim_listener_pending"
	MetricInflightBatches = "chargesim_listener_inflight_batches"
	MetricConnected       = "chargesim_listener_connected"
	MetricDeltaFailures   = "chargesim_listener_delta_failures_total"
)

type metrics struct {
	received      prometheus.Counter
	stored        prometheus.Counter
	duplicates    prometheus.Counter
	rejected      *prometheus.CounterVec
	batchSize     prometheus.Histogram
	writeDuration prometheus.Histogram
	writeErrors   prometheus.Counter
	lag           prometheus.Histogram
	pending       prometheus.Gauge
	inflight      prometheus.Gauge
	connected     prometheus.Gauge
	deltaFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReceived,
			Help: "MQTT messages handed to the listener by the client library, redeliveries included."}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricStored,
			Help: "Sessions inserted into the store (each session counts once, whatever its deliveries)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricDuplicates,
			Help: "Session messages whose document was already stored (QoS 1 redeliveries, replays)."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRejected,
			Help: "Messages that can never be stored as a session, by reason; kept in the rejected collection."}, []string{"reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricBatchSize,
			Help:    "Messages per batch written to the store.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}}),
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricWriteDuration,
			Help:    "Duration of one bulk write attempt, failed ones included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricWriteErrors,
			Help: "Failed bulk write attempts (each is retried; nothing is acknowledged before it is stored)."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricLag,
			Help:    "Time from a session's end (ended_at) to its storage.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600}}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricPending,
			Help: "Messages received but not yet stored and acknowledged (bounded by --max-pending)."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricInflightBatches,
			Help: "Batches being written, retries included."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricConnected,
			Help: "1 while connected to the MQTT broker."}),
		deltaFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricDeltaFailures,
			Help: "Stored batches whose delta document (the API's provisional totals, time-partitioned store) could not be written: the API undercounts them until their partition closes."}),
	}
	for _, r := range session.Reasons {
		m.rejected.WithLabelValues(string(r)) // every series exists from the start, at 0
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.received, m.stored, m.duplicates, m.rejected, m.batchSize,
		m.writeDuration, m.writeErrors, m.lag, m.pending, m.inflight, m.connected, m.deltaFailures} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
