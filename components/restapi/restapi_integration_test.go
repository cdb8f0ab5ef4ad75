//go:build integration

package restapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// apiEnv is the API served over real HTTP from a real FerretDB.
type apiEnv struct {
	db   *testenv.FerretDB
	st   *store.Store
	srv  *Server
	c    *apiClient
	base string
}

func startAPI(tb testing.TB) *apiEnv {
	tb.Helper()
	return startAPIWith(tb, 2*time.Second)
}

func startAPIWith(tb testing.TB, queryTimeout time.Duration) *apiEnv {
	tb.Helper()
	db := testenv.StartFerretDB(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, store.Config{URI: db.URI, Database: "apitest"}, "api-test")
	if err != nil {
		tb.Fatalf("connect store: %v", err)
	}
	srv, _ := newTestServerWith(tb, st, queryTimeout)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cli.ServeListener(sctx, slog.New(slog.NewTextHandler(io.Discard, nil)), ln, srv.Handler(), 5*time.Second)
	}()
	tb.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			tb.Errorf("serve: %v", err)
		}
		_ = st.Close(context.Background())
	})
	base := "http://" + ln.Addr().String()
	return &apiEnv{db: db, st: st, srv: srv, base: base, c: &apiClient{tb: tb, srv: srv, spec: loadSpec(tb), base: base}}
}

func (e *apiEnv) seed(tb testing.TB, docs []store.SessionDoc) {
	tb.Helper()
	// The listener's write path: on FerretDB, into the time partitions.
	for chunk := range slices.Chunk(docs, 500) {
		if r, err := e.st.InsertSessions(context.Background(), chunk); err != nil || r.Inserted != len(chunk) {
			tb.Fatalf("seed sessions: %+v %v", r, err)
		}
	}
}

var apiT0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// genSessions returns n sessions over 5 chargers and 2 connectors; four sessions end in
// each minute, so ended_at ties are common and the _id tie-break matters. Even sessions
// carry the contract's timestamp, odd ones only ended_at (the API derives timestamp).
func genSessions(n int) []store.SessionDoc {
	docs := make([]store.SessionDoc, n)
	for i := range docs {
		end := apiT0.Add(time.Duration(i/4) * time.Minute)
		s := session.Session{
			SessionID:       int64(i),
			EnergyKWh:       float64(i%17) + 0.25,
			DurationSeconds: 1800 + float64(i%7),
			ChargerID:       strconv.Itoa(i%5 + 1),
			ConnectorID:     (i/5)%2 + 1,
			StartedAt:       end.Add(-30 * time.Minute),
			EndedAt:         end,
			PowerClass:      []string{"AC", "DC"}[i%2],
			PeakPowerKW:     []float64{11, 150}[i%2],
			BatteryKWh:      60,
			StartSoCPercent: 20,
			EndSoCPercent:   80,
		}
		s.TariffCentsPerKWh = []float64{35, 59}[i%2]
		s.CostCents = s.EnergyKWh * s.TariffCentsPerKWh
		if i%2 == 0 {
			s.Timestamp = end.Unix()
		}
		docs[i] = store.SessionDoc{ID: s.Key(), Session: s, Topic: "charger/" + s.ChargerID, ReceivedAt: end.Add(time.Second)}
	}
	return docs
}

// newestFirst sorts docs as the API lists them: ended_at desc, then _id desc.
func newestFirst(docs []store.SessionDoc) []store.SessionDoc {
	out := slices.Clone(docs)
	slices.SortFunc(out, func(a, b store.SessionDoc) int {
		if c := b.EndedAt.Compare(a.EndedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	return out
}

func decodeJSON(tb testing.TB, what string, res apiResponse, v any) {
	tb.Helper()
	if err := json.Unmarshal(res.Body, v); err != nil {
		tb.Fatalf("%s: decode %q: %v", what, res.Body, err)
	}
}

func TestReadingsContract(t *testing.T) {
	e := startAPI(t)
	docs := genSessions(1003)
	e.seed(t, docs)

	res := e.c.get("/readings/")
	if res.Status != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/readings/: %d %q", res.Status, res.Header.Get("Content-Type"))
	}
	var list []map[string]any
	decodeJSON(t, "/readings/", res, &list)
	if len(list) != ReadingsLimit {
		t.Fatalf("/readings/ returned %d sessions, want %d (1003 stored)", len(list), ReadingsLimit)
	}
	want := newestFirst(docs)[:ReadingsLimit]
	for i, item := range list {
		d := want[i]
		for _, key := range []string{"session_id", "energy_delivered_in_kWh", "duration_in_seconds", "session_cost_in_cents", "timestamp"} {
			if _, ok := item[key].(float64); !ok {
				t.Fatalf("item %d: %s = %#v, want a JSON number", i, key, item[key])
			}
		}
		if item["session_id"] != float64(d.SessionID) || item["energy_delivered_in_kWh"] != d.EnergyKWh ||
			item["duration_in_seconds"] != d.DurationSeconds || item["session_cost_in_cents"] != d.CostCents ||
			item["timestamp"] != float64(d.EndedAt.Unix()) || item["charger_id"] != d.ChargerID ||
			item["connector_id"] != float64(d.ConnectorID) || item["id"] != SessionKey(d.ChargerID, d.ConnectorID, d.SessionID) ||
			item["ended_at"] != d.EndedAt.Format(time.RFC3339Nano) || item["power_class"] != d.PowerClass {
			t.Fatalf("item %d = %v, want session %s (%+v)", i, item, d.ID, d.Session)
		}
	}
}

func TestHealthFollowsDatabase(t *testing.T) {
	e := startAPI(t)
	e.seed(t, genSessions(10))
	checkHealth := func(state string, status int) {
		t.Helper()
		res := e.c.get("/health")
		var h HealthView
		decodeJSON(t, "/health", res, &h)
		if res.Status != status || h.Database != state {
			t.Errorf("/health: %d %+v, want %d database %q", res.Status, h, status, state)
		}
		if res := e.c.get("/readyz"); res.Status != status {
			t.Errorf("/readyz: %d, want %d", res.Status, status)
		}
	}
	checkHealth("up", http.StatusOK)
	if res := e.c.get("/healthz"); res.Status != http.StatusOK {
		t.Errorf("/healthz: %d", res.Status)
	}

	e.db.Stop()
	checkHealth("down", http.StatusServiceUnavailable)
	if res := e.c.get("/healthz"); res.Status != http.StatusOK {
		t.Errorf("/healthz with the database down: %d, want 200 (the process is alive)", res.Status)
	}
	for _, target := range []string{"/readings/", "/api/v1/sessions", "/api/v1/sessions/1:1:0", "/api/v1/chargers", "/api/v1/chargers/1", "/api/v1/stats"} {
		res := e.c.get(target)
		checkProblem(t, target+" with the database down", res, http.StatusServiceUnavailable)
		if res.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", target)
		}
	}

	e.db.Start()
	// The driver reconnects by itself; wait for it (a liveness condition, not a speed one).
	deadline := time.Now().Add(60 * time.Second)
	for {
		res := e.c.get("/health")
		if res.Status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health still %d a minute after the database came back: %s", res.Status, res.Body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkHealth("up", http.StatusOK)
	var list []SessionView
	res := e.c.get("/readings/")
	decodeJSON(t, "/readings/", res, &list)
	if res.Status != http.StatusOK || len(list) != 10 {
		t.Errorf("/readings/ after the database came back: %d, %d sessions", res.Status, len(list))
	}
}

// walkSessions follows next_cursor from query until the last page and returns every id.
func walkSessions(t *testing.T, c *apiClient, query url.Values, limit int) []string {
	t.Helper()
	var ids []string
	cursor := ""
	for page := 0; ; page++ {
		q := url.Values{}
		for k, v := range query {
			q[k] = v
		}
		q.Set("limit", strconv.Itoa(limit))
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		target := "/api/v1/sessions?" + q.Encode()
		res := c.get(target)
		if res.Status != http.StatusOK {
			t.Fatalf("%s: %d %s", target, res.Status, res.Body)
		}
		var p SessionPage
		decodeJSON(t, target, res, &p)
		if len(p.Items) > limit {
			t.Fatalf("%s: %d items", target, len(p.Items))
		}
		for _, it := range p.Items {
			ids = append(ids, it.ID)
		}
		if p.NextCursor == nil {
			return ids
		}
		if len(p.Items) != limit {
			t.Fatalf("%s: a page of %d items (< limit) with a next_cursor", target, len(p.Items))
		}
		if page > 10000 {
			t.Fatalf("%s: too many pages", target)
		}
		cursor = *p.NextCursor
	}
}

func TestSessionsFiltersAndPagination(t *testing.T) {
	e := startAPI(t)
	docs := genSessions(240)
	e.seed(t, docs)
	at := func(min int) time.Time { return apiT0.Add(time.Duration(min) * time.Minute) }
	for _, tc := range []struct {
		name  string
		query url.Values
		keep  func(d store.SessionDoc) bool
	}{
		{"all", url.Values{}, func(store.SessionDoc) bool { return true }},
		{"charger", url.Values{"charger": {"3"}}, func(d store.SessionDoc) bool { return d.ChargerID == "3" }},
		{"connector", url.Values{"connector": {"2"}}, func(d store.SessionDoc) bool { return d.ConnectorID == 2 }},
		{"charger and connector", url.Values{"charger": {"4"}, "connector": {"1"}}, func(d store.SessionDoc) bool { return d.ChargerID == "4" && d.ConnectorID == 1 }},
		{"from", url.Values{"from": {at(40).Format(time.RFC3339)}}, func(d store.SessionDoc) bool { return !d.EndedAt.Before(at(40)) }},
		{"to", url.Values{"to": {at(7).Format(time.RFC3339)}}, func(d store.SessionDoc) bool { return d.EndedAt.Before(at(7)) }},
		{"range with offset zone", url.Values{"from": {at(10).In(time.FixedZone("", 2*3600)).Format(time.RFC3339)}, "to": {at(20).Format(time.RFC3339Nano)}},
			func(d store.SessionDoc) bool { return !d.EndedAt.Before(at(10)) && d.EndedAt.Before(at(20)) }},
		{"everything", url.Values{"charger": {"2"}, "connector": {"2"}, "from": {at(5).Format(time.RFC3339)}, "to": {at(50).Format(time.RFC3339)}},
			func(d store.SessionDoc) bool {
				return d.ChargerID == "2" && d.ConnectorID == 2 && !d.EndedAt.Before(at(5)) && d.EndedAt.Before(at(50))
			}},
		{"no match", url.Values{"charger": {"99"}}, func(store.SessionDoc) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []string
			for _, d := range newestFirst(docs) {
				if tc.keep(d) {
					want = append(want, SessionKey(d.ChargerID, d.ConnectorID, d.SessionID))
				}
			}
			for _, limit := range []int{7, 1000} {
				got := walkSessions(t, e.c, tc.query, limit)
				if !slices.Equal(got, want) {
					t.Errorf("limit %d: walked %d sessions %v,\nwant %d %v", limit, len(got), got, len(want), want)
				}
			}
		})
	}
	// Default limit.
	var p SessionPage
	res := e.c.get("/api/v1/sessions")
	decodeJSON(t, "/api/v1/sessions", res, &p)
	if len(p.Items) != DefaultLimit || p.NextCursor == nil {
		t.Errorf("/api/v1/sessions: %d items, next_cursor %v; want %d and a cursor", len(p.Items), p.NextCursor, DefaultLimit)
	}
	// The last page has next_cursor: null (not absent).
	res = e.c.get("/api/v1/sessions?limit=1000")
	if !bytes.Contains(res.Body, []byte(`"next_cursor":null`)) {
		t.Errorf("last page without \"next_cursor\":null")
	}
}

func TestSessionByKey(t *testing.T) {
	e := startAPI(t)
	docs := genSessions(20)
	e.seed(t, docs)
	d := docs[13]
	key := SessionKey(d.ChargerID, d.ConnectorID, d.SessionID)
	for _, target := range []string{
		"/api/v1/sessions/" + key,
		"/api/v1/sessions/" + url.PathEscape(d.ID), // the document key with '/' escaped
		"/api/v1/sessions/" + strings.ReplaceAll(key, ":", "%3A"),
	} {
		res := e.c.get(target)
		if res.Status != http.StatusOK {
			t.Fatalf("%s: %d %s", target, res.Status, res.Body)
		}
		var v SessionView
		decodeJSON(t, target, res, &v)
		if v.ID != key || v.SessionID != d.SessionID || v.ChargerID != d.ChargerID || v.ConnectorID != d.ConnectorID ||
			v.EnergyKWh != d.EnergyKWh || v.CostCents != d.CostCents || v.Timestamp != d.EndedAt.Unix() ||
			v.EndedAt == nil || !v.EndedAt.Equal(d.EndedAt) || v.ReceivedAt == nil || !v.ReceivedAt.Equal(d.ReceivedAt) ||
			v.PowerClass != d.PowerClass || v.TariffCentsPerKWh != d.TariffCentsPerKWh {
			t.Errorf("%s = %+v, want %+v", target, v, d)
		}
	}
	// Every listed id fetches its session.
	var p SessionPage
	decodeJSON(t, "list", e.c.get("/api/v1/sessions?limit=5"), &p)
	for _, it := range p.Items {
		res := e.c.get("/api/v1/sessions/" + it.ID)
		listed, _ := json.Marshal(it)
		if res.Status != http.StatusOK || !bytes.Equal(bytes.TrimSpace(res.Body), listed) {
			t.Errorf("GET %s = %d %s, listed as %s", it.ID, res.Status, res.Body, listed)
		}
	}
	for _, target := range []string{"/api/v1/sessions/1:1:9999", "/api/v1/sessions/9:1:1", "/api/v1/sessions/1%2F1%2F9999"} {
		checkProblem(t, target, e.c.get(target), http.StatusNotFound)
	}
}

// handFleet is a small fleet whose totals are computed by hand below; values are binary
// fractions so the sums are exact in any order.
var handFleet = []struct {
	charger    string
	conn       int
	sid        int64
	endMin     int
	kwh, cents float64
}{
	{"A", 1, 1, 0, 10.5, 367.5},
	{"A", 1, 2, 10, 20.25, 708.75},
	{"A", 2, 3, 10, 7.75, 271.25},
	{"B", 1, 1, 10, 1.5, 88.5},
	{"B", 1, 2, 20, 30, 1770},
	{"10", 1, 1, 5, 2.25, 78.75},
	{"9", 0, 7, 30, 4, 140},
	{"9", 0, 8, 30, 0.5, 17.5},
}

func handDocs() []store.SessionDoc {
	var docs []store.SessionDoc
	for _, f := range handFleet {
		end := apiT0.Add(time.Duration(f.endMin) * time.Minute)
		s := session.Session{SessionID: f.sid, EnergyKWh: f.kwh, DurationSeconds: 600, CostCents: f.cents,
			ChargerID: f.charger, ConnectorID: f.conn, StartedAt: end.Add(-10 * time.Minute), EndedAt: end}
		docs = append(docs, store.SessionDoc{ID: s.Key(), Session: s, ReceivedAt: end})
	}
	return docs
}

func ptrTime(t time.Time) *time.Time { return &t }

// Hand-computed totals of handFleet, in the API's charger order (byte order of IDs).
var handChargers = []ChargerView{
	{ChargerID: "10", Sessions: 1, EnergyKWh: 2.25, CostCents: 78.75, LastSessionAt: ptrTime(apiT0.Add(5 * time.Minute))},
	{ChargerID: "9", Sessions: 2, EnergyKWh: 4.5, CostCents: 157.5, LastSessionAt: ptrTime(apiT0.Add(30 * time.Minute))},
	{ChargerID: "A", Sessions: 3, EnergyKWh: 38.5, CostCents: 1347.5, LastSessionAt: ptrTime(apiT0.Add(10 * time.Minute))},
	{ChargerID: "B", Sessions: 2, EnergyKWh: 31.5, CostCents: 1858.5, LastSessionAt: ptrTime(apiT0.Add(20 * time.Minute))},
}

func sameCharger(a, b ChargerView) bool {
	return a.ChargerID == b.ChargerID && a.Sessions == b.Sessions && a.EnergyKWh == b.EnergyKWh && a.CostCents == b.CostCents &&
		a.LastSessionAt != nil && b.LastSessionAt != nil && a.LastSessionAt.Equal(*b.LastSessionAt)
}

func TestChargerTotals(t *testing.T) {
	e := startAPI(t)
	// Empty store: an empty first page.
	var empty ChargerPage
	decodeJSON(t, "/api/v1/chargers", e.c.get("/api/v1/chargers"), &empty)
	if len(empty.Items) != 0 || empty.NextCursor != nil {
		t.Errorf("chargers of an empty store: %+v", empty)
	}
	checkProblem(t, "/api/v1/chargers/A (empty)", e.c.get("/api/v1/chargers/A"), http.StatusNotFound)

	e.seed(t, handDocs())
	for _, want := range handChargers {
		var got ChargerView
		target := "/api/v1/chargers/" + want.ChargerID
		res := e.c.get(target)
		decodeJSON(t, target, res, &got)
		if res.Status != http.StatusOK || !sameCharger(got, want) {
			t.Errorf("%s: %d %+v, want %+v", target, res.Status, got, want)
		}
	}
	checkProblem(t, "/api/v1/chargers/C", e.c.get("/api/v1/chargers/C"), http.StatusNotFound)

	for _, limit := range []int{1, 2, 3, 4, 1000} {
		var got []ChargerView
		target := "/api/v1/chargers?limit=" + strconv.Itoa(limit)
		for page := 0; page <= len(handChargers); page++ {
			var p ChargerPage
			res := e.c.get(target)
			decodeJSON(t, target, res, &p)
			if res.Status != http.StatusOK || len(p.Items) > limit {
				t.Fatalf("%s: %d, %d items", target, res.Status, len(p.Items))
			}
			got = append(got, p.Items...)
			if p.NextCursor == nil {
				break
			}
			target = "/api/v1/chargers?limit=" + strconv.Itoa(limit) + "&cursor=" + *p.NextCursor
		}
		if len(got) != len(handChargers) {
			t.Fatalf("limit %d: %d chargers %+v, want %d", limit, len(got), got, len(handChargers))
		}
		for i := range got {
			if !sameCharger(got[i], handChargers[i]) {
				t.Errorf("limit %d: charger %d = %+v, want %+v", limit, i, got[i], handChargers[i])
			}
		}
	}
}

func TestStats(t *testing.T) {
	e := startAPI(t)
	res := e.c.get("/api/v1/stats")
	if res.Status != http.StatusOK ||
		!bytes.Contains(res.Body, []byte(`"first_session_at":null`)) || !bytes.Contains(res.Body, []byte(`"last_session_at":null`)) {
		t.Errorf("stats of an empty store: %d %s", res.Status, res.Body)
	}
	var s StatsView
	decodeJSON(t, "/api/v1/stats", res, &s)
	if s.Sessions != 0 || s.EnergyKWh != 0 || s.CostCents != 0 || s.Chargers != 0 || s.Rejected != 0 {
		t.Errorf("stats of an empty store: %+v", s)
	}

	e.seed(t, handDocs())
	for i := range 3 {
		doc := store.RejectedDoc{Topic: "charger/x", Payload: []byte("{"), Size: 1, Reason: string(session.ReasonBadJSON), ReceivedAt: apiT0.Add(time.Duration(i) * time.Second)}
		if _, err := e.st.Rejected.InsertOne(context.Background(), doc); err != nil {
			t.Fatalf("insert rejected: %v", err)
		}
	}
	decodeJSON(t, "/api/v1/stats", e.c.get("/api/v1/stats"), &s)
	// Hand-computed from handFleet.
	if s.Sessions != 8 || s.EnergyKWh != 76.75 || s.CostCents != 3442.25 || s.Chargers != 4 || s.Rejected != 3 ||
		s.FirstSessionAt == nil || !s.FirstSessionAt.Equal(apiT0) || s.LastSessionAt == nil || !s.LastSessionAt.Equal(apiT0.Add(30*time.Minute)) {
		t.Errorf("stats = %+v", s)
	}
}

// User input never becomes a query operator: operator-shaped parameters are refused or
// matched literally.
func TestInjectionAttempts(t *testing.T) {
	e := startAPI(t)
	e.seed(t, handDocs())
	for _, target := range []string{
		"/api/v1/sessions?charger[$ne]=x",
		"/api/v1/sessions?charger%5B%24ne%5D=x",
		"/api/v1/sessions?charger=" + url.QueryEscape(`{"$gt":""}`),
		"/api/v1/sessions?charger=" + url.QueryEscape(`{"$ne":null}`),
		"/api/v1/sessions?charger=$gt",
		"/api/v1/sessions?charger[$regex]=.*",
		"/api/v1/sessions?connector[$gt]=0",
		"/api/v1/sessions?connector=" + url.QueryEscape(`{"$gt":0}`),
		"/api/v1/sessions?from[$gt]=2000-01-01T00:00:00Z",
		"/api/v1/sessions?$where=sleep(1000)",
		"/api/v1/sessions?_id=A/1/1",
		"/api/v1/sessions?cursor=" + url.QueryEscape(`{"$gt":""}`),
		"/api/v1/chargers?cursor[$gt]=",
	} {
		checkProblem(t, target, e.c.get(target), http.StatusBadRequest)
	}
	for _, target := range []string{
		"/api/v1/chargers/" + url.PathEscape(`{"$gt":""}`),
		"/api/v1/chargers/%24gt",
		"/api/v1/chargers/" + url.PathEscape(`A","$ne":"`),
		"/api/v1/sessions/" + url.PathEscape(`{"$gt":""}`),
		"/api/v1/sessions/" + url.PathEscape(`{"$ne":null}:1:1`),
		"/api/v1/sessions/" + url.PathEscape(`A/1/1","$ne":"`),
	} {
		checkProblem(t, target, e.c.get(target), http.StatusNotFound)
	}
	// A literal match still works next to those.
	var p SessionPage
	decodeJSON(t, "charger=A", e.c.get("/api/v1/sessions?charger=A"), &p)
	if len(p.Items) != 3 {
		t.Errorf("charger=A: %d sessions, want 3", len(p.Items))
	}
}

func TestMetricsPassPromtool(t *testing.T) {
	e := startAPI(t)
	e.seed(t, handDocs())
	for _, target := range []string{"/readings/", "/api/v1/sessions?charger=A", "/api/v1/sessions/A:1:1", "/api/v1/sessions/A:1:99", "/nope", "/api/v1/stats"} {
		e.c.get(target)
	}
	res := e.c.get("/metrics")
	body := string(res.Body)
	for _, want := range []string{
		`chargesim_api_requests_total{code="200",method="GET",route="/api/v1/sessions/{key}"} 1`,
		`chargesim_api_requests_total{code="404",method="GET",route="/api/v1/sessions/{key}"} 1`,
		`chargesim_api_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`chargesim_api_request_duration_seconds_bucket{method="GET",route="/readings/",le="+Inf"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, `route="/api/v1/sessions/A:1:1"`) {
		t.Errorf("/metrics has a raw path as a route label")
	}
	cmd := exec.Command(testenv.Bin(t, "promtool"), "check", "metrics")
	cmd.Stdin = bytes.NewReader(res.Body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// dumpDOM loads url in headless chromium and returns the DOM once the page's scripts and
// requests are done (virtual time lets the page's fetches finish before the dump).
func dumpDOM(t *testing.T, url string) string {
	t.Helper()
	chromium := testenv.Bin(t, "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-dev-shm-usage", "--user-data-dir="+filepath.Join(t.TempDir(), "profile"),
		"--virtual-time-budget=10000",
		"--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\nstderr: %s", url, err, stderr.String())
	}
	dom := stdout.String()
	if !strings.Contains(dom, `data-rendered="true"`) {
		t.Fatalf("%s did not render the OpenAPI document; DOM:\n%.3000s\nstderr: %.2000s", url, dom, stderr.String())
	}
	return dom
}

// The docs page renders every documented endpoint, parameter and schema in a real browser.
func TestDocsPageInChromium(t *testing.T) {
	e := startAPI(t)
	dom := dumpDOM(t, e.base+"/docs")
	spec := e.c.spec
	gets := 0
	for path, item := range spec.Paths.Map() {
		for method := range item.Operations() {
			want := fmt.Sprintf(`data-method="%s" data-path="%s"`, strings.ToUpper(method), path)
			if !strings.Contains(dom, want) {
				t.Errorf("docs page lacks %s %s", method, path)
			}
			if method == http.MethodGet {
				gets++
			}
		}
	}
	for name := range spec.Components.Schemas {
		if !strings.Contains(dom, `data-schema="`+name+`"`) {
			t.Errorf("docs page lacks schema %s", name)
		}
	}
	for _, p := range []string{"charger", "connector", "from", "to", "cursor", "limit", "key", "id"} {
		if !strings.Contains(dom, `data-param="`+p+`"`) {
			t.Errorf("docs page lacks parameter %s", p)
		}
	}
	if n := strings.Count(dom, `class="try"`); n != gets {
		t.Errorf("docs page has %d try-it forms, want one per GET operation (%d)", n, gets)
	}
}

// The docs page's try-it forms send real requests (driven by #try-<operationId> links).
func TestDocsTryItInChromium(t *testing.T) {
	e := startAPI(t)
	e.seed(t, handDocs())
	for _, tc := range []struct {
		hash   string
		status int
		want   []string
	}{
		{"#try-listSessions?charger=A&limit=2", 200, []string{`"charger_id": "A"`, `"next_cursor": "`}},
		{"#try-getSession?key=A:1:2", 200, []string{`"id": "A:1:2"`, `"session_cost_in_cents": 708.75`}},
		{"#try-getCharger?id=B", 200, []string{`"cost_cents": 1858.5`}},
		{"#try-getCharger?id=nope", 404, []string{`"status": 404`}},
		{"#try-listSessions?limit=0", 400, []string{`"name": "limit"`}},
	} {
		dom := dumpDOM(t, e.base+"/docs"+tc.hash)
		if !strings.Contains(dom, fmt.Sprintf(`data-result-status="%d"`, tc.status)) {
			t.Errorf("%s: no result with status %d in the page", tc.hash, tc.status)
		}
		for _, w := range tc.want {
			if !strings.Contains(dom, w) {
				t.Errorf("%s: the result lacks %s", tc.hash, w)
			}
		}
	}
}

// `chargesim api` waits for its database, serves, and shuts down cleanly on cancel.
func TestCommand(t *testing.T) {
	db := testenv.StartFerretDB(t)
	db.Stop() // the API starts before its database
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Command(ctx, []string{"--http-addr", addr, "--mongo-uri", db.URI, "--mongo-database", "cmdtest", "--log-level", "warn"})
	}()
	time.Sleep(time.Second)
	select {
	case err := <-done:
		t.Fatalf("Command returned while waiting for the database: %v", err)
	default:
	}
	// It serves while the database is down: alive, not ready, /health says so, data routes
	// ask to retry.
	for target, want := range map[string]int{"/healthz": http.StatusOK, "/readyz": http.StatusServiceUnavailable,
		"/health": http.StatusServiceUnavailable, "/api/v1/stats": http.StatusServiceUnavailable} {
		res, err := http.Get("http://" + addr + target)
		if err != nil {
			t.Fatalf("%s with the database down: %v", target, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s with the database down: %d %s, want %d", target, res.StatusCode, body, want)
		}
		if target == "/health" && !bytes.Contains(body, []byte(`"database":"down"`)) {
			t.Errorf("/health with the database down: %s", body)
		}
		if want == http.StatusServiceUnavailable && target != "/readyz" && target != "/health" && res.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", target)
		}
	}
	db.Start()
	deadline := time.Now().Add(90 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/health")
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"database":"up"`)) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("chargesim api not healthy 90s after the database started: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, err := http.Get("http://" + addr + "/api/v1/stats")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/api/v1/stats: %v %v", res, err)
	}
	res.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Command after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Command did not return after cancel")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Errorf("still serving after shutdown")
	}

	// Bad settings stop it at once, naming the flag.
	for _, args := range [][]string{{"--query-timeout", "0s"}, {"--mongo-uri", "http://x"}} {
		err := Command(context.Background(), args)
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(args[0], "--")) {
			t.Errorf("Command(%q) = %v, want an error naming %s", args, err, args[0])
		}
	}
}

// Benchmarks run the handler in process (no network) against a real FerretDB holding 5000
// sessions of 50 chargers, with the longest query timeout allowed: they measure, they do not
// judge.
func benchEnv(b *testing.B) *apiEnv {
	b.Helper()
	e := startAPIWith(b, maxQueryTimeout)
	docs := make([]store.SessionDoc, 5000)
	for i := range docs {
		s := session.Session{SessionID: int64(i), EnergyKWh: 10.5, DurationSeconds: 1800, CostCents: 367.5,
			ChargerID: strconv.Itoa(i%50 + 1), ConnectorID: i%2 + 1, EndedAt: apiT0.Add(time.Duration(i) * time.Second)}
		docs[i] = store.SessionDoc{ID: s.Key(), Session: s, ReceivedAt: s.EndedAt}
	}
	e.seed(b, docs)
	return e
}

func benchGet(b *testing.B, h http.Handler, target string) {
	b.Helper()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		if rec.Code != http.StatusOK {
			b.Fatalf("%s: %d %s", target, rec.Code, rec.Body)
		}
	}
}

func BenchmarkListSessions(b *testing.B) {
	e := benchEnv(b)
	h := e.srv.Handler()
	b.Run("page100", func(b *testing.B) { benchGet(b, h, "/api/v1/sessions?limit=100") })
	b.Run("page1000", func(b *testing.B) { benchGet(b, h, "/api/v1/sessions?limit=1000") })
	b.Run("charger", func(b *testing.B) { benchGet(b, h, "/api/v1/sessions?charger=7&limit=100") })
	b.Run("readings", func(b *testing.B) { benchGet(b, h, "/readings/") })
}

func BenchmarkChargerTotals(b *testing.B) {
	e := benchEnv(b)
	h := e.srv.Handler()
	b.Run("one", func(b *testing.B) { benchGet(b, h, "/api/v1/chargers/7") })
	b.Run("list50", func(b *testing.B) { benchGet(b, h, "/api/v1/chargers?limit=100") }) // all 50 chargers
	b.Run("stats", func(b *testing.B) { benchGet(b, h, "/api/v1/stats") })
}

// A request whose client has gone is neither a server error nor logged as one.
func TestClientGoneIsNot5xx(t *testing.T) {
	e := startAPI(t)
	e.seed(t, handDocs())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, target := range []string{"/readings/", "/api/v1/sessions", "/api/v1/chargers", "/api/v1/stats"} {
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil).WithContext(ctx))
		if rec.Code != statusClientClosedRequest {
			t.Errorf("%s with the client gone: %d, want %d", target, rec.Code, statusClientClosedRequest)
		}
	}
}
