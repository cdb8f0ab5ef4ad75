package listener

import (
	"testing"
	"time"
)

// The limit follows the store: a store that runs one write at a time (FerretDB/SQLite: each
// write in flight waits for the others, so a write takes limit × the time alone) settles at
// 2; a store that runs writes in parallel (MongoDB) climbs to the ceiling. Latencies are
// modelled, so the test is exact and fast; the pipeline benchmarks measure the real stores.
func TestWriteLimiterFollowsTheStore(t *testing.T) {
	const batch, alone = 500, 50 * time.Millisecond
	for _, tc := range []struct {
		name   string
		serial bool
		want   int
	}{
		{"one writer at a time", true, 2},
		{"parallel writers", false, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var limits []int
			l := newWriteLimiter(8, batch, func(n int) { limits = append(limits, n) })
			for i := range 2000 {
				d := alone
				if tc.serial {
					d *= time.Duration(l.current())
				}
				d += time.Duration(i%7) * time.Millisecond // jitter
				l.observe(d, batch)
			}
			// Sample the limit between probes (a probe runs at 1 for 2×adaptEvery writes).
			counts := map[int]int{}
			for range baselineWrites {
				d := alone
				if tc.serial {
					d *= time.Duration(l.current())
				}
				l.observe(d, batch)
				counts[l.current()]++
			}
			if counts[tc.want] < baselineWrites*9/10 {
				t.Fatalf("limit in force over %d writes: %v, want mostly %d (changes: %v)", baselineWrites, counts, tc.want, limits)
			}
		})
	}
}

// Small batches say nothing about the store's concurrency; a ceiling of 1 never moves.
func TestWriteLimiterIgnores(t *testing.T) {
	l := newWriteLimiter(4, 500, nil)
	for range 100 {
		l.observe(time.Second, 10)
	}
	if l.current() != 4 {
		t.Fatalf("limit %d after small batches only, want the initial ceiling 4", l.current())
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
	l := newWriteLimiter(2, 500, nil) // starts at the ceiling
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
