package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chargesim/chargesim/components/store"
)

// fakeMsg records its acknowledgement and checks it happens only once its batch is stored.
type fakeMsg struct {
	id int
	h  *harness
}

func (m *fakeMsg) Ack() { m.h.acked(m.id) }

// harness drives a pipeline with a sink the test controls.
type harness struct {
	t *testing.T
	p *pipeline

	mu      sync.Mutex
	stored  map[int]bool // ids whose batch the sink reported stored
	acks    []int
	batches [][]int // ids of each batch handed to the sink, in order of arrival
	ackCh   chan int
	sinkFn  func(ctx context.Context, ids []int) error
}

func newHarness(t *testing.T, cfg pipelineConfig, sink func(ctx context.Context, ids []int) error) *harness {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, stored: map[int]bool{}, ackCh: make(chan int, 100000), sinkFn: sink}
	h.p = newPipeline(cfg, h.sink, m, slog.New(slog.DiscardHandler))
	// These tests are about writes in flight together: start at the ceiling, as if the limiter
	// had climbed (its first full write then starts a probe at 1, adaptive_test.go).
	h.p.limit.limit, h.p.limit.probing = cfg.concurrency, 0
	hard, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		h.p.close()
		<-h.p.done
	})
	h.p.start(hard)
	return h
}

func ids(b *batch) []int {
	out := make([]int, len(b.entries))
	for i, e := range b.entries {
		out[i] = e.msg.(*fakeMsg).id
	}
	return out
}

func (h *harness) sink(ctx context.Context, b *batch) error {
	got := ids(b)
	h.mu.Lock()
	h.batches = append(h.batches, got)
	h.mu.Unlock()
	if err := h.sinkFn(ctx, got); err != nil {
		return err
	}
	h.mu.Lock()
	for _, id := range got {
		h.stored[id] = true
	}
	h.mu.Unlock()
	return nil
}

func (h *harness) acked(id int) {
	h.mu.Lock()
	if !h.stored[id] {
		h.t.Errorf("message %d acknowledged before it was stored", id)
	}
	h.acks = append(h.acks, id)
	h.mu.Unlock()
	h.ackCh <- id
}

// submit admits and submits messages from..to-1 in order, as paho's router would.
func (h *harness) submit(from, to int) {
	h.t.Helper()
	for i := from; i < to; i++ {
		if !h.p.admit(nil, nil) {
			h.t.Fatalf("admit %d refused", i)
		}
		if !h.p.submit(&entry{msg: &fakeMsg{id: i, h: h}, session: &store.SessionDoc{}}) {
			h.t.Fatalf("submit %d refused", i)
		}
	}
}

func (h *harness) waitAcks(n int) []int {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		h.mu.Lock()
		got := len(h.acks)
		h.mu.Unlock()
		if got >= n {
			break
		}
		select {
		case <-h.ackCh:
		case <-deadline:
			h.t.Fatalf("only %d of %d acknowledgements after 10s", got, n)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.acks)
}

func (h *harness) waitBatches(n int) [][]int {
	h.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		h.mu.Lock()
		got := slices.Clone(h.batches)
		h.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("only %d of %d batches after 10s: %v", len(got), n, got)
		}
		time.Sleep(time.Millisecond)
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

const never = time.Hour

// Batches complete in reverse order; acknowledgements still go out in receive order, and none
// before the whole prefix is stored.
func TestAcksInReceiveOrderWhenBatchesCompleteOutOfOrder(t *testing.T) {
	release := map[int]chan struct{}{0: make(chan struct{}), 2: make(chan struct{}), 4: make(chan struct{})}
	returned := make(chan int, 3)
	h := newHarness(t, pipelineConfig{batchSize: 2, interval: never, maxPending: 100, concurrency: 3},
		func(ctx context.Context, ids []int) error {
			<-release[ids[0]]
			returned <- ids[0]
			return nil
		})
	h.submit(0, 6)
	if got := h.waitBatches(3); len(got) != 3 {
		t.Fatalf("batches %v", got)
	}
	close(release[4])
	close(release[2])
	<-returned
	<-returned
	// Wait until the sequencer knows batches 2 and 4 are stored, then check nothing was acked.
	for {
		h.p.seq.mu.Lock()
		done := h.p.seq.queue[h.p.seq.head+2].stored && h.p.seq.queue[h.p.seq.head+4].stored
		h.p.seq.mu.Unlock()
		if done {
			break
		}
		time.Sleep(time.Millisecond)
	}
	h.mu.Lock()
	early := slices.Clone(h.acks)
	h.mu.Unlock()
	if len(early) != 0 {
		t.Fatalf("acknowledged %v while message 0 was not stored", early)
	}
	close(release[0])
	if got := h.waitAcks(6); !slices.Equal(got, seq(0, 6)) {
		t.Errorf("ack order %v, want %v", got, seq(0, 6))
	}
}

// Many batches completing in random order: acks are exactly 0..n-1 in order, each once.
func TestAckOrderUnderRandomCompletion(t *testing.T) {
	const n = 2000
	h := newHarness(t, pipelineConfig{batchSize: 7, interval: time.Millisecond, quiet: 100 * time.Microsecond, maxPending: 300, concurrency: 8},
		func(ctx context.Context, ids []int) error {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			return nil
		})
	h.submit(0, n)
	if got := h.waitAcks(n); !slices.Equal(got, seq(0, n)) {
		t.Errorf("acks out of order or missing: first %v", got[:min(len(got), 20)])
	}
	if h.p.seq.len() != 0 {
		t.Errorf("sequencer still holds %d entries", h.p.seq.len())
	}
	if v := testutil.ToFloat64(h.p.m.pending); v != 0 {
		t.Errorf("pending = %v after everything was acknowledged", v)
	}
}

func TestFlushOnSize(t *testing.T) {
	h := newHarness(t, pipelineConfig{batchSize: 3, interval: never, maxPending: 100, concurrency: 1},
		func(context.Context, []int) error { return nil })
	h.submit(0, 7)
	got := h.waitBatches(2)
	if fmt.Sprint(got) != "[[0 1 2] [3 4 5]]" {
		t.Errorf("batches %v, want [[0 1 2] [3 4 5]]", got)
	}
	h.waitAcks(6)
	// Message 6 can only go out with the final flush: neither size nor time will trigger.
	h.p.close()
	<-h.p.done
	if got := h.waitBatches(3); fmt.Sprint(got) != "[[0 1 2] [3 4 5] [6]]" {
		t.Errorf("batches %v, want the last one [6] flushed at close", got)
	}
	if got := h.waitAcks(7); !slices.Equal(got, seq(0, 7)) {
		t.Errorf("acks %v", got)
	}
}

func TestFlushOnTime(t *testing.T) {
	h := newHarness(t, pipelineConfig{batchSize: 100, interval: 20 * time.Millisecond, maxPending: 100, concurrency: 1},
		func(context.Context, []int) error { return nil })
	h.submit(0, 2)
	// Not full, no pause flush, not closed: only the flush interval can write them.
	if got := h.waitBatches(1); fmt.Sprint(got) != "[[0 1]]" {
		t.Errorf("batches %v", got)
	}
	h.waitAcks(2)
}

func TestFlushWhenInputPauses(t *testing.T) {
	h := newHarness(t, pipelineConfig{batchSize: 100, interval: never, quiet: time.Millisecond, maxPending: 100, concurrency: 1},
		func(context.Context, []int) error { return nil })
	h.submit(0, 3)
	// Not full, flush interval an hour, not closed: only the pause can write them.
	h.waitAcks(3)
	if got := h.waitBatches(1); !slices.Equal(slices.Concat(got...), seq(0, 3)) {
		t.Errorf("batches %v", got)
	}
}

// A failing store: retried with backoff, counted, nothing acknowledged until it succeeds.
func TestWriteErrorsRetriedNeverAcked(t *testing.T) {
	var mu sync.Mutex
	fails := 3
	h := newHarness(t, pipelineConfig{batchSize: 5, interval: never, maxPending: 100, concurrency: 2},
		func(context.Context, []int) error {
			mu.Lock()
			defer mu.Unlock()
			if fails > 0 {
				fails--
				return errors.New("store down")
			}
			return nil
		})
	h.submit(0, 5)
	if got := h.waitAcks(5); !slices.Equal(got, seq(0, 5)) {
		t.Errorf("acks %v", got)
	}
	if v := testutil.ToFloat64(h.p.m.writeErrors); v != 3 {
		t.Errorf("write errors = %v, want 3", v)
	}
	if got := h.waitBatches(4); len(got) != 4 {
		t.Errorf("attempts %v, want 4 of the same batch", got)
	}
}

// Partial success inside a batch is not redone: the sink records what it finished.
func TestRetryRedoesOnlyTheFailedPart(t *testing.T) {
	m, _ := newMetrics(nil)
	calls, sessionWrites := 0, 0
	p := newPipeline(pipelineConfig{batchSize: 10, interval: never, maxPending: 10, concurrency: 1},
		func(ctx context.Context, b *batch) error {
			calls++
			if !b.sessionsDone {
				sessionWrites++
				b.sessionsDone = true
			}
			if calls < 3 {
				return errors.New("rejected insert failed")
			}
			return nil
		}, m, slog.New(slog.DiscardHandler))
	if !p.writeWithRetry(context.Background(), &batch{}) {
		t.Fatal("not stored")
	}
	if calls != 3 || sessionWrites != 1 {
		t.Errorf("%d attempts wrote the sessions %d times; want 3 attempts, 1 write", calls, sessionWrites)
	}
}

// With every slot taken the handler blocks; a stored and acknowledged message frees a slot.
func TestBackpressureBlocksAdmission(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, pipelineConfig{batchSize: 2, interval: never, maxPending: 4, concurrency: 1},
		func(context.Context, []int) error { <-release; return nil })
	h.submit(0, 4)
	if v := testutil.ToFloat64(h.p.m.pending); v != 4 {
		t.Errorf("pending = %v, want 4", v)
	}
	admitted := make(chan bool, 1)
	go func() { admitted <- h.p.admit(nil, nil) }()
	select {
	case ok := <-admitted:
		t.Fatalf("admit returned %v with all slots taken", ok)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if !<-admitted {
		t.Fatal("admit refused after slots were freed")
	}
	h.p.release()
}

func TestAdmitGivesUp(t *testing.T) {
	h := newHarness(t, pipelineConfig{batchSize: 1, interval: never, maxPending: 1, concurrency: 1},
		func(ctx context.Context, _ []int) error { <-ctx.Done(); return ctx.Err() })
	h.submit(0, 1)
	stop := make(chan struct{})
	close(stop)
	if h.p.admit(stop, nil) {
		t.Error("admit succeeded after stop")
	}
	if h.p.admit(nil, func() bool { return false }) {
		t.Error("admit succeeded with the connection gone")
	}
}

// On close, pending messages are flushed and acknowledged; past the deadline, what could not
// be stored is left unacknowledged.
func TestShutdownFlushesThenGivesUp(t *testing.T) {
	m, _ := newMetrics(nil)
	var mu sync.Mutex
	var acked []int
	p := newPipeline(pipelineConfig{batchSize: 3, interval: never, maxPending: 100, concurrency: 2},
		func(ctx context.Context, b *batch) error {
			if len(b.entries) == 2 { // [3 4], the batch flushed at close
				return errors.New("store down")
			}
			return nil
		}, m, slog.New(slog.DiscardHandler))
	hard, cancelHard := context.WithCancel(context.Background())
	p.start(hard)
	for i := 0; i < 5; i++ {
		if !p.admit(nil, nil) || !p.submit(&entry{msg: ackFunc(func() { mu.Lock(); acked = append(acked, i); mu.Unlock() }), session: &store.SessionDoc{}}) {
			t.Fatal("refused")
		}
	}
	p.close()
	if p.admit(nil, nil) {
		t.Error("admit after close")
	}
	// Batch [3 4] keeps failing: done only comes with the deadline.
	select {
	case <-p.done:
		t.Fatal("done while a batch is unstored")
	case <-time.After(100 * time.Millisecond):
	}
	cancelHard()
	<-p.done
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(acked, []int{0, 1, 2}) {
		t.Errorf("acked %v, want [0 1 2] (3 and 4 never stored)", acked)
	}
	if p.submit(&entry{}) {
		t.Error("submit after close")
	}
}

type ackFunc func()

func (f ackFunc) Ack() { f() }

func TestHoldAckStopsAcknowledging(t *testing.T) {
	h := newHarness(t, pipelineConfig{batchSize: 1, interval: never, maxPending: 100, concurrency: 1},
		func(context.Context, []int) error { return nil })
	var mu sync.Mutex
	n := 0
	h.p.holdAck = func() bool { mu.Lock(); defer mu.Unlock(); n++; return n <= 2 }
	h.submit(0, 5)
	h.waitBatches(5)
	h.p.close()
	<-h.p.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if !slices.Equal(h.acks, []int{0, 1}) {
		t.Errorf("acks %v, want [0 1]", h.acks)
	}
}

func TestSequencerCompacts(t *testing.T) {
	var s sequencer
	es := make([]*entry, 5000)
	for i := range es {
		es[i] = &entry{msg: &fakeMsg{id: i}}
		s.push(es[i])
	}
	var got []int
	order := rand.Perm(len(es))
	for k, i := range order {
		s.markStored([]*entry{es[i]})
		if k%37 == 0 {
			for _, e := range s.popStored(nil) {
				got = append(got, e.msg.(*fakeMsg).id)
			}
		}
	}
	for _, e := range s.popStored(nil) {
		got = append(got, e.msg.(*fakeMsg).id)
	}
	if !slices.Equal(got, seq(0, len(es))) || s.len() != 0 {
		t.Errorf("popped %d entries in order=%v, %d left", len(got), slices.IsSorted(got), s.len())
	}
}
