package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/session"
)

// CodeDuplicateKey is the server error code of a unique-index violation (E11000).
const CodeDuplicateKey = 11000

// WriteResult summarises an idempotent bulk write: every document is now stored, either by
// this write (Inserted) or by an earlier one (Duplicates: indexes into the written slice of the
// documents whose _id already existed, in increasing order).
type WriteResult struct {
	Inserted   int
	Duplicates []int
}

// IsDuplicate reports whether document i was already stored.
func (r WriteResult) IsDuplicate(i int) bool {
	for _, d := range r.Duplicates {
		if d == i {
			return true
		}
		if d > i {
			return false
		}
	}
	return false
}

// NewSessionDoc builds the stored form of s as received on topic at receivedAt. Contract-only
// payloads carry no ended_at/started_at, so both are derived (ended_at from timestamp, else the
// receive time; started_at as ended_at minus the duration): every stored document can then be
// filtered and sorted by time. Times are truncated to milliseconds, what BSON dates hold, so a
// document read back equals the one written.
func NewSessionDoc(s session.Session, topic string, receivedAt time.Time) SessionDoc {
	receivedAt = receivedAt.UTC().Truncate(time.Millisecond)
	if s.EndedAt.IsZero() {
		if s.Timestamp != 0 {
			s.EndedAt = time.Unix(s.Timestamp, 0).UTC()
		} else {
			s.EndedAt = receivedAt
		}
	}
	s.EndedAt = s.EndedAt.UTC().Truncate(time.Millisecond)
	if s.StartedAt.IsZero() {
		s.StartedAt = s.EndedAt.Add(-time.Duration(s.DurationSeconds * float64(time.Second)))
	}
	s.StartedAt = s.StartedAt.UTC().Truncate(time.Millisecond)
	return SessionDoc{ID: s.Key(), Session: s, Topic: topic, ReceivedAt: receivedAt}
}

// NewRejectedDoc builds the stored form of a rejected message. The ID is assigned here, once,
// so that retrying the write of the same RejectedDoc cannot store it twice.
func NewRejectedDoc(topic string, payload []byte, reason session.Reason, detail string, receivedAt time.Time) RejectedDoc {
	kept := payload
	if len(kept) > MaxRejectedPayload {
		kept = kept[:MaxRejectedPayload]
	}
	const maxDetail = 512
	if len(detail) > maxDetail {
		detail = detail[:maxDetail]
	}
	if len(topic) > maxDetail {
		topic = topic[:maxDetail]
	}
	return RejectedDoc{
		ID:         bson.NewObjectID(),
		Topic:      topic,
		Payload:    append([]byte(nil), kept...),
		Size:       len(payload),
		Reason:     string(reason),
		Detail:     detail,
		ReceivedAt: receivedAt.UTC().Truncate(time.Millisecond),
	}
}

// InsertSessions stores docs with one unordered InsertMany. Documents whose _id already exists
// (QoS 1 redeliveries, replays, another replica) are reported as duplicates, not errors; the
// other documents of the batch are inserted regardless.
//
// Why not upserts with $setOnInsert: measured on FerretDB v1.24 (SQLite), batches of 500, they
// are ~40x slower for new documents (189 vs 7,300 docs/s) and ~11x with half duplicates (420 vs
// 4,800 docs/s); FerretDB reports the `upserted` indexes renumbered among the upserts (so which
// documents were new cannot be told by index); and with concurrent bulk upserts of overlapping
// _ids it answered one E11000 for a whole batch while leaving most of that batch unwritten,
// i.e. a write that looks stored but is not. Unordered inserts report each duplicate with its
// index and insert the rest, on MongoDB and FerretDB alike (TestSessionWritesReportDuplicates).
func (s *Store) InsertSessions(ctx context.Context, docs []SessionDoc) (WriteResult, error) {
	if len(docs) == 0 {
		return WriteResult{}, nil
	}
	return insertMany(ctx, s.Sessions, docs, len(docs))
}

// InsertRejected stores rejected messages; like InsertSessions it tolerates documents already
// stored (a retried write whose first attempt partly succeeded).
func (s *Store) InsertRejected(ctx context.Context, docs []RejectedDoc) (WriteResult, error) {
	if len(docs) == 0 {
		return WriteResult{}, nil
	}
	return insertMany(ctx, s.Rejected, docs, len(docs))
}

func insertMany(ctx context.Context, coll *mongo.Collection, docs any, n int) (WriteResult, error) {
	_, err := coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err == nil {
		return WriteResult{Inserted: n}, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
		return WriteResult{}, fmt.Errorf("insert %d documents into %s: %w", n, coll.Name(), err)
	}
	res := WriteResult{Duplicates: make([]int, 0, len(bwe.WriteErrors))}
	for _, we := range bwe.WriteErrors {
		if we.Code != CodeDuplicateKey {
			// Any other per-document failure means the batch is not stored as a whole: the
			// caller retries it, and the documents that did go in come back as duplicates.
			return WriteResult{}, fmt.Errorf("insert %d documents into %s: document %d: %w", n, coll.Name(), we.Index, err)
		}
		res.Duplicates = append(res.Duplicates, we.Index)
	}
	slices.Sort(res.Duplicates)
	res.Inserted = n - len(res.Duplicates)
	return res, nil
}
