package restapi

// Protection of the store from its readers. Three mechanisms, each documented in
// docs/architecture.md ("API: protecting the store"):
//   - a response cache: figures that may be a second old (totals, lists) are computed at most
//     once per --cache-ttl per distinct request, and concurrent identical requests share one
//     computation (single flight). The response says how old its data is (X-Data-As-Of, Age).
//   - a concurrency bound per route: at most --route-concurrency store computations of one
//     route run at once. A request that finds no free slot within --queue-wait is shed
//     deliberately: 503 problem+json with a Retry-After estimated from the route's recent
//     query time and queue, and counted in chargesim_api_shed_total{route}.
//   - server-side time limits: every query runs under --query-timeout, which the driver sends
//     as maxTimeMS, so the database abandons the work too, not only the client.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chargesim/chargesim/components/store"
)

// errShed is returned by routeGuard.acquire when no slot freed within the queue wait.
var errShed = errors.New("route busy")

// routeGuard bounds the concurrent store work of one route.
type routeGuard struct {
	slots   chan struct{}
	wait    time.Duration
	queued  atomic.Int64
	avgNano atomic.Int64 // moving average of the computation time, for Retry-After
}

func newRouteGuard(concurrency int, wait time.Duration) *routeGuard {
	return &routeGuard{slots: make(chan struct{}, concurrency), wait: wait}
}

// acquire takes a slot, waiting at most g.wait (or until ctx ends). The returned release
// records how long the work took.
func (g *routeGuard) acquire(ctx context.Context) (release func(), err error) {
	g.queued.Add(1)
	defer g.queued.Add(-1)
	select {
	case g.slots <- struct{}{}:
	default:
		t := time.NewTimer(g.wait)
		defer t.Stop()
		select {
		case g.slots <- struct{}{}:
		case <-t.C:
			return nil, errShed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	start := time.Now()
	return func() {
		d := time.Since(start).Nanoseconds()
		// EWMA with weight 1/8: follows a slowing store within a few requests.
		for {
			old := g.avgNano.Load()
			v := d
			if old != 0 {
				v = old + (d-old)/8
			}
			if g.avgNano.CompareAndSwap(old, v) {
				break
			}
		}
		<-g.slots
	}, nil
}

// retryAfter estimates, in whole seconds (at least 1), when a shed request would find a free
// slot: the work queued ahead of it divided among the slots, at the recent computation time.
func (g *routeGuard) retryAfter() int {
	avg := time.Duration(g.avgNano.Load())
	ahead := float64(g.queued.Load()+int64(len(g.slots))) / float64(cap(g.slots))
	secs := int(math.Ceil(ahead * avg.Seconds()))
	return max(1, min(secs, 60))
}

// cached is one computed response.
type cached struct {
	status int
	body   []byte // JSON, or a problem document for errors
	asOf   time.Time
	err    error           // a store error: written by writeStoreError, never cached beyond its flight
	snap   *store.Snapshot // the snapshot a memoised body was computed from
}

// flight is a computation in progress that identical requests wait for.
type flight struct {
	done chan struct{}
	res  cached
}

// responseCache holds recent responses by request key, at most maxEntries of them.
type responseCache struct {
	ttl        time.Duration
	maxEntries int
	mu         sync.Mutex
	entries    map[string]cached
	flights    map[string]*flight
}

func newResponseCache(ttl time.Duration, maxEntries int) *responseCache {
	return &responseCache{ttl: ttl, maxEntries: maxEntries, entries: map[string]cached{}, flights: map[string]*flight{}}
}

// get returns the response for key: a fresh cached one, the result of a computation already
// running for key, or the result of compute (run by this caller, which then shares it).
func (c *responseCache) get(ctx context.Context, key string, compute func() cached) (cached, bool, error) {
	now := time.Now()
	c.mu.Lock()
	if e, ok := c.entries[key]; ok && now.Sub(e.asOf) < c.ttl {
		c.mu.Unlock()
		return e, true, nil
	}
	if f, ok := c.flights[key]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.res, true, nil
		case <-ctx.Done():
			return cached{}, false, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	c.flights[key] = f
	c.mu.Unlock()

	defer func() {
		c.mu.Lock()
		delete(c.flights, key)
		if f.res.err == nil && f.res.status == http.StatusOK && c.ttl > 0 {
			c.store(key, f.res)
		}
		c.mu.Unlock()
		close(f.done)
	}()
	f.res = compute()
	return f.res, false, nil
}

// store keeps res under key, first dropping expired entries when the cache is full; when
// it is still full the response is not kept (the bound holds, the next request recomputes).
func (c *responseCache) store(key string, res cached) {
	if len(c.entries) >= c.maxEntries {
		now := time.Now()
		for k, e := range c.entries {
			if now.Sub(e.asOf) >= c.ttl {
				delete(c.entries, k)
			}
		}
	}
	if len(c.entries) < c.maxEntries {
		c.entries[key] = res
	}
}

// maxCacheEntries bounds the response cache: with pages of at most 1000 items this keeps
// the API's memory bounded whatever keys clients send.
const maxCacheEntries = 512

// setFreshness tells the client how old the data of a response is.
func setFreshness(h http.Header, asOf time.Time, ttl time.Duration) {
	h.Set("X-Data-As-Of", asOf.UTC().Format(time.RFC3339Nano))
	h.Set("Age", strconv.Itoa(int(time.Since(asOf).Seconds())))
	h.Set("Cache-Control", "max-age="+strconv.Itoa(int(math.Ceil(ttl.Seconds()))))
}

// setExactUntil says up to when an answer's totals are exact sums over what is stored:
// the sessions that ended later are counted from the partitioned read model's deltas,
// which may undercount (a delta lost to a crash or a refused write) until their partition
// closes and is scanned, never overcount.
func setExactUntil(h http.Header, t time.Time) {
	h.Set("X-Data-Exact-Until", t.UTC().Format(time.RFC3339Nano))
}

// readFunc computes a read of the store: the value to send as JSON, or a not-found detail,
// or an error.
type readFunc func(ctx context.Context, st *store.Store) (v any, notFound string, err error)

// serveRead answers a read of the store under route's guard, through the response cache when
// cacheKey is not "" (and the cache is on).
func (s *Server) serveRead(w http.ResponseWriter, r *http.Request, route, cacheKey string, read readFunc) {
	st := s.st.Load()
	if st == nil {
		s.writeNotConnected(w)
		return
	}
	if r.Context().Err() != nil {
		s.writeStoreError(w, r, r.Context().Err()) // gone before we started: no work for nobody
		return
	}
	g := s.guards[route]
	limit := s.cfg.QueryTimeout
	if route == routeAudit {
		limit = cmp.Or(s.cfg.AuditTimeout, defaultAuditTimeout)
		// Past the server's write timeout: the audit's own limit decides, and a slow scan
		// still ends in an answer (503 at worst) rather than a dropped connection.
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(limit + 5*time.Second)); err != nil {
			s.log.Debug("audit: cannot extend the write deadline", "err", err)
		}
	}
	compute := func() cached {
		// Detached from this request's cancellation: identical requests waiting for this
		// computation (and the cache) still get its result if this client goes away. The
		// query timeout, sent as maxTimeMS, still bounds the work on both sides.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), limit)
		defer cancel()
		release, err := g.acquire(ctx)
		if err != nil {
			return cached{err: err}
		}
		defer release()
		if st.NoIndexes() && route != routeSession {
			// Without indexes every such query scans and decodes the whole collection: one at
			// a time across all routes (besides the snapshot scan), so that readers leave the
			// store to the listener's writes.
			releaseScan, err := s.scanGuard.acquire(ctx)
			if err != nil {
				return cached{err: err}
			}
			defer releaseScan()
		}
		asOf := time.Now()
		v, notFound, err := read(ctx, st)
		switch {
		case err != nil:
			return cached{err: err}
		case notFound != "":
			return cached{status: http.StatusNotFound, body: []byte(notFound), asOf: asOf}
		}
		b, err := json.Marshal(v)
		if err != nil {
			return cached{err: fmt.Errorf("encode response: %w", err)}
		}
		return cached{status: http.StatusOK, body: append(b, '\n'), asOf: asOf}
	}
	var res cached
	if cacheKey == "" || s.cache == nil {
		res = compute()
	} else {
		var hit bool
		var err error
		res, hit, err = s.cache.get(r.Context(), route+"\x00"+cacheKey, compute)
		if err != nil {
			s.writeStoreError(w, r, err) // this client went away while waiting
			return
		}
		s.metrics.cache.WithLabelValues(route, map[bool]string{true: "hit", false: "miss"}[hit]).Inc()
	}
	switch {
	case r.Context().Err() != nil:
		// The client left while its answer was computed (for the cache and identical requests).
		s.writeStoreError(w, r, r.Context().Err())
	case errors.Is(res.err, errShed):
		s.metrics.shed.WithLabelValues(route).Inc()
		after := g.retryAfter()
		w.Header().Set("Retry-After", strconv.Itoa(after))
		writeProblem(w, Problem{Status: http.StatusServiceUnavailable,
			Detail: fmt.Sprintf("too many concurrent %s requests for the database; retry in %d s", route, after)})
	case res.err != nil:
		s.writeStoreError(w, r, res.err)
	case res.status == http.StatusNotFound:
		writeNotFound(w, string(res.body))
	default:
		if s.cache != nil && cacheKey != "" {
			setFreshness(w.Header(), res.asOf, s.cfg.CacheTTL)
		} else {
			w.Header().Set("X-Data-As-Of", res.asOf.UTC().Format(time.RFC3339Nano))
		}
		if route == routeStats || route == routeChargers || route == routeCharger {
			setExactUntil(w.Header(), res.asOf) // queried whole: exact as of the read
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(res.body)
	}
}

// notConnectedRetryAfter is the Retry-After of answers given before the store is connected:
// the connection is retried with a backoff of at most 10 s, usually much less.
const notConnectedRetryAfter = "2"

func (s *Server) writeNotConnected(w http.ResponseWriter) {
	w.Header().Set("Retry-After", notConnectedRetryAfter)
	writeProblem(w, Problem{Status: http.StatusServiceUnavailable, Detail: "the database is not connected yet; retry later"})
}
