package publisher

import (
	"math"

	"github.com/chargesim/chargesim/components/publisher/sim"
)

// entry is all the state a charger has: 24 bytes, no pointers, so a million chargers are one
// 24 MB slice the garbage collector never scans. Class, phase and every session are derived
// from (seed, charger, slot) by package sim when needed.
type entry struct {
	next    int64  // when the next slot fires: Unix nanoseconds (sim.Params.SlotTime)
	n       uint64 // the next slot of the charger
	charger uint32 // charger number (ID "1".."N")
}

// fleet is the schedule of the chargers one process owns: a binary min-heap on (next,
// charger), served by a single goroutine (the scheduler), so it needs no locking. It holds no
// clock: where each charger stands is a slot of the grid of sim.Params.
type fleet struct {
	params sim.Params
	h      []entry
}

// newFleet builds the schedule of the chargers c in 1..chargers with (c-1)%shardCount ==
// shardIndex, each at its first slot at or after from (Unix nanoseconds).
func newFleet(params sim.Params, chargers, shardIndex, shardCount int, from int64) *fleet {
	f := &fleet{params: params}
	f.h = make([]entry, 0, OwnedChargers(chargers, shardIndex, shardCount))
	for c := shardIndex + 1; c <= chargers; c += shardCount {
		f.h = append(f.h, entry{charger: uint32(c)}) //nolint:gosec // c ≤ MaxChargers
	}
	f.reset(from)
	return f
}

// reset moves every charger to its first slot at or after from.
func (f *fleet) reset(from int64) {
	for i := range f.h {
		e := &f.h[i]
		e.n = f.params.SlotAt(e.charger, from)
		e.next = f.params.SlotTime(e.charger, e.n)
	}
	for i := len(f.h)/2 - 1; i >= 0; i-- {
		f.down(i)
	}
}

func (f *fleet) len() int { return len(f.h) }

// peek returns when the next slot of the fleet fires; ok is false for an empty fleet.
func (f *fleet) peek() (next int64, ok bool) {
	if len(f.h) == 0 {
		return 0, false
	}
	return f.h[0].next, true
}

// fire takes the slot that is due first — the charger, its slot and when it fires — and
// moves the charger to its next slot.
func (f *fleet) fire() (charger uint32, n uint64, at int64) {
	e := &f.h[0]
	charger, n, at = e.charger, e.n, e.next
	if at == math.MaxInt64 {
		return charger, n, at // the end of time: stay put
	}
	e.n++
	e.next = f.params.SlotTime(e.charger, e.n)
	f.down(0)
	return charger, n, at
}

func (f *fleet) less(i, j int) bool {
	a, b := &f.h[i], &f.h[j]
	return a.next < b.next || a.next == b.next && a.charger < b.charger
}

func (f *fleet) down(i int) {
	n := len(f.h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && f.less(r, l) {
			m = r
		}
		if !f.less(m, i) {
			return
		}
		f.h[i], f.h[m] = f.h[m], f.h[i]
		i = m
	}
}
