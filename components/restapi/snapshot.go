package restapi

// The snapshot read model (store.Snapshot): on a store without usable indexes (FerretDB v1)
// the API answers totals, charger lists, /readings/ and the first pages of /api/v1/sessions
// from a snapshot kept in memory and refreshed in the background: on the time-partitioned
// layout incrementally (store.Incremental: closed partitions are read once), else by one scan
// of the stored sessions. One refresh runs at a time whatever the number of clients, so
// readers cannot crowd the store out of the listener's writes; responses carry the refresh's
// start time (X-Data-As-Of) and age.
//
// On the partitioned layout a refresh may scan for seconds (a closed partition, the newest
// sessions of a filling one), so the totals have a fast path beside it: the deltas of the
// partitions that are not final (store.Overlay: a few small documents each) are read again
// on top of the current snapshot's exact figures at most once per --cache-ttl, even while a
// refresh scans. Totals then say how far they are exact (X-Data-Exact-Until).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/chargesim/chargesim/components/store"
)

// errScanPending is returned when no snapshot recent enough exists and the scan computing one
// did not finish within the request's time limit.
var errScanPending = errors.New("the first scan of the stored sessions is still running")

// snapshotNewest is how many of the newest sessions a snapshot keeps: /readings/ and the
// first 102 pages of 100 of /api/v1/sessions, plus the one that tells whether another page
// follows (about 10 MB).
const snapshotNewest = 102*100 + 1

// snapshots keeps the current snapshot and runs one scan at a time.
type snapshots struct {
	log     *slog.Logger
	ttl     time.Duration // a snapshot younger than this is served without a refresh
	timeout time.Duration // time limit of one scan (sent as maxTimeMS)
	newestK int

	mu       sync.Mutex
	cur      *store.Snapshot
	prev     *store.Snapshot // the snapshot before cur: a client walking pages keeps its place for one more refresh
	running  chan struct{}   // closed when the running scan ends; nil when none runs
	started  time.Time       // start of the running scan
	lastErr  error
	lastEnd  time.Time
	lastTook time.Duration

	// inc is the incremental read model of a partitioned store (FerretDB), used by one
	// refresh at a time (the running one).
	inc      *store.Incremental
	incStore *store.Store
	incWarm  bool // inc has completed a refresh (used by the refresh goroutine only)
	// incremental is set (under mu) once refreshes read only what changed.
	incremental bool

	// The fast path of the partitioned read model: one overlay (the deltas of the non-final
	// partitions over the current snapshot's base) at a time, paced by its own duration.
	overlaying  bool
	overlayEnd  time.Time
	overlayTook time.Duration
}

// pauseLocked is the pause between two refreshes: twice the last one's duration for full
// scans (the API scans at most a third of the time), once for incremental refreshes, which
// read only the open partitions (at most half the time).
func (m *snapshots) pauseLocked() time.Duration {
	if m.incremental {
		return m.lastTook
	}
	return 2 * m.lastTook
}

// refresh computes a new snapshot: incrementally on a partitioned store (only open and
// late-written partitions are read again), by one scan of the sessions otherwise.
// cold reports a refresh that read every partition: the first of an incremental model.
func (m *snapshots) refresh(ctx context.Context, st *store.Store) (sn *store.Snapshot, cold bool, err error) {
	partitioned, err := st.Partitioned(ctx)
	if err != nil {
		return nil, false, err
	}
	if !partitioned {
		sn, err = st.ScanSnapshot(ctx, m.newestK)
		return sn, false, err
	}
	if m.inc == nil || m.incStore != st {
		m.inc, m.incStore, m.incWarm = store.NewIncremental(st, m.newestK), st, false
		// With a cache (ttl > 0) a partition still filling is read again at most once per
		// partition width: its figures may be that old, and X-Data-As-Of says so. Without
		// one, every refresh reads it (each answer is as of after its request).
		if m.ttl > 0 {
			if m.inc.OpenRescan, err = st.PartitionWidth(ctx); err != nil {
				return nil, false, err
			}
		}
	}
	sn, err = m.inc.Refresh(ctx)
	cold = err == nil && !m.incWarm
	if err == nil {
		m.incWarm = true
	}
	return sn, cold, err
}

// get returns a snapshot: a fresh one (younger than ttl), else the current one while a
// refresh runs in the background (stale-while-revalidate; never more than one scan at a time,
// and at most a third of the time scanning), else it waits for a scan that started after this
// call, until ctx ends.
func (m *snapshots) get(ctx context.Context, st *store.Store) (*store.Snapshot, error) {
	begin := time.Now()
	for {
		m.mu.Lock()
		if m.cur != nil && begin.Sub(m.cur.AsOf) <= m.ttl {
			cur := m.cur
			m.mu.Unlock()
			return cur, nil
		}
		if m.cur != nil && m.ttl > 0 {
			cur := m.cur
			if m.running == nil && time.Since(m.lastEnd) >= m.pauseLocked() {
				m.startLocked(st)
			} else if m.incremental && !m.overlaying && time.Since(m.overlayEnd) >= m.overlayTook {
				m.startOverlayLocked(st, cur)
			}
			m.mu.Unlock()
			return cur, nil
		}
		if m.running == nil {
			m.startLocked(st)
		}
		done, startedBeforeUs := m.running, m.started.Before(begin)
		m.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, errScanPending
		}
		m.mu.Lock()
		err := m.lastErr
		m.mu.Unlock()
		if err != nil && !startedBeforeUs {
			return nil, err
		}
	}
}

func (m *snapshots) startLocked(st *store.Store) {
	done := make(chan struct{})
	m.running, m.started = done, time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
		defer cancel()
		sn, cold, err := m.refresh(ctx, st)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.lastErr, m.lastEnd, m.running = err, time.Now(), nil
		m.lastTook = m.lastEnd.Sub(m.started)
		m.incremental = m.incWarm && m.incStore == st
		if cold && err == nil {
			// The first refresh of an incremental model read every partition; the next ones
			// read only what changed, so they are not paced by this one.
			m.lastTook = 0
		}
		if err == nil {
			if m.cur == nil || m.cur.Base() != sn.Base() {
				m.prev = m.cur
			}
			m.cur = sn
		} else {
			m.log.Warn("scan of the stored sessions failed", "err", err, "took", m.lastTook)
		}
		close(done)
	}()
}

// startOverlayLocked reads the deltas of the non-final partitions again on top of cur's base
// (store.Overlay), beside a refresh that may be scanning: the totals move within about a
// --cache-ttl of a session being stored.
func (m *snapshots) startOverlayLocked(st *store.Store, cur *store.Snapshot) {
	m.overlaying = true
	started := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
		defer cancel()
		sn, err := st.Overlay(ctx, cur)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.overlaying, m.overlayEnd = false, time.Now()
		m.overlayTook = m.overlayEnd.Sub(started)
		if err != nil {
			m.log.Warn("read of the provisional totals (deltas) failed", "err", err, "took", m.overlayTook)
			return
		}
		// A refresh that ended meanwhile published a newer base with its own deltas: keep it.
		if m.cur != nil && m.cur.Base() == sn.Base() && sn.AsOf.After(m.cur.AsOf) {
			m.cur = sn
		}
	}()
}

// previous returns the snapshot before the current one, or nil.
func (m *snapshots) previous() *store.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.prev
}

// retryAfter estimates, in whole seconds, when the running scan will be done.
func (m *snapshots) retryAfter() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	left := m.lastTook - time.Since(m.started)
	return max(1, min(int(math.Ceil(left.Seconds())), 300))
}

// snapshotFunc answers a request from a snapshot: the value to send, or a not-found detail,
// or ok false when the snapshot cannot answer it (the store is asked instead).
type snapshotFunc func(sn *store.Snapshot) (v any, notFound string, ok bool)

// serveSnapshot answers from the snapshot read model when the server uses it; it reports
// false when the request must be answered by the store's queries instead.
// totals marks answers made of totals (else lists of sessions): they carry
// X-Data-Exact-Until, and their X-Data-As-Of is when the totals were read, not the sessions.
func (s *Server) serveSnapshot(w http.ResponseWriter, r *http.Request, totals bool, answer snapshotFunc) bool {
	if !s.useSnapshots() {
		return false
	}
	st := s.st.Load()
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	sn, err := s.snaps.get(ctx, st)
	switch {
	case r.Context().Err() != nil:
		s.writeStoreError(w, r, r.Context().Err())
		return true
	case errors.Is(err, errScanPending):
		after := s.snaps.retryAfter()
		w.Header().Set("Retry-After", strconv.Itoa(after))
		writeProblem(w, Problem{Status: http.StatusServiceUnavailable,
			Detail: fmt.Sprintf("the stored sessions are being read for the first time; retry in %d s", after)})
		return true
	case err != nil:
		s.writeStoreError(w, r, err)
		return true
	}
	v, notFound, ok := answer(sn)
	if !ok {
		// A page the current snapshot no longer holds may still be in the previous one.
		if prev := s.snaps.previous(); prev != nil {
			sn = prev
			v, notFound, ok = answer(sn)
		}
	}
	if !ok {
		return false
	}
	asOf := sn.SessionsAsOf
	if totals {
		asOf = sn.AsOf
	}
	fresh := func() {
		setFreshness(w.Header(), asOf, s.cfg.CacheTTL)
		if totals {
			setExactUntil(w.Header(), sn.ExactUntil)
		}
	}
	if body, isBody := v.(json.RawMessage); isBody {
		fresh()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		return true
	}
	if notFound != "" {
		writeNotFound(w, notFound)
		return true
	}
	fresh()
	writeJSON(w, s.log, http.StatusOK, v)
	return true
}

// useSnapshots reports whether the connected store is read through snapshots.
func (s *Server) useSnapshots() bool {
	if s.snaps == nil {
		return false
	}
	st := s.st.Load()
	if st == nil {
		return false
	}
	switch s.cfg.ReadModel {
	case ReadModelSnapshot:
		return true
	case ReadModelQueries:
		return false
	}
	return st.NoIndexes()
}

// readingsBody returns /readings/ of sn, encoded once per snapshot.
func (s *Server) readingsBody(sn *store.Snapshot) (json.RawMessage, bool) {
	// Keyed by the snapshot holding the sessions (its base: the overlays of provisional
	// totals on top of one base list the same sessions), not by AsOf: two incremental
	// snapshots may share an AsOf while other partitions changed.
	if c := s.readingsMemo.Load(); c != nil && c.snap == sn.Base() {
		return c.body, true
	}
	docs, _, ok := sn.Sessions(store.SessionQuery{Limit: ReadingsLimit})
	if !ok {
		return nil, false
	}
	b, err := json.Marshal(sessionViews(docs))
	if err != nil {
		return nil, false
	}
	body := json.RawMessage(append(b, '\n'))
	s.readingsMemo.Store(&cached{body: body, asOf: sn.SessionsAsOf, snap: sn.Base()})
	return body, true
}
