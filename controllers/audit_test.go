package controllers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/events"

	"github.com/chargesim/chargesim/components/audit"
)

func TestNextAuditStatus(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 1, 2, 500e6, time.UTC)
	from, to := now.Add(-330*time.Second).Truncate(time.Second), now.Add(-30*time.Second).Truncate(time.Second)
	keys := make([]string, 15)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	rep := audit.Report{From: from, To: to, Runs: 2, Expected: 100, Stored: 85, Missing: 15, Unexpected: 2, Duplicates: 3,
		MissingKeys: keys, Complete: false}
	st := nextAuditStatus(nil, rep, nil, now)
	if !st.From.Time.Equal(from) || !st.To.Time.Equal(to) || st.Expected != 100 || st.Stored != 85 || st.Missing != 15 ||
		st.Unexpected != 2 || st.Duplicates != 3 || st.Complete || st.Error != "" {
		t.Fatalf("status %+v from report %+v", st, rep)
	}
	if !slices.Equal(st.MissingKeys, keys[:maxStatusKeys]) {
		t.Fatalf("missing keys %v, want the first %d", st.MissingKeys, maxStatusKeys)
	}
	keys[0] = "changed"
	if st.MissingKeys[0] != "k0" {
		t.Fatal("status shares the report's key slice")
	}
	at := now.Truncate(time.Second)
	if !st.LastTime.Time.Equal(at) || !st.LastAttemptTime.Time.Equal(at) {
		t.Fatalf("times %v %v, want %v", st.LastTime, st.LastAttemptTime, at)
	}

	// A failed audit keeps the last counts and says why the newest attempt failed.
	later := now.Add(time.Minute)
	failed := nextAuditStatus(st, audit.Report{}, errors.New("GET http://x/api/v1/audit: connection refused"), later)
	if failed.Expected != 100 || failed.Missing != 15 || !failed.LastTime.Time.Equal(at) ||
		!failed.LastAttemptTime.Time.Equal(later.Truncate(time.Second)) || failed.Error == "" {
		t.Fatalf("after a failure: %+v", failed)
	}
	if st.Error != "" {
		t.Fatal("a failure changed the previous status")
	}
	// The next success clears the error.
	ok := nextAuditStatus(failed, audit.Report{From: from, To: to, Expected: 7, Stored: 7, Complete: true}, nil, later)
	if ok.Error != "" || !ok.Complete || ok.Missing != 0 || ok.MissingKeys != nil || ok.Expected != 7 {
		t.Fatalf("after a success: %+v", ok)
	}
	// A first audit that fails still records the attempt.
	if first := nextAuditStatus(nil, audit.Report{}, errors.New("x"), now); first.Error != "x" || first.Expected != 0 || !first.LastTime.IsZero() {
		t.Fatalf("first failure: %+v", first)
	}
}

// AuditIncomplete is raised at most once per WarnEvery for one simulation, independently for
// each simulation.
func TestAuditWarningRateLimited(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	a := &Auditor{Recorder: rec, WarnEvery: 10 * time.Minute}
	s1, s2 := testSim(), testSim()
	s2.Name = "other"
	rep := audit.Report{Expected: 5, Stored: 4, Missing: 1}
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	for _, at := range []time.Duration{0, time.Minute, 9 * time.Minute, 10 * time.Minute, 11 * time.Minute} {
		a.warn(s1, rep, t0.Add(at))
	}
	a.warn(s2, rep, t0.Add(time.Minute))
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	if len(got) != 3 {
		t.Fatalf("%d events, want 3 (at 0 and 10m for one simulation, 1m for the other): %q", len(got), got)
	}
	for _, e := range got {
		if !strings.HasPrefix(e, "Warning AuditIncomplete") || !strings.Contains(e, "1 missing") {
			t.Errorf("event %q", e)
		}
	}
}
