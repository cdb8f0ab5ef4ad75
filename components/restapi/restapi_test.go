package restapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chargesim/chargesim/components/store"
)

// checkProblem asserts res is an RFC 9457 problem with the given status and returns it.
func checkProblem(tb testing.TB, what string, res apiResponse, status int) Problem {
	tb.Helper()
	var p Problem
	if res.Status != status {
		tb.Errorf("%s: status %d, want %d; body %.300s", what, res.Status, status, res.Body)
	}
	if ct := res.Header.Get("Content-Type"); ct != problemContentType {
		tb.Errorf("%s: Content-Type %q, want %q", what, ct, problemContentType)
	}
	dec := json.NewDecoder(bytes.NewReader(res.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		tb.Errorf("%s: problem body %q: %v", what, res.Body, err)
		return p
	}
	if p.Status != status || p.Type == "" || p.Title == "" || p.Detail == "" {
		tb.Errorf("%s: incomplete problem %+v", what, p)
	}
	return p
}

func unitClient(t *testing.T) *apiClient {
	t.Helper()
	srv, _ := newTestServer(t, nil)
	return &apiClient{tb: t, srv: srv, spec: loadSpec(t)}
}

// Every bad parameter is a 400 problem naming it; none of these requests reaches the store
// (the server has none: reaching it would panic).
func TestBadParametersAre400NamingThem(t *testing.T) {
	c := unitClient(t)
	long := strings.Repeat("x", 65)
	for _, tc := range []struct {
		target string
		names  []string
	}{
		{"/api/v1/sessions?charger=", []string{"charger"}},
		{"/api/v1/sessions?charger=" + long, []string{"charger"}},
		{"/api/v1/sessions?charger=a%2Fb", []string{"charger"}},
		{"/api/v1/sessions?charger=a%20b", []string{"charger"}},
		{"/api/v1/sessions?charger=" + url.QueryEscape(`{"$gt":""}`), []string{"charger"}},
		{"/api/v1/sessions?charger=$ne", []string{"charger"}},
		{"/api/v1/sessions?charger[$ne]=x", []string{"charger[$ne]"}},
		{"/api/v1/sessions?charger%5B%24ne%5D=x", []string{"charger[$ne]"}},
		{"/api/v1/sessions?charger.$gt=", []string{"charger.$gt"}},
		{"/api/v1/sessions?$where=1", []string{"$where"}},
		{"/api/v1/sessions?charger=1&charger=2", []string{"charger"}},
		{"/api/v1/sessions?connector=x", []string{"connector"}},
		{"/api/v1/sessions?connector=-1", []string{"connector"}},
		{"/api/v1/sessions?connector=65537", []string{"connector"}},
		{"/api/v1/sessions?connector=1.5", []string{"connector"}},
		{"/api/v1/sessions?connector[$gt]=1", []string{"connector[$gt]"}},
		{"/api/v1/sessions?from=yesterday", []string{"from"}},
		{"/api/v1/sessions?from=2024-05-01", []string{"from"}},
		{"/api/v1/sessions?from=2024-05-01T00:00:00+02:00", []string{"from"}}, // '+' decodes as a space
		{"/api/v1/sessions?to=2024-13-01T00:00:00Z", []string{"to"}},
		{"/api/v1/sessions?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z", []string{"to"}},
		{"/api/v1/sessions?from=2024-05-01T00:00:00Z&to=2024-05-01T00:00:00Z", []string{"to"}},
		{"/api/v1/sessions?limit=0", []string{"limit"}},
		{"/api/v1/sessions?limit=1001", []string{"limit"}},
		{"/api/v1/sessions?limit=-5", []string{"limit"}},
		{"/api/v1/sessions?limit=ten", []string{"limit"}},
		{"/api/v1/sessions?limit=1e3", []string{"limit"}},
		{"/api/v1/sessions?cursor=abc", []string{"cursor"}},
		{"/api/v1/sessions?cursor=" + encodeChargerCursor("A"), []string{"cursor"}},
		{"/api/v1/sessions?cursor=%zz", []string{"cursor"}},
		{"/api/v1/sessions?%zz=1", []string{"%zz"}},
		{"/api/v1/sessions?page=2", []string{"page"}},
		{"/api/v1/sessions?limit=5;charger=1", []string{"limit"}},
		{"/api/v1/sessions?charger=&limit=0&bogus=1", []string{"charger", "limit", "bogus"}},
		{"/api/v1/chargers?limit=0", []string{"limit"}},
		{"/api/v1/chargers?limit=1001", []string{"limit"}},
		{"/api/v1/chargers?cursor=xyz", []string{"cursor"}},
		{"/api/v1/chargers?cursor=" + encodeSessionCursor(store.SessionCursor{EndedAt: time.Now(), ID: "A/1/1"}), []string{"cursor"}},
		{"/api/v1/chargers?charger=1", []string{"charger"}},
		{"/api/v1/chargers/1?x=1", []string{"x"}},
		{"/api/v1/sessions/1:1:1?verbose=1", []string{"verbose"}},
		{"/api/v1/stats?charger=1", []string{"charger"}},
		{"/readings/?limit=10", []string{"limit"}},
		{"/health?x=1", []string{"x"}},
		{"/openapi.json?x=1", []string{"x"}},
		{"/docs?x=1", []string{"x"}},
	} {
		res := c.get(tc.target)
		p := checkProblem(t, tc.target, res, http.StatusBadRequest)
		if p.Type != problemInvalidParams {
			t.Errorf("%s: type %q, want %q", tc.target, p.Type, problemInvalidParams)
		}
		var names []string
		for _, ip := range p.InvalidParams {
			names = append(names, ip.Name)
			if ip.Reason == "" {
				t.Errorf("%s: no reason for %s", tc.target, ip.Name)
			}
		}
		if !slices.Equal(names, tc.names) {
			t.Errorf("%s: invalid_params names %q, want %q", tc.target, names, tc.names)
		}
	}
}

func TestParseSessionListValues(t *testing.T) {
	from := time.Date(2024, 5, 1, 10, 0, 0, 0, time.FixedZone("", 2*3600))
	cur := store.SessionCursor{EndedAt: time.Date(2024, 5, 1, 9, 0, 0, 123e6, time.UTC), ID: "A.b_c-1/2/3"}
	raw := "charger=A.b_c-1&connector=0&from=" + url.QueryEscape(from.Format(time.RFC3339)) +
		"&to=2024-05-02T00:00:00.5Z&limit=1000&cursor=" + encodeSessionCursor(cur)
	p, errs := parseSessionList(raw)
	if len(errs) > 0 {
		t.Fatalf("parseSessionList(%q): %v", raw, errs)
	}
	q := p.query
	if q.ChargerID != "A.b_c-1" || !q.HasConnector || q.ConnectorID != 0 || !q.From.Equal(from) ||
		!q.To.Equal(time.Date(2024, 5, 2, 0, 0, 0, 5e8, time.UTC)) || q.Limit != 1000 || q.After == nil ||
		!q.After.EndedAt.Equal(cur.EndedAt) || q.After.ID != cur.ID {
		t.Errorf("parseSessionList(%q) = %+v (after %+v)", raw, q, q.After)
	}

	// Sub-millisecond bounds round up: stored ended_at has millisecond precision, and a session
	// ending at .000 must not be returned for from=.0005 (issue 10).
	p, errs = parseSessionList("from=2024-05-01T00:00:00.0005Z&to=2024-05-01T00:00:01.0000001Z")
	if len(errs) > 0 || !p.query.From.Equal(time.Date(2024, 5, 1, 0, 0, 0, 1e6, time.UTC)) ||
		!p.query.To.Equal(time.Date(2024, 5, 1, 0, 0, 1, 1e6, time.UTC)) {
		t.Errorf("sub-millisecond from/to = %v, %v (%v); want both rounded up", p.query.From, p.query.To, errs)
	}

	p, errs = parseSessionList("")
	if len(errs) > 0 || p.query != (store.SessionQuery{Limit: DefaultLimit}) {
		t.Errorf("parseSessionList(\"\") = %+v, %v; want defaults", p.query, errs)
	}
	// Empty pairs are harmless (a trailing & or a bare ?).
	if _, errs := parseSessionList("&limit=5&&"); len(errs) > 0 {
		t.Errorf("empty pairs: %v", errs)
	}
}

func TestSessionCursorRoundTrip(t *testing.T) {
	for _, c := range []store.SessionCursor{
		{EndedAt: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), ID: "1/1/1"},
		{EndedAt: time.Date(2099, 12, 31, 23, 59, 59, 999e6, time.UTC), ID: "charger-17.x_y/65536/9007199254740991"},
		{EndedAt: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), ID: "Z/0/0"},
	} {
		s := encodeSessionCursor(c)
		if strings.ContainsAny(s, "+/=") {
			t.Errorf("cursor %q is not URL-safe", s)
		}
		got, err := decodeSessionCursor(s)
		if err != nil || !got.EndedAt.Equal(c.EndedAt) || got.ID != c.ID {
			t.Errorf("round trip of %+v: %+v, %v", c, got, err)
		}
	}
	// Sub-millisecond precision is dropped: BSON dates have milliseconds.
	got, err := decodeSessionCursor(encodeSessionCursor(store.SessionCursor{EndedAt: time.Unix(0, 1_500_000).UTC(), ID: "a/1/1"}))
	if err != nil || !got.EndedAt.Equal(time.Unix(0, 1_000_000)) {
		t.Errorf("sub-millisecond cursor: %v, %v", got.EndedAt, err)
	}

	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []string{
		"", "!!!", b64("s1:"), b64("s1:1714564800000"), b64("s1:abc:A/1/1"), b64("s1:01714564800000:A/1/1"),
		b64("s1:1714564800000:A/1"), b64("s1:1714564800000:A/x/1"), b64("s1:1714564800000:A/1/01"),
		b64("s1:1714564800000:A:1:1"), b64("s1:1714564800000:{\"$gt\":\"\"}/1/1"), b64("s2:1714564800000:A/1/1"),
		b64("c1:A"), b64("s1:-99999999999999:A/1/1"), b64("s1:99999999999999:A/1/1"),
		base64.URLEncoding.EncodeToString([]byte("s1:1714564800000:A/1/1")), // padded
		strings.Repeat("A", maxCursorLen+1),
	} {
		if c, err := decodeSessionCursor(bad); err == nil {
			t.Errorf("decodeSessionCursor(%q) = %+v, want an error", bad, c)
		}
	}
}

func TestChargerCursorRoundTrip(t *testing.T) {
	for _, id := range []string{"1", "A.b_c-9", strings.Repeat("z", 64)} {
		got, err := decodeChargerCursor(encodeChargerCursor(id))
		if err != nil || got != id {
			t.Errorf("round trip of %q: %q, %v", id, got, err)
		}
	}
	for _, bad := range []string{"", "c1:A", base64.RawURLEncoding.EncodeToString([]byte("c1:")),
		base64.RawURLEncoding.EncodeToString([]byte("c1:a/b")), base64.RawURLEncoding.EncodeToString([]byte("c1:" + strings.Repeat("z", 65)))} {
		if id, err := decodeChargerCursor(bad); err == nil {
			t.Errorf("decodeChargerCursor(%q) = %q, want an error", bad, id)
		}
	}
}

func TestParseSessionKey(t *testing.T) {
	for in, want := range map[string]string{
		"17:1:42":      "17/1/42",
		"17/1/42":      "17/1/42",
		"a.B_c-d:0:0":  "a.B_c-d/0/0",
		"x:65536:9999": "x/65536/9999",
	} {
		if got, ok := parseSessionKey(in); !ok || got != want {
			t.Errorf("parseSessionKey(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"", "17", "17:1", "17:1:42:1", "17:01:42", "17:1:+42", "17:-1:42", "17:65537:1",
		"17:1:x", "1 7:1:1", "$gt:1:1", "17/1:42", ":1:1"} {
		if got, ok := parseSessionKey(bad); ok {
			t.Errorf("parseSessionKey(%q) = %q, want a refusal", bad, got)
		}
	}
	if got := SessionKey("17", 1, 42); got != "17:1:42" {
		t.Errorf("SessionKey = %q", got)
	}
}

// Every route is documented and every documented operation is routed.
func TestRoutesMatchOpenAPI(t *testing.T) {
	c := unitClient(t)
	var routed []string
	err := chi.Walk(c.srv.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routed = append(routed, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatalf("walk routes: %v", err)
	}
	sort.Strings(routed)
	documented := documentedRoutes(c.spec)
	if !slices.Equal(routed, documented) {
		t.Errorf("routes and openapi.json differ:\nrouted:     %q\ndocumented: %q", routed, documented)
	}
	// Path parameters are declared under the names chi uses.
	for path, item := range c.spec.Paths.Map() {
		for method, op := range item.Operations() {
			var declared []string
			for _, p := range op.Parameters {
				if p.Value.In == "path" {
					declared = append(declared, p.Value.Name)
				}
			}
			var inPath []string
			for _, seg := range strings.Split(path, "/") {
				if strings.HasPrefix(seg, "{") {
					inPath = append(inPath, strings.Trim(seg, "{}"))
				}
			}
			if !slices.Equal(declared, inPath) {
				t.Errorf("%s %s: path parameters %q declared, %q in the path", method, path, declared, inPath)
			}
		}
	}
}

// Query parameters each endpoint accepts are exactly the ones the document declares.
func TestQueryParametersMatchOpenAPI(t *testing.T) {
	spec := loadSpec(t)
	declared := func(path string) []string {
		var names []string
		for _, p := range spec.Paths.Value(path).Get.Parameters {
			if p.Value.In == "query" {
				names = append(names, p.Value.Name)
			}
		}
		sort.Strings(names)
		return names
	}
	sorted := func(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }
	if got, want := declared("/api/v1/sessions"), sorted(sessionListAllowed); !slices.Equal(got, want) {
		t.Errorf("/api/v1/sessions: documented %q, accepted %q", got, want)
	}
	if got, want := declared("/api/v1/chargers"), []string{"cursor", "limit"}; !slices.Equal(got, want) {
		t.Errorf("/api/v1/chargers: documented %q, accepted %q", got, want)
	}
	lim := spec.Components.Parameters["limit"].Value.Schema.Value
	if *lim.Max != MaxLimit || lim.Min == nil || *lim.Min != 1 || lim.Default != float64(DefaultLimit) {
		t.Errorf("limit schema %+v does not match MaxLimit %d / DefaultLimit %d", lim, MaxLimit, DefaultLimit)
	}
}

func TestUnknownRoutesAndMethods(t *testing.T) {
	c := unitClient(t)
	for _, target := range []string{"/", "/nope", "/api/v1", "/api/v1/sessions/", "/api/v2/sessions", "/readings/x", "/api/v1/sessions/1/1/1", "/api/v1/chargers/a/b"} {
		checkProblem(t, "GET "+target, c.get(target), http.StatusNotFound)
	}
	// Keys that cannot exist are 404 without a store query.
	for _, target := range []string{"/api/v1/sessions/nope", "/api/v1/sessions/1:1", "/api/v1/sessions/%24gt:1:1", "/api/v1/chargers/" + strings.Repeat("x", 65), "/api/v1/chargers/a%20b", "/api/v1/chargers/%7B%22$gt%22:%22%22%7D"} {
		checkProblem(t, "GET "+target, c.get(target), http.StatusNotFound)
	}
	for _, tc := range []struct{ method, target string }{
		{http.MethodPost, "/readings/"}, {http.MethodDelete, "/api/v1/sessions"}, {http.MethodPut, "/api/v1/sessions/1:1:1"},
		{http.MethodPatch, "/api/v1/chargers/1"}, {http.MethodHead, "/api/v1/stats"}, {http.MethodPost, "/metrics"}, {"BREW", "/health"},
	} {
		res := c.do(tc.method, tc.target)
		checkProblem(t, tc.method+" "+tc.target, res, http.StatusMethodNotAllowed)
		if got := res.Header.Get("Allow"); got != http.MethodGet {
			t.Errorf("%s %s: Allow %q, want GET", tc.method, tc.target, got)
		}
	}
}

func TestStaticRoutes(t *testing.T) {
	c := unitClient(t)
	res := c.get("/openapi.json")
	if res.Status != http.StatusOK || !bytes.Equal(res.Body, OpenAPI) || res.Header.Get("Content-Type") != "application/json" {
		t.Errorf("/openapi.json: %d %q", res.Status, res.Header.Get("Content-Type"))
	}
	res = c.get("/docs")
	if res.Status != http.StatusOK || !bytes.Equal(res.Body, docsPage) || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Errorf("/docs: %d %q", res.Status, res.Header.Get("Content-Type"))
	}
	if csp := res.Header.Get("Content-Security-Policy"); strings.Count(csp, "'sha256-") != 2 || strings.Contains(csp, "unsafe") {
		t.Errorf("/docs CSP %q: want a hash for the script and the style, nothing unsafe", csp)
	}
	// The page holds exactly one inline script and style (what the CSP hashes cover) and
	// loads nothing from elsewhere.
	page := string(docsPage)
	if strings.Count(page, "<script") != 1 || strings.Count(page, "<style") != 1 || strings.Contains(page, "http://") || strings.Contains(page, "https://") || strings.Contains(page, "src=") {
		t.Errorf("docs.html must be self-contained with one inline <script> and one <style>")
	}
	res = c.get("/readings?x=1")
	if res.Status != http.StatusTemporaryRedirect || res.Header.Get("Location") != "/readings/?x=1" {
		t.Errorf("/readings: %d Location %q", res.Status, res.Header.Get("Location"))
	}
	if res := c.get("/healthz"); res.Status != http.StatusOK {
		t.Errorf("/healthz: %d", res.Status)
	}
	// Without a store the API is not ready and the database is down.
	if res := c.get("/readyz"); res.Status != http.StatusServiceUnavailable {
		t.Errorf("/readyz without a store: %d", res.Status)
	}
	res = c.get("/health")
	var h HealthView
	if err := json.Unmarshal(res.Body, &h); err != nil || res.Status != http.StatusServiceUnavailable || h.Database != "down" {
		t.Errorf("/health without a store: %d %s", res.Status, res.Body)
	}
	if res := c.get("/metrics"); res.Status != http.StatusOK || !strings.Contains(string(res.Body), "chargesim_api_requests_total") {
		t.Errorf("/metrics: %d", res.Status)
	}
}

func TestMetricsUseRoutePatterns(t *testing.T) {
	srv, reg := newTestServer(t, nil)
	h := srv.Handler()
	for _, tc := range []struct{ method, target string }{
		{"GET", "/api/v1/sessions/nope"}, {"GET", "/api/v1/sessions/other"}, {"GET", "/api/v1/chargers/x?y=1"},
		{"GET", "/no/such/path/1"}, {"GET", "/no/such/path/2"}, {"WHATEVER", "/health"}, {"GET", "/readings"}, {"GET", "/readings/?x=1"},
	} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(tc.method, tc.target, nil))
	}
	for _, tc := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"GET", "/api/v1/sessions/{key}", "404"}, 2},
		{[]string{"GET", "/api/v1/chargers/{id}", "400"}, 1},
		{[]string{"GET", "unmatched", "404"}, 2},
		{[]string{"other", "unmatched", "405"}, 1},
		{[]string{"GET", "/readings", "307"}, 1},
		{[]string{"GET", "/readings/", "400"}, 1},
	} {
		if got := testutil.ToFloat64(srv.metrics.requests.WithLabelValues(tc.labels...)); got != tc.want {
			t.Errorf("requests%v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(srv.metrics.requests); n != 6 {
		t.Errorf("%d request series, want 6 (one per method, route pattern and code)", n)
	}
	if got := testutil.CollectAndCount(srv.metrics.duration); got != 6 {
		t.Errorf("%d duration series, want 6", got)
	}
	// Registering twice on one registry is an error, not a panic.
	if _, err := New(Config{QueryTimeout: time.Second}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg); err == nil {
		t.Errorf("second New on the same registry: want a registration error")
	}
}

func TestPanicBecomes500Problem(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	srv, err := New(Config{QueryTimeout: time.Second}, nil, slog.New(slog.NewTextHandler(&logs, nil)), reg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv.router.Get("/panic", func(http.ResponseWriter, *http.Request) { panic("boom") })
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/panic", nil))
	checkProblem(t, "GET /panic", apiResponse{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}, http.StatusInternalServerError)
	if !strings.Contains(logs.String(), "boom") || !strings.Contains(logs.String(), "stack") {
		t.Errorf("panic not logged with its stack: %s", logs.String())
	}
	if got := testutil.ToFloat64(srv.metrics.requests.WithLabelValues("GET", "/panic", "500")); got != 1 {
		t.Errorf("panicking request counted %v times with code 500", got)
	}
	// http.ErrAbortHandler keeps its meaning: abort the response, no problem written.
	srv.router.Get("/abort", func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler { //nolint:errorlint // sentinel
				t.Errorf("recovered %v, want http.ErrAbortHandler re-panicked", r)
			}
		}()
		srv.Handler().ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/abort", nil))
	}()
}

func TestConfig(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	c.Register(fs)
	if err := fs.Parse(nil); err != nil || c.Validate() != nil || c.QueryTimeout != 10*time.Second || c != DefaultConfig() {
		t.Errorf("flag defaults %+v (%v), DefaultConfig %+v", c, c.Validate(), DefaultConfig())
	}
	for _, bad := range []time.Duration{0, -time.Second, 26 * time.Second} {
		c.QueryTimeout = bad
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--query-timeout") {
			t.Errorf("QueryTimeout %v: %v, want an error naming --query-timeout", bad, err)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg); err == nil {
		t.Errorf("New with an invalid Config: want an error")
	}
}

func TestUnavailableClassification(t *testing.T) {
	if !unavailable(fmt.Errorf("find sessions: %w", context.DeadlineExceeded)) {
		t.Errorf("a deadline is unavailability")
	}
	if unavailable(errors.New("(BadValue) unknown operator")) {
		t.Errorf("a refused query is not unavailability")
	}
}
