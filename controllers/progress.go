package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
)

// Progress writes status.progress: is data flowing through a simulation? Where the figures
// come from, and why:
//
//   - stored, rejected and the newest session's end come from the simulation's API, GET
//     /api/v1/stats — the same path the Auditor uses (no MongoDB credentials in the operator, no
//     route to the store, only HTTP to the API Service). They are counts of the store itself, so
//     they survive every restart, and the API serves them from its snapshot cache: one cheap
//     request per simulation.
//   - published comes from the publisher pods' own metrics
//     (chargesim_publisher_sessions_published_total, summed): nothing else knows what was
//     published — the broker's counters exist only for the managed broker and count every
//     client, and the store knows only what arrived. It costs one request per publisher pod
//     (bounded concurrency, a short timeout each) and counts since each pod started.
//   - lag is the age of the newest stored session (probe time − its ended_at): sessions carry
//     wall-clock end times at any time scale, so a few seconds means data flows and a growing
//     lag means it does not, whatever the cause (publisher, broker, listener or store).
//
// Like the Auditor it is a manager runnable of its own, not part of Reconcile (a slow API must
// never hold up a reconcile), and it merge-patches status.progress only. A probe that fails
// keeps the last figures, records the error next to them and logs it at debug level: no
// condition changes and no event, since the pipeline may well be fine while the operator
// cannot reach it (a NetworkPolicy, an API rollout).
type Progress struct {
	Client client.Client
	Log    logr.Logger

	// Every is how often every simulation is probed (0: never).
	Every time.Duration
	// Timeout bounds one request (the stats request, or one publisher pod's metrics).
	Timeout time.Duration
	// HTTP is the client for the requests (nil: http.DefaultClient; Timeout applies).
	HTTP *http.Client
	// APIURL is the base URL of a simulation's API; nil means http://<status.apiAddress>.
	APIURL func(*v1alpha1.ChargerSimulation) string
	// PodMetricsURL is the metrics URL of a publisher pod; nil means
	// http://<pod IP>:9090/metrics. Tests point it at servers they run.
	PodMetricsURL func(*corev1.Pod) string
}

// Default progress settings.
const (
	DefaultProgressEvery = 30 * time.Second
	defaultProgressTO    = 5 * time.Second
	// progressScrapers bounds the publisher pods asked at once: a 1000-replica publisher costs
	// 1000 small requests per probe, spread over a few connections.
	progressScrapers = 8
	// progressScrapeRounds request timeouts bound all of one simulation's pod requests.
	progressScrapeRounds = 3
	// maxMetricsBody bounds what one pod's /metrics may send (a publisher's is a few KiB).
	maxMetricsBody = 1 << 20
)

// NeedLeaderElection: only the leader writes status.
func (p *Progress) NeedLeaderElection() bool { return true }

// Start probes every simulation every p.Every until ctx ends.
func (p *Progress) Start(ctx context.Context) error {
	return runEvery(ctx, p.Every, p.probeAll)
}

// probeAll probes the simulations one after the other (a missed tick is skipped, not queued).
// A simulation whose API has no ready replica is skipped: the request would only time out.
func (p *Progress) probeAll(ctx context.Context) {
	var list v1alpha1.ChargerSimulationList
	if err := p.Client.List(ctx, &list); err != nil {
		p.Log.Error(err, "progress: list simulations")
		return
	}
	for i := range list.Items {
		sim := &list.Items[i]
		if sim.DeletionTimestamp != nil || sim.Status.API.ReadyReplicas == 0 || sim.Status.APIAddress == "" {
			continue
		}
		if err := p.ProbeOne(ctx, sim, time.Now()); err != nil && ctx.Err() == nil {
			p.Log.V(1).Info("progress probe failed", "simulation", client.ObjectKeyFromObject(sim), "err", err.Error())
		}
	}
}

// progressObservation is what one probe learned.
type progressObservation struct {
	stats     *restapi.StatsView // nil: the API did not answer
	statsErr  error
	published *int64 // nil: some publisher pod did not answer (or none runs)
	pubErr    error
}

// ProbeOne asks sim's components and writes status.progress. It returns the probe's error
// (after writing it into status), or the patch's.
func (p *Progress) ProbeOne(ctx context.Context, sim *v1alpha1.ChargerSimulation, now time.Time) error {
	var o progressObservation
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		o.published, o.pubErr = p.published(ctx, sim)
	}()
	var sv restapi.StatsView
	if o.statsErr = p.getJSON(ctx, p.apiBase(sim)+"/api/v1/stats", &sv); o.statsErr == nil {
		o.stats = &sv
	}
	wg.Wait()
	st := nextProgressStatus(sim.Status.Progress, o, now)
	if err := replaceStatusField(ctx, p.Client, sim, "progress", st); err != nil {
		return fmt.Errorf("progress: %w", err)
	}
	return errors.Join(o.statsErr, o.pubErr)
}

// replaceStatusField sets status.<field> of sim to v as a whole, with a JSON patch "add"
// (which replaces an existing member). A JSON merge patch would merge into the old value and
// keep every field v omits (omitempty): a cleared error, a published count gone with the
// publisher pods, old missing keys. The callers run only once the reconciler has written
// status (status.apiAddress is set), so /status exists.
func replaceStatusField(ctx context.Context, c client.Client, sim *v1alpha1.ChargerSimulation, field string, v any) error {
	patch, err := json.Marshal([]map[string]any{{"op": "add", "path": "/status/" + field, "value": v}})
	if err != nil {
		return fmt.Errorf("marshal status.%s: %w", field, err)
	}
	if err := c.Status().Patch(ctx, sim, client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return fmt.Errorf("patch status.%s of %s/%s: %w", field, sim.Namespace, sim.Name, err)
	}
	return nil
}

// nextProgressStatus is status.progress after a probe at now. The store's figures are
// replaced only when the API answered; published only when every publisher pod answered (a
// partial sum would look like a drop). Any failure is reported in error, the rest of the last
// figures stay. A merge patch replaces the whole field, so every figure is always written.
func nextProgressStatus(prev *v1alpha1.ProgressStatus, o progressObservation, now time.Time) *v1alpha1.ProgressStatus {
	at := metav1.NewTime(now.UTC().Truncate(time.Second))
	st := &v1alpha1.ProgressStatus{}
	if prev != nil {
		st = prev.DeepCopy()
	}
	st.LastAttemptTime = at
	var errs []string
	if o.stats != nil {
		st.Stored, st.Rejected = o.stats.Sessions, o.stats.Rejected
		st.LastSessionTime, st.Lag = nil, nil
		if last := o.stats.LastSessionAt; last != nil {
			t := metav1.NewTime(last.UTC())
			st.LastSessionTime = &t
			// A session that ends a little in the future (clock skew between nodes) has no lag.
			st.Lag = &metav1.Duration{Duration: max(now.Sub(*last), 0).Round(time.Second)}
		}
	} else {
		errs = append(errs, fmt.Sprintf("stats: %v", o.statsErr))
	}
	switch {
	case o.pubErr != nil:
		errs = append(errs, fmt.Sprintf("published: %v", o.pubErr))
	default:
		st.Published = o.published
	}
	st.Error = strings.Join(errs, "; ")
	if o.stats != nil {
		// lastTime dates the store's figures, which the column users read first.
		st.LastTime = at
	}
	return st
}

// published sums the published counter of sim's running publisher pods. No running pod (a
// suspended simulation, a new one) is nil without error: nothing was published by what runs.
func (p *Progress) published(ctx context.Context, sim *v1alpha1.ChargerSimulation) (*int64, error) {
	var pods corev1.PodList
	if err := p.Client.List(ctx, &pods, client.InNamespace(sim.Namespace), client.MatchingLabels(selectorLabels(sim.Name, Publisher))); err != nil {
		return nil, fmt.Errorf("list publisher pods: %w", err)
	}
	var running []*corev1.Pod
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" && pod.DeletionTimestamp.IsZero() {
			running = append(running, pod)
		}
	}
	if len(running) == 0 {
		return nil, nil
	}
	return p.sumPublished(ctx, running)
}

// sumPublished asks every pod, progressScrapers at a time, within one overall deadline of
// progressScrapeRounds request timeouts: pods that all hang cost that much, not one timeout
// per batch of pods.
func (p *Progress) sumPublished(ctx context.Context, running []*corev1.Pod) (*int64, error) {
	ctx, cancel := context.WithTimeout(ctx, progressScrapeRounds*durationOr(p.Timeout, defaultProgressTO))
	defer cancel()
	var (
		mu    sync.Mutex
		sum   int64
		errs  []error
		wg    sync.WaitGroup
		slots = make(chan struct{}, progressScrapers)
	)
	for _, pod := range running {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			n, err := p.scrapePublished(ctx, pod)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: %w", pod.Name, err))
				return
			}
			sum += n
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		// One error is enough to say why; a thousand would fill the status.
		return nil, fmt.Errorf("%d of %d publisher pods did not answer, e.g. %w", len(errs), len(running), errs[0])
	}
	return &sum, nil
}

// scrapePublished reads chargesim_publisher_sessions_published_total from one pod.
func (p *Progress) scrapePublished(ctx context.Context, pod *corev1.Pod) (int64, error) {
	u := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(opsPort)) + "/metrics"
	if p.PodMetricsURL != nil {
		u = p.PodMetricsURL(pod)
	}
	body, err := p.get(ctx, u, "text/plain;version=0.0.4", maxMetricsBody)
	if err != nil {
		return 0, err
	}
	return publishedFromMetrics(body)
}

// publishedFromMetrics finds the publisher's published counter in a text exposition.
func publishedFromMetrics(body []byte) (int64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	f, ok := fams[publisher.MetricPublished]
	if !ok || len(f.GetMetric()) == 0 || f.GetMetric()[0].GetCounter() == nil {
		return 0, fmt.Errorf("no counter %s in the metrics", publisher.MetricPublished)
	}
	var n float64
	for _, m := range f.GetMetric() {
		n += m.GetCounter().GetValue()
	}
	return int64(n), nil
}

func (p *Progress) apiBase(sim *v1alpha1.ChargerSimulation) string {
	base := "http://" + sim.Status.APIAddress
	if p.APIURL != nil {
		base = p.APIURL(sim)
	}
	return strings.TrimSuffix(base, "/")
}

// getJSON GETs u and decodes its JSON body into v.
func (p *Progress) getJSON(ctx context.Context, u string, v any) error {
	body, err := p.get(ctx, u, "application/json", 1<<20)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", u, err)
	}
	return nil
}

// get GETs u within p's timeout, reads at most limit bytes and wants 200 OK.
func (p *Progress) get(ctx context.Context, u, accept string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, durationOr(p.Timeout, defaultProgressTO))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", u, err)
	}
	req.Header.Set("Accept", accept)
	hc := p.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	defer func() { _ = res.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(res.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read: %w", req.URL.Redacted(), err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", req.URL.Redacted(), res.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	return body, nil
}
