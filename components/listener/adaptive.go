package listener

import (
	"sync"
	"time"
)

// Adaptive write concurrency. How many bulk writes are worth having in flight depends on the
// store, not on us: MongoDB runs concurrent inserts in parallel, so more writes in flight
// means more throughput; FerretDB on SQLite has one writer at a time, so a second write only
// waits, and waiting costs: with 2 writes in flight FerretDB spent 10-20% more CPU per document
// than with 1 and stored 10-20% fewer per second (interleaved rounds, FerretDB on a core of its
// own, docs/performance.md), since the waiting transaction sleeps in SQLite's busy handler
// and retries. A fixed --write-concurrency is right for one of them only.
//
// So --write-concurrency is the ceiling and the limit in force climbs only while a write more
// in flight buys throughput. The throughput at limit L, relative to one write alone, is
// estimated from the write latency per document (normalised per document because batches grow
// and shrink with the load):
//
//	speedup(L) = L × best / recent
//
// (best: the per-document latency of a write alone, measured by a probe; recent: the smoothed
// latency at L). A store that serialises writes makes recent ≥ L × best, so speedup(2) ≤ 1; a
// store that parallelises keeps recent ≈ best and speedup(L) ≈ L. From 1 the limit climbs by
// one while speedup(L) ≥ (1 + minGain) × speedup(L−1), and steps back at the first step that
// does not pay, not to try it again before the next probe: on SQLite it stays at 1, on MongoDB
// it climbs to the ceiling.
//
// A step that does not pay costs while it is tried: on SQLite the 2 writes in flight take
// twice as long each, plus the busy handler's sleeps (listener benchmark: the 4 writes of a
// trial cost ~3% of a 30,000-document run). So a trial ends at its first write that ran
// entirely at the new limit if that write alone shows the step losing (speedup below
// (1 − minGain) × the limit below), and every climb that ends below the ceiling doubles the
// time to the next probe, up to maxProbeInterval writes: a serialising store pays for a
// trial of ~2 writes every 1,600.
const (
	minGain = 0.1
	// Decisions are taken every adaptEvery full-size writes at a limit. Every baselineWrites
	// the baseline is measured again by a probe (2×adaptEvery writes at limit 1, then the climb
	// restarts): under constant saturation no write runs alone, and a baseline kept from old
	// writes would drift (a store that got slower for good) or never be seen (writes always
	// overlap), and a store whose concurrency changed gets another climb.
	adaptEvery       = 4
	baselineWrites   = 200
	maxProbeInterval = 8 * baselineWrites
	// Only writes of at least this fraction of --batch-size feed the controller: a small batch
	// is dominated by the per-write cost and would look slow per document.
	adaptMinFill = 0.5
	ewmaWeight   = 0.25
)

// stepBack undoes a step that did not pay: no higher until the next probe, which comes later
// each time. Called with mu held.
func (l *writeLimiter) stepBack() {
	l.limit--
	l.ceiling = l.limit
	l.every = min(2*l.every, maxProbeInterval)
}

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

	recent  float64   // EWMA of seconds per document at the limit in force
	best    float64   // baseline: lowest seconds per document, measured alone (probe) or since
	writes  int       // full-size writes since the last probe
	samples int       // full-size writes since the last decision
	probing int       // > 0: writes left in the current probe
	every   int       // full-size writes between probes: baselineWrites, doubled per failed climb
	speedup []float64 // speedup[L]: throughput at limit L ÷ one write alone, since the last probe
	ceiling int       // the highest limit to try before the next probe
}

func newWriteLimiter(max, batchSize int, onLimit func(int)) *writeLimiter {
	// It starts at 1, measuring the baseline: a first burst of max writes at once costs a store
	// that serialises them (SQLite) ~15% per write while they wait, and the climb to max on a
	// store that runs them in parallel takes a few writes. The limit only matters once batches
	// are full, that is once one write at a time falls behind.
	l := &writeLimiter{max: max, batchSize: batchSize, onLimit: onLimit, limit: 1, ceiling: max,
		probing: adaptEvery, every: baselineWrites, speedup: make([]float64, max+1)}
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

// keep reports whether a writer holding a permit may keep it for its next write; if not (the
// limit went down), the permit is released and the writer must acquire again.
func (l *writeLimiter) keep() bool {
	l.mu.Lock()
	ok := l.inflight <= l.limit
	if !ok {
		l.inflight--
	}
	l.mu.Unlock()
	if !ok {
		l.cond.Signal()
	}
	return ok
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
		// second half runs alone and sets the baseline. Then the climb starts again from 1.
		l.probing--
		if l.probing < adaptEvery && (l.best == 0 || perDoc < l.best) {
			l.best = perDoc
		}
		if l.probing == 0 {
			clear(l.speedup)
			l.speedup[1], l.ceiling = 1, l.max
			l.limit = min(2, l.max)
		}
	case l.best == 0 || l.writes >= l.every:
		l.probing, l.limit, l.best, l.writes = 2*adaptEvery, 1, 0, 0
	default:
		l.writes++
		l.best = min(l.best, perDoc)
		l.samples++
		// The first write seen at a new limit started under the old one: it cannot tell.
		if l.limit > 1 && l.samples > 1 && float64(l.limit)*l.best/perDoc < (1-minGain)*l.speedup[l.limit-1] {
			l.stepBack()
			break
		}
		if l.samples >= adaptEvery {
			l.samples = 0
			sp := float64(l.limit) * l.best / l.recent
			l.speedup[l.limit] = sp
			switch {
			case l.limit > 1 && sp < (1+minGain)*l.speedup[l.limit-1]:
				l.stepBack()
			case l.limit < l.ceiling:
				l.limit++
				if l.limit == l.max {
					l.every = baselineWrites // climbed all the way: probe at the usual pace
				}
			}
		}
	}
	if l.limit != old {
		l.recent, l.samples = 0, 0 // measure the new limit afresh
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
