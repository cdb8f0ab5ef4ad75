package listener

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/chargesim/chargesim/components/store"
)

// The pipeline between the MQTT handler and the store:
//
//	handler (paho router goroutine) ─admit─▶ in ─▶ batcher ─▶ batches ─▶ writers ×N ─▶ store
//	        └──────────── push (receive order) ─▶ sequencer ◀── markStored ──┘
//	                                                  └─▶ acker: Ack() in receive order, then free the slot
//
// A message holds one of maxPending slots from admission until it is acknowledged. When all
// slots are taken the handler blocks, paho's router stops reading, and the backpressure
// reaches the broker through TCP. Nothing is ever dropped: a message not stored is not
// acknowledged, and the broker redelivers it.

// acker is what the pipeline needs of a message: mqtt.Message satisfies it.
type acker interface{ Ack() }

// entry is one received message on its way to the store.
type entry struct {
	msg      acker
	session  *store.SessionDoc  // exactly one of session and rejected is set
	rejected *store.RejectedDoc //
	stored   bool               // guarded by sequencer.mu
}

// batch is what one writer stores in one go. Its sub-writes are idempotent and remembered, so
// a retry after a partial failure redoes only what failed.
type batch struct {
	entries      []*entry
	built        bool // sessions and rejected filled from entries
	sessions     []store.SessionDoc
	rejected     []store.RejectedDoc
	sessionsDone bool
	rejectedDone bool
	// sessionsTried: an insert of sessions failed, and a failed insert may have been applied
	// (a timeout after the server wrote): the next attempt's duplicates are checked.
	sessionsTried bool
}

// sinkFunc stores a batch; nil means every entry of b is durably stored.
type sinkFunc func(ctx context.Context, b *batch) error

// Retry policy of a failing write: capped exponential backoff with jitter, forever while
// running. Each attempt has its own deadline so a hung connection cannot stall a writer.
const (
	minBackoff   = 50 * time.Millisecond
	maxBackoff   = 5 * time.Second
	writeTimeout = 30 * time.Second
)

// quietFlush is how long the input must pause before a non-empty batch is written early. A
// broker that caps unacknowledged deliveries (mosquitto's max_inflight_messages defaults to 20)
// stops sending until we acknowledge, and we acknowledge only after writing: without this, every
// window of messages would wait the whole flush interval.
const quietFlush = 2 * time.Millisecond

type pipelineConfig struct {
	batchSize   int
	interval    time.Duration
	quiet       time.Duration // 0: no early flush on pause
	maxPending  int
	concurrency int       // ceiling of bulk writes in flight; the limit in force adapts (adaptive.go)
	onLimit     func(int) // told each new limit in force (nil: nobody)
}

type pipeline struct {
	cfg  pipelineConfig
	sink sinkFunc
	m    *metrics
	log  *slog.Logger
	lim  *logLimiter

	// onBlocked, when set, is told how long admission waited for a free slot (backpressure).
	onBlocked func(time.Duration)

	limit   *writeLimiter // how many of the concurrency writers may write at once (adaptive.go)
	slots   chan struct{} // one token per admitted, not yet acknowledged message
	in      chan *entry   // capacity maxPending: never blocks an admitted message
	batches chan *batch   // unbuffered: writers pull, so a batch grows while they are busy
	seq     sequencer
	// stored carries each stored batch's entries from its writer to the completer, which marks
	// them stored for the acker: a writer goes on to its next write first (see writer).
	stored chan []*entry

	gate   sync.RWMutex // submit holds it shared; close takes it to stop submissions
	closed bool
	stop   chan struct{} // closed by close(): drain and stop

	writersDone chan struct{}
	done        chan struct{} // closed when everything that will ever be acked has been

	// holdAck, when set, is asked before each acknowledgement; once it returns false nothing
	// more is acknowledged (tests: a crash between storing and acknowledging).
	holdAck func() bool
}

func newPipeline(cfg pipelineConfig, sink sinkFunc, m *metrics, log *slog.Logger) *pipeline {
	limit := newWriteLimiter(cfg.concurrency, cfg.batchSize, cfg.onLimit)
	return &pipeline{
		cfg:   cfg,
		limit: limit,
		// The controller learns from successful writes only: a failed attempt says nothing
		// about how many writes the store takes at once.
		sink: func(ctx context.Context, b *batch) error {
			start := time.Now()
			err := sink(ctx, b)
			if err == nil {
				limit.observe(time.Since(start), len(b.entries))
			}
			return err
		},
		m:           m,
		log:         log,
		lim:         newLogLimiter(logInterval, nil),
		slots:       make(chan struct{}, cfg.maxPending),
		in:          make(chan *entry, cfg.maxPending),
		batches:     make(chan *batch),
		seq:         sequencer{signal: make(chan struct{}, 1)},
		stored:      make(chan []*entry, cfg.concurrency),
		stop:        make(chan struct{}),
		writersDone: make(chan struct{}),
		done:        make(chan struct{}),
	}
}

// start runs the batcher, writers and acker. Writes are attempted until they succeed or hard
// is cancelled (the shutdown deadline).
func (p *pipeline) start(hard context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < p.cfg.concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.writer(hard)
		}()
	}
	go func() {
		wg.Wait()
		close(p.stored)
	}()
	go func() { // the completer
		for es := range p.stored {
			p.seq.markStored(es)
		}
		close(p.writersDone)
	}()
	go p.batcher()
	go p.acker()
}

// admit takes a pending slot for one message, blocking while all are taken. It gives up (and
// the message stays unacknowledged, for the broker to redeliver) when the pipeline stops or
// connected reports the connection gone: paho cannot reconnect while its router is blocked
// in our handler.
//
// While we block, paho reads nothing from the socket (its reader waits to hand us the next
// PUBLISH), so it notices a dead connection only through its keepalive: a PINGRESP that cannot
// be read counts as lost. A store outage longer than keepalive + ping timeout (30s + 10s)
// therefore also cycles the MQTT connection: harmless (nothing is acknowledged that is not
// stored, and the broker redelivers), but visible in the logs and the connected gauge.
func (p *pipeline) admit(stop <-chan struct{}, connected func() bool) bool {
	select {
	case <-stop:
		return false
	case <-p.stop:
		return false
	default:
	}
	select {
	case p.slots <- struct{}{}:
		p.m.pending.Inc()
		return true
	default:
	}
	if connected != nil && !connected() {
		return false // do not wait a tick per message while paho drains a dead connection
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	if p.onBlocked != nil {
		start := time.Now()
		defer func() { p.onBlocked(time.Since(start)) }()
	}
	for {
		select {
		case p.slots <- struct{}{}:
			p.m.pending.Inc()
			return true
		case <-stop:
			return false
		case <-p.stop:
			return false
		case <-tick.C:
			if connected != nil && !connected() {
				return false
			}
		}
	}
}

// release frees the slot of a message that will not go through (admitted, then not submitted).
func (p *pipeline) release() {
	<-p.slots
	p.m.pending.Dec()
}

// submit queues an admitted entry. It must be called in receive order (paho's router goroutine
// with OrderMatters) because that order is the acknowledgement order. It returns false once the
// pipeline is closing; the caller then leaves the message unacknowledged.
func (p *pipeline) submit(e *entry) bool {
	p.gate.RLock()
	defer p.gate.RUnlock()
	if p.closed {
		p.release()
		return false
	}
	p.seq.push(e)
	p.in <- e // never blocks: at most maxPending entries exist
	return true
}

// close stops submissions and makes the batcher flush what it holds; done is closed when every
// stored entry has been acknowledged and the writers have finished (or given up at hard).
func (p *pipeline) close() {
	p.gate.Lock()
	if !p.closed {
		p.closed = true
		close(p.stop)
	}
	p.gate.Unlock()
}

func (p *pipeline) batcher() {
	defer close(p.batches)
	var (
		cur         []*entry
		aged, quiet bool
		ageT        = time.NewTimer(time.Hour)
		quietT      = time.NewTimer(time.Hour)
		quietArmed  bool
		lastArrival time.Time
	)
	ageT.Stop()
	quietT.Stop()
	next := &batch{} // offered to the writers while ready; replaced once taken
	// seal returns the current entries as a batch and starts a new one.
	seal := func() *batch {
		b := &batch{entries: cur}
		cur, aged, quiet, quietArmed = nil, false, false, false
		ageT.Stop()
		quietT.Stop()
		return b
	}
	add := func(e *entry) {
		if len(cur) == 0 {
			cur = make([]*entry, 0, min(p.cfg.batchSize, 64))
			ageT.Reset(p.cfg.interval)
		}
		cur = append(cur, e)
		if p.cfg.quiet > 0 {
			lastArrival = time.Now()
			if !quietArmed {
				quietT.Reset(p.cfg.quiet)
				quietArmed = true
			}
		}
	}
	for {
		in, out := p.in, chan<- *batch(nil)
		full := len(cur) >= p.cfg.batchSize
		if full {
			in = nil
		}
		if len(cur) > 0 && (full || aged || quiet) {
			out = p.batches
		}
		next.entries = cur
		select {
		case e := <-in:
			add(e)
		case out <- next:
			seal() // next now belongs to a writer
			next = &batch{}
		case <-ageT.C:
			aged = true
		case <-quietT.C:
			quietArmed = false
			if wait := p.cfg.quiet - time.Since(lastArrival); wait > 0 {
				quietT.Reset(wait)
				quietArmed = true
			} else {
				quiet = true
			}
		case <-p.stop:
			// Submissions are over (close holds the gate): what is in `in` is all there is.
			for {
				select {
				case e := <-p.in:
					if len(cur) >= p.cfg.batchSize {
						p.batches <- seal()
					}
					add(e)
					continue
				default:
				}
				break
			}
			if len(cur) > 0 {
				p.batches <- seal()
			}
			return
		}
	}
}

// writer takes a batch only while it holds one of the limiter's permits, so at most the
// adaptive limit of batches is being written; the one that sees the batcher finish wakes the
// others for good.
//
// A stored batch is handed to the completer rather than marked stored here. Marking it lets
// the acker acknowledge it, the broker send the next messages and the MQTT client decode them:
// work for the same CPU as this writer (one core: the listener's own share in a pod, or the
// core it shares with the broker). Handed off, it runs once this writer blocks, that is once
// its next write is on the wire, instead of delaying that write while the store has nothing
// to do: on one CPU, listener ÷ raw insert loop went from 0.90 to ... (docs/performance.md).
func (p *pipeline) writer(hard context.Context) {
	if !p.limit.acquire() {
		return
	}
	for {
		b, ok := <-p.batches
		if !ok {
			p.limit.release()
			p.limit.close()
			return
		}
		if hard.Err() == nil { // past the shutdown deadline: not stored, so not acknowledged
			p.m.inflight.Inc()
			p.m.batchSize.Observe(float64(len(b.entries)))
			if p.writeWithRetry(hard, b) {
				p.stored <- b.entries // waits only if the completer is concurrency batches behind
			}
			p.m.inflight.Dec()
		}
		// The permit is kept for the next batch while the limit allows: giving it back
		// and taking it again would wake a waiting writer for nothing, on the CPU the next
		// write needs.
		if !p.limit.keep() {
			if !p.limit.acquire() {
				return
			}
		}
	}
}

// writeWithRetry returns true once b is stored, false if hard ended first.
func (p *pipeline) writeWithRetry(hard context.Context, b *batch) bool {
	backoff := minBackoff
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(hard, writeTimeout)
		err := p.sink(ctx, b)
		cancel()
		if err == nil {
			if attempt > 1 {
				p.log.Info("store write succeeded after retries", "attempts", attempt, "messages", len(b.entries))
			}
			return true
		}
		if hard.Err() != nil {
			p.log.Warn("shutdown deadline reached: batch not stored, left unacknowledged for redelivery",
				"messages", len(b.entries), "error", err)
			return false
		}
		p.m.writeErrors.Inc()
		if ok, suppressed := p.lim.allow("write"); ok {
			p.log.Warn("store write failed; retrying (messages stay unacknowledged)",
				"error", err, "attempt", attempt, "messages", len(b.entries), "retry_in", backoff,
				"suppressed", suppressed)
		}
		// Full jitter in [backoff/2, backoff): writers that failed together do not retry together.
		sleep := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-hard.Done():
			t.Stop()
			p.log.Warn("shutdown deadline reached: batch not stored, left unacknowledged for redelivery",
				"messages", len(b.entries))
			return false
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// acker acknowledges stored entries strictly in receive order: MQTT 3.1.1 (4.6.0-2) wants
// PUBACKs in the order the PUBLISHes arrived, and batches complete out of order. It is the
// only goroutine that calls Ack, and paho forwards acks to the socket in call order.
func (p *pipeline) acker() {
	defer close(p.done)
	var ready []*entry
	held := false
	for {
		final := false
		select {
		case <-p.seq.signal:
		case <-p.writersDone:
			final = true // every markStored has happened: one last pass
		}
		ready = p.seq.popStored(ready[:0])
		for _, e := range ready {
			if !held && p.holdAck != nil && !p.holdAck() {
				held = true
			}
			if held {
				continue // keep the slot: a crashed process would not free it either
			}
			e.msg.Ack()
			p.release()
		}
		clear(ready)
		if final {
			return
		}
	}
}

// sequencer remembers received entries in receive order and hands out the longest prefix that
// is stored.
type sequencer struct {
	mu     sync.Mutex
	queue  []*entry
	head   int
	signal chan struct{} // capacity 1: "something was stored"
}

func (s *sequencer) push(e *entry) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
}

func (s *sequencer) markStored(es []*entry) {
	s.mu.Lock()
	for _, e := range es {
		e.stored = true
	}
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// popStored appends to dst the stored entries at the head of the queue and removes them.
func (s *sequencer) popStored(dst []*entry) []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.head < len(s.queue) && s.queue[s.head].stored {
		dst = append(dst, s.queue[s.head])
		s.queue[s.head] = nil
		s.head++
	}
	// Reclaim the consumed front once it is most of the slice (amortised O(1) per entry).
	if s.head > 1024 && s.head*2 > len(s.queue) {
		n := copy(s.queue, s.queue[s.head:])
		clear(s.queue[n:])
		s.queue = s.queue[:n]
		s.head = 0
	} else if s.head == len(s.queue) {
		s.queue = s.queue[:0]
		s.head = 0
	}
	return dst
}

// len reports how many entries are waiting for acknowledgement (tests).
func (s *sequencer) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) - s.head
}
