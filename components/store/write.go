package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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

// WriteResult summarises an idempotent bulk write: every document is now settled, either stored
// by this write (Inserted), by an earlier one (Duplicates: indexes into the written slice of the
// documents whose _id already existed, in increasing order) or refused by the store for good
// (Refused, in increasing index order): the caller sets those aside instead of retrying them.
type WriteResult struct {
	Inserted   int
	Duplicates []int
	Refused    []Refusal
	// DeltaFailures counts the partitions (time-partitioned layout) whose delta document
	// could not be recorded (DeltaErr says why): the sessions are stored all the same, and
	// the API's provisional totals leave them out until their partition's final scan
	// (delta.go). The caller logs and counts them; it must not retry the write for them.
	DeltaFailures int
	DeltaErr      error
}

// Refusal is a document the store refused permanently: retrying it can only fail again.
type Refusal struct {
	Index   int
	Code    int
	Message string
}

// transientCodes are server error codes that say "not now" rather than "never": the write is
// retried. The driver's retryable-write codes plus lock, conflict and time-limit errors.
var transientCodes = map[int]bool{
	6: true, 7: true, 89: true, 91: true, 134: true, 189: true, 262: true, 9001: true, // unreachable, shutting down, stepped down, socket
	10107: true, 11600: true, 11602: true, 13435: true, 13436: true, 10058: true, // not primary, interrupted
	24: true, 46: true, 50: true, 112: true, 64: true, 79: true, 100: true, // lock timeout/busy, max time, write conflict, write concern
}

// TransientCode reports whether a per-document write error code is worth retrying. Every other
// code except duplicate key (11000, which means already stored) is a permanent refusal of that
// document: a validator, an invalid value or key, a size limit.
func TransientCode(code int) bool { return transientCodes[code] }

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
	untimed := s.EndedAt.IsZero() && s.Timestamp == 0
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
	return SessionDoc{ID: s.Key(), Session: s, Topic: topic, ReceivedAt: receivedAt, Untimed: untimed}
}

// NewRejectedDoc builds the stored form of a rejected message. Its ID is RejectedID: retrying
// the write, or the broker redelivering the same bad message, cannot store it twice. Topic and
// detail are cut at a character boundary and made valid UTF-8 (BSON strings are UTF-8); the
// payload is kept as bytes, as received.
func NewRejectedDoc(topic string, payload []byte, reason session.Reason, detail string, receivedAt time.Time) RejectedDoc {
	kept := payload
	if len(kept) > MaxRejectedPayload {
		kept = kept[:MaxRejectedPayload]
	}
	const maxDetail = 512
	return RejectedDoc{
		ID:         RejectedID(topic, payload, reason),
		Topic:      session.TruncateUTF8(topic, maxDetail),
		Payload:    append([]byte(nil), kept...),
		Size:       len(payload),
		Reason:     string(reason),
		Detail:     session.TruncateUTF8(detail, maxDetail),
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
// On a partitioned store (FerretDB) the batch is split by partition (partition.go).
func (s *Store) InsertSessions(ctx context.Context, docs []SessionDoc) (WriteResult, error) {
	if len(docs) == 0 {
		return WriteResult{}, nil
	}
	l, err := s.layout(ctx)
	if err != nil {
		return WriteResult{}, fmt.Errorf("insert %d sessions: %w", len(docs), err)
	}
	if l.partitioned {
		return s.insertPartitioned(ctx, l, docs)
	}
	return s.insertSessions(ctx, s.Sessions.Name(), docs)
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
	return classify(bwe, n, coll.Name(), err)
}

// classify sorts the per-document errors of an unordered bulk insert: duplicates (already
// stored), permanent refusals (set aside by the caller) and transient errors (the whole call
// is an error, retried; documents that did go in come back as duplicates next time).
func classify(bwe mongo.BulkWriteException, n int, coll string, err error) (WriteResult, error) {
	errs := make([]mongo.WriteError, len(bwe.WriteErrors))
	for i, we := range bwe.WriteErrors {
		errs[i] = we.WriteError
	}
	return classifyErrors(bwe, errs, n, coll, err)
}

// classifyErrors is classify for any error with labels and per-document write errors (the
// driver's BulkWriteException from InsertMany, its WriteException from an insert command).
func classifyErrors(labels interface{ HasErrorLabel(string) bool }, errs []mongo.WriteError, n int, coll string, err error) (WriteResult, error) {
	if labels.HasErrorLabel("RetryableWriteError") || labels.HasErrorLabel("NetworkError") ||
		labels.HasErrorLabel("TransientTransactionError") {
		return WriteResult{}, fmt.Errorf("insert %d documents into %s: %w", n, coll, err)
	}
	res := WriteResult{Duplicates: make([]int, 0, len(errs))}
	for _, we := range errs {
		switch {
		case we.Code == CodeDuplicateKey:
			res.Duplicates = append(res.Duplicates, we.Index)
		case TransientCode(we.Code):
			return WriteResult{}, fmt.Errorf("insert %d documents into %s: document %d: %w", n, coll, we.Index, err)
		default:
			res.Refused = append(res.Refused, Refusal{Index: we.Index, Code: we.Code, Message: we.Message})
		}
	}
	slices.Sort(res.Duplicates)
	slices.SortFunc(res.Refused, func(a, b Refusal) int { return a.Index - b.Index })
	res.Inserted = n - len(res.Duplicates) - len(res.Refused)
	return res, nil
}

// ReceivedAt returns the received_at of the stored sessions among ids. After a write whose
// outcome is unknown (a timeout: it may have been applied), a retry sees the documents that
// did go in as duplicates; comparing received_at with the documents written tells "stored by
// that attempt" from "stored before by another delivery", so the counters stay exact.
// docs are the written documents (their partition is found from them).
func (s *Store) ReceivedAt(ctx context.Context, docs []SessionDoc) (map[string]time.Time, error) {
	colls, err := s.collectionsOf(ctx, docs)
	if err != nil {
		return nil, fmt.Errorf("read received_at of %d sessions: %w", len(docs), err)
	}
	out := make(map[string]time.Time, len(docs))
	for coll, ids := range colls {
		cur, err := coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
			options.Find().SetProjection(bson.D{{Key: "received_at", Value: 1}}))
		if err != nil {
			return nil, fmt.Errorf("read received_at of %d sessions: %w", len(ids), err)
		}
		var rows []struct {
			ID         string    `bson:"_id"`
			ReceivedAt time.Time `bson:"received_at"`
		}
		if err := cur.All(ctx, &rows); err != nil {
			return nil, fmt.Errorf("read received_at of %d sessions: %w", len(ids), err)
		}
		for _, d := range rows {
			out[d.ID] = d.ReceivedAt
		}
	}
	return out, nil
}

// RejectedID is the deterministic _id of a rejected message: a SHA-256 of topic, whole payload
// and reason (each length-prefixed, so no two inputs share an encoding), hex of the first 16
// bytes. The same bad message delivered again is the same document; the rejected counter
// still counts every delivery.
func RejectedID(topic string, payload []byte, reason session.Reason) string {
	h := sha256.New()
	var n [8]byte
	for _, part := range [][]byte{[]byte(topic), payload, []byte(reason)} {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
