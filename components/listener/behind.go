package listener

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Falling behind, said out loud. A listener that stores less than arrives does not fail: its
// pending queue fills, backpressure stops it reading, the broker queues, and the lag grows
// without an error anywhere. Every behindWindow the listener therefore looks at the window
// just ended and calls itself behind when
//
//   - the p99 of end-to-end lag (session end → stored) exceeded --lag-objective, or
//   - admission waited for a free pending slot more than half of the window (the store is the
//     bottleneck: backpressure is engaged and the broker is queueing).
//
// It then sets the falling-behind gauge, logs one warning per window while it lasts (and one
// line when it recovers), and /readyz answers 200 with the detail (readiness does not fail:
// a consumer taken out of service would fall further behind).
const behindWindow = 10 * time.Second

// Metric names of the falling-behind detector.
const (
	MetricFallingBehind  = "chargesim_listener_falling_behind"
	MetricLagWindowP99   = "chargesim_listener_lag_window_p99_seconds"
	MetricBackpressure   = "chargesim_listener_backpressure_seconds_total"
	MetricWriteLimit     = "chargesim_listener_write_concurrency_limit"
	backpressureFraction = 0.5
)

// lagBounds are the upper bounds of the windowed lag histogram: finer than the exported
// histogram around the objectives that matter (100 ms – 10 s), 5% apart.
var lagBounds = func() []float64 {
	var b []float64
	for v := 0.001; v < 3600; v *= 1.05 {
		b = append(b, v)
	}
	return b
}()

type behindMetrics struct {
	behind       prometheus.Gauge
	p99          prometheus.Gauge
	backpressure prometheus.Counter
	writeLimit   prometheus.Gauge
}

func newBehindMetrics(reg prometheus.Registerer) (*behindMetrics, error) {
	m := &behindMetrics{
		behind: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricFallingBehind,
			Help: "1 while the listener cannot keep up: p99 lag above --lag-objective, or backpressure engaged most of the last window."}),
		p99: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricLagWindowP99,
			Help: "p99 of end-to-end lag (session end → stored) over the last 10 s window (0 when nothing was stored)."}),
		backpressure: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricBackpressure,
			Help: "Time the listener stopped reading from the broker because --max-pending messages were pending (the store is the bottleneck)."}),
		writeLimit: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricWriteLimit,
			Help: "Bulk writes the adaptive controller currently lets in flight (at most --write-concurrency)."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.behind, m.p99, m.backpressure, m.writeLimit} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// behindDetector collects one window of lag samples and admission waits.
type behindDetector struct {
	objective time.Duration
	window    time.Duration // behindWindow (tests shorten it before Run)
	m         *behindMetrics
	log       *slog.Logger

	mu      sync.Mutex
	counts  []uint64 // per lagBounds bucket, plus one overflow bucket
	n       uint64
	blocked time.Duration
	stored  uint64
	status  string // "" while keeping up
}

func newBehindDetector(objective time.Duration, m *behindMetrics, log *slog.Logger) *behindDetector {
	return &behindDetector{objective: objective, window: behindWindow, m: m, log: log, counts: make([]uint64, len(lagBounds)+1)}
}

// observeLag records the lag of one stored session.
func (d *behindDetector) observeLag(seconds float64) {
	i := bucketOf(seconds)
	d.mu.Lock()
	d.counts[i]++
	d.n++
	d.stored++
	d.mu.Unlock()
}

// bucketOf is the index of the first bound ≥ v (binary search: bounds are sorted).
func bucketOf(v float64) int {
	lo, hi := 0, len(lagBounds)
	for lo < hi {
		mid := (lo + hi) / 2
		if lagBounds[mid] >= v {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// observeBlocked records time admission waited for a pending slot.
func (d *behindDetector) observeBlocked(wait time.Duration) {
	d.m.backpressure.Add(wait.Seconds())
	d.mu.Lock()
	d.blocked += wait
	d.mu.Unlock()
}

// close ends a window of length window: it updates the gauges, logs, and resets. pending is
// the number of messages held at the end of the window.
func (d *behindDetector) close(window time.Duration, pending int) {
	d.mu.Lock()
	p99 := quantile(d.counts, d.n, 0.99)
	blocked, stored := d.blocked, d.stored
	clear(d.counts)
	d.n, d.blocked, d.stored = 0, 0, 0
	var reasons string
	if p99 > d.objective.Seconds() {
		reasons = fmt.Sprintf("p99 lag %.2fs over the last %s exceeds --lag-objective=%s", p99, window, d.objective)
	}
	if blocked.Seconds() > backpressureFraction*window.Seconds() {
		if reasons != "" {
			reasons += "; "
		}
		reasons += fmt.Sprintf("backpressure: reading paused %.0f%% of the last %s with %d messages pending (the store is the bottleneck)",
			100*blocked.Seconds()/window.Seconds(), window, pending)
	}
	was := d.status
	d.status = reasons
	d.mu.Unlock()

	d.m.p99.Set(p99)
	rate := float64(stored) / window.Seconds()
	switch {
	case reasons != "":
		d.m.behind.Set(1)
		d.log.Warn("falling behind: sessions arrive faster than they are stored", "detail", reasons,
			"stored_per_second", math.Round(rate), "pending", pending)
	case was != "":
		d.m.behind.Set(0)
		d.log.Info("caught up", "lag_p99_seconds", p99, "stored_per_second", math.Round(rate))
	}
}

// Status is "" while keeping up, else why the listener is behind.
func (d *behindDetector) Status() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// quantile of the bucketed samples: the upper bound of the bucket holding the q-th sample
// (within 5%), 0 without samples, +Inf past the last bound.
func quantile(counts []uint64, n uint64, q float64) float64 {
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			if i == len(lagBounds) {
				return math.Inf(1)
			}
			return lagBounds[i]
		}
	}
	return math.Inf(1)
}

// run closes a window every d.window until stop is closed.
func (d *behindDetector) run(stop <-chan struct{}, pending func() int) {
	t := time.NewTicker(d.window)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.close(d.window, pending())
		}
	}
}
