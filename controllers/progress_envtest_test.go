//go:build envtest

package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/controllers"
	"github.com/chargesim/chargesim/test/testenv"
)

// Issue 9: `kubectl get csim` says whether data flows. The operator's progress probe — as the
// operator's identity (its RBAC), against the simulation's API (the real REST handler over a
// real store, FerretDB) and the publisher pods' metrics endpoints — writes published, stored,
// rejected and lag into status.progress, periodically; the printer columns show them. A probe
// that fails keeps the figures with an error and neither flips Ready nor raises an event.
func TestProgressIntoStatus(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	s := simulation(ns, "prog")
	s.Spec.Publisher.Replicas = 2
	s.Spec.Chargers = 4
	createSim(t, s)
	startPublisher(t, ns, "prog")
	markReady(t, ns, "prog")
	waitCondition(t, ns, "prog", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	// The store and API the simulation would have.
	db := testenv.StartFerretDB(t)
	st, err := store.Connect(ctx, store.Config{URI: db.URI, Database: "progress"}, "operator-progress-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(ctx) })
	reg := prometheus.NewRegistry()
	cfg := restapi.DefaultConfig()
	cfg.ReadModel = restapi.ReadModelQueries // every request reads the store: no snapshot age to wait for
	srv, err := restapi.New(cfg, st, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(srv.Handler())
	t.Cleanup(api.Close)

	insert := func(from, n int, endedAt time.Time) {
		t.Helper()
		var docs []store.SessionDoc
		for i := from; i < from+n; i++ {
			docs = append(docs, store.NewSessionDoc(session.Session{SessionID: int64(i), ChargerID: "CP-1", ConnectorID: 1,
				EnergyKWh: 1, DurationSeconds: 60, CostCents: 30, StartedAt: endedAt.Add(-time.Minute), EndedAt: endedAt}, "t", time.Now()))
		}
		if _, err := st.InsertSessions(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	lastEnd := time.Now().Add(-4 * time.Second).Truncate(time.Millisecond)
	insert(1, 20, lastEnd.Add(-time.Minute))
	insert(21, 5, lastEnd)
	if _, err := st.InsertRejected(ctx, []store.RejectedDoc{store.NewRejectedDoc("t", []byte("{"), session.ReasonMissingField, "x", time.Now())}); err != nil {
		t.Fatal(err)
	}

	// Two publisher pods (envtest runs no StatefulSet controller and no kubelet), each serving
	// the publisher's counter.
	sts := getObj(t, ns, "prog-publisher", &appsv1.StatefulSet{})
	servers := map[string]*httptest.Server{}
	counters := map[string]prometheus.Counter{}
	for i, n := range []float64{7, 5} {
		name := fmt.Sprintf("prog-publisher-%d", i)
		r := prometheus.NewRegistry()
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: publisher.MetricPublished, Help: "acknowledged"})
		r.MustRegister(c)
		c.Add(n)
		counters[name] = c
		servers[name] = httptest.NewServer(promhttp.HandlerFor(r, promhttp.HandlerOpts{}))
		t.Cleanup(servers[name].Close)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: sts.Spec.Template.Labels}, Spec: sts.Spec.Template.Spec}
		if err := k8s.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase, pod.Status.PodIP = corev1.PodRunning, fmt.Sprintf("10.0.0.%d", i+1)
		if err := k8s.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	// A pod that has not started yet is not asked.
	pending := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prog-publisher-2", Labels: sts.Spec.Template.Labels}, Spec: sts.Spec.Template.Spec}
	if err := k8s.Create(ctx, pending); err != nil {
		t.Fatal(err)
	}

	opClient, err := client.New(operatorRestConfig, client.Options{Scheme: controllers.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	var apiCalls atomic.Int64
	p := &controllers.Progress{Client: opClient, Log: logr.Discard(), Every: 200 * time.Millisecond, Timeout: 2 * time.Second,
		APIURL: func(*v1alpha1.ChargerSimulation) string { apiCalls.Add(1); return api.URL },
		PodMetricsURL: func(pod *corev1.Pod) string {
			if srv, ok := servers[pod.Name]; ok {
				return srv.URL + "/metrics"
			}
			return "http://127.0.0.1:1/metrics" // refused: a pod the test did not expect
		}}
	if err := p.ProbeOne(ctx, getSim(t, ns, "prog"), lastEnd.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := getSim(t, ns, "prog").Status.Progress
	if got == nil || got.Published == nil || *got.Published != 12 || got.Stored != 25 || got.Rejected != 1 ||
		got.Lag == nil || got.Lag.Duration != 3*time.Second || got.LastSessionTime == nil || !got.LastSessionTime.Time.Equal(lastEnd.Truncate(time.Second)) ||
		got.Error != "" || got.LastTime.IsZero() {
		t.Fatalf("status.progress %+v (published %v, last session %s), want published 12, stored 25, rejected 1, lag 3s, last session %s",
			got, ptrValue(got.Published), got.LastSessionTime.Format(time.RFC3339Nano), lastEnd.Format(time.RFC3339Nano))
	}

	// What `kubectl get csim` prints (the server's Table of the printer columns).
	cols := table(t, ns, "prog")
	for col, want := range map[string]string{"Published": "12", "Stored": "25", "Rejected": "1", "Lag": "3s", "Ready": "True"} {
		if cols[col] != want {
			t.Errorf("column %s = %q, want %q (all: %v)", col, cols[col], want, cols)
		}
	}

	// Periodically: the probe loop (as the manager runs it) follows the pipeline.
	loopCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Start(loopCtx) }()
	insert(26, 10, time.Now())
	counters["prog-publisher-1"].Add(10)
	eventually(t, "the probe loop to see new sessions", func() error {
		g := getSim(t, ns, "prog").Status.Progress
		if g == nil || g.Stored != 35 || g.Published == nil || *g.Published != 22 || g.Lag == nil || g.Lag.Duration > 5*time.Second {
			return fmt.Errorf("status.progress %+v", g)
		}
		return nil
	})

	// The API and one publisher pod stop answering: the figures stay, with the error; Ready
	// does not move and no event is raised.
	api.Close()
	servers["prog-publisher-0"].Close()
	eventually(t, "the failure recorded", func() error {
		g := getSim(t, ns, "prog").Status.Progress
		if g == nil || !strings.Contains(g.Error, "stats:") || !strings.Contains(g.Error, "1 of 2 publisher pods did not answer") {
			return fmt.Errorf("status.progress %+v", g)
		}
		if g.Stored != 35 || g.Published == nil || *g.Published != 22 {
			return fmt.Errorf("figures lost: %+v", g)
		}
		return nil
	})
	before := apiCalls.Load()
	eventually(t, "more failed probes", func() error {
		if n := apiCalls.Load(); n < before+3 {
			return fmt.Errorf("%d probes since the failure", n-before)
		}
		return nil
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The API answers again and the publisher pods are gone (suspended): the error goes, and so
	// does the published figure (the whole field is replaced, not merged).
	api2 := httptest.NewServer(srv.Handler())
	t.Cleanup(api2.Close)
	for _, name := range []string{"prog-publisher-0", "prog-publisher-1", "prog-publisher-2"} {
		if err := k8s.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	p.APIURL = func(*v1alpha1.ChargerSimulation) string { return api2.URL }
	eventually(t, "publisher pods gone", func() error {
		var pods corev1.PodList
		if err := opClient.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return fmt.Errorf("list pods: %w", err)
		}
		if len(pods.Items) != 0 {
			return fmt.Errorf("%d pods left", len(pods.Items))
		}
		return nil
	})
	if err := p.ProbeOne(ctx, getSim(t, ns, "prog"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if g := getSim(t, ns, "prog").Status.Progress; g == nil || g.Error != "" || g.Published != nil || g.Stored != 35 {
		t.Fatalf("status.progress after recovery %+v (published %v)", g, ptrValue(g.Published))
	}

	sim := getSim(t, ns, "prog")
	if c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Ready %+v after failed probes", c)
	}
	list := &eventsv1.EventList{}
	if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Items {
		if e.Type == corev1.EventTypeWarning {
			t.Errorf("warning event %s about %s: %s", e.Reason, e.Regarding.Name, e.Note)
		}
	}
}

// table is the row `kubectl get csim` prints for one simulation: column name → cell.
func table(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	hc, err := rest.HTTPClientFor(operatorRestConfig)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimSuffix(operatorRestConfig.Host, "/")+"/apis/chargesim.io/v1alpha1/namespaces/"+ns+"/chargersimulations/"+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	var tab metav1.Table
	if err := json.NewDecoder(res.Body).Decode(&tab); err != nil || len(tab.Rows) != 1 {
		t.Fatalf("table: %v, %d rows", err, len(tab.Rows))
	}
	out := map[string]string{}
	for i, c := range tab.ColumnDefinitions {
		out[c.Name] = fmt.Sprint(tab.Rows[0].Cells[i])
	}
	return out
}

func ptrValue[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
