//go:build envtest

package controllers_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	k8sevents "k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/restapi"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/controllers"
	"github.com/chargesim/chargesim/test/testenv"
)

// The publisher of every shard records its runs: the Mongo URI comes from the simulation's
// Secret (a mounted key, never the spec or the ConfigMap), --record-runs is on, and the seed and
// epoch that fix every session's ID come from the one ConfigMap all shards read, so the shards
// (and the audit) agree on them.
func TestPublisherRecordsRuns(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://user:secret@mongo:27017"})
	s := simulation(ns, "runs")
	s.Spec.Publisher.Replicas = 3
	s.Spec.Seed = ptr.To(int64(42))
	createSim(t, s)
	startPublisher(t, ns, "runs")

	sts := getObj(t, ns, "runs-publisher", &appsv1.StatefulSet{})
	pod := sts.Spec.Template.Spec
	env := envOf(pod.Containers[0])
	if env["CHARGESIM_RECORD_RUNS"].Value != "true" {
		t.Errorf("CHARGESIM_RECORD_RUNS %+v", env["CHARGESIM_RECORD_RUNS"])
	}
	uriFile := env["CHARGESIM_MONGO_URI_FILE"].Value
	var mount *corev1.VolumeMount
	for i, m := range pod.Containers[0].VolumeMounts {
		if strings.HasPrefix(uriFile, m.MountPath+"/") {
			mount = &pod.Containers[0].VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("CHARGESIM_MONGO_URI_FILE=%q is in no mounted volume: %+v", uriFile, pod.Containers[0].VolumeMounts)
	}
	for _, v := range pod.Volumes {
		if v.Name == mount.Name && (v.Secret == nil || v.Secret.SecretName != "mongo" || len(v.Secret.Items) != 1 ||
			v.Secret.Items[0].Key != "uri" || mount.MountPath+"/"+v.Secret.Items[0].Path != uriFile) {
			t.Errorf("volume %s: %+v, want key uri of Secret mongo at %s", v.Name, v.VolumeSource, uriFile)
		}
	}
	cm := configMapOf(t, ns, "runs-publisher", &appsv1.StatefulSet{})
	for k, v := range cm.Data {
		if strings.Contains(v, "secret") || strings.Contains(v, "mongodb://") {
			t.Errorf("the publisher's ConfigMap holds the URI: %s=%q", k, v)
		}
	}
	for _, e := range pod.Containers[0].Env {
		if strings.Contains(e.Value, "mongodb://") {
			t.Errorf("the URI is in the pod spec: %s", e.Name)
		}
	}
	if cm.Data["CHARGESIM_SEED"] != "42" || cm.Data["CHARGESIM_EPOCH"] != "2026-01-01T00:00:00Z" {
		t.Errorf("seed %q epoch %q in the ConfigMap all shards read", cm.Data["CHARGESIM_SEED"], cm.Data["CHARGESIM_EPOCH"])
	}
	// One template for every shard: what differs between them is the pod-index label only.
	for _, name := range []string{"CHARGESIM_SEED", "CHARGESIM_EPOCH"} {
		if _, ok := env[name]; ok {
			t.Errorf("%s set per pod (env), not in the shared ConfigMap", name)
		}
	}
	if idx := env["CHARGESIM_SHARD_INDEX"]; idx.ValueFrom == nil || idx.ValueFrom.FieldRef == nil {
		t.Errorf("shard index %+v", idx)
	}
	if env["CHARGESIM_SHARD_COUNT"].Value != "3" {
		t.Errorf("shard count %+v", env["CHARGESIM_SHARD_COUNT"])
	}
}

// The operator's audit of a simulation, through the simulation's API — the real REST handler
// over a real store (FerretDB) holding one publisher run and all its sessions but one — lands
// in status.audit, raises one AuditIncomplete event, and leaves Ready alone.
func TestAuditIntoStatus(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mongo", map[string]string{"uri": "mongodb://mongo:27017"})
	createSim(t, simulation(ns, "aud"))
	startPublisher(t, ns, "aud")
	markReady(t, ns, "aud")
	waitCondition(t, ns, "aud", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	// The store and API the simulation would have.
	db := testenv.StartFerretDB(t)
	st, err := store.Connect(ctx, store.Config{URI: db.URI, Database: "audit"}, "operator-audit-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(ctx) })
	reg := prometheus.NewRegistry()
	srv, err := restapi.New(restapi.DefaultConfig(), st, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(srv.Handler())
	t.Cleanup(api.Close)

	now := time.Now()
	run := store.RunDoc{ID: "r1", Seed: 7, Chargers: 3, Connectors: 2, Shard: 0, Shards: 1,
		EpochNs: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), IntervalNs: int64(time.Second), Jitter: 0.2,
		FromNs: now.Add(-4 * time.Minute).UnixNano(), ToNs: now.Add(-2 * time.Minute).UnixNano(), Ended: true}
	if err := st.InsertRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	p := audit.ParamsOf(run)
	p.ACTariff, p.DCTariff = 35, 59
	var docs []store.SessionDoc
	for c := uint32(1); c <= 3; c++ {
		for n := p.SlotAt(c, run.FromNs); p.SlotTime(c, n) < run.ToNs; n++ {
			var s session.Session
			d := p.Session(c, n)
			d.Fill(&s, sim.ChargerID(c), p.SessionID(c, n), time.Unix(0, p.SlotTime(c, n)))
			docs = append(docs, store.NewSessionDoc(s, "t", time.Now()))
		}
	}
	left := docs[len(docs)/2]
	if _, err := st.InsertSessions(ctx, slices.Delete(slices.Clone(docs), len(docs)/2, len(docs)/2+1)); err != nil {
		t.Fatal(err)
	}

	// The operator's identity (its RBAC), a real event recorder.
	opClient, err := client.New(operatorRestConfig, client.Options{Scheme: controllers.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(operatorRestConfig)
	if err != nil {
		t.Fatal(err)
	}
	b := k8sevents.NewBroadcaster(&k8sevents.EventSinkImpl{Interface: cs.EventsV1()})
	stop := make(chan struct{})
	b.StartRecordingToSink(stop)
	t.Cleanup(func() { close(stop); b.Shutdown() })
	a := &controllers.Auditor{Client: opClient, Recorder: b.NewRecorder(controllers.Scheme(), "chargesim-operator"), Log: logr.Discard(),
		APIURL: func(*v1alpha1.ChargerSimulation) string { return api.URL }}

	simObj := getSim(t, ns, "aud")
	if err := a.AuditOne(ctx, simObj, now); err != nil {
		t.Fatal(err)
	}
	got := getSim(t, ns, "aud").Status.Audit
	wantTo := now.Add(-30 * time.Second).Truncate(time.Second)
	if got == nil || got.Expected != int64(len(docs)) || got.Stored != got.Expected-1 || got.Missing != 1 ||
		got.Unexpected != 0 || got.Duplicates != 0 || got.Complete || !slices.Equal(got.MissingKeys, []string{left.ID}) ||
		!got.To.Time.Equal(wantTo) || !got.From.Time.Equal(wantTo.Add(-5*time.Minute)) || got.Error != "" || got.LastTime.IsZero() {
		t.Fatalf("status.audit %+v, want %d expected, 1 missing (%s), window ending %s", got, len(docs), left.ID, wantTo)
	}
	eventually(t, "AuditIncomplete event", func() error {
		if ev := events(t, ns, "aud", v1alpha1.ReasonAuditIncomplete); len(ev) != 1 || ev[0].Type != corev1.EventTypeWarning ||
			!strings.Contains(ev[0].Note, "1 missing") {
			return fmt.Errorf("events %+v", ev)
		}
		return nil
	})

	// The missing session arrives: the next audit is complete. Ready never moved, and the
	// reconciler's own status patches (its next reconcile) keep status.audit.
	if _, err := st.InsertSessions(ctx, []store.SessionDoc{left}); err != nil {
		t.Fatal(err)
	}
	if err := a.AuditOne(ctx, getSim(t, ns, "aud"), now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	updateSim(t, ns, "aud", func(s *v1alpha1.ChargerSimulation) { s.Spec.API.Replicas = 2 }) // a reconcile that rewrites status
	eventually(t, "reconciled with audit kept", func() error {
		s := getSim(t, ns, "aud")
		if s.Status.ObservedGeneration != s.Generation {
			return fmt.Errorf("observedGeneration %d of %d", s.Status.ObservedGeneration, s.Generation)
		}
		if a := s.Status.Audit; a == nil || !a.Complete || a.Missing != 0 || a.Stored != int64(len(docs)) || len(a.MissingKeys) != 0 || a.Error != "" {
			return fmt.Errorf("status.audit %+v", a)
		}
		return nil
	})
	markReady(t, ns, "aud")
	s := waitCondition(t, ns, "aud", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if c := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue {
		t.Fatalf("Ready %+v", c)
	}

	// An API that does not answer: the error is recorded next to the last counts.
	api.Close()
	if err := a.AuditOne(ctx, getSim(t, ns, "aud"), now.Add(2*time.Second)); err == nil {
		t.Fatal("audit of a closed API succeeded")
	}
	if a := getSim(t, ns, "aud").Status.Audit; a == nil || a.Error == "" || !a.Complete || a.Stored != int64(len(docs)) {
		t.Fatalf("status.audit after a failure: %+v", a)
	}

	// The API answers again: the next success clears the error (a merge patch that left the
	// field out kept it for ever, and the cluster test waited for it in vain).
	api = httptest.NewServer(srv.Handler())
	t.Cleanup(api.Close)
	if err := a.AuditOne(ctx, getSim(t, ns, "aud"), now.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if a := getSim(t, ns, "aud").Status.Audit; a == nil || a.Error != "" || !a.Complete {
		t.Fatalf("status.audit after a failure and a success: %+v", a)
	}
}
