package store

// Store access of the audit (components/audit) and of the publishers' run records. Kept in
// this one file, behind small functions, so a change of the sessions' data model (for example
// time-partitioned collections) only has to adapt these.

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// RunsCollection holds one document per publisher process (RunDoc).
const RunsCollection = "runs"

// MaxRuns bounds the run records one audit reads.
const MaxRuns = 10_000

// RunDoc records that a publisher process simulated its shard of a fleet from FromNs to ToNs
// (Unix nanoseconds, slot times): every slot of its chargers in [FromNs, ToNs) was published
// and acknowledged by the broker. The publisher inserts it when it starts and moves ToNs
// forward while it runs (heartbeat). The grid and seed make the expected sessions computable.
type RunDoc struct {
	ID         string    `bson:"_id"`
	Seed       int64     `bson:"seed"` // the uint64 seed's bits
	Chargers   int       `bson:"chargers"`
	Connectors int       `bson:"connectors"`
	Shard      int       `bson:"shard"`
	Shards     int       `bson:"shards"`
	EpochNs    int64     `bson:"epoch_ns"`
	IntervalNs int64     `bson:"interval_ns"` // wall-clock nanoseconds between a charger's slots
	Jitter     float64   `bson:"jitter"`
	FromNs     int64     `bson:"from_ns"`
	ToNs       int64     `bson:"to_ns"`
	Host       string    `bson:"host"`
	StartedAt  time.Time `bson:"started_at"`
	UpdatedAt  time.Time `bson:"updated_at"`
	Ended      bool      `bson:"ended"` // the process stopped cleanly
}

func (s *Store) runs() *mongo.Collection { return s.DB.Collection(RunsCollection) }

// InsertRun stores a new run record.
func (s *Store) InsertRun(ctx context.Context, r RunDoc) error {
	if _, err := s.runs().InsertOne(ctx, r); err != nil {
		return fmt.Errorf("insert run %s: %w", r.ID, err)
	}
	return nil
}

// AdvanceRun moves a run's end forward (never back) and marks it ended when ended is true.
func (s *Store) AdvanceRun(ctx context.Context, id string, toNs int64, ended bool) error {
	// A plain $set after a $lt filter rather than $max: both servers answer it alike.
	filter := bson.D{{Key: "_id", Value: id}, {Key: "to_ns", Value: bson.D{{Key: "$lte", Value: toNs}}}}
	set := bson.D{{Key: "to_ns", Value: toNs}, {Key: "updated_at", Value: time.Now().UTC()}, {Key: "ended", Value: ended}}
	if _, err := s.runs().UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: set}}); err != nil {
		return fmt.Errorf("advance run %s: %w", id, err)
	}
	return nil
}

// RunsOverlapping returns the run records whose [from, to) meets [fromNs, toNs), at most
// MaxRuns (the collection holds one small document per publisher process start).
func (s *Store) RunsOverlapping(ctx context.Context, fromNs, toNs int64) ([]RunDoc, error) {
	filter := bson.D{
		{Key: "from_ns", Value: bson.D{{Key: "$lt", Value: toNs}}},
		{Key: "to_ns", Value: bson.D{{Key: "$gt", Value: fromNs}}},
	}
	cur, err := s.runs().Find(ctx, filter, options.Find().SetLimit(MaxRuns+1).SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("find runs: %w", err)
	}
	var runs []RunDoc
	if err := cur.All(ctx, &runs); err != nil {
		return nil, fmt.Errorf("read runs: %w", err)
	}
	if len(runs) > MaxRuns {
		return nil, fmt.Errorf("more than %d publisher runs in the window: audit a shorter one", MaxRuns)
	}
	return runs, nil
}

// AuditedSession is what the audit reads of a stored session.
type AuditedSession struct {
	ID          string    `bson:"_id"`
	ChargerID   string    `bson:"charger_id"`
	ConnectorID int       `bson:"connector_id"`
	SessionID   int64     `bson:"session_id"`
	EndedAt     time.Time `bson:"ended_at"`
}

// ScanSessions calls fn for every stored session with from ≤ ended_at < to (of charger, when
// not empty), streaming: memory stays constant whatever the window holds. On FerretDB v1 this
// scans only the partitions overlapping the window; on MongoDB it uses the ended_at indexes.
func (s *Store) ScanSessions(ctx context.Context, from, to time.Time, charger string, fn func(AuditedSession) error) error {
	filter := bson.D{{Key: fieldEndedAt, Value: bson.D{{Key: "$gte", Value: from}, {Key: "$lt", Value: to}}}}
	if charger != "" {
		filter = append(filter, bson.E{Key: fieldCharger, Value: charger})
	}
	proj := bson.D{{Key: fieldID, Value: 1}, {Key: fieldCharger, Value: 1}, {Key: fieldConnector, Value: 1},
		{Key: "session_id", Value: 1}, {Key: fieldEndedAt, Value: 1}}
	colls := []*mongo.Collection{s.Sessions}
	if l, err := s.layout(ctx); err != nil {
		return fmt.Errorf("scan sessions: %w", err)
	} else if l.partitioned {
		// Only the partitions overlapping the window (and the unpartitioned collection).
		if colls, err = s.auditCollections(ctx, l, from, to); err != nil {
			return fmt.Errorf("scan sessions: %w", err)
		}
	}
	for _, coll := range colls {
		if err := scanAudited(ctx, coll, filter, proj, fn); err != nil {
			return err
		}
	}
	return nil
}

func scanAudited(ctx context.Context, coll *mongo.Collection, filter, proj bson.D, fn func(AuditedSession) error) error {
	cur, err := coll.Find(ctx, filter, options.Find().SetProjection(proj).SetBatchSize(1000))
	if err != nil {
		return fmt.Errorf("scan sessions: %w", err)
	}
	defer func() { _ = cur.Close(context.Background()) }()
	for cur.Next(ctx) {
		var d AuditedSession
		if err := cur.Decode(&d); err != nil {
			return fmt.Errorf("scan sessions: decode %s: %w", cur.Current.Lookup(fieldID), err)
		}
		if err := fn(d); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("scan sessions: %w", err)
	}
	return nil
}

// CountStored returns how many sessions of each charger ended in [from, to), from the delta
// documents the writers record with each insert (delta.go), without reading a session: what
// the periodic audit compares with the expected counts before reading keys. ok is false unless
// the store is time-partitioned, from and to are partition edges, and the unpartitioned
// collection is empty (its sessions have no deltas). Deltas can only undercount.
func (s *Store) CountStored(ctx context.Context, from, to time.Time) (map[string]int64, bool, error) {
	l, err := s.layout(ctx)
	if err != nil {
		return nil, false, err
	}
	from, to = from.UTC(), to.UTC()
	if !l.partitioned || !from.Equal(from.Truncate(l.width)) || !to.Equal(to.Truncate(l.width)) {
		return nil, false, nil
	}
	if n, err := s.Sessions.EstimatedDocumentCount(ctx); err != nil || n > 0 {
		return nil, false, nil //nolint:nilerr // an absent collection errs on FerretDB; reading keys decides then
	}
	out := map[string]int64{}
	for t := from; t.Before(to); t = t.Add(l.width) {
		sums, err := s.readDeltas(ctx, l.partitionOf(t).Name)
		if err != nil {
			return nil, false, err
		}
		for id, c := range sums.chargers {
			out[id] += c.Sessions
		}
	}
	return out, true, nil
}
