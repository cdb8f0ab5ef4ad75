package session

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func fullSession() Session {
	end := time.Date(2025, 6, 1, 12, 30, 15, 123_000_000, time.UTC)
	return Session{
		SessionID:         1_748_781_015_123_456,
		EnergyKWh:         41.237,
		DurationSeconds:   7821,
		CostCents:         1493,
		Timestamp:         end.Unix(),
		ChargerID:         "17",
		ConnectorID:       2,
		StartedAt:         end.Add(-7821 * time.Second),
		EndedAt:           end,
		PowerClass:        "DC150",
		PeakPowerKW:       142.5,
		BatteryKWh:        77.4,
		StartSoCPercent:   12.3,
		EndSoCPercent:     65.6,
		TariffCentsPerKWh: 35.5,
		SessionFeeCents:   30,
	}
}

// equal compares sessions field by field, times by instant (== on time.Time compares
// representations, which is not what a round trip promises).
func equal(a, b Session) bool {
	ta, tb := a, b
	ta.StartedAt, ta.EndedAt, tb.StartedAt, tb.EndedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return ta == tb && a.StartedAt.Equal(b.StartedAt) && a.EndedAt.Equal(b.EndedAt)
}

func TestAppendJSONRoundTrip(t *testing.T) {
	full := fullSession()
	minimal := Session{SessionID: 7, EnergyKWh: 30, DurationSeconds: 45, CostCents: 70, ChargerID: "1", ConnectorID: 1}
	zeroConnector := Session{SessionID: 0, EnergyKWh: 0.001, DurationSeconds: 1, CostCents: 0, ChargerID: "a_b.c-D"}
	for name, s := range map[string]Session{"full": full, "minimal": minimal, "zero connector and id": zeroConnector} {
		t.Run(name, func(t *testing.T) {
			payload := s.AppendJSON(nil)
			for _, prefix := range []string{"", "fleet-a", "a/b/c"} {
				topic := NewTopicBuilder(prefix).Topic(s.ChargerID, s.ConnectorID, s.SessionID)
				got, err := Decode(topic, payload)
				if err != nil {
					t.Fatalf("Decode(%s, %s): %v", topic, payload, err)
				}
				if !equal(got, s) {
					t.Fatalf("round trip through %s:\n got %+v\nwant %+v\npayload %s", topic, got, s, payload)
				}
			}
		})
	}
}

func TestAppendJSONWireForm(t *testing.T) {
	s := fullSession()
	got := string(s.AppendJSON(nil))
	want := `{"session_id":1748781015123456,"energy_delivered_in_kWh":41.237,"duration_in_seconds":7821,` +
		`"session_cost_in_cents":1493,"timestamp":1748781015,"charger_id":"17","connector_id":2,` +
		`"started_at":"2025-06-01T10:19:54.123Z","ended_at":"2025-06-01T12:30:15.123Z","power_class":"DC150",` +
		`"peak_power_kw":142.5,"battery_kwh":77.4,"start_soc_percent":12.3,"end_soc_percent":65.6,` +
		`"tariff_cents_per_kwh":35.5,"session_fee_cents":30}`
	if got != want {
		t.Fatalf("AppendJSON:\n got %s\nwant %s", got, want)
	}
	// The challenge's own shape: only the original keys.
	min := Session{SessionID: 1, EnergyKWh: 30, DurationSeconds: 45, CostCents: 70}
	if got, want := string(min.AppendJSON(nil)), `{"session_id":1,"energy_delivered_in_kWh":30,"duration_in_seconds":45,"session_cost_in_cents":70}`; got != want {
		t.Fatalf("AppendJSON minimal:\n got %s\nwant %s", got, want)
	}
}

func TestAppendJSONDoesNotAllocate(t *testing.T) {
	s := fullSession()
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = s.AppendJSON(buf[:0]) }); n != 0 {
		t.Fatalf("AppendJSON allocates %v times per call", n)
	}
	tb := NewTopicBuilder("prefix")
	if n := testing.AllocsPerRun(100, func() { buf = tb.Append(buf[:0], "123456", 2, 1<<52) }); n != 0 {
		t.Fatalf("TopicBuilder.Append allocates %v times per call", n)
	}
}

// Every payload variant of the contract (docs: /work/shared/seed/contract.md) is accepted.
func TestDecodeContractVariants(t *testing.T) {
	const topic = "charger/1/connector/1/session/1"
	ts := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC).Unix()
	base := Session{SessionID: 1, EnergyKWh: 30, DurationSeconds: 45, CostCents: 70, ChargerID: "1", ConnectorID: 1}
	withTS := base
	withTS.Timestamp = ts
	floats := base
	floats.EnergyKWh, floats.DurationSeconds, floats.CostCents = 30.25, 45.5, 70.75
	cases := []struct {
		name, payload string
		want          Session
	}{
		{"challenge sample", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, base},
		{"lower-case kwh", `{"session_id": 1, "energy_delivered_in_kwh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, base},
		{"unix timestamp", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": 1706933106}`, withTS},
		{"float timestamp", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": 1706933106.0}`, withTS},
		{"string timestamp", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": "2024-02-03 04:05:06"}`, withTS},
		{"RFC 3339 timestamp", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": "2024-02-03T05:05:06+01:00"}`, withTS},
		{"null timestamp", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "timestamp": null}`, base},
		{"floats", `{"session_id": 1.0, "energy_delivered_in_kWh": 30.25, "duration_in_seconds": 45.5, "session_cost_in_cents": 70.75}`, floats},
		{"exponent", `{"session_id": 1e0, "energy_delivered_in_kWh": 3.0e1, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, base},
		{"numeric charger_id", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "charger_id": 1, "connector_id": 1}`, base},
		{"string charger_id", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "charger_id": "1"}`, base},
		{"unknown keys ignored", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "vendor": {"x": [1]}}`, base},
		{"float connector_id", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "connector_id": 1.0}`, base},
		{"integral float IDs in other spellings", `{"session_id": 0.1e1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "charger_id": 100e-2, "connector_id": 1.000}`, base},
		{"nested keys may repeat", `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "vendor": {"session_id": 2, "Session_ID": 3}}`, base},
		{"whitespace", " \n{\"session_id\":1,\"energy_delivered_in_kWh\":30,\"duration_in_seconds\":45,\"session_cost_in_cents\":70}\n ", base},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Decode(topic, []byte(c.payload))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !equal(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	const topic = "charger/1/connector/1/session/1"
	ok := `"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70`
	obj := func(extra string) string { return "{" + ok + extra + "}" }
	cases := []struct {
		name, topic, payload string
		reason               Reason
	}{
		{"empty", topic, ``, ReasonBadJSON},
		{"truncated", topic, `{"session_id": 1,`, ReasonBadJSON},
		{"not JSON", topic, `session_id=1`, ReasonBadJSON},
		{"trailing object", topic, obj("") + `{}`, ReasonBadJSON},
		{"array", topic, `[1,2]`, ReasonWrongType},
		{"string payload", topic, `"hello"`, ReasonWrongType},
		{"energy as string", topic, `{"session_id": 1, "energy_delivered_in_kWh": "30", "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"duration as bool", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": true, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"fractional session_id", topic, `{"session_id": 1.5, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"session_id object", topic, `{"session_id": {}, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"session_id beyond 2^53", "charger/1/connector/1/session/9007199254740993", `{"session_id": 9007199254740993, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"connector as string", topic, obj(`, "connector_id": "1"`), ReasonWrongType},
		{"charger_id as bool", topic, obj(`, "charger_id": true`), ReasonWrongType},
		{"timestamp bad string", topic, obj(`, "timestamp": "yesterday"`), ReasonWrongType},
		{"timestamp bool", topic, obj(`, "timestamp": false`), ReasonWrongType},
		{"started_at not a time", topic, obj(`, "started_at": "soon"`), ReasonBadJSON},
		{"missing session_id", topic, `{"energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonMissingField},
		{"missing energy", topic, `{"session_id": 1, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonMissingField},
		{"missing duration", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "session_cost_in_cents": 70}`, ReasonMissingField},
		{"missing cost", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45}`, ReasonMissingField},
		{"null energy", topic, `{"session_id": 1, "energy_delivered_in_kWh": null, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonMissingField},
		{"empty object", topic, `{}`, ReasonMissingField},
		{"negative energy", topic, `{"session_id": 1, "energy_delivered_in_kWh": -0.5, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonOutOfRange},
		{"absurd energy", topic, `{"session_id": 1, "energy_delivered_in_kWh": 1e9, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonOutOfRange},
		{"negative duration", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": -45, "session_cost_in_cents": 70}`, ReasonOutOfRange},
		{"duration beyond a week", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 604801, "session_cost_in_cents": 70}`, ReasonOutOfRange},
		{"negative cost", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": -1}`, ReasonOutOfRange},
		{"absurd cost", topic, `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 1e12}`, ReasonOutOfRange},
		{"absurd power", topic, obj(`, "peak_power_kw": 5000`), ReasonOutOfRange},
		{"SoC above 100", topic, obj(`, "end_soc_percent": 100.1`), ReasonOutOfRange},
		{"negative SoC", topic, obj(`, "start_soc_percent": -1`), ReasonOutOfRange},
		{"negative tariff", topic, obj(`, "tariff_cents_per_kwh": -3`), ReasonOutOfRange},
		{"timestamp 1990", topic, obj(`, "timestamp": 631152000`), ReasonOutOfRange},
		{"timestamp string 2150", topic, obj(`, "timestamp": "2150-01-01 00:00:00"`), ReasonOutOfRange},
		{"started_at 1970", topic, obj(`, "started_at": "1970-01-01T00:00:00Z", "ended_at": "2024-01-01T00:00:00Z"`), ReasonOutOfRange},
		// Found in review (issue 10): each was accepted, some stored a value nobody sent.
		{"trailing brace", topic, obj("") + `}`, ReasonBadJSON},
		{"trailing bracket", topic, obj("") + ` ]`, ReasonBadJSON},
		{"energy key twice, case differs", topic, obj(`, "energy_delivered_in_kwh": 9999`), ReasonBadJSON},
		{"key twice, same case", topic, obj(`, "session_cost_in_cents": 1`), ReasonBadJSON},
		{"key twice through an escape", topic, obj(`, "session_cost_in_\u0063ents": 1`), ReasonBadJSON},
		{"key twice through Kelvin sign", topic, obj(`, "energy_delivered_in_KWh": 9999`), ReasonBadJSON},
		{"started_at without ended_at", topic, obj(`, "started_at": "2024-01-01T10:00:00Z"`), ReasonMissingField},
		{"started_at with timestamp only", topic, obj(`, "started_at": "2024-01-01T10:00:00Z", "timestamp": 1704099600`), ReasonMissingField},
		{"ended before started by 1ms", topic, obj(`, "started_at": "2024-01-01T10:00:00.001Z", "ended_at": "2024-01-01T10:00:00Z"`), ReasonOutOfRange},
		{"session_id float fraction above 2^52", "charger/1/connector/1/session/4503599627370497", `{"session_id": 4503599627370497.5, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"session_id float beyond 2^53", "charger/1/connector/1/session/9007199254740992", `{"session_id": 9007199254740993.0, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"session_id exponent fraction", topic, `{"session_id": 15e-1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"session_id huge exponent", topic, `{"session_id": 1e999999999, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`, ReasonWrongType},
		{"charger_id float fraction above 2^52", topic, obj(`, "charger_id": 4503599627370497.5`), ReasonWrongType},
		{"connector_id fractional", topic, obj(`, "connector_id": 1.5`), ReasonWrongType},
		{"invalid UTF-8 in power_class", topic, obj(`, "power_class": "AC` + "\xff" + `11"`), ReasonBadJSON},
		{"invalid UTF-8 in an unknown key", topic, obj(`, "note` + "\xc3" + `": 1`), ReasonBadJSON},
		{"lone surrogate in power_class", topic, obj(`, "power_class": "AC\ud800"`), ReasonOutOfRange},
		{"ended before started", topic, obj(`, "started_at": "2024-01-01T10:00:00Z", "ended_at": "2024-01-01T09:00:00Z"`), ReasonOutOfRange},
		{"power_class too long", topic, obj(`, "power_class": "AAAAAAAAAAAAAAAAAAAA"`), ReasonOutOfRange},
		{"power_class with $", topic, obj(`, "power_class": "$where"`), ReasonOutOfRange},
		{"session_id differs from topic", "charger/1/connector/1/session/2", obj(""), ReasonTopicMismatch},
		{"charger_id differs from topic", topic, obj(`, "charger_id": "2"`), ReasonTopicMismatch},
		{"numeric charger_id differs", topic, obj(`, "charger_id": 2`), ReasonTopicMismatch},
		{"connector_id differs from topic", topic, obj(`, "connector_id": 2`), ReasonTopicMismatch},
		{"topic too short", "session/1", obj(""), ReasonBadTopic},
		{"topic wrong words", "charger/1/plug/1/session/1", obj(""), ReasonBadTopic},
		{"topic connector not a number", "charger/1/connector/x/session/1", obj(""), ReasonBadTopic},
		{"topic session negative", "charger/1/connector/1/session/-1", obj(""), ReasonBadTopic},
		{"topic charger bad chars", "charger/a$b/connector/1/session/1", obj(""), ReasonBadTopic},
		{"topic charger empty", "charger//connector/1/session/1", obj(""), ReasonBadTopic},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Decode(c.topic, []byte(c.payload))
			if err == nil {
				t.Fatalf("accepted %s on %s: %+v", c.payload, c.topic, s)
			}
			var re *RejectError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RejectError", err)
			}
			if got := ReasonOf(err); got != c.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
			}
			if !strings.HasPrefix(err.Error(), string(c.reason)+": ") {
				t.Fatalf("error %q does not start with its reason", err)
			}
		})
	}
}

func TestReasonOf(t *testing.T) {
	if got := ReasonOf(errors.New("plain")); got != "" {
		t.Fatalf("ReasonOf(plain) = %q", got)
	}
	wrapped := errors.Join(errors.New("context"), reject(ReasonOversized, "%d bytes", 70000))
	if got := ReasonOf(wrapped); got != ReasonOversized {
		t.Fatalf("ReasonOf(wrapped) = %q", got)
	}
	seen := map[Reason]bool{}
	for _, r := range Reasons {
		if seen[r] || r == "" {
			t.Fatalf("Reasons has %q twice or empty", r)
		}
		seen[r] = true
	}
}

func TestValidate(t *testing.T) {
	s := fullSession()
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate(full): %v", err)
	}
	bad := []func(*Session){
		func(s *Session) { s.EnergyKWh = math.NaN() },
		func(s *Session) { s.SessionID = -1 },
		func(s *Session) { s.SessionID = 1 << 53 },
		func(s *Session) { s.ChargerID = "" },
		func(s *Session) { s.ChargerID = strings.Repeat("x", MaxChargerIDLen+1) },
		func(s *Session) { s.EndedAt = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC) },
		func(s *Session) { s.BatteryKWh = MaxEnergyKWh + 1 },
		func(s *Session) { s.SessionFeeCents = -1 },
	}
	for i, mut := range bad {
		c := fullSession()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: Validate accepted %+v", i, c)
		}
	}
}

func TestKeyAndEnd(t *testing.T) {
	s := fullSession()
	if got, want := s.Key(), "17/2/1748781015123456"; got != want {
		t.Fatalf("Key = %q, want %q", got, want)
	}
	if got := s.End(); !got.Equal(s.EndedAt) {
		t.Fatalf("End = %s, want ended_at %s", got, s.EndedAt)
	}
	s.EndedAt = time.Time{}
	if got := s.End(); !got.Equal(time.Unix(s.Timestamp, 0)) {
		t.Fatalf("End without ended_at = %s, want timestamp", got)
	}
	s.Timestamp = 0
	if got := s.End(); !got.IsZero() {
		t.Fatalf("End without either = %s, want zero", got)
	}
}

// Whatever power_class a client sent must re-encode to JSON that parsers read back.
func TestAppendJSONStringEscapes(t *testing.T) {
	for _, in := range []string{"", "DC150", `q"uote\back`, "tab\tnl\nret\r", "\x00\x01\x07\x1f\x7f", "é€😀", "\u2028", "bad\xffutf8\xc3"} {
		enc := appendJSONString(nil, in)
		var out string
		if err := json.Unmarshal(enc, &out); err != nil {
			t.Fatalf("%q encodes to %s: %v", in, enc, err)
		}
		want := strings.ToValidUTF8(in, "\ufffd")
		if out != want {
			t.Fatalf("%q encodes to %s, decodes to %q", in, enc, out)
		}
	}
	if got := string(appendJSONString(nil, "AC22")); got != `"AC22"` {
		t.Fatalf("plain string encodes to %s", got)
	}
}

func TestDecodeKeepsMilliseconds(t *testing.T) {
	s, err := Decode("charger/1/connector/1/session/1", []byte(`{"session_id": 1, "energy_delivered_in_kWh": 30, `+
		`"duration_in_seconds": 45, "session_cost_in_cents": 70, "started_at": "2024-01-01T01:00:00.123456789+01:00", "ended_at": "2024-01-01T00:01:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2024, 1, 1, 0, 0, 0, 123_000_000, time.UTC); !s.StartedAt.Equal(want) || s.StartedAt.Location() != time.UTC {
		t.Fatalf("started_at = %s, want %s", s.StartedAt, want)
	}
}

func TestParseIntegerExact(t *testing.T) {
	ok := map[string]int64{"0": 0, "7": 7, "7.0": 7, "7.000e0": 7, "70e-1": 7, "0.07e2": 7, "1e15": 1e15,
		"9007199254740991": 9007199254740991, "9007199254740991.0": 9007199254740991, "4503599627370497.0": 4503599627370497,
		"0.0": 0, "0e5": 0}
	for n, want := range ok {
		if got, err := parseInteger(json.Number(n)); err != nil || got != want {
			t.Errorf("parseInteger(%s) = %d, %v; want %d", n, got, err, want)
		}
	}
	for _, n := range []string{"-1", "-0.0", "7.5", "0.5", "4503599627370497.5", "9007199254740991.4", "9007199254740992",
		"9007199254740992.0", "1e16", "1e-1", "15e-1", "1e999999999", "1e-999999999", "12345678901234567890"} {
		if got, err := parseInteger(json.Number(n)); err == nil {
			t.Errorf("parseInteger(%s) = %d, want an error", n, got)
		}
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…"},
		{"aé", 2, "a…"},   // é is 2 bytes: not cut in half
		{"a€b", 3, "a…"},  // € is 3 bytes
		{"a€b", 4, "a€…"}, //
		{"a\xffb", 5, "a\uFFFDb"},
	} {
		got := TruncateUTF8(c.in, c.n)
		if got != c.want {
			t.Errorf("TruncateUTF8(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	s := fullSession()
	topic := NewTopicBuilder("").Topic(s.ChargerID, s.ConnectorID, s.SessionID)
	payload := s.AppendJSON(nil)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(topic, payload); err != nil {
			b.Fatal(err)
		}
	}
}
