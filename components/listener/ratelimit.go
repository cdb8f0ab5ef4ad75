package listener

import (
	"sync"
	"time"
)

// logInterval is how often each kind of repeated problem (one rejection reason, failing
// writes) may be logged: a flood of bad input or a long outage must not flood the logs too.
const logInterval = 10 * time.Second

// logLimiter lets one log line per key through per interval and counts what it held back, so
// the line that does go out can say how many were suppressed.
type logLimiter struct {
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*limitState
}

type limitState struct {
	last       time.Time
	suppressed int
}

func newLogLimiter(interval time.Duration, now func() time.Time) *logLimiter {
	if now == nil {
		now = time.Now
	}
	return &logLimiter{interval: interval, now: now, keys: map[string]*limitState{}}
}

// allow reports whether an event of kind key may be logged now and, if so, how many events of
// that kind were suppressed since the last one logged.
func (l *logLimiter) allow(key string) (ok bool, suppressed int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.keys[key]
	if st == nil {
		st = &limitState{}
		l.keys[key] = st
	} else if now.Sub(st.last) < l.interval {
		st.suppressed++
		return false, 0
	}
	st.last = now
	suppressed, st.suppressed = st.suppressed, 0
	return true, suppressed
}
