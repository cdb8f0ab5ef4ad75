package controllers

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
)

// status.progress after a probe, table-driven: the last figures and what the components
// answered in; the figures, lag and error out.
func TestNextProgressStatus(t *testing.T) {
	now := time.Date(2026, 12, 3, 5, 0, 0, 400e6, time.UTC)
	at := metav1.NewTime(now.Truncate(time.Second))
	earlier := metav1.NewTime(now.Add(-time.Minute).Truncate(time.Second))
	last := now.Add(-2600 * time.Millisecond)
	prev := &v1alpha1.ProgressStatus{Published: ptr.To(int64(90)), Stored: 80, Rejected: 1,
		LastSessionTime: ptr.To(metav1.NewTime(now.Add(-time.Minute))), Lag: &metav1.Duration{Duration: 2 * time.Second},
		LastTime: earlier, LastAttemptTime: earlier}
	down := errors.New("connection refused")
	for _, tc := range []struct {
		name string
		prev *v1alpha1.ProgressStatus
		obs  progressObservation
		want v1alpha1.ProgressStatus
	}{
		{"first probe", nil,
			progressObservation{stats: &restapi.StatsView{Sessions: 100, Rejected: 2, LastSessionAt: &last}, published: ptr.To(int64(103))},
			v1alpha1.ProgressStatus{Published: ptr.To(int64(103)), Stored: 100, Rejected: 2, LastSessionTime: ptr.To(metav1.NewTime(last)),
				Lag: &metav1.Duration{Duration: 3 * time.Second}, LastTime: at, LastAttemptTime: at}},
		{"nothing stored yet: no lag", nil,
			progressObservation{stats: &restapi.StatsView{}, published: ptr.To(int64(0))},
			v1alpha1.ProgressStatus{Published: ptr.To(int64(0)), LastTime: at, LastAttemptTime: at}},
		{"no publisher pod (suspended): no published figure", prev,
			progressObservation{stats: &restapi.StatsView{Sessions: 80, Rejected: 1, LastSessionAt: &last}},
			v1alpha1.ProgressStatus{Stored: 80, Rejected: 1, LastSessionTime: ptr.To(metav1.NewTime(last)),
				Lag: &metav1.Duration{Duration: 3 * time.Second}, LastTime: at, LastAttemptTime: at}},
		{"a session ending in the future (clock skew): zero lag", nil,
			progressObservation{stats: &restapi.StatsView{Sessions: 1, LastSessionAt: ptr.To(now.Add(time.Second))}},
			v1alpha1.ProgressStatus{Stored: 1, LastSessionTime: ptr.To(metav1.NewTime(now.Add(time.Second))),
				Lag: &metav1.Duration{}, LastTime: at, LastAttemptTime: at}},
		{"API down: the store's figures stay, with the error", prev,
			progressObservation{statsErr: down, published: ptr.To(int64(120))},
			v1alpha1.ProgressStatus{Published: ptr.To(int64(120)), Stored: 80, Rejected: 1, LastSessionTime: prev.LastSessionTime,
				Lag: prev.Lag, LastTime: earlier, LastAttemptTime: at, Error: "stats: connection refused"}},
		{"a publisher pod down: published stays (a partial sum would look like a drop)", prev,
			progressObservation{stats: &restapi.StatsView{Sessions: 85, Rejected: 1, LastSessionAt: &last}, pubErr: down},
			v1alpha1.ProgressStatus{Published: ptr.To(int64(90)), Stored: 85, Rejected: 1, LastSessionTime: ptr.To(metav1.NewTime(last)),
				Lag: &metav1.Duration{Duration: 3 * time.Second}, LastTime: at, LastAttemptTime: at, Error: "published: connection refused"}},
		{"everything down", prev,
			progressObservation{statsErr: down, pubErr: down},
			v1alpha1.ProgressStatus{Published: ptr.To(int64(90)), Stored: 80, Rejected: 1, LastSessionTime: prev.LastSessionTime,
				Lag: prev.Lag, LastTime: earlier, LastAttemptTime: at, Error: "stats: connection refused; published: connection refused"}},
		{"recovered: the error goes", &v1alpha1.ProgressStatus{Stored: 1, Error: "stats: x", LastTime: earlier},
			progressObservation{stats: &restapi.StatsView{Sessions: 2}},
			v1alpha1.ProgressStatus{Stored: 2, LastTime: at, LastAttemptTime: at}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before *v1alpha1.ProgressStatus
			if tc.prev != nil {
				before = tc.prev.DeepCopy()
			}
			got := nextProgressStatus(tc.prev, tc.obs, now)
			if !equalProgress(*got, tc.want) {
				t.Errorf("got  %s\nwant %s", progressString(*got), progressString(tc.want))
			}
			if tc.prev != nil && !equalProgress(*tc.prev, *before) {
				t.Errorf("the previous status was modified: %s", progressString(*tc.prev))
			}
		})
	}
}

func equalProgress(a, b v1alpha1.ProgressStatus) bool {
	return progressString(a) == progressString(b)
}

func progressString(p v1alpha1.ProgressStatus) string {
	pub, lag, lst := "nil", "nil", "nil"
	if p.Published != nil {
		pub = fmt.Sprint(*p.Published)
	}
	if p.Lag != nil {
		lag = p.Lag.Duration.String()
	}
	if p.LastSessionTime != nil {
		lst = p.LastSessionTime.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("published=%s stored=%d rejected=%d lastSession=%s lag=%s lastTime=%s attempt=%s error=%q",
		pub, p.Stored, p.Rejected, lst, lag, p.LastTime.UTC().Format(time.RFC3339), p.LastAttemptTime.UTC().Format(time.RFC3339), p.Error)
}

// The published counter is read from a publisher's real metrics exposition.
func TestPublishedFromMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: publisher.MetricPublished, Help: "h"})
	reg.MustRegister(c, prometheus.NewCounter(prometheus.CounterOpts{Name: publisher.MetricScheduled, Help: "h"}))
	c.Add(12345)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, body string
		want       int64
		err        string
	}{
		{"exposition", buf.String(), 12345, ""},
		{"counter missing", "# TYPE other_total counter\nother_total 3\n", 0, "no counter " + publisher.MetricPublished},
		{"not the metrics format", "<html>hello</html>", 0, "parse metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := publishedFromMetrics([]byte(tc.body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || n != tc.want {
				t.Fatalf("%d, %v; want %d", n, err, tc.want)
			}
		})
	}
}

// Publisher pods that hang cost one overall deadline, not a timeout per batch of pods; the sum
// is reported only when every pod answered.
func TestSumPublishedBounded(t *testing.T) {
	metrics := func(n int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "# TYPE %s counter\n%s %d\n", publisher.MetricPublished, publisher.MetricPublished, n)
		}))
	}
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hang.Close()
	defer close(release)
	a, b := metrics(3), metrics(4)
	defer a.Close()
	defer b.Close()

	pods := func(urls ...string) ([]*corev1.Pod, map[string]string) {
		var out []*corev1.Pod
		m := map[string]string{}
		for i, u := range urls {
			name := fmt.Sprintf("p-%d", i)
			out = append(out, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}})
			m[name] = u + "/metrics"
		}
		return out, m
	}
	probe := func(urls map[string]string) *Progress {
		return &Progress{Timeout: 200 * time.Millisecond, PodMetricsURL: func(p *corev1.Pod) string { return urls[p.Name] }}
	}

	ok, okURLs := pods(a.URL, b.URL, a.URL)
	n, err := probe(okURLs).sumPublished(t.Context(), ok)
	if err != nil || n == nil || *n != 10 {
		t.Fatalf("sum %v, %v; want 10", ptrValue(n), err)
	}

	// 40 hanging pods, 8 at a time, 200ms each: 1s if every batch waited its timeout; the
	// overall deadline (3 × 200ms) ends it sooner.
	urls := []string{a.URL}
	for range 40 {
		urls = append(urls, hang.URL)
	}
	hung, hungURLs := pods(urls...)
	start := time.Now()
	n, err = probe(hungURLs).sumPublished(t.Context(), hung)
	took := time.Since(start)
	if n != nil || err == nil || !strings.Contains(err.Error(), "40 of 41 publisher pods did not answer") {
		t.Fatalf("sum %v, %v; want no sum and 40 of 41 failed", ptrValue(n), err)
	}
	if took > 900*time.Millisecond {
		t.Errorf("hanging pods took %s; want the overall deadline of 600ms", took)
	}
}

func ptrValue[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
