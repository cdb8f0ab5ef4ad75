package listener

import (
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// byteBudget bounds the payload bytes of messages received but not yet acknowledged
// (--max-pending-bytes). --max-pending bounds their number, which alone lets 20,000 payloads of
// 1 MB pile up during a store outage. A message that does not fit waits, on paho's router
// goroutine, like a message that finds no pending slot: backpressure reaches the broker through
// TCP. A message larger than the whole budget is let in when nothing else is pending, so it
// cannot wait forever.
type byteBudget struct {
	mu    sync.Mutex
	used  int64
	max   int64
	freed chan struct{} // capacity 1: "bytes were released" (one waiter: paho's router)
}

func newByteBudget(max int64) *byteBudget {
	return &byteBudget{max: max, freed: make(chan struct{}, 1)}
}

// acquire takes n bytes, blocking while they do not fit. Like pipeline.admit it gives up when
// stop closes or connected reports the connection gone (paho cannot reconnect while we block).
func (b *byteBudget) acquire(n int64, stop <-chan struct{}, connected func() bool) bool {
	var tick *time.Ticker
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return true
		}
		b.mu.Unlock()
		if tick == nil {
			tick = time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
		}
		select {
		case <-b.freed:
		case <-stop:
			return false
		case <-tick.C:
			if connected != nil && !connected() {
				return false
			}
		}
	}
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default:
	}
}

// inUse reports the bytes taken (tests, metrics).
func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// budgeted is a message whose acknowledgement returns its bytes to the budget: the pipeline
// acks each stored message exactly once, so the budget needs no hook in the pipeline.
type budgeted struct {
	mqtt.Message
	b *byteBudget
}

func (m budgeted) Ack() {
	m.Message.Ack()
	m.b.release(int64(len(m.Payload())))
}
