package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Reason classifies why a message was rejected; it is a metric label and a stored field, so
// the set is small and fixed.
type Reason string

// Rejection reasons.
const (
	ReasonBadJSON       Reason = "bad_json"
	ReasonWrongType     Reason = "wrong_type"
	ReasonMissingField  Reason = "missing_field"
	ReasonOutOfRange    Reason = "out_of_range"
	ReasonOversized     Reason = "oversized"
	ReasonBadTopic      Reason = "bad_topic"
	ReasonTopicMismatch Reason = "topic_mismatch"
	// ReasonStoreRefused: the session decoded, but the store refused the document for good
	// (a validator, a server-side limit); the store's message is the detail.
	ReasonStoreRefused Reason = "store_refused"
)

// Reasons lists every rejection reason (for pre-declaring metric series).
var Reasons = []Reason{ReasonBadJSON, ReasonWrongType, ReasonMissingField, ReasonOutOfRange,
	ReasonOversized, ReasonBadTopic, ReasonTopicMismatch, ReasonStoreRefused}

// RejectError is returned for input that can never be stored.
type RejectError struct {
	Reason Reason
	Detail string
}

func (e *RejectError) Error() string { return string(e.Reason) + ": " + e.Detail }

func reject(r Reason, format string, args ...any) error {
	return &RejectError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the rejection reason of err, or "" if err is not a rejection.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// Limits for values that cannot come from a real charging session. They are generous on
// purpose: the contract's own sample (30 kWh in 45 s) is not physical and must be accepted.
const (
	MaxEnergyKWh       = 10_000
	MaxDurationSeconds = 7 * 24 * 3600
	MaxCostCents       = 10_000_000
	MaxPowerKW         = 2_000
	maxJSONSafeInt     = 1<<53 - 1
)

var (
	minTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// wire is the lenient decoding shape. encoding/json matches keys case-insensitively, which is
// exactly how `energy_delivered_in_kwh` (lower case) reaches EnergyKWh. It also means two keys
// differing only in case land in one field, the last silently winning: Decode refuses that
// (checkKeys) before it decodes.
type wire struct {
	SessionID         json.Number     `json:"session_id"`
	EnergyKWh         *float64        `json:"energy_delivered_in_kWh"`
	DurationSeconds   *float64        `json:"duration_in_seconds"`
	CostCents         *float64        `json:"session_cost_in_cents"`
	Timestamp         json.RawMessage `json:"timestamp"`
	ChargerID         json.RawMessage `json:"charger_id"`
	ConnectorID       json.RawMessage `json:"connector_id"`
	StartedAt         *time.Time      `json:"started_at"`
	EndedAt           *time.Time      `json:"ended_at"`
	PowerClass        string          `json:"power_class"`
	PeakPowerKW       float64         `json:"peak_power_kw"`
	BatteryKWh        float64         `json:"battery_kwh"`
	StartSoCPercent   float64         `json:"start_soc_percent"`
	EndSoCPercent     float64         `json:"end_soc_percent"`
	TariffCentsPerKWh float64         `json:"tariff_cents_per_kwh"`
	SessionFeeCents   float64         `json:"session_fee_cents"`
}

// Decode parses and validates one message. The topic supplies charger, connector and session
// IDs; where the payload repeats them they must agree. Every error is a *RejectError.
func Decode(topic string, payload []byte) (Session, error) {
	var s Session
	ids, err := ParseTopic(topic)
	if err != nil {
		return s, reject(ReasonBadTopic, "%v", err)
	}
	// encoding/json replaces invalid UTF-8 with U+FFFD without a word: the session would be
	// stored with a value nobody sent. Invalid UTF-8 is invalid JSON (RFC 8259 §8.1).
	if !utf8.Valid(payload) {
		return s, reject(ReasonBadJSON, "invalid UTF-8 at byte %d", invalidUTF8At(payload))
	}
	// Unmarshal (unlike a Decoder) checks the whole input is one JSON value before decoding:
	// `{...}}` and `{...}]` are syntax errors, not an object followed by garbage.
	var w wire
	err = json.Unmarshal(payload, &w)
	if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
		return s, reject(ReasonBadJSON, "%v", err)
	}
	// The payload is valid JSON from here on (checkKeys relies on it).
	if kerr := checkKeys(payload); kerr != nil {
		return s, kerr
	}
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return s, reject(ReasonWrongType, "field %q: got JSON %s, want %s", te.Field, te.Value, te.Type)
		}
		return s, reject(ReasonBadJSON, "%v", err)
	}
	if err := w.into(&s, ids); err != nil {
		return s, err
	}
	return s, s.Validate()
}

func (w *wire) into(s *Session, ids TopicIDs) error {
	switch {
	case w.SessionID == "":
		return reject(ReasonMissingField, "session_id is required")
	case w.EnergyKWh == nil:
		return reject(ReasonMissingField, "energy_delivered_in_kWh is required")
	case w.DurationSeconds == nil:
		return reject(ReasonMissingField, "duration_in_seconds is required")
	case w.CostCents == nil:
		return reject(ReasonMissingField, "session_cost_in_cents is required")
	}
	id, err := parseInteger(w.SessionID)
	if err != nil {
		return reject(ReasonWrongType, "session_id: %v", err)
	}
	if id != ids.SessionID {
		return reject(ReasonTopicMismatch, "session_id %d does not match topic session %d", id, ids.SessionID)
	}
	s.SessionID = id
	s.EnergyKWh, s.DurationSeconds, s.CostCents = *w.EnergyKWh, *w.DurationSeconds, *w.CostCents

	if len(w.ChargerID) > 0 && string(w.ChargerID) != "null" {
		cid, err := chargerIDOf(w.ChargerID)
		if err != nil {
			return reject(ReasonWrongType, "charger_id: %v", err)
		}
		if cid != ids.ChargerID {
			return reject(ReasonTopicMismatch, "charger_id %q does not match topic charger %q", cid, ids.ChargerID)
		}
	}
	if len(w.ConnectorID) > 0 && string(w.ConnectorID) != "null" {
		// Floats are accepted when integral (1.0), like every other ID; strings are not.
		var n json.Number
		if w.ConnectorID[0] == '"' || json.Unmarshal(w.ConnectorID, &n) != nil {
			return reject(ReasonWrongType, "connector_id: want an integer, got %s", truncate(w.ConnectorID, 32))
		}
		conn, err := parseInteger(n)
		if err != nil {
			return reject(ReasonWrongType, "connector_id: %v", err)
		}
		if conn != int64(ids.ConnectorID) {
			return reject(ReasonTopicMismatch, "connector_id %d does not match topic connector %d", conn, ids.ConnectorID)
		}
	}
	s.ChargerID, s.ConnectorID = ids.ChargerID, ids.ConnectorID

	if len(w.Timestamp) > 0 && string(w.Timestamp) != "null" {
		ts, err := parseTimestamp(w.Timestamp)
		if err != nil {
			return err
		}
		s.Timestamp = ts
	}
	// Milliseconds are the wire precision (AppendJSON) and BSON's: finer digits would not
	// survive a re-encode or a store round trip, so they are dropped here, once.
	if w.StartedAt != nil {
		s.StartedAt = w.StartedAt.UTC().Truncate(time.Millisecond)
	}
	if w.EndedAt != nil {
		s.EndedAt = w.EndedAt.UTC().Truncate(time.Millisecond)
	}
	// Without ended_at the end is derived (timestamp or receive time) and could fall before the
	// given start: a session that ends before it starts. Refused rather than guessed.
	if w.StartedAt != nil && w.EndedAt == nil {
		return reject(ReasonMissingField, "started_at given without ended_at")
	}
	s.PowerClass = w.PowerClass
	s.PeakPowerKW, s.BatteryKWh = w.PeakPowerKW, w.BatteryKWh
	s.StartSoCPercent, s.EndSoCPercent = w.StartSoCPercent, w.EndSoCPercent
	s.TariffCentsPerKWh, s.SessionFeeCents = w.TariffCentsPerKWh, w.SessionFeeCents
	return nil
}

// parseInteger accepts 7 and 7.0 but not 7.5, and stays within what JSON clients read exactly.
// The decimal text is examined digit by digit: above 2^52 a float64 cannot hold a fraction, so
// converting first would turn 4503599627370497.5 into an integer nobody sent.
func parseInteger(n json.Number) (int64, error) {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		if i < 0 || i > maxJSONSafeInt {
			return 0, fmt.Errorf("%d out of range 0..2^53-1", i)
		}
		return i, nil
	}
	i, ok := exactInteger(string(n))
	if !ok {
		return 0, fmt.Errorf("%s is not an integer in 0..2^53-1", truncate([]byte(n), 40))
	}
	return i, nil
}

// exactInteger reads a JSON number (syntax already checked) as an integer in 0..2^53-1, exactly:
// digits, optional fraction, optional exponent; it fails when any fraction digit survives.
func exactInteger(n string) (int64, bool) {
	if n == "" || n[0] == '-' {
		// -0 and -0.0 are integral, but negative IDs are out of range anyway.
		return 0, false
	}
	mant, exp := n, 0
	if e := strings.IndexAny(n, "eE"); e >= 0 {
		mant = n[:e]
		x, err := strconv.Atoi(n[e+1:])
		if err != nil || x > 1000 || x < -1000 {
			// Far beyond 2^53 either way; zero mantissas are the only integral case, and a
			// huge exponent of zero is not worth accepting.
			return 0, false
		}
		exp = x
	}
	intPart, frac := mant, ""
	if d := strings.IndexByte(mant, '.'); d >= 0 {
		intPart, frac = mant[:d], mant[d+1:]
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	point := len(intPart) + exp - (len(intPart+frac) - len(digits)) // digits before the point
	if digits == "" {
		return 0, true
	}
	if point < len(digits) {
		if point < 0 || strings.Trim(digits[point:], "0") != "" {
			return 0, false // a fraction digit is not zero
		}
		digits = digits[:point]
	}
	if point > 16 { // 2^53 has 16 digits
		return 0, false
	}
	digits += strings.Repeat("0", point-len(digits))
	i, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || i > maxJSONSafeInt {
		return 0, false
	}
	return i, true
}

func chargerIDOf(raw json.RawMessage) (string, error) {
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("want a string or integer, got %s", truncate(raw, 32))
	}
	i, err := parseInteger(n)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(i, 10), nil
}

// Timestamp layouts accepted as strings; the contract's is first. Strings without a zone are UTC.
var timestampLayouts = []string{"2006-01-02 15:04:05", time.RFC3339Nano, "2006-01-02T15:04:05"}

func parseTimestamp(raw json.RawMessage) (int64, error) {
	var t time.Time
	if raw[0] == '"' {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return 0, reject(ReasonWrongType, "timestamp: %v", err)
		}
		var err error
		for _, layout := range timestampLayouts {
			if t, err = time.ParseInLocation(layout, str, time.UTC); err == nil {
				break
			}
		}
		if err != nil {
			return 0, reject(ReasonWrongType, "timestamp %q: want Unix seconds or \"YYYY-MM-DD HH:MM:SS\"", truncate(raw, 40))
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return 0, reject(ReasonWrongType, "timestamp %s: want Unix seconds or \"YYYY-MM-DD HH:MM:SS\"", truncate(raw, 40))
		}
		f, err := n.Float64()
		if err != nil {
			return 0, reject(ReasonWrongType, "timestamp %s: %v", n, err)
		}
		if f < float64(minTime.Unix()) || f > float64(maxTime.Unix()) {
			return 0, reject(ReasonOutOfRange, "timestamp %s outside 2000..2100", n)
		}
		t = time.Unix(int64(f), 0)
	}
	if t.Before(minTime) || !t.Before(maxTime) {
		return 0, reject(ReasonOutOfRange, "timestamp %s outside 2000..2100", t.Format(time.RFC3339))
	}
	return t.Unix(), nil
}

// truncate shortens b for an error detail without cutting a UTF-8 character in two.
func truncate(b []byte, n int) string {
	return TruncateUTF8(string(b), n)
}

// TruncateUTF8 returns s cut to at most n bytes at a character boundary, with "…" appended when
// it was cut. Invalid UTF-8 in the kept part becomes U+FFFD: the result is stored and logged
// as a string, and BSON and JSON strings are UTF-8.
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	cut := n
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "\uFFFD") + "…"
}

// invalidUTF8At returns the offset of the first byte of b that is not valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// Validate checks values a real session can have. Physical consistency between fields is the
// publisher's business (it is tested there); the listener only refuses the impossible.
func (s *Session) Validate() error {
	checks := []struct {
		name   string
		v, max float64
	}{
		{"energy_delivered_in_kWh", s.EnergyKWh, MaxEnergyKWh},
		{"duration_in_seconds", s.DurationSeconds, MaxDurationSeconds},
		{"session_cost_in_cents", s.CostCents, MaxCostCents},
		{"peak_power_kw", s.PeakPowerKW, MaxPowerKW},
		{"battery_kwh", s.BatteryKWh, MaxEnergyKWh},
		{"start_soc_percent", s.StartSoCPercent, 100},
		{"end_soc_percent", s.EndSoCPercent, 100},
		{"tariff_cents_per_kwh", s.TariffCentsPerKWh, 100_000},
		{"session_fee_cents", s.SessionFeeCents, MaxCostCents},
	}
	for _, c := range checks {
		if c.v < 0 || c.v > c.max || math.IsNaN(c.v) {
			return reject(ReasonOutOfRange, "%s %g outside 0..%g", c.name, c.v, c.max)
		}
	}
	if s.SessionID < 0 || s.SessionID > maxJSONSafeInt {
		return reject(ReasonOutOfRange, "session_id %d outside 0..2^53-1", s.SessionID)
	}
	if !ValidChargerID(s.ChargerID) {
		return reject(ReasonBadTopic, "charger id %q", s.ChargerID)
	}
	for _, t := range []struct {
		name string
		t    time.Time
	}{{"started_at", s.StartedAt}, {"ended_at", s.EndedAt}} {
		if !t.t.IsZero() && (t.t.Before(minTime) || !t.t.Before(maxTime)) {
			return reject(ReasonOutOfRange, "%s %s outside 2000..2100", t.name, t.t.Format(time.RFC3339))
		}
	}
	if !s.StartedAt.IsZero() && !s.EndedAt.IsZero() && s.EndedAt.Before(s.StartedAt) {
		return reject(ReasonOutOfRange, "ended_at before started_at")
	}
	// U+FFFD: what encoding/json makes of a lone surrogate escape (\ud800); no power class has it.
	if len(s.PowerClass) > 16 || strings.ContainsAny(s.PowerClass, "\x00$\uFFFD") || !utf8.ValidString(s.PowerClass) {
		return reject(ReasonOutOfRange, "power_class %q", truncate([]byte(s.PowerClass), 16))
	}
	return nil
}

// timeLayout is RFC 3339 with millisecond precision: fixed width, sortable, what JS parses.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// AppendJSON appends the wire form of s to dst. It is hand-written because the publisher
// encodes every session of a million-charger fleet: no reflection, no allocation beyond dst.
func (s *Session) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"session_id":`...)
	dst = strconv.AppendInt(dst, s.SessionID, 10)
	dst = appendFloat(dst, `,"energy_delivered_in_kWh":`, s.EnergyKWh)
	dst = appendFloat(dst, `,"duration_in_seconds":`, s.DurationSeconds)
	dst = appendFloat(dst, `,"session_cost_in_cents":`, s.CostCents)
	if s.Timestamp != 0 {
		dst = append(dst, `,"timestamp":`...)
		dst = strconv.AppendInt(dst, s.Timestamp, 10)
	}
	if s.ChargerID != "" {
		// Charger IDs are restricted to [A-Za-z0-9_.-]: no escaping needed.
		dst = append(dst, `,"charger_id":"`...)
		dst = append(dst, s.ChargerID...)
		dst = append(dst, '"')
	}
	if s.ConnectorID != 0 {
		dst = append(dst, `,"connector_id":`...)
		dst = strconv.AppendInt(dst, int64(s.ConnectorID), 10)
	}
	dst = appendTime(dst, `,"started_at":`, s.StartedAt)
	dst = appendTime(dst, `,"ended_at":`, s.EndedAt)
	if s.PowerClass != "" {
		dst = append(dst, `,"power_class":`...)
		dst = appendJSONString(dst, s.PowerClass)
	}
	dst = appendOptFloat(dst, `,"peak_power_kw":`, s.PeakPowerKW)
	dst = appendOptFloat(dst, `,"battery_kwh":`, s.BatteryKWh)
	dst = appendOptFloat(dst, `,"start_soc_percent":`, s.StartSoCPercent)
	dst = appendOptFloat(dst, `,"end_soc_percent":`, s.EndSoCPercent)
	dst = appendOptFloat(dst, `,"tariff_cents_per_kwh":`, s.TariffCentsPerKWh)
	dst = appendOptFloat(dst, `,"session_fee_cents":`, s.SessionFeeCents)
	return append(dst, '}')
}

func appendFloat(dst []byte, key string, v float64) []byte {
	dst = append(dst, key...)
	return strconv.AppendFloat(dst, v, 'f', -1, 64)
}

func appendOptFloat(dst []byte, key string, v float64) []byte {
	if v == 0 {
		return dst
	}
	return appendFloat(dst, key, v)
}

func appendTime(dst []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return dst
	}
	dst = append(dst, key...)
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, timeLayout)
	return append(dst, '"')
}

// wireKeys are the JSON names of the wire fields, in declaration order.
var wireKeys = func() [][]byte {
	t := reflect.TypeFor[wire]()
	keys := make([][]byte, t.NumField())
	for i := range keys {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		keys[i] = []byte(name)
	}
	return keys
}()

// checkKeys refuses an object in which two top-level keys select the same wire field:
// encoding/json matches names case-insensitively (bytes.EqualFold) and keeps the last, so
// `"energy_delivered_in_kWh":1, "energy_delivered_in_kwh":9999` would store 9999 without a
// word. payload must be valid JSON. Unknown keys are ignored, as they are when decoding. It
// allocates nothing unless a key is escaped.
func checkKeys(payload []byte) error {
	var seen [32][]byte // key per wire field; wire has fewer than 32 fields
	depth, expectKey := 0, false
	for i := 0; i < len(payload); i++ {
		switch c := payload[i]; c {
		case '{':
			depth++
			expectKey = depth == 1
		case '[':
			depth++
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			end := i + 1
			for ; payload[end] != '"'; end++ {
				if payload[end] == '\\' {
					end++
				}
			}
			if expectKey {
				expectKey = false
				raw := payload[i : end+1]
				key := raw[1 : len(raw)-1]
				if bytes.IndexByte(key, '\\') >= 0 {
					var k string
					if err := json.Unmarshal(raw, &k); err != nil {
						return reject(ReasonBadJSON, "key %s: %v", truncate(raw, 40), err)
					}
					key = []byte(k)
				}
				if f := wireField(key); f >= 0 {
					if seen[f] != nil {
						return reject(ReasonBadJSON, "keys %q and %q both set %s (keys match case-insensitively): ambiguous",
							truncate(seen[f], 40), truncate(key, 40), wireKeys[f])
					}
					seen[f] = key
				}
			}
			i = end
		}
	}
	return nil
}

// wireField returns the index of the wire field encoding/json would fill from key, or -1.
func wireField(key []byte) int {
	for i, k := range wireKeys {
		if bytes.Equal(k, key) {
			return i
		}
	}
	for i, k := range wireKeys {
		if bytes.EqualFold(k, key) {
			return i
		}
	}
	return -1
}
