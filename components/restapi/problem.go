package restapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/chargesim/chargesim/components/store"
)

// Problem is an RFC 9457 problem details object (application/problem+json).
type Problem struct {
	Type          string         `json:"type"`
	Title         string         `json:"title"`
	Status        int            `json:"status"`
	Detail        string         `json:"detail"`
	InvalidParams []InvalidParam `json:"invalid_params,omitempty"`
}

// InvalidParam names one bad request parameter and why it was refused.
type InvalidParam struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Problem types. Errors that HTTP's status already describes use about:blank (RFC 9457
// §4.2.1); a bad parameter has its own type because it carries invalid_params.
const (
	problemBlank         = "about:blank"
	problemInvalidParams = "urn:chargesim:problem:invalid-parameters"
)

const problemContentType = "application/problem+json"

// statusClientClosedRequest is recorded when the client disconnects before the answer.
const statusClientClosedRequest = 499

func writeProblem(w http.ResponseWriter, p Problem) {
	if p.Type == "" {
		p.Type = problemBlank
	}
	if p.Title == "" {
		p.Title = http.StatusText(p.Status)
	}
	w.Header().Set("Content-Type", problemContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeInvalidParams(w http.ResponseWriter, params []InvalidParam) {
	detail := "invalid parameter " + params[0].Name + ": " + params[0].Reason
	if len(params) > 1 {
		detail = "invalid parameters; see invalid_params"
	}
	writeProblem(w, Problem{
		Type:          problemInvalidParams,
		Title:         "Invalid request parameters",
		Status:        http.StatusBadRequest,
		Detail:        detail,
		InvalidParams: params,
	})
}

func writeNotFound(w http.ResponseWriter, detail string) {
	writeProblem(w, Problem{Status: http.StatusNotFound, Detail: detail})
}

// writeStoreError answers a failed store call: 503 when the database cannot be reached in
// time (a client may retry), 500 for anything else. The error itself is logged, not sent:
// it may name hosts and internals.
func (s *Server) writeStoreError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The client went away: nobody reads the answer and nothing failed. 499 (nginx's
		// "client closed request") keeps these out of the 5xx error rate.
		s.log.Debug("client closed the request", "path", r.URL.Path)
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	if errors.Is(err, errAuditTooLarge) {
		writeInvalidParams(w, []InvalidParam{{Name: "to", Reason: err.Error()}})
		return
	}
	if unavailable(err) {
		s.log.Warn("store unavailable", "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "5")
		writeProblem(w, Problem{Status: http.StatusServiceUnavailable, Detail: "the database is unavailable; retry later"})
		return
	}
	s.log.Error("store query failed", "path", r.URL.Path, "err", err)
	writeProblem(w, Problem{Status: http.StatusInternalServerError, Detail: "the database query failed"})
}

// unavailable reports whether err means the database could not be reached (down, network
// failure, timeout) rather than that it refused the query.
func unavailable(err error) bool { return store.Unavailable(err) }

func writeJSON(w http.ResponseWriter, log *slog.Logger, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		log.Error("encode response", "err", err)
		writeProblem(w, Problem{Status: http.StatusInternalServerError, Detail: "could not encode the response"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
