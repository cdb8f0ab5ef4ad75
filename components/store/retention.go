package store

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// DeleteSessionsBefore deletes the sessions that ended before cutoff and the rejected
// messages received before it, and returns how many sessions it deleted. It is the retention
// of `chargesim api --retention`: idempotent, so several API replicas may run it. Totals are
// sums over what is stored, so they drop by what it deletes. On a partitioned store it drops
// whole partitions, a fold group (an hour at the default width) at a time: the store then
// holds between retention and retention + that group of sessions.
func (s *Store) DeleteSessionsBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	cutoff = cutoff.UTC().Truncate(time.Millisecond)
	l, err := s.layout(ctx)
	if err != nil {
		return 0, err
	}
	if l.partitioned {
		n, err := s.dropPartitionsBefore(ctx, l, cutoff)
		if err != nil {
			return n, err
		}
		if _, err := s.Rejected.DeleteMany(ctx, bson.D{{Key: "received_at", Value: bson.D{{Key: "$lt", Value: cutoff}}}}); err != nil {
			return n, fmt.Errorf("delete rejected before %s: %w", cutoff.Format(time.RFC3339), err)
		}
		return n, nil
	}
	res, err := s.Sessions.DeleteMany(ctx, bson.D{{Key: fieldEndedAt, Value: bson.D{{Key: "$lt", Value: cutoff}}}})
	if err != nil {
		return 0, fmt.Errorf("delete sessions before %s: %w", cutoff.Format(time.RFC3339), err)
	}
	if _, err := s.Rejected.DeleteMany(ctx, bson.D{{Key: "received_at", Value: bson.D{{Key: "$lt", Value: cutoff}}}}); err != nil {
		return res.DeletedCount, fmt.Errorf("delete rejected before %s: %w", cutoff.Format(time.RFC3339), err)
	}
	return res.DeletedCount, nil
}
