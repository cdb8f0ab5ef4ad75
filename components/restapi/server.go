// Package restapi is chargesim's REST API: a chi router over the store's read side. It keeps
// the original challenge's contract (GET /readings/, GET /health) and adds a versioned API
// (/api/v1: sessions with filters and cursor pagination, per-charger and fleet totals), an
// OpenAPI 3 document at /openapi.json, a self-contained docs page at /docs, and the
// operations routes (/healthz, /readyz, /metrics) on the same server.
package restapi

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/store"
)

// Config holds the API's own settings (the store and HTTP address are configured by their
// own flag groups).
type Config struct {
	// QueryTimeout bounds each request's database work. It stays below the HTTP server's
	// write timeout (30s, cli.Serve) so that a slow database yields a 503 problem rather
	// than a dropped connection.
	QueryTimeout time.Duration
	// CacheTTL is how old a cached answer may be (0: no cache). Responses carry the time
	// their data was read (X-Data-As-Of) and its age.
	CacheTTL time.Duration
	// RouteConcurrency bounds the store computations of one route running at once (0: the
	// default); QueueWait is how long a request may wait for one before it is shed with a
	// 503 and Retry-After (0: the default).
	RouteConcurrency int
	QueueWait        time.Duration
	// ReadModel chooses how totals and the newest sessions are read: ReadModelAuto (snapshots
	// on a store without indexes, i.e. FerretDB v1; queries otherwise), ReadModelSnapshot or
	// ReadModelQueries. "" means auto.
	ReadModel string
	// ScanTimeout bounds one snapshot scan (0: the default).
	ScanTimeout time.Duration
	// AuditTimeout bounds one GET /api/v1/audit (0: the default). An audit reads every session
	// of its window; without indexes (FerretDB v1) that is a scan of the whole store, which
	// takes longer than QueryTimeout on a busy store. Its response gets a write deadline to match.
	AuditTimeout time.Duration
	// Retention deletes sessions that ended longer ago than this (0: keep everything).
	Retention time.Duration
}

// Read models (--read-model).
const (
	ReadModelAuto     = "auto"
	ReadModelSnapshot = "snapshot"
	ReadModelQueries  = "queries"
)

// Defaults of the store-protection settings.
const (
	defaultCacheTTL         = time.Second
	defaultRouteConcurrency = 4
	defaultQueueWait        = 2 * time.Second
	defaultScanTimeout      = 10 * time.Minute
	defaultAuditTimeout     = time.Minute
	maxAuditTimeout         = 5 * time.Minute
)

// DefaultConfig returns the settings the flags default to (for callers that build a Server
// without flags, like `chargesim run`).
func DefaultConfig() Config {
	return Config{QueryTimeout: 10 * time.Second, CacheTTL: defaultCacheTTL,
		RouteConcurrency: defaultRouteConcurrency, QueueWait: defaultQueueWait,
		ReadModel: ReadModelAuto, ScanTimeout: defaultScanTimeout, AuditTimeout: defaultAuditTimeout}
}

// maxQueryTimeout keeps QueryTimeout below cli.Serve's 30s write timeout.
const maxQueryTimeout = 25 * time.Second

// Register adds the API flags.
func (c *Config) Register(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.DurationVar(&c.QueryTimeout, "query-timeout", d.QueryTimeout, "time limit of one request's database queries, also sent to the database as maxTimeMS (at most 25s)")
	fs.DurationVar(&c.CacheTTL, "cache-ttl", d.CacheTTL, "how old a cached answer (totals, lists) may be; responses say their age in X-Data-As-Of and Age (0: no cache)")
	fs.IntVar(&c.RouteConcurrency, "route-concurrency", d.RouteConcurrency, "database computations one route runs at once; more requests queue")
	fs.DurationVar(&c.QueueWait, "queue-wait", d.QueueWait, "how long a request may queue for its route before it is shed with 503 and Retry-After")
	fs.StringVar(&c.ReadModel, "read-model", d.ReadModel, "how totals and the newest sessions are read: auto (snapshot on a store without indexes such as FerretDB, queries otherwise), snapshot (one background scan at a time, served from memory) or queries (indexed queries per request)")
	fs.DurationVar(&c.ScanTimeout, "scan-timeout", d.ScanTimeout, "time limit of one snapshot scan, also sent to the database as maxTimeMS")
	fs.DurationVar(&c.AuditTimeout, "audit-timeout", d.AuditTimeout, "time limit of one GET /api/v1/audit (an audit reads its whole window; without indexes, the whole store), at most 5m")
	fs.DurationVar(&c.Retention, "retention", 0, "delete sessions (and rejected messages) older than this, checked every retention/10 (at most every 10 min); 0 keeps everything")
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if c.QueryTimeout <= 0 || c.QueryTimeout > maxQueryTimeout {
		return cli.Invalid("query-timeout", c.QueryTimeout, "must be > 0 and ≤ 25s")
	}
	if c.CacheTTL < 0 || c.CacheTTL > time.Hour {
		return cli.Invalid("cache-ttl", c.CacheTTL, "must be ≥ 0 and ≤ 1h")
	}
	if c.RouteConcurrency < 0 || c.RouteConcurrency > 1000 {
		return cli.Invalid("route-concurrency", c.RouteConcurrency, "must be 1..1000")
	}
	if c.QueueWait < 0 || c.QueueWait > maxQueryTimeout {
		return cli.Invalid("queue-wait", c.QueueWait, "must be ≥ 0 and ≤ 25s")
	}
	switch c.ReadModel {
	case "", ReadModelAuto, ReadModelSnapshot, ReadModelQueries:
	default:
		return cli.Invalid("read-model", c.ReadModel, "must be auto, snapshot or queries")
	}
	if c.Retention != 0 && c.Retention < time.Minute {
		return cli.Invalid("retention", c.Retention, "must be 0 (keep everything) or ≥ 1m")
	}
	if c.ScanTimeout < 0 || c.ScanTimeout > 24*time.Hour {
		return cli.Invalid("scan-timeout", c.ScanTimeout, "must be ≥ 0 and ≤ 24h")
	}
	if c.AuditTimeout < 0 || c.AuditTimeout > maxAuditTimeout {
		return cli.Invalid("audit-timeout", c.AuditTimeout, "must be ≥ 0 and ≤ 5m")
	}
	return nil
}

// Server is the API: routes, handlers and their metrics.
type Server struct {
	cfg     Config
	st      atomic.Pointer[store.Store] // nil until the store is connected
	log     *slog.Logger
	router  chi.Router
	metrics *metrics
	cache   *responseCache // nil when CacheTTL is 0
	guards  map[string]*routeGuard
	snaps   *snapshots
	// scanGuard admits one full-scan query at a time on a store without indexes.
	scanGuard *routeGuard
	// readingsMemo is /readings/ of the current snapshot, encoded once.
	readingsMemo atomic.Pointer[cached]
}

// Guarded routes: each has its own concurrency bound (routeGuard).
const (
	routeReadings = "readings"
	routeSessions = "sessions"
	routeSession  = "session"
	routeChargers = "chargers"
	routeCharger  = "charger"
	routeStats    = "stats"
	routeAudit    = "audit"
)

// New builds the API over st. reg receives the API's metrics and gatherer is what /metrics
// serves (usually the same registry). st may be nil: routes needing the store then answer
// 503 (and /health "down") until SetStore provides one, so the API can serve before its
// database answers.
func New(cfg Config, st *store.Store, log *slog.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RouteConcurrency == 0 {
		cfg.RouteConcurrency = defaultRouteConcurrency
	}
	if cfg.QueueWait == 0 {
		cfg.QueueWait = defaultQueueWait
	}
	if cfg.ScanTimeout == 0 {
		cfg.ScanTimeout = defaultScanTimeout
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, metrics: m, guards: map[string]*routeGuard{}}
	if st != nil {
		s.st.Store(st)
	}
	if cfg.CacheTTL > 0 {
		s.cache = newResponseCache(cfg.CacheTTL, maxCacheEntries)
	}
	s.scanGuard = newRouteGuard(1, cfg.QueueWait)
	s.snaps = &snapshots{log: log, ttl: cfg.CacheTTL, timeout: cfg.ScanTimeout, newestK: snapshotNewest}
	for _, r := range []string{routeReadings, routeSessions, routeSession, routeChargers, routeCharger, routeStats, routeAudit} {
		s.guards[r] = newRouteGuard(cfg.RouteConcurrency, cfg.QueueWait)
	}
	s.router = s.routes(gatherer)
	return s, nil
}

// SetStore provides the store once it is connected.
func (s *Server) SetStore(st *store.Store) { s.st.Store(st) }

// errNotConnected is reported while the store has not been connected yet.
var errNotConnected = errors.New("store not connected yet")

// Handler returns the HTTP handler serving every route.
func (s *Server) Handler() http.Handler { return s.router }

// Ready reports whether the store answers (for /readyz).
func (s *Server) Ready(ctx context.Context) error {
	st := s.st.Load()
	if st == nil {
		return errNotConnected
	}
	return st.Ping(ctx)
}

func (s *Server) routes(gatherer prometheus.Gatherer) chi.Router {
	r := chi.NewRouter()
	r.Use(s.observe, s.recoverer, securityHeaders)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeNotFound(w, "no route for "+truncate(r.URL.Path, 200))
	})
	r.MethodNotAllowed(s.methodNotAllowed)

	// The original challenge's contract.
	r.Get("/readings/", s.readings)
	r.Get("/readings", func(w http.ResponseWriter, r *http.Request) {
		// FastAPI redirects the slash-less path; clients written against it may rely on it.
		target := "/readings/"
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, target, http.StatusTemporaryRedirect) //nolint:gosec // fixed path; the query cannot change the host
	})
	r.Get("/health", s.health)

	// Operations, shared with the other components.
	ops := cli.OpsHandler(gatherer, s.Ready)
	r.Method(http.MethodGet, "/healthz", ops)
	r.Method(http.MethodGet, "/readyz", ops)
	r.Method(http.MethodGet, "/metrics", ops)

	// Documentation.
	r.Get("/openapi.json", serveOpenAPI)
	r.Get("/docs", serveDocs)

	r.Route("/api/v1", func(r chi.Router) {
		r.Get("/sessions", s.listSessions)
		r.Get("/sessions/{key}", s.getSession)
		r.Get("/chargers", s.listChargers)
		r.Get("/chargers/{id}", s.getCharger)
		r.Get("/stats", s.stats)
		r.Get("/audit", s.auditSessions)
	})
	return r
}

// methodNotAllowed answers 405 with the Allow header listing the methods the path has.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	path := r.URL.RawPath // what chi routes on when set
	if path == "" {
		path = r.URL.Path
	}
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if s.router.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeProblem(w, Problem{Status: http.StatusMethodNotAllowed,
		Detail: "method " + truncate(r.Method, 16) + " not allowed; allowed: " + strings.Join(allowed, ", ")})
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a handler panic into a 500 problem (when nothing was sent yet) and a log
// line with the stack, keeping the server up.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			if rec == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
				panic(rec)
			}
			s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
			if ww, ok := w.(middleware.WrapResponseWriter); ok && ww.Status() != 0 {
				return // headers already sent: the client sees a truncated response
			}
			writeProblem(w, Problem{Status: http.StatusInternalServerError, Detail: "internal error"})
		}()
		next.ServeHTTP(w, r)
	})
}

// observe records the request metrics and logs each request at debug level. The route label
// is chi's route pattern, never the raw path, so its cardinality is the number of routes.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		route := routeLabel(r)
		method := methodLabel(r.Method)
		elapsed := time.Since(start)
		s.metrics.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())
		s.log.Debug("http request", "method", r.Method, "route", route, "path", r.URL.Path,
			"query", r.URL.RawQuery, "status", status, "bytes", ww.BytesWritten(), "duration", elapsed)
	})
}

// routeLabel is the matched route pattern as registered (RoutePattern() would drop the
// trailing slash of /readings/ and merge it with /readings), or "unmatched".
func routeLabel(r *http.Request) string {
	rctx := chi.RouteContext(r.Context())
	if rctx == nil || len(rctx.RoutePatterns) == 0 {
		return "unmatched"
	}
	p := strings.Join(rctx.RoutePatterns, "")
	p = strings.ReplaceAll(p, "/*/", "/")
	if p == "" || p == "/*" {
		return "unmatched"
	}
	return p
}

// methodLabel keeps the method label bounded: clients can send any token as a method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	shed     *prometheus.CounterVec
	cache    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chargesim_api_requests_total",
			Help: "HTTP requests served by the API, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chargesim_api_request_duration_seconds",
			Help:    "Time to serve an API request, by method and route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25},
		}, []string{"method", "route"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chargesim_api_shed_total",
			Help: "Requests answered 503 with Retry-After because their route's database slots stayed busy for --queue-wait (deliberate load shedding).",
		}, []string{"route"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chargesim_api_cache_requests_total",
			Help: "Cacheable requests by route and result: hit (a fresh cached answer or one shared with an identical request in flight) or miss (computed).",
		}, []string{"route", "result"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.shed, m.cache} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register api metrics: %w", err)
		}
	}
	return m, nil
}
