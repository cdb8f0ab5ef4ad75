package listener

import (
	"testing"
	"time"
)

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLogLimiter(10*time.Second, func() time.Time { return now })
	step := func(key string, wantOK bool, wantSuppressed int) {
		t.Helper()
		ok, sup := l.allow(key)
		if ok != wantOK || sup != wantSuppressed {
			t.Errorf("%s at %v: allow = %v, %d; want %v, %d", key, now.Unix(), ok, sup, wantOK, wantSuppressed)
		}
	}
	step("bad_json", true, 0)
	for i := 0; i < 5; i++ {
		step("bad_json", false, 0)
	}
	step("oversized", true, 0) // keys are independent
	now = now.Add(9 * time.Second)
	step("bad_json", false, 0)
	now = now.Add(time.Second)
	step("bad_json", true, 6) // one line per interval, telling how many were held back
	step("bad_json", false, 0)
	now = now.Add(time.Hour)
	step("bad_json", true, 1)
	step("oversized", true, 0)
}
