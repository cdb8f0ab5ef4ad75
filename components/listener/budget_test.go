package listener

import (
	"testing"
	"time"
)

func TestByteBudgetBlocksUntilReleased(t *testing.T) {
	b := newByteBudget(100)
	if !b.acquire(60, nil, nil) || !b.acquire(40, nil, nil) {
		t.Fatal("acquire within the budget failed")
	}
	got := make(chan bool, 1)
	go func() { got <- b.acquire(30, nil, nil) }()
	select {
	case ok := <-got:
		t.Fatalf("acquire beyond the budget returned %v at once (in use %d)", ok, b.inUse())
	case <-time.After(100 * time.Millisecond):
	}
	b.release(40)
	if ok := <-got; !ok || b.inUse() != 90 {
		t.Fatalf("acquire after release: %v, in use %d, want 90", ok, b.inUse())
	}
}

func TestByteBudgetAdmitsOversizedAlone(t *testing.T) {
	b := newByteBudget(10)
	if !b.acquire(1000, nil, nil) {
		t.Fatal("a message larger than the budget must pass when nothing is pending")
	}
	stop := make(chan struct{})
	close(stop)
	if b.acquire(1, stop, nil) {
		t.Fatal("acquire with a full budget and stop closed succeeded")
	}
	if b.acquire(1, nil, func() bool { return false }) {
		t.Fatal("acquire with a full budget and the connection gone succeeded")
	}
	b.release(1000)
	if b.inUse() != 0 || !b.acquire(10, nil, nil) {
		t.Fatalf("in use %d after release", b.inUse())
	}
}
