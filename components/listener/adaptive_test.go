package listener

import (
	"testing"
	"time"
)

// The limit follows the store: a store that runs one write at a time (FerretDB/SQLite: each
// write in flight waits for the others, so a write takes limit × the time alone, plus what the
// waiting costs) stays at 1; a store that runs writes in parallel (MongoDB) climbs to the
// ceiling; one that runs 3 in parallel settles at 3. Latencies are modelled, so the test is
// exact and fast; the listener benchmarks measure the real stores.
func TestWriteLimiterFollowsTheStore(t *testing.T) {
	const batch, alone = 500, 50 * time.Millisecond
	for _, tc := range []struct {
		name     string
		ceiling  int
		parallel int     // writes the store runs at once; the rest wait
		waste    float64 // extra time per waiting write, as a fraction of a write alone
		want     int
		share    float64 // of the writes at the wanted limit, at least (probes climb from 1)
	}{
		// A failed trial ends at its first write run at 2 and the next probe comes later:
		// ≥ 99% of the writes at 1 (it was 98% with 4-write trials every 200 writes).
		{"one writer at a time", 4, 1, 0, 1, 0.99},
		{"one writer at a time, waiting costs", 4, 1, 0.15, 1, 0.99},
		{"parallel writers", 4, 64, 0, 4, 0.9},
		{"3 writers at once", 8, 3, 0, 3, 0.85},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var limits []int
			l := newWriteLimiter(tc.ceiling, batch, func(n int) { limits = append(limits, n) })
			latency := func(i int) time.Duration {
				n := l.current()
				d := alone
				if n > tc.parallel {
					f := float64(n) / float64(tc.parallel)
					d = time.Duration(float64(alone) * (f + tc.waste*(f-1)))
				}
				return d + time.Duration(i%7)*time.Millisecond // jitter
			}
			for i := range 2000 {
				l.observe(latency(i), batch)
			}
			counts := map[int]int{}
			const n = 5 * baselineWrites // several probes and climbs
			for i := range n {
				l.observe(latency(i), batch)
				counts[l.current()]++
			}
			if float64(counts[tc.want]) < tc.share*n {
				t.Fatalf("limit in force over %d writes: %v, want %d for %.0f%% (changes: %v)", n, counts, tc.want, 100*tc.share, limits[:min(len(limits), 40)])
			}
			t.Logf("limit in force over %d writes: %v", n, counts)
		})
	}
}

// Small batches say nothing about the store's concurrency; a ceiling of 1 never moves.
func TestWriteLimiterIgnores(t *testing.T) {
	l := newWriteLimiter(4, 500, nil)
	for range 100 {
		l.observe(time.Second, 10)
	}
	if l.current() != 1 {
		t.Fatalf("limit %d after small batches only, want the initial 1", l.current())
	}
	one := newWriteLimiter(1, 500, nil)
	for range 100 {
		one.observe(time.Millisecond, 500)
	}
	if one.current() != 1 {
		t.Fatalf("ceiling 1: limit %d", one.current())
	}
}

// Permits: acquire blocks at the limit; close releases the waiters for good.
func TestWriteLimiterPermits(t *testing.T) {
	l := newWriteLimiter(2, 500, nil)
	l.limit = 2 // as if climbed
	for i := range 2 {
		if !l.acquire() {
			t.Fatalf("acquire %d under the limit", i)
		}
	}
	got := make(chan bool)
	go func() { got <- l.acquire() }()
	select {
	case <-got:
		t.Fatal("third acquire did not wait at limit 2")
	case <-time.After(20 * time.Millisecond):
	}
	l.release()
	if !<-got {
		t.Fatal("acquire after a release")
	}
	go func() { got <- l.acquire() }()
	l.close()
	if <-got {
		t.Fatal("acquire after close")
	}
}

// A writer keeps its permit from one write to the next while the limit allows; when the limit
// went down, keep gives permits back until the writes in flight fit it again.
func TestWriteLimiterKeep(t *testing.T) {
	l := newWriteLimiter(3, 500, nil)
	l.limit = 3
	for range 3 {
		l.acquire()
	}
	l.limit = 1
	for i := range 2 {
		if l.keep() {
			t.Fatalf("writer %d kept a permit over the limit", i)
		}
	}
	if !l.keep() {
		t.Fatal("the last writer within the limit lost its permit")
	}
	got := make(chan bool)
	go func() { got <- l.acquire() }()
	select {
	case <-got:
		t.Fatal("acquired past the limit")
	case <-time.After(20 * time.Millisecond):
	}
	l.release()
	if !<-got {
		t.Fatal("acquire after the release")
	}
}
