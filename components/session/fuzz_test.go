package session

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecode: Decode never panics, rejects only with a known reason, and whatever it accepts
// re-encodes (AppendJSON, TopicBuilder) to a message that decodes to the same session.
//
//	go test ./components/session -run '^$' -fuzz FuzzDecode -fuzztime 60s
func FuzzDecode(f *testing.F) {
	seeds := []struct{ topic, payload string }{
		// The contract's sample and its variants.
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kwh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": 1706933106}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": "2024-02-03 04:05:06"}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1.0, "energy_delivered_in_kWh": 30.5, "duration_in_seconds": 45.25, "session_cost_in_cents": 70.125}`},
		// What the publisher sends.
		{"site/charger/17/connector/2/session/1748781015123456", string(func() []byte { s := fullSession(); return s.AppendJSON(nil) }())},
		// Rejections of every kind.
		{"charger/1/connector/1/session/1", `{"session_id": 1,`},
		{"charger/1/connector/1/session/1", `{"session_id": "x", "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/1", `{"energy_delivered_in_kWh": 30}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": -30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/2", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "AC\u00e911", "started_at": "2024-01-01T00:00:00.5+02:00"}`},
		{"session/1", `{}`},
		// Found by hand before the fuzzer: control characters and sub-millisecond times.
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "a\u0007\u007f\"\\\n"}`},
		{"charger/1/connector/1/session/1", "{\"session_id\": 1, \"energy_delivered_in_kWh\": 30, \"duration_in_seconds\": 45, \"session_cost_in_cents\": 70, \"power_class\": \"\xff\xfe\"}"},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "started_at": "2024-01-01T00:00:00.000001Z", "ended_at": "2024-01-01T00:00:00.999999999-01:00"}`},
		// Issue 10: trailing brackets, keys differing in case, started_at alone, IDs as floats
		// (fraction lost above 2^52, integral ones accepted), invalid UTF-8, lone surrogates.
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}]`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 1, "duration_in_seconds": 45, "session_cost_in_cents": 70, "energy_delivered_in_kwh": 9999}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "started_at": "2024-01-01T10:00:00Z"}`},
		{"charger/1/connector/1/session/4503599627370497", `{"session_id": 4503599627370497.5, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "connector_id": 1.0, "charger_id": 1e0}`},
		{"charger/1/connector/1/session/1", "{\"session_id\": 1, \"energy_delivered_in_kWh\": 30, \"duration_in_seconds\": 45, \"session_cost_in_cents\": 70, \"power_class\": \"AC\xc311\"}"},
		{"charger/1/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "AC\udc00"}`},
	}
	for _, s := range seeds {
		f.Add(s.topic, []byte(s.payload))
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		s, err := Decode(topic, payload)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("rejection without a reason: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid session: %v", err)
		}
		if !utf8.Valid(payload) || strings.ContainsRune(s.PowerClass, utf8.RuneError) {
			t.Fatalf("Decode accepted invalid UTF-8: payload %q, power_class %q", payload, s.PowerClass)
		}
		if !s.StartedAt.IsZero() && s.EndedAt.Before(s.StartedAt) {
			t.Fatalf("Decode accepted a session ending before it starts: %+v", s)
		}
		topic2 := NewTopicBuilder("").Topic(s.ChargerID, s.ConnectorID, s.SessionID)
		payload2 := s.AppendJSON(nil)
		s2, err := Decode(topic2, payload2)
		if err != nil {
			t.Fatalf("re-encoded session rejected: %v\n topic %s\n payload %s", err, topic2, payload2)
		}
		if !equal(s, s2) {
			t.Fatalf("re-encoded session differs:\n first  %+v\n second %+v\n payload %s", s, s2, payload2)
		}
	})
}
