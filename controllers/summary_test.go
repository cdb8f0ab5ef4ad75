package controllers

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/chargesim/chargesim/api/v1alpha1"
)

// The status summary, table-driven: observations in; conditions, events and requeue out.
func TestSummarizeStatus(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	done := func(desired int32) *componentObservation {
		return &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: desired, Replicas: desired, ReadyReplicas: desired}, updated: desired, complete: true}
	}
	allDone := func() map[Component]*componentObservation {
		return map[Component]*componentObservation{Broker: done(1), Publisher: done(1), Listener: done(1), API: done(1)}
	}
	with := func(c Component, o *componentObservation) map[Component]*componentObservation {
		m := allDone()
		m[c] = o
		return m
	}
	ready := []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAvailable}}
	degradedSecret := []metav1.Condition{
		{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonSecretNotFound},
		{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonSecretNotFound, Message: "gone", LastTransitionTime: metav1.NewTime(now.Add(-10 * time.Second))},
	}
	type want struct {
		ready, reconciling, stalled metav1.ConditionStatus
		reason                      string // Ready's
		message                     string // part of Ready's message
		events                      []string
		requeue                     time.Duration
	}
	for _, tc := range []struct {
		name   string
		before []metav1.Condition
		obs    observation
		want   want
	}{
		{"new and complete", nil, observation{components: allDone()},
			want{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, v1alpha1.ReasonAvailable, "all components are available", []string{"Available"}, 0}},
		{"still ready: no event", ready, observation{components: allDone()},
			want{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, v1alpha1.ReasonAvailable, "", nil, 0}},
		{"rolling out", ready, observation{components: with(Publisher, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 3, Replicas: 3, ReadyReplicas: 1}})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady, "publisher 1/3 ready", nil, 0}},
		{"scaling down", ready, observation{components: with(Publisher, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1, Replicas: 3, ReadyReplicas: 3}})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady, "publisher scaling down to 1 (3 running)", nil, 0}},
		{"new revision", ready, observation{components: with(Listener, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 2, Replicas: 2, ReadyReplicas: 2}, updated: 1})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady, "listener rolling out (1/2 updated)", nil, 0}},
		{"waiting for listener", nil, observation{waitingForListener: true, components: with(Publisher, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1}})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonWaitingForListener, "the publisher starts once a listener is ready", nil, 0}},
		{"missing secret", ready, observation{degraded: &configError{reason: v1alpha1.ReasonSecretNotFound, message: "Secret mongo not found"}, components: allDone()},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, v1alpha1.ReasonSecretNotFound, "Secret mongo not found", []string{"SecretNotFound"}, time.Second}},
		{"still missing: backoff grows, no new event", degradedSecret, observation{degraded: &configError{reason: v1alpha1.ReasonSecretNotFound, message: "gone"}, components: allDone()},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, v1alpha1.ReasonSecretNotFound, "gone", nil, 10 * time.Second}},
		{"recovered", degradedSecret, observation{components: allDone()},
			want{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionFalse, v1alpha1.ReasonAvailable, "", []string{"Recovered", "Available"}, 0}},
		{"stuck rollout is stalled", ready, observation{components: with(API, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1, Replicas: 1}, stalled: "Deployment x: progress deadline exceeded"})},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, v1alpha1.ReasonRolloutStalled, "progress deadline exceeded", []string{"RolloutStalled"}, time.Second}},
		{"transient error: no event, no Ready flip", ready, observation{transient: errors.New("apply: timeout"), components: allDone()},
			want{metav1.ConditionTrue, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonAvailable, "", nil, 0}},
		{"stuck pod: stalled with the pod's reason", ready, observation{components: with(Listener, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1, Replicas: 1},
			stalled: "pod l-0: container listener: ImagePullBackOff: back-off", stalledReason: "ImagePullBackOff"})},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, "ImagePullBackOff", "pod l-0: container listener: ImagePullBackOff", []string{"ImagePullBackOff"}, time.Second}},
		{"a pod that may still get there: looked at again at its deadline", ready, observation{recheck: 90 * time.Second,
			components: with(Publisher, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1, Replicas: 1}})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady, "publisher 0/1 ready", nil, 90 * time.Second}},
		{"still degraded, another message: a new event", degradedSecret, observation{degraded: &configError{reason: v1alpha1.ReasonSecretNotFound, message: "Secret other not found"}, components: allDone()},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, v1alpha1.ReasonSecretNotFound, "Secret other not found", []string{"SecretNotFound"}, 10 * time.Second}},
		{"degraded and a transient error: the terminal one speaks", ready, observation{degraded: &configError{reason: v1alpha1.ReasonNameConflict, message: "Service x exists"},
			transient: errors.New("timeout"), components: allDone()},
			want{metav1.ConditionFalse, metav1.ConditionFalse, metav1.ConditionTrue, v1alpha1.ReasonNameConflict, "Service x exists", []string{"NameConflict"}, time.Second}},
		{"transient error mid-rollout: still reconciling, no event", nil, observation{transient: errors.New("conflict"),
			components: with(API, &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 2, Replicas: 2, ReadyReplicas: 1}})},
			want{metav1.ConditionFalse, metav1.ConditionTrue, metav1.ConditionFalse, v1alpha1.ReasonComponentsNotReady, "api 1/2 ready", nil, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := &v1alpha1.ChargerSimulation{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n", Generation: 4}}
			for _, c := range tc.before {
				c.ObservedGeneration = 3
				if c.LastTransitionTime.IsZero() {
					c.LastTransitionTime = metav1.NewTime(now.Add(-time.Hour))
				}
				sim.Status.Conditions = append(sim.Status.Conditions, c)
			}
			res, evs := summarizeStatus(sim, &tc.obs, now)
			st := sim.Status
			if st.ObservedGeneration != 4 {
				t.Errorf("observedGeneration %d", st.ObservedGeneration)
			}
			for typ, want := range map[string]metav1.ConditionStatus{
				v1alpha1.ConditionReady: tc.want.ready, v1alpha1.ConditionReconciling: tc.want.reconciling, v1alpha1.ConditionStalled: tc.want.stalled,
			} {
				c := meta.FindStatusCondition(st.Conditions, typ)
				if c == nil || c.Status != want || c.ObservedGeneration != 4 {
					t.Errorf("%s: %+v, want %s at generation 4", typ, c, want)
				}
			}
			r := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
			if r.Reason != tc.want.reason || !strings.Contains(r.Message, tc.want.message) {
				t.Errorf("Ready %s %q, want %s %q", r.Reason, r.Message, tc.want.reason, tc.want.message)
			}
			if strings.Contains(r.Message, "3/1") {
				t.Errorf("Ready message %q", r.Message)
			}
			var got []string
			for _, e := range evs {
				got = append(got, e.reason)
			}
			if strings.Join(got, ",") != strings.Join(tc.want.events, ",") {
				t.Errorf("events %v, want %v", got, tc.want.events)
			}
			if res.RequeueAfter != tc.want.requeue {
				t.Errorf("requeue after %s, want %s", res.RequeueAfter, tc.want.requeue)
			}
		})
	}
}

func TestPodStuck(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) metav1.Time { return metav1.NewTime(now.Add(-d)) }
	waiting := func(reason string) corev1.ContainerState {
		return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: "m"}}
	}
	for _, tc := range []struct {
		name    string
		status  corev1.PodStatus
		reason  string
		recheck time.Duration
	}{
		{"image pull", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", State: waiting("ImagePullBackOff")}}}, "ImagePullBackOff", 0},
		{"crash loop", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", State: waiting("CrashLoopBackOff")}}}, "CrashLoopBackOff", 0},
		{"creating", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", State: waiting("ContainerCreating")}}}, "", 0},
		{"unschedulable, recently", corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, LastTransitionTime: ago(30 * time.Second)}}}, "", 90 * time.Second},
		{"unschedulable, long", corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, LastTransitionTime: ago(3 * time.Minute)}}}, corev1.PodReasonUnschedulable, 0},
		{"probe failing, recently", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ago(time.Minute)}}}}}, "", 4 * time.Minute},
		{"probe failing, long", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ago(6 * time.Minute)}}}}}, "ProbeFailing", 0},
		{"ready", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ago(6 * time.Minute)}}}}}, "", 0},
	} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Status: tc.status}
		reason, _, recheck := podStuck(p, now)
		if reason != tc.reason || recheck != tc.recheck {
			t.Errorf("%s: reason %q recheck %s, want %q %s", tc.name, reason, recheck, tc.reason, tc.recheck)
		}
	}
}

// A suspended simulation is Ready with reason Suspended; the summary never touches the fields
// other writers own (status.audit, status.progress).
func TestSummarizeStatusSuspendedKeepsProbes(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	sim := &v1alpha1.ChargerSimulation{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n", Generation: 2},
		Spec: v1alpha1.ChargerSimulationSpec{Suspend: true}}
	sim.Status.Progress = &v1alpha1.ProgressStatus{Stored: 9, Error: "stats: timeout"}
	sim.Status.Audit = &v1alpha1.AuditStatus{Missing: 1}
	done := &componentObservation{status: v1alpha1.ComponentStatus{DesiredReplicas: 1, Replicas: 1, ReadyReplicas: 1}, updated: 1, complete: true}
	obs := &observation{components: map[Component]*componentObservation{Broker: done, Listener: done, API: done,
		Publisher: {status: v1alpha1.ComponentStatus{}, complete: true}}}
	res, evs := summarizeStatus(sim, obs, now)
	c := meta.FindStatusCondition(sim.Status.Conditions, v1alpha1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonSuspended {
		t.Errorf("Ready %+v", c)
	}
	if len(evs) != 1 || evs[0].reason != v1alpha1.ReasonAvailable || res.RequeueAfter != 0 {
		t.Errorf("events %+v, requeue %s", evs, res.RequeueAfter)
	}
	if sim.Status.Progress == nil || sim.Status.Progress.Stored != 9 || sim.Status.Audit == nil || sim.Status.Audit.Missing != 1 {
		t.Errorf("progress %+v, audit %+v", sim.Status.Progress, sim.Status.Audit)
	}
	if sim.Status.SessionsPerSecond != "0" {
		t.Errorf("sessionsPerSecond %q while suspended", sim.Status.SessionsPerSecond)
	}
}
