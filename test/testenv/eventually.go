package testenv

import (
	"testing"
	"time"
)

// Eventually calls check every 100ms until it returns nil, and fails tb with check's last
// error when limit has passed. It waits for something asynchronous (a controller, a process);
// the limit only bounds a hung test and is never a speed assertion.
func Eventually(tb testing.TB, limit time.Duration, what string, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not after %s: %v", what, limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
