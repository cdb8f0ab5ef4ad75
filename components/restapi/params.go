package restapi

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// Limits of the listing endpoints.
const (
	DefaultLimit = 100
	MaxLimit     = store.MaxQueryLimit
	// ReadingsLimit is how many sessions GET /readings/ returns (the original contract's bound).
	ReadingsLimit = 1000
	// MaxConnectorID matches what session.ParseTopic accepts.
	MaxConnectorID = 1 << 16
)

// maxEchoLen bounds how much of a client's parameter name is echoed back in a problem.
const maxEchoLen = 64

// queryParams is a parsed query string that refuses anything the endpoint does not declare:
// an unknown name (including bracket forms like charger[$ne]), a repeated name, an empty
// value or a malformed escape is a 400 naming the parameter. Values are only ever converted
// to typed Go values here; raw strings never reach a database filter.
type queryParams struct {
	values map[string]string
	pos    map[string]int // first position of each name in the query string
	errs   []InvalidParam
}

func parseQuery(rawQuery string, allowed ...string) *queryParams {
	q := &queryParams{values: map[string]string{}, pos: map[string]int{}}
	seen := map[string]bool{}
	i := 0
	for pair := range strings.SplitSeq(rawQuery, "&") {
		if pair == "" {
			continue
		}
		i++
		rawKey, rawVal, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(rawKey)
		if err != nil {
			key = rawKey
		}
		if _, ok := q.pos[key]; !ok {
			q.pos[key] = i
		}
		if err != nil {
			q.fail(key, "malformed percent-encoding in the parameter name")
			continue
		}
		val, err := url.QueryUnescape(rawVal)
		if err != nil {
			q.fail(key, "malformed percent-encoding in the value")
			continue
		}
		switch {
		case !slices.Contains(allowed, key):
			if len(allowed) == 0 {
				q.fail(key, "unknown parameter: this endpoint takes none")
			} else {
				q.fail(key, "unknown parameter; allowed: "+strings.Join(allowed, ", "))
			}
		case seen[key]:
			q.fail(key, "given more than once")
		case val == "":
			q.fail(key, "must not be empty")
		default:
			q.values[key] = val
		}
		seen[key] = true
	}
	return q
}

func (q *queryParams) fail(name, reason string) {
	// One entry per name is enough to fix a request.
	for _, e := range q.errs {
		if e.Name == name {
			return
		}
	}
	q.errs = append(q.errs, InvalidParam{Name: name, Reason: reason})
}

// problems returns the refused parameters in the order the query string gives them, their
// names shortened for echoing.
func (q *queryParams) problems() []InvalidParam {
	slices.SortStableFunc(q.errs, func(a, b InvalidParam) int { return q.pos[a.Name] - q.pos[b.Name] })
	for i := range q.errs {
		if len(q.errs[i].Name) > maxEchoLen {
			q.errs[i].Name = q.errs[i].Name[:maxEchoLen] + "…"
		}
	}
	return q.errs
}

// intParam returns the integer value of name in [lo, hi], or def when absent.
func (q *queryParams) intParam(name string, def, lo, hi int) int {
	v, ok := q.values[name]
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		q.fail(name, "must be an integer from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
		return def
	}
	return n
}

// timeParam returns the RFC 3339 time value of name, or the zero time when absent.
func (q *queryParams) timeParam(name string) time.Time {
	v, ok := q.values[name]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		reason := "must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z"
		if strings.Contains(v, " ") {
			// A '+' of a zone offset arrives as a space unless it is escaped.
			reason += " (escape '+' in a zone offset as %2B)"
		}
		q.fail(name, reason)
		return time.Time{}
	}
	return t
}

// chargerParam returns the validated charger ID of name, or "" when absent.
func (q *queryParams) chargerParam(name string) string {
	v, ok := q.values[name]
	if !ok {
		return ""
	}
	if !session.ValidChargerID(v) {
		q.fail(name, "must be a charger ID: 1 to 64 of A-Z a-z 0-9 _ . -")
		return ""
	}
	return v
}

// sessionListParams are the parameters of GET /api/v1/sessions.
type sessionListParams struct {
	query store.SessionQuery
	limit int
}

var sessionListAllowed = []string{"charger", "connector", "from", "to", "cursor", "limit"}

func parseSessionList(rawQuery string) (sessionListParams, []InvalidParam) {
	q := parseQuery(rawQuery, sessionListAllowed...)
	var p sessionListParams
	p.query.ChargerID = q.chargerParam("charger")
	if _, ok := q.values["connector"]; ok {
		p.query.ConnectorID = q.intParam("connector", 0, 0, MaxConnectorID)
		p.query.HasConnector = true
	}
	p.query.From = q.timeParam("from")
	p.query.To = q.timeParam("to")
	if !p.query.From.IsZero() && !p.query.To.IsZero() && !p.query.From.Before(p.query.To) {
		q.fail("to", "must be later than from")
	}
	// Stored times have millisecond precision: a bound with finer digits is rounded up, so
	// ended_at >= from and ended_at < to keep meaning what the client asked (truncating `from`
	// would return a session ending before it).
	p.query.From, p.query.To = ceilMillisecond(p.query.From), ceilMillisecond(p.query.To)
	if v, ok := q.values["cursor"]; ok {
		c, err := decodeSessionCursor(v)
		if err != nil {
			q.fail("cursor", err.Error())
		} else {
			p.query.After = &c
		}
	}
	p.limit = q.intParam("limit", DefaultLimit, 1, MaxLimit)
	p.query.Limit = p.limit
	return p, q.problems()
}

// chargerListParams are the parameters of GET /api/v1/chargers.
type chargerListParams struct {
	after string
	limit int
}

func parseChargerList(rawQuery string) (chargerListParams, []InvalidParam) {
	q := parseQuery(rawQuery, "cursor", "limit")
	var p chargerListParams
	if v, ok := q.values["cursor"]; ok {
		id, err := decodeChargerCursor(v)
		if err != nil {
			q.fail("cursor", err.Error())
		}
		p.after = id
	}
	p.limit = q.intParam("limit", DefaultLimit, 1, MaxLimit)
	return p, q.problems()
}

// parseNoParams refuses every query parameter (endpoints that take none).
func parseNoParams(rawQuery string) []InvalidParam {
	return parseQuery(rawQuery).problems()
}

// SessionKey is the URL form of a session's document key charger/connector/session: the same
// parts joined by ':' (which charger IDs cannot contain), so it fits in one path segment.
func SessionKey(chargerID string, connectorID int, sessionID int64) string {
	return chargerID + ":" + strconv.Itoa(connectorID) + ":" + strconv.FormatInt(sessionID, 10)
}

// parseSessionKey accepts the URL form charger:connector:session and the document key
// charger/connector/session (its '/' escaped as %2F), and returns the document key.
func parseSessionKey(s string) (string, bool) {
	sep := ":"
	if !strings.Contains(s, sep) {
		sep = "/"
	}
	parts := strings.Split(s, sep)
	if len(parts) != 3 || !session.ValidChargerID(parts[0]) {
		return "", false
	}
	conn, err := strconv.Atoi(parts[1])
	if err != nil || conn < 0 || conn > MaxConnectorID || strconv.Itoa(conn) != parts[1] {
		return "", false
	}
	sid, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || sid < 0 || strconv.FormatInt(sid, 10) != parts[2] {
		return "", false
	}
	return session.Key(parts[0], conn, sid), true
}

// ceilMillisecond rounds t up to the next whole millisecond (zero stays zero).
func ceilMillisecond(t time.Time) time.Time {
	if r := t.Truncate(time.Millisecond); !r.Equal(t) {
		return r.Add(time.Millisecond)
	}
	return t
}
