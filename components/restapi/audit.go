package restapi

import (
	"errors"
	"net/http"

	"github.com/chargesim/chargesim/components/audit"
)

// auditSessions is GET /api/v1/audit?from=&to=[&charger=]: the audit of a window
// (components/audit) — what the simulation produced there against what is stored.
func (s *Server) auditSessions(w http.ResponseWriter, r *http.Request) {
	q := parseQuery(r.URL.RawQuery, "from", "to", "charger")
	var win audit.Window
	win.From, win.To = q.timeParam("from"), q.timeParam("to")
	for _, name := range []string{"from", "to"} {
		if _, ok := q.values[name]; !ok {
			q.fail(name, "required: the audit covers sessions that ended in [from, to)")
		}
	}
	if !win.From.IsZero() && !win.To.IsZero() && !win.From.Before(win.To) {
		q.fail("to", "must be later than from")
	}
	if v, ok := q.values["charger"]; ok {
		if _, err := audit.ParseCharger(v); err != nil {
			q.fail("charger", "must be a simulated charger ID: 1, 2, …")
		}
		win.Charger = v
	}
	if errs := q.problems(); len(errs) > 0 {
		writeInvalidParams(w, errs)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	rep, err := audit.Run(ctx, s.st, win)
	if errors.Is(err, audit.ErrTooLarge) {
		writeInvalidParams(w, []InvalidParam{{Name: "to", Reason: "the window holds too many sessions: audit a shorter window or one charger"}})
		return
	}
	if err != nil {
		s.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, s.log, http.StatusOK, rep)
}
