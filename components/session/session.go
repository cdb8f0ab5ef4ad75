// Package session is the charging-session record: the wire payload of the original challenge
// (session_id, energy_delivered_in_kWh, duration_in_seconds, session_cost_in_cents, timestamp)
// extended with what a real session record carries, its codec, validation, topics and the
// deterministic key that makes storage idempotent.
package session

import (
	"strconv"
	"time"
)

// Session is one completed charging session. JSON names are the wire format; BSON names are
// the stored document, kept identical so a stored document reads like the payload.
type Session struct {
	// Original contract.
	SessionID       int64   `json:"session_id" bson:"session_id"`
	EnergyKWh       float64 `json:"energy_delivered_in_kWh" bson:"energy_delivered_in_kWh"`
	DurationSeconds float64 `json:"duration_in_seconds" bson:"duration_in_seconds"`
	CostCents       float64 `json:"session_cost_in_cents" bson:"session_cost_in_cents"`
	// Timestamp is the session end in Unix seconds (the contract's optional `timestamp`).
	Timestamp int64 `json:"timestamp,omitempty" bson:"timestamp,omitempty"`

	// Extensions. Zero values mean "not sent" (clients of the original contract omit them).
	ChargerID         string    `json:"charger_id,omitempty" bson:"charger_id"`
	ConnectorID       int       `json:"connector_id,omitempty" bson:"connector_id"`
	StartedAt         time.Time `json:"started_at,omitzero" bson:"started_at,omitempty"`
	EndedAt           time.Time `json:"ended_at,omitzero" bson:"ended_at,omitempty"`
	PowerClass        string    `json:"power_class,omitempty" bson:"power_class,omitempty"`
	PeakPowerKW       float64   `json:"peak_power_kw,omitempty" bson:"peak_power_kw,omitempty"`
	BatteryKWh        float64   `json:"battery_kwh,omitempty" bson:"battery_kwh,omitempty"`
	StartSoCPercent   float64   `json:"start_soc_percent,omitempty" bson:"start_soc_percent,omitempty"`
	EndSoCPercent     float64   `json:"end_soc_percent,omitempty" bson:"end_soc_percent,omitempty"`
	TariffCentsPerKWh float64   `json:"tariff_cents_per_kwh,omitempty" bson:"tariff_cents_per_kwh,omitempty"`
	SessionFeeCents   float64   `json:"session_fee_cents,omitempty" bson:"session_fee_cents,omitempty"`
}

// Key is the deterministic identity of a session: the same session delivered twice (QoS 1
// redelivery, replay, two listeners) maps to the same document `_id`, so it is stored once.
func Key(chargerID string, connectorID int, sessionID int64) string {
	b := make([]byte, 0, len(chargerID)+24)
	b = append(b, chargerID...)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(connectorID), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, sessionID, 10)
	return string(b)
}

// Key returns the session's document key.
func (s *Session) Key() string { return Key(s.ChargerID, s.ConnectorID, s.SessionID) }

// End returns when the session ended: EndedAt, else Timestamp, else the zero time.
func (s *Session) End() time.Time {
	if !s.EndedAt.IsZero() {
		return s.EndedAt
	}
	if s.Timestamp != 0 {
		return time.Unix(s.Timestamp, 0).UTC()
	}
	return time.Time{}
}
