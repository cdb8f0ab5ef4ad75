package store_test

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

func TestNewSessionDocDerivesTimes(t *testing.T) {
	recv := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	cases := []struct {
		name         string
		s            session.Session
		ended, start time.Time
	}{
		{
			name:  "contract only: receive time",
			s:     session.Session{SessionID: 1, DurationSeconds: 45},
			ended: recv.Truncate(time.Millisecond),
			start: recv.Truncate(time.Millisecond).Add(-45 * time.Second),
		},
		{
			name:  "timestamp",
			s:     session.Session{SessionID: 2, DurationSeconds: 1.5, Timestamp: 1_700_000_000},
			ended: time.Unix(1_700_000_000, 0).UTC(),
			start: time.Unix(1_700_000_000, 0).UTC().Add(-1500 * time.Millisecond),
		},
		{
			name: "ended_at wins over timestamp, started_at kept",
			s: session.Session{SessionID: 3, DurationSeconds: 60, Timestamp: 1_700_000_000,
				EndedAt:   time.Date(2025, 1, 1, 10, 0, 0, 999_999, time.UTC),
				StartedAt: time.Date(2025, 1, 1, 9, 0, 0, 1_500_000, time.FixedZone("x", 3600))},
			ended: time.Date(2025, 1, 1, 10, 0, 0, 0, time.UTC),
			start: time.Date(2025, 1, 1, 8, 0, 0, 1_000_000, time.UTC),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.s.ChargerID, c.s.ConnectorID = "7", 2
			d := store.NewSessionDoc(c.s, "charger/7/connector/2/session/x", recv)
			if !d.EndedAt.Equal(c.ended) || d.EndedAt.Location() != time.UTC {
				t.Errorf("EndedAt = %v, want %v UTC", d.EndedAt, c.ended)
			}
			if !d.StartedAt.Equal(c.start) || d.StartedAt.Location() != time.UTC {
				t.Errorf("StartedAt = %v, want %v UTC", d.StartedAt, c.start)
			}
			if want := session.Key("7", 2, c.s.SessionID); d.ID != want {
				t.Errorf("ID = %q, want %q", d.ID, want)
			}
			if !d.ReceivedAt.Equal(recv.Truncate(time.Millisecond)) {
				t.Errorf("ReceivedAt = %v, want ms-truncated %v", d.ReceivedAt, recv)
			}
		})
	}
}

func TestNewRejectedDocTruncates(t *testing.T) {
	payload := make([]byte, store.MaxRejectedPayload+10)
	d := store.NewRejectedDoc("t", payload, session.ReasonOversized, "too big", time.Now())
	if len(d.Payload) != store.MaxRejectedPayload || d.Size != len(payload) {
		t.Errorf("payload %d bytes, size %d; want %d, %d", len(d.Payload), d.Size, store.MaxRejectedPayload, len(payload))
	}
	if d.ID != store.RejectedID("t", payload, session.ReasonOversized) || d.Reason != "oversized" {
		t.Errorf("ID %v reason %q", d.ID, d.Reason)
	}
	payload[0] = 1
	if d.Payload[0] != 0 {
		t.Error("rejected doc aliases the message buffer")
	}
	// Topic and detail are cut at a character boundary and kept valid UTF-8.
	d = store.NewRejectedDoc(strings.Repeat("é", 300), nil, session.ReasonBadTopic, strings.Repeat("€", 200)+"\xff", time.Now())
	if !utf8.ValidString(d.Topic) || !utf8.ValidString(d.Detail) || len(d.Topic) > 512+len("…") || len(d.Detail) > 512+len("…") {
		t.Errorf("topic %d bytes valid %v, detail %d bytes valid %v", len(d.Topic), utf8.ValidString(d.Topic), len(d.Detail), utf8.ValidString(d.Detail))
	}
}

func TestWriteResultIsDuplicate(t *testing.T) {
	r := store.WriteResult{Inserted: 3, Duplicates: []int{1, 4}}
	for i, want := range []bool{false, true, false, false, true, false} {
		if got := r.IsDuplicate(i); got != want {
			t.Errorf("IsDuplicate(%d) = %v", i, got)
		}
	}
}
