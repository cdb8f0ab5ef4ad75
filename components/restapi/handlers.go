package restapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// SessionView is a stored session as the API returns it: the original contract's fields
// (timestamp always present), the extensions, and the session's URL key.
type SessionView struct {
	ID                string     `json:"id"`
	SessionID         int64      `json:"session_id"`
	EnergyKWh         float64    `json:"energy_delivered_in_kWh"`
	DurationSeconds   float64    `json:"duration_in_seconds"`
	CostCents         float64    `json:"session_cost_in_cents"`
	Timestamp         int64      `json:"timestamp"`
	ChargerID         string     `json:"charger_id"`
	ConnectorID       int        `json:"connector_id"`
	StartedAt         *time.Time `json:"started_at,omitempty"`
	EndedAt           *time.Time `json:"ended_at,omitempty"`
	ReceivedAt        *time.Time `json:"received_at,omitempty"`
	PowerClass        string     `json:"power_class,omitempty"`
	PeakPowerKW       float64    `json:"peak_power_kw,omitempty"`
	BatteryKWh        float64    `json:"battery_kwh,omitempty"`
	StartSoCPercent   float64    `json:"start_soc_percent,omitempty"`
	EndSoCPercent     float64    `json:"end_soc_percent,omitempty"`
	TariffCentsPerKWh float64    `json:"tariff_cents_per_kwh,omitempty"`
	SessionFeeCents   float64    `json:"session_fee_cents,omitempty"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func newSessionView(d *store.SessionDoc) SessionView {
	s := &d.Session
	ts := s.Timestamp
	if ts == 0 {
		ts = s.End().Unix()
		if s.End().IsZero() {
			ts = 0
		}
	}
	return SessionView{
		ID:                SessionKey(s.ChargerID, s.ConnectorID, s.SessionID),
		SessionID:         s.SessionID,
		EnergyKWh:         s.EnergyKWh,
		DurationSeconds:   s.DurationSeconds,
		CostCents:         s.CostCents,
		Timestamp:         ts,
		ChargerID:         s.ChargerID,
		ConnectorID:       s.ConnectorID,
		StartedAt:         optTime(s.StartedAt),
		EndedAt:           optTime(s.EndedAt),
		ReceivedAt:        optTime(d.ReceivedAt),
		PowerClass:        s.PowerClass,
		PeakPowerKW:       s.PeakPowerKW,
		BatteryKWh:        s.BatteryKWh,
		StartSoCPercent:   s.StartSoCPercent,
		EndSoCPercent:     s.EndSoCPercent,
		TariffCentsPerKWh: s.TariffCentsPerKWh,
		SessionFeeCents:   s.SessionFeeCents,
	}
}

func sessionViews(docs []store.SessionDoc) []SessionView {
	out := make([]SessionView, len(docs))
	for i := range docs {
		out[i] = newSessionView(&docs[i])
	}
	return out
}

// SessionPage is one page of GET /api/v1/sessions.
type SessionPage struct {
	Items      []SessionView `json:"items"`
	NextCursor *string       `json:"next_cursor"`
}

// ChargerView is a charger's totals.
type ChargerView struct {
	ChargerID     string     `json:"charger_id"`
	Sessions      int64      `json:"sessions"`
	EnergyKWh     float64    `json:"energy_kwh"`
	CostCents     float64    `json:"cost_cents"`
	LastSessionAt *time.Time `json:"last_session_at"`
}

func newChargerView(c *store.ChargerTotals) ChargerView {
	return ChargerView{ChargerID: c.ChargerID, Sessions: c.Sessions, EnergyKWh: c.EnergyKWh,
		CostCents: c.CostCents, LastSessionAt: optTime(c.LastSessionAt)}
}

// ChargerPage is one page of GET /api/v1/chargers.
type ChargerPage struct {
	Items      []ChargerView `json:"items"`
	NextCursor *string       `json:"next_cursor"`
}

// StatsView is GET /api/v1/stats.
type StatsView struct {
	Sessions       int64      `json:"sessions"`
	EnergyKWh      float64    `json:"energy_kwh"`
	CostCents      float64    `json:"cost_cents"`
	Chargers       int64      `json:"chargers"`
	Rejected       int64      `json:"rejected"`
	FirstSessionAt *time.Time `json:"first_session_at"`
	LastSessionAt  *time.Time `json:"last_session_at"`
}

// HealthView is GET /health (the original contract: "database" is "up" or "down").
type HealthView struct {
	Status   string `json:"status"`
	Database string `json:"database"`
}

// healthTimeout bounds /health's ping: a health check must answer quickly even when the
// database does not.
const healthTimeout = 2 * time.Second

func (s *Server) readings(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	if s.serveSnapshot(w, r, false, func(sn *store.Snapshot) (any, string, bool) {
		body, ok := s.readingsBody(sn)
		return body, "", ok
	}) {
		return
	}
	s.serveRead(w, r, routeReadings, "/", func(ctx context.Context, st *store.Store) (any, string, error) {
		docs, _, err := st.FindSessions(ctx, store.SessionQuery{Limit: ReadingsLimit})
		if err != nil {
			return nil, "", err
		}
		return sessionViews(docs), "", nil
	})
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	w.Header().Set("Cache-Control", "no-store")
	if err := s.Ready(ctx); err != nil {
		s.log.Warn("health: database down", "err", err)
		writeJSON(w, s.log, http.StatusServiceUnavailable, HealthView{Status: "unavailable", Database: "down"})
		return
	}
	writeJSON(w, s.log, http.StatusOK, HealthView{Status: "ok", Database: "up"})
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	p, errs := parseSessionList(r.URL.RawQuery)
	if len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	if s.serveSnapshot(w, r, false, func(sn *store.Snapshot) (any, string, bool) {
		docs, more, ok := sn.Sessions(p.query)
		return newSessionPage(docs, more), "", ok
	}) {
		return
	}
	s.serveRead(w, r, routeSessions, r.URL.RawQuery, func(ctx context.Context, st *store.Store) (any, string, error) {
		docs, more, err := st.FindSessions(ctx, p.query)
		if err != nil {
			return nil, "", err
		}
		return newSessionPage(docs, more), "", nil
	})
}

func newSessionPage(docs []store.SessionDoc, more bool) SessionPage {
	page := SessionPage{Items: sessionViews(docs)}
	if more && len(docs) > 0 {
		last := docs[len(docs)-1]
		c := encodeSessionCursor(store.SessionCursor{EndedAt: last.EndedAt, ID: last.ID})
		page.NextCursor = &c
	}
	return page
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	raw := chi.URLParam(r, "key")
	key, ok := "", false
	if unescaped, err := url.PathUnescape(raw); err == nil {
		key, ok = parseSessionKey(unescaped)
	}
	if !ok {
		// A key that cannot exist is "not found", like any unknown resource; the detail
		// says what a key looks like.
		writeNotFound(w, "no session "+truncate(raw, 100)+": a session key is <charger>:<connector>:<session>, e.g. 17:1:42")
		return
	}
	// Not cached: a lookup by _id is cheap on every store, and a session just stored must be
	// visible at once.
	s.serveRead(w, r, routeSession, "", func(ctx context.Context, st *store.Store) (any, string, error) {
		doc, err := st.FindSession(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil, "no session " + truncate(raw, 100), nil
		}
		if err != nil {
			return nil, "", err
		}
		return newSessionView(&doc), "", nil
	})
}

func (s *Server) listChargers(w http.ResponseWriter, r *http.Request) {
	p, errs := parseChargerList(r.URL.RawQuery)
	if len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	if s.serveSnapshot(w, r, true, func(sn *store.Snapshot) (any, string, bool) {
		rows, more := sn.ListChargers(p.after, p.limit)
		return newChargerPage(rows, more), "", true
	}) {
		return
	}
	s.serveRead(w, r, routeChargers, r.URL.RawQuery, func(ctx context.Context, st *store.Store) (any, string, error) {
		rows, more, err := st.ListChargerTotals(ctx, p.after, p.limit)
		if err != nil {
			return nil, "", err
		}
		return newChargerPage(rows, more), "", nil
	})
}

func newChargerPage(rows []store.ChargerTotals, more bool) ChargerPage {
	page := ChargerPage{Items: make([]ChargerView, len(rows))}
	for i := range rows {
		page.Items[i] = newChargerView(&rows[i])
	}
	if more && len(rows) > 0 {
		c := encodeChargerCursor(rows[len(rows)-1].ChargerID)
		page.NextCursor = &c
	}
	return page
}

func (s *Server) getCharger(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	id := chi.URLParam(r, "id")
	if unescaped, err := url.PathUnescape(id); err == nil {
		id = unescaped
	}
	if !session.ValidChargerID(id) {
		writeNotFound(w, "no charger "+truncate(id, 100)+": a charger ID is 1 to 64 of A-Z a-z 0-9 _ . -")
		return
	}
	if s.serveSnapshot(w, r, true, func(sn *store.Snapshot) (any, string, bool) {
		t, err := sn.Charger(id)
		if err != nil {
			return nil, "no charger " + id + ": it has no stored session", true
		}
		return newChargerView(&t), "", true
	}) {
		return
	}
	s.serveRead(w, r, routeCharger, id, func(ctx context.Context, st *store.Store) (any, string, error) {
		t, err := st.ChargerTotals(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, "no charger " + id + ": it has no stored session", nil
		}
		if err != nil {
			return nil, "", err
		}
		return newChargerView(&t), "", nil
	})
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	if errs := parseNoParams(r.URL.RawQuery); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	if s.serveSnapshot(w, r, true, func(sn *store.Snapshot) (any, string, bool) {
		return newStatsView(&sn.Fleet), "", true
	}) {
		return
	}
	s.serveRead(w, r, routeStats, "/", func(ctx context.Context, st *store.Store) (any, string, error) {
		fs, err := st.FleetStats(ctx)
		if err != nil {
			return nil, "", err
		}
		return newStatsView(&fs), "", nil
	})
}

func newStatsView(fs *store.FleetStats) StatsView {
	return StatsView{
		Sessions: fs.Sessions, EnergyKWh: fs.EnergyKWh, CostCents: fs.CostCents,
		Chargers: fs.Chargers, Rejected: fs.Rejected,
		FirstSessionAt: optTime(fs.FirstSessionAt), LastSessionAt: optTime(fs.LastSessionAt),
	}
}
