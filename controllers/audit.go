package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/audit"
)

// Auditor audits every simulation periodically and writes the result into status.audit
// (issue 10). It asks the simulation's own API (GET /api/v1/audit) rather than MongoDB: the
// API already holds the store connection and runs the audit next to the data, so the operator
// needs neither the simulations' MongoDB credentials (it may only `get` Secrets to hash them,
// and never keeps their contents) nor a route to every store, only HTTP to the API Services.
//
// It is a manager runnable of its own, not part of Reconcile: an audit scans a window of
// sessions and may take seconds, and a slow or unreachable API must never hold up a reconcile.
// It writes only status.audit, with a merge patch of that field, so it cannot undo what the
// reconciler writes (the reconciler's patches carry only the fields it changed).
type Auditor struct {
	Client   client.Client
	Recorder events.EventRecorder
	Log      logr.Logger

	// Every is how often every simulation is audited (0: never).
	Every time.Duration
	// Window is the length of the audited window; it ends Settle ago, so that sessions still
	// on their way through broker and listener are not counted as missing.
	Window, Settle time.Duration
	// Timeout bounds one simulation's audit request.
	Timeout time.Duration
	// WarnEvery rate-limits the AuditIncomplete event of one simulation.
	WarnEvery time.Duration
	// HTTP is the client for the API calls (nil: a plain client; Timeout applies).
	HTTP *http.Client
	// APIURL is the base URL of a simulation's API; nil means http://<status.apiAddress>,
	// the in-cluster Service. Tests point it at an API they run.
	APIURL func(*v1alpha1.ChargerSimulation) string

	mu       sync.Mutex
	lastWarn map[types.NamespacedName]time.Time
}

// Default audit settings: a five-minute window ending 30 s ago, every minute.
const (
	DefaultAuditEvery  = time.Minute
	defaultAuditWindow = 5 * time.Minute
	defaultAuditSettle = 30 * time.Second
	defaultAuditTO     = 65 * time.Second // the API gives an audit a minute (chargesim api --audit-timeout)
	defaultAuditWarn   = 10 * time.Minute
	maxStatusKeys      = 10 // missing keys kept in status (the API has them all)
)

// NeedLeaderElection: only the leader writes status.
func (a *Auditor) NeedLeaderElection() bool { return true }

// Start audits every simulation every a.Every until ctx ends.
func (a *Auditor) Start(ctx context.Context) error {
	return runEvery(ctx, a.Every, a.auditAll)
}

// runEvery calls fn every period until ctx ends (never when period is not positive). A call
// that takes longer than period skips the ticks it missed rather than queueing them.
func runEvery(ctx context.Context, period time.Duration, fn func(context.Context)) error {
	if period <= 0 {
		return nil
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		fn(ctx)
	}
}

// auditAll audits the simulations one after the other (a missed tick is skipped, not queued).
// A simulation whose API has no ready replica is left alone: its audit would only time out.
func (a *Auditor) auditAll(ctx context.Context) {
	var list v1alpha1.ChargerSimulationList
	if err := a.Client.List(ctx, &list); err != nil {
		a.Log.Error(err, "audit: list simulations")
		return
	}
	a.forgetOthers(list.Items)
	for i := range list.Items {
		sim := &list.Items[i]
		if sim.DeletionTimestamp != nil || sim.Status.API.ReadyReplicas == 0 || sim.Status.APIAddress == "" {
			continue
		}
		if err := a.AuditOne(ctx, sim, time.Now()); err != nil && ctx.Err() == nil {
			a.Log.Info("audit failed", "simulation", client.ObjectKeyFromObject(sim), "err", err.Error())
		}
	}
}

// AuditOne audits sim's window ending a.Settle before now and writes status.audit. A failed
// audit keeps the last result and records the error next to it.
func (a *Auditor) AuditOne(ctx context.Context, sim *v1alpha1.ChargerSimulation, now time.Time) error {
	to := now.Add(-a.settle()).Truncate(time.Second)
	from := to.Add(-a.window())
	rep, auditErr := a.fetch(ctx, sim, from, to)
	st := nextAuditStatus(sim.Status.Audit, rep, auditErr, now)
	// Replaced as a whole: a merge patch would keep the error and missing keys of an earlier
	// audit after a successful one.
	if err := replaceStatusField(ctx, a.Client, sim, "audit", st); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if auditErr != nil {
		return auditErr
	}
	if !rep.Complete {
		a.warn(sim, rep, now)
	}
	return nil
}

// warn raises AuditIncomplete, at most once per WarnEvery per simulation: the audit runs every
// minute, and one event per run would bury every other event of the namespace.
func (a *Auditor) warn(sim *v1alpha1.ChargerSimulation, rep audit.Report, now time.Time) {
	key := client.ObjectKeyFromObject(sim)
	a.mu.Lock()
	if a.lastWarn == nil {
		a.lastWarn = map[types.NamespacedName]time.Time{}
	}
	last, seen := a.lastWarn[key]
	if seen && now.Sub(last) < a.warnEvery() {
		a.mu.Unlock()
		return
	}
	a.lastWarn[key] = now
	a.mu.Unlock()
	if a.Recorder == nil {
		return
	}
	a.Recorder.Eventf(sim, nil, corev1.EventTypeWarning, v1alpha1.ReasonAuditIncomplete, "Audit",
		"sessions that ended in [%s, %s): %d expected, %d stored, %d missing, %d unexpected, %d duplicates (GET /api/v1/audit for the keys)",
		rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339), rep.Expected, rep.Stored, rep.Missing, rep.Unexpected, rep.Duplicates)
}

// forgetOthers drops the rate-limit state of simulations that no longer exist.
func (a *Auditor) forgetOthers(sims []v1alpha1.ChargerSimulation) {
	keep := map[types.NamespacedName]bool{}
	for i := range sims {
		keep[client.ObjectKeyFromObject(&sims[i])] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.lastWarn {
		if !keep[k] {
			delete(a.lastWarn, k)
		}
	}
}

// fetch asks sim's API for the audit of [from, to).
func (a *Auditor) fetch(ctx context.Context, sim *v1alpha1.ChargerSimulation, from, to time.Time) (audit.Report, error) {
	var rep audit.Report
	base := "http://" + sim.Status.APIAddress
	if a.APIURL != nil {
		base = a.APIURL(sim)
	}
	q := url.Values{"from": {from.UTC().Format(time.RFC3339)}, "to": {to.UTC().Format(time.RFC3339)}}
	ctx, cancel := context.WithTimeout(ctx, a.timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/api/v1/audit?"+q.Encode(), nil)
	if err != nil {
		return rep, fmt.Errorf("audit request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return rep, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	defer func() { _ = res.Body.Close() }()
	// A report lists its keys: bound what is read, generously (the API caps the keys too).
	body, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return rep, fmt.Errorf("GET %s: read: %w", req.URL.Redacted(), err)
	}
	if res.StatusCode != http.StatusOK {
		return rep, fmt.Errorf("GET %s: %s: %s", req.URL.Redacted(), res.Status, strings.TrimSpace(string(body[:min(len(body), 300)])))
	}
	if err := json.Unmarshal(body, &rep); err != nil {
		return rep, fmt.Errorf("GET %s: decode report: %w", req.URL.Redacted(), err)
	}
	return rep, nil
}

// nextAuditStatus is status.audit after an audit at now: the report's counts, or, when the
// audit failed, the previous counts with the error.
func nextAuditStatus(prev *v1alpha1.AuditStatus, rep audit.Report, err error, now time.Time) *v1alpha1.AuditStatus {
	at := metav1.NewTime(now.UTC().Truncate(time.Second))
	if err != nil {
		st := &v1alpha1.AuditStatus{}
		if prev != nil {
			st = prev.DeepCopy()
		}
		st.Error = err.Error()
		st.LastAttemptTime = at
		return st
	}
	keys := rep.MissingKeys
	if len(keys) > maxStatusKeys {
		keys = keys[:maxStatusKeys]
	}
	return &v1alpha1.AuditStatus{
		From:            metav1.NewTime(rep.From.UTC()),
		To:              metav1.NewTime(rep.To.UTC()),
		Expected:        rep.Expected,
		Stored:          rep.Stored,
		Missing:         rep.Missing,
		Unexpected:      rep.Unexpected,
		Duplicates:      rep.Duplicates,
		Complete:        rep.Complete,
		MissingKeys:     slices.Clone(keys),
		LastTime:        at,
		LastAttemptTime: at,
	}
}

func (a *Auditor) settle() time.Duration    { return durationOr(a.Settle, defaultAuditSettle) }
func (a *Auditor) window() time.Duration    { return durationOr(a.Window, defaultAuditWindow) }
func (a *Auditor) timeout() time.Duration   { return durationOr(a.Timeout, defaultAuditTO) }
func (a *Auditor) warnEvery() time.Duration { return durationOr(a.WarnEvery, defaultAuditWarn) }

func durationOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
