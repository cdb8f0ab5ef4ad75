package restapi

import (
	"context"
	"errors"
	"net/http"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/store"
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
	// An audit scans its window: under the route guard (and, without indexes, the one-scan-at-
	// a-time guard), uncached because it answers "is everything stored now".
	s.serveRead(w, r, routeAudit, "", func(ctx context.Context, st *store.Store) (any, string, error) {
		rep, err := audit.Run(ctx, st, win)
		if errors.Is(err, audit.ErrTooLarge) {
			return nil, "", errAuditTooLarge
		}
		return rep, "", err
	})
}

// errAuditTooLarge is answered by writeStoreError as a 400 on "to".
var errAuditTooLarge = errors.New("the window holds too many sessions: audit a shorter window or one charger")
