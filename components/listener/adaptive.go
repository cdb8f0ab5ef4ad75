package listener

import (
	"sync"
	"time"
)

// Adaptive write concurrency. How many bulk writes are worth having in flight depends on the
// store, not on us: MongoDB runs concurrent inserts in parallel, so more writes in flight
// means more throughput; FerretDB on SQLite has one writer at a time, so a second write only
// waits (measured: a ~470-document write takes ~0.05 s alone and ~0.2 s with 4 in flight, for
// the same total throughput), and every write beyond the second adds latency, contention and
// CPU for nothing. A fixed --write-concurrency is right for one of them only.
//
// So --write-concurrency is the ceiling and the limit in force follows the store, TCP-Vegas
// style, from the write latency per document (normalised per document because batches grow
// and shrink with the load):
//
//	queue = limit × (1 − best/recent)
//
// is the estimated number of writes waiting inside the store (best: the lowest per-document
// latency of the recent past, i.e. the store working for one write; recent: the smoothed
// current latency). A store that serialises writes makes recent ≈ limit × best, so queue ≈
// limit − 1; a store that parallelises keeps recent ≈ best and queue ≈ 0. The limit grows
// while queue < vegasAlpha and shrinks when queue > vegasBeta: on SQLite it settles at 2 (one
// write executing, the next already in the store, no idle gap between them), on MongoDB it
// climbs to the ceiling.
const (
	vegasAlpha = 0.5
	vegasBeta  = 1.5
	// Decisions are taken every adaptEvery full-size writes. Every baselineWrites the baseline
	// is measured again by a probe (2×adaptEvery writes at limit 1): under constant saturation
	// no write runs alone, and a baseline kept from old writes would drift (a store that got
	// slower for good) or never be seen (writes always overlap).
	adaptEvery     = 4
	baselineWrites = 200
	// Only writes of at least this fraction of --batch-size feed the controller: a small batch
	// is dominated by the per-write cost and would look slow per document.
	adaptMinFill = 0.5
	ewmaWeight   = 0.25
)

// writeLimiter lets at most limit writers hold a permit; limit moves between 1 and max.
type writeLimiter struct {
	max       int
	batchSize int
	onLimit   func(int) // told each new limit (metric)

	mu       sync.Mutex
	cond     *sync.Cond
	limit    int
	inflight int
	closed   bool

	recent  float64 // EWMA of seconds per document
	best    float64 // baseline: lowest seconds per document, measured alone (probe) or since
	writes  int     // full-size writes since the last probe
	samples int     // full-size writes since the last decision
	probing int     // > 0: writes left in the current probe
	saved   int     // the limit to restore after the probe
}

func newWriteLimiter(max, batchSize int, onLimit func(int)) *writeLimiter {
	l := &writeLimiter{max: max, batchSize: batchSize, onLimit: onLimit, limit: max}
	l.cond = sync.NewCond(&l.mu)
	if onLimit != nil {
		onLimit(l.limit)
	}
	return l
}

// acquire blocks until a permit is free; false once closed (the writer should exit).
func (l *writeLimiter) acquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.inflight >= l.limit && !l.closed {
		l.cond.Wait()
	}
	if l.closed {
		return false
	}
	l.inflight++
	return true
}

func (l *writeLimiter) release() {
	l.mu.Lock()
	l.inflight--
	l.mu.Unlock()
	l.cond.Signal()
}

// close wakes every waiting writer for good.
func (l *writeLimiter) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cond.Broadcast()
}

// current is the limit in force.
func (l *writeLimiter) current() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}

// observe feeds one successful write of docs documents that took d.
func (l *writeLimiter) observe(d time.Duration, docs int) {
	if l.max == 1 || float64(docs) < adaptMinFill*float64(l.batchSize) || docs == 0 {
		return
	}
	perDoc := d.Seconds() / float64(docs)
	l.mu.Lock()
	if l.recent == 0 {
		l.recent = perDoc
	} else {
		l.recent += ewmaWeight * (perDoc - l.recent)
	}
	old := l.limit
	switch {
	case l.probing > 0:
		// The first half of a probe lets the writes started at the old limit finish; the
		// second half runs alone and sets the baseline.
		l.probing--
		if l.probing < adaptEvery && (l.best == 0 || perDoc < l.best) {
			l.best = perDoc
		}
		if l.probing == 0 {
			l.limit, l.recent, l.samples = l.saved, 0, 0
		}
	case l.best == 0 || l.writes >= baselineWrites:
		l.probing, l.saved, l.limit, l.best, l.writes = 2*adaptEvery, l.limit, 1, 0, 0
	default:
		l.writes++
		l.best = min(l.best, perDoc)
		if l.samples++; l.samples >= adaptEvery {
			l.samples = 0
			queue := float64(l.limit) * (1 - l.best/l.recent)
			switch {
			case queue < vegasAlpha && l.limit < l.max:
				l.limit++
			case queue > vegasBeta && l.limit > 1:
				l.limit--
			}
		}
	}
	limit := l.limit
	l.mu.Unlock()
	if limit != old {
		l.cond.Broadcast()
		if l.onLimit != nil {
			l.onLimit(limit)
		}
	}
}
