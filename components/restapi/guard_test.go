package restapi

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chargesim/chargesim/components/store"
)

func guardServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(cfg, &store.Store{}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Identical concurrent requests share one computation, and later ones within the TTL are
// served from the cache with their data's time; after the TTL the figure is recomputed.
func TestCacheSharesOneComputation(t *testing.T) {
	s := guardServer(t, Config{QueryTimeout: 5 * time.Second, CacheTTL: 300 * time.Millisecond})
	var computed atomic.Int64
	gate := make(chan struct{})
	read := func(context.Context, *store.Store) (any, string, error) {
		<-gate
		return map[string]int64{"n": computed.Add(1)}, "", nil
	}
	const clients = 32
	var wg sync.WaitGroup
	recs := make([]*httptest.ResponseRecorder, clients)
	for i := range clients {
		recs[i] = httptest.NewRecorder()
		wg.Go(func() {
			s.serveRead(recs[i], httptest.NewRequest(http.MethodGet, "/api/v1/stats", nil), routeStats, "/", read)
		})
	}
	time.Sleep(100 * time.Millisecond) // every client is waiting on the one flight
	close(gate)
	wg.Wait()
	if n := computed.Load(); n != 1 {
		t.Fatalf("%d computations for %d identical concurrent requests, want 1", n, clients)
	}
	for i, rec := range recs {
		if rec.Code != http.StatusOK || rec.Body.String() != `{"n":1}`+"\n" {
			t.Fatalf("client %d: %d %q", i, rec.Code, rec.Body.String())
		}
		asOf, err := time.Parse(time.RFC3339Nano, rec.Header().Get("X-Data-As-Of"))
		if err != nil || time.Since(asOf) > 5*time.Second {
			t.Errorf("client %d: X-Data-As-Of %q (%v)", i, rec.Header().Get("X-Data-As-Of"), err)
		}
		if rec.Header().Get("Cache-Control") != "max-age=1" || rec.Header().Get("Age") == "" {
			t.Errorf("client %d: Cache-Control %q Age %q", i, rec.Header().Get("Cache-Control"), rec.Header().Get("Age"))
		}
	}
	rec := httptest.NewRecorder()
	s.serveRead(rec, httptest.NewRequest(http.MethodGet, "/api/v1/stats", nil), routeStats, "/", read)
	if computed.Load() != 1 || rec.Body.String() != `{"n":1}`+"\n" {
		t.Errorf("within the TTL: %d computations, body %q", computed.Load(), rec.Body.String())
	}
	time.Sleep(350 * time.Millisecond)
	rec = httptest.NewRecorder()
	s.serveRead(rec, httptest.NewRequest(http.MethodGet, "/api/v1/stats", nil), routeStats, "/", read)
	if computed.Load() != 2 || rec.Body.String() != `{"n":2}`+"\n" {
		t.Errorf("after the TTL: %d computations, body %q", computed.Load(), rec.Body.String())
	}
	if hits := testutil.ToFloat64(s.metrics.cache.WithLabelValues(routeStats, "hit")); hits != clients {
		t.Errorf("%v cache hits, want %d", hits, clients)
	}
}

// A route whose slots stay busy sheds the excess with 503, problem+json and a Retry-After
// derived from its recent query time; other routes are not affected.
func TestBusyRouteSheds(t *testing.T) {
	s := guardServer(t, Config{QueryTimeout: 10 * time.Second, RouteConcurrency: 2, QueueWait: 50 * time.Millisecond})
	// Teach the guard that a computation takes about 3 s.
	g := s.guards[routeCharger]
	g.avgNano.Store(int64(3 * time.Second))
	release := make(chan struct{})
	slow := func(context.Context, *store.Store) (any, string, error) {
		<-release
		return "ok", "", nil
	}
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			rec := httptest.NewRecorder()
			s.serveRead(rec, httptest.NewRequest(http.MethodGet, "/api/v1/chargers/"+strconv.Itoa(i), nil), routeCharger, strconv.Itoa(i), slow)
			if rec.Code != http.StatusOK {
				t.Errorf("request %d holding a slot: %d", i, rec.Code)
			}
		})
	}
	for len(g.slots) < 2 {
		time.Sleep(time.Millisecond)
	}
	rec := httptest.NewRecorder()
	s.serveRead(rec, httptest.NewRequest(http.MethodGet, "/api/v1/chargers/9", nil), routeCharger, "9", slow)
	res := apiResponse{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
	checkProblem(t, "third request", res, http.StatusServiceUnavailable)
	// Two computations of ~3 s ahead on two slots (plus this request queued): ≥ 3 s.
	if ra, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || ra < 3 || ra > 6 {
		t.Errorf("Retry-After %q, want 3..6 s", rec.Header().Get("Retry-After"))
	}
	if n := testutil.ToFloat64(s.metrics.shed.WithLabelValues(routeCharger)); n != 1 {
		t.Errorf("shed counter %v, want 1", n)
	}
	// Another route has its own slots.
	rec = httptest.NewRecorder()
	s.serveRead(rec, httptest.NewRequest(http.MethodGet, "/api/v1/stats", nil), routeStats, "/", func(context.Context, *store.Store) (any, string, error) { return 1, "", nil })
	if rec.Code != http.StatusOK {
		t.Errorf("stats while chargers are busy: %d", rec.Code)
	}
	close(release)
	wg.Wait()
}

// Before the store is connected the API serves: liveness ok, /health and /readyz say the
// database is down, data routes answer 503 with Retry-After; SetStore makes them work.
func TestServesBeforeTheStoreConnects(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(DefaultConfig(), nil, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	if err != nil {
		t.Fatal(err)
	}
	get := func(target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		return rec
	}
	if rec := get("/healthz"); rec.Code != http.StatusOK {
		t.Errorf("/healthz: %d", rec.Code)
	}
	if rec := get("/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d", rec.Code)
	}
	if rec := get("/health"); rec.Code != http.StatusServiceUnavailable || rec.Body.String() != `{"status":"unavailable","database":"down"}`+"\n" {
		t.Errorf("/health: %d %s", rec.Code, rec.Body.String())
	}
	for _, target := range []string{"/readings/", "/api/v1/sessions", "/api/v1/sessions/1:1:1", "/api/v1/chargers", "/api/v1/chargers/1", "/api/v1/stats"} {
		rec := get(target)
		checkProblem(t, target, apiResponse{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}, http.StatusServiceUnavailable)
		if rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", target)
		}
	}
}

func TestResponseCacheIsBounded(t *testing.T) {
	c := newResponseCache(time.Hour, 3)
	for i := range 10 {
		_, _, _ = c.get(context.Background(), strconv.Itoa(i), func() cached {
			return cached{status: http.StatusOK, body: []byte("x"), asOf: time.Now()}
		})
	}
	if len(c.entries) != 3 {
		t.Errorf("%d entries, want the bound 3", len(c.entries))
	}
}

func TestConfigProtectionSettings(t *testing.T) {
	for flagName, bad := range map[string]Config{
		"--cache-ttl":         {QueryTimeout: time.Second, CacheTTL: -time.Second},
		"--route-concurrency": {QueryTimeout: time.Second, RouteConcurrency: -1},
		"--queue-wait":        {QueryTimeout: time.Second, QueueWait: time.Hour},
		"--read-model":        {QueryTimeout: time.Second, ReadModel: "fast"},
		"--scan-timeout":      {QueryTimeout: time.Second, ScanTimeout: -time.Second},
		"--audit-timeout":     {QueryTimeout: time.Second, AuditTimeout: time.Hour},
		"--retention":         {QueryTimeout: time.Second, Retention: time.Second},
	} {
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("%+v: %v, want an error naming %s", bad, err, flagName)
		}
	}
}
