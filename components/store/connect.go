package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"
)

// Unavailable reports whether err means the database could not be reached (as opposed to
// a refused or malformed request): such errors are retried, not reported as bugs.
func Unavailable(err error) bool {
	var sse topology.ServerSelectionError
	return errors.As(err, &sse) || mongo.IsTimeout(err) || mongo.IsNetworkError(err) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, mongo.ErrClientDisconnected)
}

// ConnectRetry is Connect, retried with capped exponential backoff while the database is
// unreachable, so a component can start (and report not ready) before its database does.
// It returns nil, nil when ctx ends first, and fails at once for any other error.
func ConnectRetry(ctx context.Context, cfg Config, appName string, log *slog.Logger) (*Store, error) {
	backoff := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := Connect(cctx, cfg, appName)
		cancel()
		if err == nil {
			log.Info("connected to store", "database", cfg.Database)
			return st, nil
		}
		if ctx.Err() != nil {
			return nil, nil //nolint:nilerr // cancelled while waiting: not a failure, the caller is stopping
		}
		if !Unavailable(err) {
			return nil, fmt.Errorf("connect store: %w", err)
		}
		// Logged at most every few attempts: the backoff caps at 10s.
		if attempt == 1 || attempt%5 == 0 {
			log.Warn("database unreachable; retrying", "err", err, "attempt", attempt, "in", backoff)
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
