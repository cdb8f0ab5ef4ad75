package store

// The time-partitioned layout of a store without indexes (FerretDB v1, where every find,
// count and $group reads and decodes the whole collection, even an _id lookup). Sessions live
// in one collection per ended_at bucket of width W, sessions_p<UTC yyyymmddhhmmss of the bucket
// start>: a pure function of the session key, so a redelivery hits the same collection and the
// _id stays the idempotency guarantee. Readers then scan only what they need: an audit the
// partitions overlapping its window, retention drops whole partitions, and the API's read
// model (incremental.go) scans a closed partition once and only the open ones on refresh.
//
// A partition is closed for readers once now > end + grace. A writer that inserts into a
// partition whose end is older than now − grace/2 first inserts a marker into the late
// collection (a plain insert with a fresh _id: FerretDB upserts are slow and racy); readers
// count the markers per partition and treat a partition as open again until its newest
// marker is grace old. Marker first, data second: a crash in between costs a spurious rescan.
// An insert that ends when its partition is already older than now − grace/2 (a slow store)
// is followed by a marker too, so readers that closed the partition meanwhile read it again.
// What remains assumed is that the clocks of writers and readers differ by less than grace/2.
//
// Only sessions whose key names their end (the simulator's: partitionOfDoc) are placed by
// time. Every other one (a foreign client's, whose own retry may carry a new timestamp; a
// payload without any time, whose ended_at is the receive time) would be stored twice in two
// partitions; they go to the unpartitioned sessions collection, always behind a marker. That
// collection is also where an older, unpartitioned store kept every session: it is read as one
// more partition with an unknown time range (no migration is needed; see docs/architecture.md).
//
// On MongoDB (indexes) none of this applies: the single sessions collection and its indexes.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Names of the partitioned layout.
const (
	PartitionPrefix = "sessions_p"
	LateCollection  = "late"
	MetaCollection  = "meta"
	partitionLayout = "20060102150405"
	metaLayoutID    = "partitioning"
)

// Defaults of the partitioned layout.
const (
	// DefaultPartitionWidth is 10 s: every refresh of the API's read model rescans the open
	// partitions (the newest one, and the previous one for grace after its end), and the
	// audit of a short window reads the partitions it overlaps. At 1,000 sessions/s a 10 s
	// partition holds 10,000 sessions, ~2 s of scanning on 2 busy cores; a 1-minute one held
	// 60,000 and made figures a minute old (docs/performance.md).
	DefaultPartitionWidth = 10 * time.Second
	// MinPartitionWidth bounds the number of collections (8,640 a day at 10 s).
	MinPartitionWidth = 5 * time.Second
	// DefaultPartitionGrace keeps a partition open for readers 10 s after its end: live
	// traffic writes into the previous partition for a second or two after a boundary, and
	// every refresh of the API's read model rescans the open partitions, so a long grace
	// costs freshness. Slow inserts are covered by the marker written after them.
	DefaultPartitionGrace = 10 * time.Second
	// groupWidth is the span of the fold groups of the API's read model (at least one
	// partition): retention drops whole groups.
	groupWidth = time.Hour
)

// Partition is one collection of sessions. Start and End bound its ended_at; both are zero
// for the unpartitioned sessions collection (any time).
type Partition struct {
	Name       string
	Start, End time.Time
}

// Unbounded reports whether p is the unpartitioned sessions collection.
func (p Partition) Unbounded() bool { return p.Start.IsZero() }

// layout is how a store keeps its sessions, decided once per Store.
type layout struct {
	partitioned bool
	width       time.Duration
	grace       time.Duration
}

// layoutState caches the layout; Connect decides it, Open decides it on first use.
type layoutState struct {
	mu   sync.Mutex
	done bool
	l    layout
}

// metaDoc records the partition width every process must use; the first process writes it.
type metaDoc struct {
	ID      string `bson:"_id"`
	WidthNs int64  `bson:"width_ns"`
	GraceNs int64  `bson:"grace_ns"`
}

// Partitioned reports whether the store keeps sessions in time partitions (FerretDB v1).
func (s *Store) Partitioned(ctx context.Context) (bool, error) {
	l, err := s.layout(ctx)
	return l.partitioned, err
}

// PartitionWidth returns the width of the partitions (0 when the store is not partitioned).
func (s *Store) PartitionWidth(ctx context.Context) (time.Duration, error) {
	l, err := s.layout(ctx)
	return l.width, err
}

func (s *Store) layout(ctx context.Context) (layout, error) {
	s.ls.mu.Lock()
	defer s.ls.mu.Unlock()
	if s.ls.done {
		return s.ls.l, nil
	}
	ferret, err := s.IsFerretDB(ctx)
	if err != nil {
		return layout{}, err
	}
	s.noIndexes = ferret
	l := layout{}
	if ferret {
		if l, err = s.readLayout(ctx); err != nil {
			return layout{}, err
		}
	}
	s.ls.l, s.ls.done = l, true
	return l, nil
}

// readLayout writes the configured width into the meta document unless one is there already
// (an _id insert: atomic on every server), then reads back the one everybody uses.
func (s *Store) readLayout(ctx context.Context) (layout, error) {
	w, g := s.cfg.PartitionWidth, s.cfg.PartitionGrace
	if w == 0 {
		w = DefaultPartitionWidth
	}
	if g == 0 {
		g = DefaultPartitionGrace
	}
	meta := s.DB.Collection(MetaCollection)
	_, err := meta.InsertOne(ctx, metaDoc{ID: metaLayoutID, WidthNs: int64(w), GraceNs: int64(g)})
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return layout{}, fmt.Errorf("record the partition width: %w", err)
	}
	var m metaDoc
	if err := meta.FindOne(ctx, bson.D{{Key: "_id", Value: metaLayoutID}}).Decode(&m); err != nil {
		return layout{}, fmt.Errorf("read the partition width: %w", err)
	}
	if time.Duration(m.WidthNs) < MinPartitionWidth || time.Duration(m.WidthNs)%time.Second != 0 || m.GraceNs <= 0 {
		return layout{}, fmt.Errorf("the stored partition layout (width %s, grace %s) is invalid", time.Duration(m.WidthNs), time.Duration(m.GraceNs))
	}
	return layout{partitioned: true, width: time.Duration(m.WidthNs), grace: time.Duration(m.GraceNs)}, nil
}

// partitionOf returns the partition of a session that ended at end.
func (l layout) partitionOf(end time.Time) Partition {
	start := end.UTC().Truncate(l.width)
	return Partition{Name: PartitionPrefix + start.Format(partitionLayout), Start: start, End: start.Add(l.width)}
}

// parsePartition returns the partition a collection name stands for.
// partitionOfDoc is the collection d is stored in. The _id is the idempotency guarantee only
// within one collection, so the choice must be a function of the key alone: a session whose
// key names its end (the simulator's: the session ID is the end in microseconds, and a
// redelivery or a re-issued slot carries the same end) goes to the partition of that end;
// every other session (foreign clients, the seed's contract-only payloads) to the
// unpartitioned collection, where a second message under the same key with another
// timestamp (a client's own retry) is a duplicate, as on MongoDB, rather than a second copy
// in another partition.
func (l layout) partitionOfDoc(d *SessionDoc) Partition {
	if t, ok := keyTime(d.ID); ok && !d.Untimed && t.UnixMilli() == d.EndedAt.UnixMilli() {
		return l.partitionOf(d.EndedAt)
	}
	return Partition{Name: SessionsCollection}
}

// keyTime is the time a session key's session ID names read as microseconds since the epoch,
// if it is a plausible one (the simulator's IDs).
func keyTime(id string) (time.Time, bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return time.Time{}, false
	}
	us, err := strconv.ParseInt(id[i+1:], 10, 64)
	if err != nil || us <= 0 {
		return time.Time{}, false
	}
	t := time.UnixMicro(us).UTC()
	return t, t.Year() >= 2000 && t.Year() < 2200
}

func (l layout) parsePartition(name string) (Partition, bool) {
	if name == SessionsCollection {
		return Partition{Name: name}, true
	}
	rest, ok := strings.CutPrefix(name, PartitionPrefix)
	if !ok {
		return Partition{}, false
	}
	start, err := time.Parse(partitionLayout, rest)
	if err != nil {
		return Partition{}, false
	}
	return Partition{Name: name, Start: start, End: start.Add(l.width)}, true
}

// groupSpan is the span of a fold group: an hour, or one partition when they are wider.
func (l layout) groupSpan() time.Duration { return max(groupWidth, l.width) }

// groupOf is the start of the fold group of p.
func (l layout) groupOf(p Partition) time.Time { return p.Start.Truncate(l.groupSpan()) }

// listPartitions returns the stored partitions, newest first, the unpartitioned sessions
// collection (when it exists) last.
func (s *Store) listPartitions(ctx context.Context, l layout) ([]Partition, error) {
	names, err := s.DB.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("list partitions: %w", err)
	}
	var out []Partition
	for _, n := range names {
		if p, ok := l.parsePartition(n); ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Unbounded() != out[j].Unbounded() {
			return out[j].Unbounded()
		}
		return out[i].Start.After(out[j].Start)
	})
	return out, nil
}

// Partitions returns the stored partitions, newest first (nil on a store with indexes).
func (s *Store) Partitions(ctx context.Context) ([]Partition, error) {
	l, err := s.layout(ctx)
	if err != nil || !l.partitioned {
		return nil, err
	}
	return s.listPartitions(ctx, l)
}

// lateMarker says that a writer inserted (or was about to insert) into a partition that
// readers may consider closed.
type lateMarker struct {
	ID        string    `bson:"_id"`
	Partition string    `bson:"partition"`
	At        time.Time `bson:"at"`
}

// markerInfo summarises the markers of one partition.
type markerInfo struct {
	n    int
	last time.Time
}

// ensureMarker inserts a marker for partition unless this process inserted one less than
// fresh ago, and returns the time of the marker relied on.
func (s *Store) ensureMarker(ctx context.Context, partition string, fresh time.Duration) (time.Time, error) {
	now := time.Now()
	s.markMu.Lock()
	at, ok := s.marks[partition]
	s.markMu.Unlock()
	if ok && fresh > 0 && now.Sub(at) < fresh {
		return at, nil
	}
	if err := s.insertMarker(ctx, partition); err != nil {
		return time.Time{}, err
	}
	s.markMu.Lock()
	defer s.markMu.Unlock()
	if s.marks == nil || len(s.marks) > 10_000 {
		s.marks = map[string]time.Time{}
	}
	s.marks[partition] = now
	return now, nil
}

func (s *Store) insertMarker(ctx context.Context, partition string) error {
	var b [12]byte
	_, _ = rand.Read(b[:])
	m := lateMarker{ID: hex.EncodeToString(b[:]), Partition: partition, At: time.Now().UTC().Truncate(time.Millisecond)}
	if _, err := s.DB.Collection(LateCollection).InsertOne(ctx, m); err != nil {
		return fmt.Errorf("mark late write into %s: %w", partition, err)
	}
	return nil
}

// lateMarkers reads every marker (a small collection: one document per late batch, removed
// with its partition by retention).
func (s *Store) lateMarkers(ctx context.Context) (map[string]markerInfo, error) {
	cur, err := s.DB.Collection(LateCollection).Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return nil, fmt.Errorf("read late markers: %w", err)
	}
	var ms []lateMarker
	if err := cur.All(ctx, &ms); err != nil {
		return nil, fmt.Errorf("read late markers: %w", err)
	}
	out := make(map[string]markerInfo)
	for _, m := range ms {
		i := out[m.Partition]
		i.n++
		if m.At.After(i.last) {
			i.last = m.At.UTC()
		}
		out[m.Partition] = i
	}
	return out, nil
}

// insertPartitioned routes docs to their partitions: one unordered insert per partition (live
// traffic: one or two), each behind a late marker when that partition may be closed.
func (s *Store) insertPartitioned(ctx context.Context, l layout, docs []SessionDoc) (WriteResult, error) {
	type group struct {
		p   Partition
		idx []int
	}
	byName := map[string]*group{}
	var order []*group
	for i := range docs {
		p := l.partitionOfDoc(&docs[i])
		g := byName[p.Name]
		if g == nil {
			g = &group{p: p}
			byName[p.Name] = g
			order = append(order, g)
		}
		g.idx = append(g.idx, i)
	}
	var res WriteResult
	for _, g := range order {
		// Readers keep a partition open until grace after its end or its newest marker.
		// Before inserting into a partition past half of that, this writer makes sure it has
		// a marker of its own at most grace/4 old (so a backlog costs a few markers per
		// partition, not one per batch); after the insert, if it ended past half of the
		// deadline it relied on, another marker makes readers read the partition again.
		openUntil := g.p.End
		if g.p.Unbounded() || g.p.End.Before(time.Now().Add(-l.grace/2)) {
			at, err := s.ensureMarker(ctx, g.p.Name, l.grace/4)
			if err != nil {
				return WriteResult{}, err
			}
			openUntil = at
		}
		part := make([]SessionDoc, len(g.idx))
		for k, i := range g.idx {
			part[k] = docs[i]
		}
		r, err := s.insertSessions(ctx, g.p.Name, part)
		if err != nil {
			// The whole batch is retried: what went in is seen as duplicates, told apart
			// by received_at (ReceivedAt).
			return WriteResult{}, err
		}
		if time.Now().After(openUntil.Add(l.grace / 2)) {
			if _, err := s.ensureMarker(ctx, g.p.Name, 0); err != nil {
				return WriteResult{}, err
			}
		}
		if !g.p.Unbounded() && r.Inserted > 0 {
			// The speed layer of the API's read model (delta.go): the sums of what this
			// insert newly stored. Its failure does not fail the write (the sessions are
			// stored and must be acknowledged): the figures undercount until the
			// partition's final scan.
			if err := s.writeDelta(ctx, g.p.Name, newlyStored(part, r)); err != nil {
				res.DeltaFailures++
				res.DeltaErr = errors.Join(res.DeltaErr, err)
			}
		}
		res.Inserted += r.Inserted
		for _, d := range r.Duplicates {
			res.Duplicates = append(res.Duplicates, g.idx[d])
		}
		for _, f := range r.Refused {
			f.Index = g.idx[f.Index]
			res.Refused = append(res.Refused, f)
		}
	}
	sort.Ints(res.Duplicates)
	sort.Slice(res.Refused, func(i, j int) bool { return res.Refused[i].Index < res.Refused[j].Index })
	return res, nil
}

// newlyStored returns the documents of part that insert result r stored (neither duplicates
// nor refused).
func newlyStored(part []SessionDoc, r WriteResult) []SessionDoc {
	if len(r.Duplicates) == 0 && len(r.Refused) == 0 {
		return part
	}
	skip := make(map[int]bool, len(r.Duplicates)+len(r.Refused))
	for _, i := range r.Duplicates {
		skip[i] = true
	}
	for _, f := range r.Refused {
		skip[f.Index] = true
	}
	out := make([]SessionDoc, 0, len(part)-len(skip))
	for i := range part {
		if !skip[i] {
			out = append(out, part[i])
		}
	}
	return out
}

// collectionsOf returns the collections docs are stored in, with the IDs in each.
func (s *Store) collectionsOf(ctx context.Context, docs []SessionDoc) (map[*mongo.Collection][]string, error) {
	l, err := s.layout(ctx)
	if err != nil {
		return nil, err
	}
	out := map[*mongo.Collection][]string{}
	if !l.partitioned {
		for _, d := range docs {
			out[s.Sessions] = append(out[s.Sessions], d.ID)
		}
		return out, nil
	}
	colls := map[string]*mongo.Collection{}
	for _, d := range docs {
		name := l.partitionOfDoc(&d).Name
		c := colls[name]
		if c == nil {
			c = s.DB.Collection(name)
			colls[name] = c
		}
		out[c] = append(out[c], d.ID)
	}
	return out, nil
}

// dropPartitionsBefore drops the partitions of the fold groups that ended at or before cutoff
// (whole groups, so that readers drop their aggregates instead of rescanning what is left of
// a group), then their late markers, and deletes the unpartitioned sessions older than cutoff
// (behind a marker: readers rescan that collection). It returns how many sessions went.
func (s *Store) dropPartitionsBefore(ctx context.Context, l layout, cutoff time.Time) (int64, error) {
	parts, err := s.listPartitions(ctx, l)
	if err != nil {
		return 0, err
	}
	cut := cutoff.Truncate(l.groupSpan())
	var n int64
	var dropped bson.A
	var errs []error
	for _, p := range parts {
		if p.Unbounded() {
			old := bson.D{{Key: fieldEndedAt, Value: bson.D{{Key: "$lt", Value: cutoff}}}}
			err := s.DB.Collection(p.Name).FindOne(ctx, old, options.FindOne().SetProjection(bson.D{{Key: fieldID, Value: 1}})).Err()
			if errors.Is(err, mongo.ErrNoDocuments) {
				continue // nothing to delete: no marker, no rescan
			}
			if err == nil {
				err = s.insertMarker(ctx, p.Name)
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			res, err := s.DB.Collection(p.Name).DeleteMany(ctx, old)
			if err != nil {
				errs = append(errs, fmt.Errorf("delete unpartitioned sessions before %s: %w", cutoff.Format(time.RFC3339), err))
				continue
			}
			n += res.DeletedCount
			continue
		}
		if p.End.After(cut) {
			continue
		}
		coll := s.DB.Collection(p.Name)
		c, err := coll.EstimatedDocumentCount(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s: %w", p.Name, err))
			continue
		}
		if err := coll.Drop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drop %s: %w", p.Name, err))
			continue
		}
		n += c
		dropped = append(dropped, p.Name)
	}
	// The delta collections of the dropped partitions (and of any older one: a late write
	// racing retention may have created one) go with them.
	deltas, err := s.deltaPartitions(ctx, l)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range deltas {
		if p.End.After(cut) {
			continue
		}
		if err := s.DB.Collection(deltaCollection(p.Name)).Drop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drop the deltas of %s: %w", p.Name, err))
		}
	}
	if len(dropped) > 0 {
		if _, err := s.DB.Collection(LateCollection).DeleteMany(ctx, bson.D{{Key: "partition", Value: bson.D{{Key: "$in", Value: dropped}}}}); err != nil {
			errs = append(errs, fmt.Errorf("delete the late markers of dropped partitions: %w", err))
		}
	}
	return n, errors.Join(errs...)
}

// partitionedSnapshot is the query path's answer on a partitioned store: a scan of every
// partition (the per-request equivalent of the API's read model; the API itself reads its
// incremental snapshots). It returns nil, nil on a store that is not partitioned.
func (s *Store) partitionedSnapshot(ctx context.Context) (*Snapshot, error) {
	l, err := s.layout(ctx)
	if err != nil || !l.partitioned {
		return nil, err
	}
	return newExactIncremental(s, 0).Refresh(ctx)
}

// scanNewestPartitioned is scanNewest over the partitions that can hold an answer, newest
// first, stopping once k sessions are known that are newer than anything a further partition
// holds. The unpartitioned collection (any time) is always read.
func (s *Store) scanNewestPartitioned(ctx context.Context, l layout, q SessionQuery, f bson.D, k int) ([]SessionDoc, error) {
	parts, err := s.listPartitions(ctx, l)
	if err != nil {
		return nil, err
	}
	top := &sessionHeap{}
	push := func(d *SessionDoc) { pushNewest(top, *d, k) }
	var markers map[string]markerInfo // read once, when a partition is first needed
	if n := len(parts); n > 0 && parts[n-1].Unbounded() {
		if err := s.scanColl(ctx, parts[n-1].Name, f, push); err != nil {
			return nil, err
		}
		parts = parts[:n-1]
	}
	for _, p := range parts {
		if !q.To.IsZero() && !p.Start.Before(q.To) {
			continue
		}
		if q.After != nil && p.Start.After(q.After.EndedAt) {
			continue
		}
		if !q.From.IsZero() && !p.End.After(q.From) {
			break
		}
		if top.Len() >= k && !(*top)[0].EndedAt.Before(p.End) {
			break // every session of p and older partitions is older than the k kept
		}
		if markers == nil {
			if markers, err = s.lateMarkers(ctx); err != nil {
				return nil, err
			}
		}
		docs, closed, err := s.closedPartition(ctx, l, p, markers[p.Name])
		if err != nil {
			return nil, err
		}
		if !closed {
			if err := s.scanColl(ctx, p.Name, f, push); err != nil {
				return nil, err
			}
			continue
		}
		// Newest first: the first k that match are the partition's answer.
		for i, taken := 0, 0; i < len(docs) && taken < k; i++ {
			if q.match(&docs[i]) {
				push(&docs[i])
				taken++
			}
		}
	}
	return popNewest(top), nil
}

// findSessionPartitioned looks for a session by key in the newest partitions first.
func (s *Store) findSessionPartitioned(ctx context.Context, l layout, id string) (SessionDoc, error) {
	parts, err := s.listPartitions(ctx, l)
	if err != nil {
		return SessionDoc{}, err
	}
	// The simulator's session IDs are the session's end in microseconds (publisher/sim): try
	// the partition that time falls in first, then every one, newest first.
	if t, ok := keyTime(id); ok {
		name := l.partitionOf(t).Name
		for k, p := range parts {
			if p.Name == name {
				parts = append([]Partition{p}, append(parts[:k:k], parts[k+1:]...)...)
				break
			}
		}
	}
	for _, p := range parts {
		var doc SessionDoc
		err := s.DB.Collection(p.Name).FindOne(ctx, bson.D{{Key: fieldID, Value: id}}).Decode(&doc)
		if err == nil {
			return doc, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return doc, fmt.Errorf("find session %q in %s: %w", id, p.Name, err)
		}
	}
	return SessionDoc{}, fmt.Errorf("session %q: %w", id, ErrNotFound)
}

// scanAuditPartitions calls scan for each collection that can hold a session ending in
// [from, to).
func (s *Store) auditCollections(ctx context.Context, l layout, from, to time.Time) ([]*mongo.Collection, error) {
	parts, err := s.listPartitions(ctx, l)
	if err != nil {
		return nil, err
	}
	var out []*mongo.Collection
	for _, p := range parts {
		if p.Unbounded() || (p.Start.Before(to) && p.End.After(from)) {
			out = append(out, s.DB.Collection(p.Name))
		}
	}
	return out, nil
}

// SessionCollections returns every collection holding sessions: the partitions and the
// unpartitioned collection on a partitioned store, the sessions collection otherwise. For
// tools and tests that read or change stored documents directly; a direct write into a
// partition bypasses the late markers and the deltas (delta.go), so the API's read model may
// not see it (a direct delete from a partition not final yet leaves its provisional totals
// counting what was deleted).
func (s *Store) SessionCollections(ctx context.Context) ([]*mongo.Collection, error) {
	parts, err := s.Partitions(ctx)
	if err != nil {
		return nil, err
	}
	if parts == nil {
		return []*mongo.Collection{s.Sessions}, nil
	}
	out := make([]*mongo.Collection, len(parts))
	for i, p := range parts {
		out[i] = s.DB.Collection(p.Name)
	}
	return out, nil
}

// CountSessions counts the stored sessions matching filter in every collection holding them
// (a scan of each on FerretDB): for tools and tests.
func (s *Store) CountSessions(ctx context.Context, filter bson.D) (int64, error) {
	colls, err := s.SessionCollections(ctx)
	if err != nil {
		return 0, err
	}
	return CountIn(ctx, colls, filter)
}

// CountIn sums the counts of the documents matching filter in colls.
func CountIn(ctx context.Context, colls []*mongo.Collection, filter any) (int64, error) {
	var n int64
	for _, c := range colls {
		k, err := c.CountDocuments(ctx, filter)
		if err != nil {
			return 0, fmt.Errorf("count sessions in %s: %w", c.Name(), err)
		}
		n += k
	}
	return n, nil
}
