package publisher

import (
	"math"
	"time"

	"github.com/chargesim/chargesim/components/publisher/sim"
)

// entry is all the state a charger has: 24 bytes, no pointers, so a million chargers are one
// 24 MB slice the garbage collector never scans. Class, phase and every session are derived
// from (seed, charger, n) by package sim when needed.
type entry struct {
	next    int64  // when the next session fires: wall-clock nanoseconds since the fleet started
	lastID  int64  // the last session ID issued; IDs strictly increase per charger
	charger uint32 // charger number (ID "1".."N")
	n       uint32 // number of the next session (wraps after 2³²: the sequence starts over)
}

// fleet is the schedule of the chargers one process owns: a binary min-heap on (next,
// charger), served by a single goroutine (the scheduler), so it needs no locking.
type fleet struct {
	params sim.Params
	// wallInterval is the session interval in wall-clock nanoseconds (interval / time scale).
	wallInterval float64
	h            []entry
}

// newFleet builds the schedule of the chargers c in 1..chargers with (c-1)%shardCount ==
// shardIndex. Each charger's first session fires at its phase in the first interval (plus
// jitter), so the fleet fires at an even rate from its first moment.
func newFleet(params sim.Params, chargers, shardIndex, shardCount int, wallInterval time.Duration) *fleet {
	f := &fleet{params: params, wallInterval: float64(wallInterval)}
	f.h = make([]entry, 0, OwnedChargers(chargers, shardIndex, shardCount))
	for c := shardIndex + 1; c <= chargers; c += shardCount {
		ch := uint32(c)
		n := params.FirstSession(ch)
		f.h = append(f.h, entry{next: f.wall(params.Start(ch, n)), charger: ch, n: n})
	}
	for i := len(f.h)/2 - 1; i >= 0; i-- {
		f.down(i)
	}
	return f
}

// wall converts intervals to wall-clock nanoseconds, saturating far in the future.
func (f *fleet) wall(intervals float64) int64 {
	ns := intervals * f.wallInterval
	if ns >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(ns)
}

func (f *fleet) len() int { return len(f.h) }

// peek returns when the next session of the fleet fires; ok is false for an empty fleet.
func (f *fleet) peek() (next int64, ok bool) {
	if len(f.h) == 0 {
		return 0, false
	}
	return f.h[0].next, true
}

// fire takes the session that is due first: the charger, its session number and a session
// ID (wall-clock microseconds of now, but always above the charger's previous ID), and
// reschedules the charger for its next session.
func (f *fleet) fire(now time.Time) (charger, n uint32, sessionID int64) {
	e := &f.h[0]
	sessionID = max(now.UnixMicro(), e.lastID+1)
	charger, n = e.charger, e.n
	e.lastID = sessionID
	next := e.next + f.wall(f.params.Gap(e.charger, e.n))
	e.next = min(max(next, e.next), math.MaxInt64/2) // monotonic even when saturating
	e.n++
	f.down(0)
	return charger, n, sessionID
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
