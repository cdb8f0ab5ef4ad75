package listener

import (
	"bytes"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBehindDetector(t *testing.T) {
	m, err := newBehindMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d := newBehindDetector(time.Second, m, slog.New(slog.NewTextHandler(&logs, nil)))

	// Keeping up: 1,000 sessions at 0.2 s, 9 at 5 s (p99 is the 990th: still 0.2 s).
	for range 1000 {
		d.observeLag(0.2)
	}
	for range 9 {
		d.observeLag(5)
	}
	d.close(10*time.Second, 10)
	if s := d.Status(); s != "" || testutil.ToFloat64(m.behind) != 0 {
		t.Fatalf("keeping up reported as behind: %q", s)
	}
	if p := testutil.ToFloat64(m.p99); p < 0.2 || p > 0.21 {
		t.Fatalf("p99 gauge %v, want 0.2 within 5%%", p)
	}

	// 2% of the window above the objective: behind.
	for range 980 {
		d.observeLag(0.2)
	}
	for range 20 {
		d.observeLag(2)
	}
	d.close(10*time.Second, 10)
	if s := d.Status(); !strings.Contains(s, "p99 lag 2.0") || testutil.ToFloat64(m.behind) != 1 {
		t.Fatalf("status %q, gauge %v", s, testutil.ToFloat64(m.behind))
	}
	if !strings.Contains(logs.String(), "falling behind") {
		t.Fatalf("no warning logged: %s", logs.String())
	}

	// Low lag but reading paused 6 s of 10: the store is the bottleneck.
	d.observeLag(0.1)
	d.observeBlocked(6 * time.Second)
	d.close(10*time.Second, 20000)
	if s := d.Status(); !strings.Contains(s, "backpressure") || strings.Contains(s, "p99") {
		t.Fatalf("status %q", s)
	}
	if got := testutil.ToFloat64(m.backpressure); got != 6 {
		t.Fatalf("backpressure_seconds_total %v", got)
	}

	// Recovered: gauge back to 0, one "caught up" line.
	d.observeLag(0.1)
	d.observeBlocked(time.Second)
	d.close(10*time.Second, 0)
	if s := d.Status(); s != "" || testutil.ToFloat64(m.behind) != 0 || !strings.Contains(logs.String(), "caught up") {
		t.Fatalf("not recovered: %q", s)
	}
}

func TestLagQuantile(t *testing.T) {
	counts := make([]uint64, len(lagBounds)+1)
	if q := quantile(counts, 0, 0.99); q != 0 {
		t.Fatalf("empty window: %v", q)
	}
	for _, v := range []float64{0.001, 0.5, 0.75, 3, 7200} {
		clear(counts)
		counts[bucketOf(v)]++
		q := quantile(counts, 1, 0.99)
		if v > lagBounds[len(lagBounds)-1] {
			if !math.IsInf(q, 1) {
				t.Fatalf("%v: %v, want +Inf", v, q)
			}
			continue
		}
		if q < v || q > v*1.05+1e-9 {
			t.Fatalf("quantile of one sample %v = %v, want within 5%% above", v, q)
		}
	}
}
