package store

// Read side of the store, used by the REST API. Every query here is one FerretDB v1 answers
// correctly (DEVELOPERS.md): find with equality/range filters, sort and limit, and aggregation
// pipelines whose $group has exactly ONE $sum accumulator (FerretDB v1 consumes the group's
// iterator in its first accumulator, so a second one silently returns 0). Several totals are
// therefore several pipelines, and first/last times are sort+limit 1 finds, not $min/$max.
// The totals of one answer come from several queries, so they are not a snapshot: while the
// listener writes, the count and the sums may describe slightly different sets of sessions.

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"
)

// ErrNotFound is returned when the requested session or charger has no stored session.
var ErrNotFound = errors.New("not found")

// MaxQueryLimit bounds how many documents one read returns.
const MaxQueryLimit = 1000

// Stored field names the queries use.
const (
	fieldID        = "_id"
	fieldCharger   = "charger_id"
	fieldConnector = "connector_id"
	fieldEndedAt   = "ended_at"
	fieldEnergy    = "energy_delivered_in_kWh"
	fieldCost      = "session_cost_in_cents"
)

// SessionCursor is a position in the newest-first session order (ended_at desc, _id desc):
// the sort key of the last session of a page.
type SessionCursor struct {
	EndedAt time.Time
	ID      string
}

// SessionQuery selects sessions. Values are typed: nothing from it is ever used as a document
// key or an operator, so user input cannot change the shape of a filter.
type SessionQuery struct {
	ChargerID    string // "" = every charger
	ConnectorID  int    // used when HasConnector
	HasConnector bool
	From         time.Time      // ended_at >= From; zero = unbounded
	To           time.Time      // ended_at < To; zero = unbounded
	After        *SessionCursor // continue after this position; nil = from the newest
	Limit        int            // 1..MaxQueryLimit
}

// filter builds the find filter of q, without the cursor condition.
func (q *SessionQuery) filter() bson.D {
	f := bson.D{}
	if q.ChargerID != "" {
		f = append(f, bson.E{Key: fieldCharger, Value: q.ChargerID})
	}
	if q.HasConnector {
		f = append(f, bson.E{Key: fieldConnector, Value: q.ConnectorID})
	}
	var rng bson.D
	if !q.From.IsZero() {
		rng = append(rng, bson.E{Key: "$gte", Value: q.From.UTC()})
	}
	if !q.To.IsZero() {
		rng = append(rng, bson.E{Key: "$lt", Value: q.To.UTC()})
	}
	if len(rng) > 0 {
		f = append(f, bson.E{Key: fieldEndedAt, Value: rng})
	}
	return f
}

// newestFirst is the order of every session listing; _id breaks ties between sessions that
// ended in the same millisecond so that cursor pagination is total.
var newestFirst = bson.D{{Key: fieldEndedAt, Value: -1}, {Key: fieldID, Value: -1}}

// FindSessions returns up to q.Limit sessions matching q, newest first (ended_at desc, _id
// desc), starting after q.After, and whether more sessions follow.
func (s *Store) FindSessions(ctx context.Context, q SessionQuery) ([]SessionDoc, bool, error) {
	if q.Limit < 1 || q.Limit > MaxQueryLimit {
		return nil, false, fmt.Errorf("find sessions: limit %d outside 1..%d", q.Limit, MaxQueryLimit)
	}
	f := q.filter()
	if q.After != nil {
		// Strictly after the cursor in (ended_at desc, _id desc) order. BSON dates have
		// millisecond precision, so the cursor time is too.
		t := q.After.EndedAt.UTC().Truncate(time.Millisecond)
		after := bson.A{
			bson.D{{Key: fieldEndedAt, Value: bson.D{{Key: "$lt", Value: t}}}},
			bson.D{{Key: fieldEndedAt, Value: t}, {Key: fieldID, Value: bson.D{{Key: "$lt", Value: q.After.ID}}}},
		}
		f = bson.D{{Key: "$and", Value: bson.A{f, bson.D{{Key: "$or", Value: after}}}}}
	}
	// One more than asked tells whether another page exists.
	var docs []SessionDoc
	l, err := s.layout(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("find sessions: %w", err)
	}
	if l.partitioned {
		if docs, err = s.scanNewestPartitioned(ctx, l, q, f, q.Limit+1); err != nil {
			return nil, false, fmt.Errorf("find sessions: %w", err)
		}
	} else if s.NoIndexes() {
		if docs, err = s.scanNewest(ctx, s.Sessions, f, q.Limit+1); err != nil {
			return nil, false, err
		}
	} else {
		opts := options.Find().SetSort(newestFirst).SetLimit(int64(q.Limit) + 1)
		cur, err := s.Sessions.Find(ctx, f, opts)
		if err != nil {
			return nil, false, fmt.Errorf("find sessions: %w", err)
		}
		docs = make([]SessionDoc, 0, min(q.Limit+1, 128))
		if err := cur.All(ctx, &docs); err != nil {
			return nil, false, fmt.Errorf("read sessions: %w", err)
		}
	}
	if len(docs) > q.Limit {
		return docs[:q.Limit], true, nil
	}
	return docs, false, nil
}

// FindSession returns the session stored under the document key id, or ErrNotFound.
func (s *Store) FindSession(ctx context.Context, id string) (SessionDoc, error) {
	var doc SessionDoc
	l, err := s.layout(ctx)
	if err != nil {
		return doc, err
	}
	if l.partitioned {
		return s.findSessionPartitioned(ctx, l, id)
	}
	err = s.Sessions.FindOne(ctx, bson.D{{Key: fieldID, Value: id}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return doc, fmt.Errorf("session %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return doc, fmt.Errorf("find session %q: %w", id, err)
	}
	return doc, nil
}

// Totals are sums over a set of sessions.
type Totals struct {
	Sessions  int64
	EnergyKWh float64
	CostCents float64
	// FirstSessionAt and LastSessionAt are the earliest and latest ended_at; zero when
	// Sessions is 0.
	FirstSessionAt time.Time
	LastSessionAt  time.Time
}

// ChargerTotals are the totals of one charger; FirstSessionAt is not computed.
type ChargerTotals struct {
	ChargerID string
	Totals
}

// FleetStats are the totals of every stored session plus fleet-wide counts.
type FleetStats struct {
	Totals
	Chargers int64 // distinct charger IDs with at least one session
	Rejected int64 // messages kept in the rejected collection
}

// ChargerTotals returns the totals of one charger (FirstSessionAt left zero), or ErrNotFound
// when it has no session.
func (s *Store) ChargerTotals(ctx context.Context, chargerID string) (ChargerTotals, error) {
	if sn, err := s.partitionedSnapshot(ctx); err != nil || sn != nil {
		if err != nil {
			return ChargerTotals{}, fmt.Errorf("totals of charger %q: %w", chargerID, err)
		}
		return sn.Charger(chargerID)
	}
	t, err := s.totals(ctx, bson.D{{Key: fieldCharger, Value: chargerID}}, false)
	if err != nil {
		return ChargerTotals{}, fmt.Errorf("totals of charger %q: %w", chargerID, err)
	}
	if t.Sessions == 0 {
		return ChargerTotals{}, fmt.Errorf("charger %q: %w", chargerID, ErrNotFound)
	}
	return ChargerTotals{ChargerID: chargerID, Totals: t}, nil
}

// FleetStats returns the totals of the whole fleet.
func (s *Store) FleetStats(ctx context.Context) (FleetStats, error) {
	if sn, err := s.partitionedSnapshot(ctx); err != nil || sn != nil {
		if err != nil {
			return FleetStats{}, fmt.Errorf("fleet stats: %w", err)
		}
		return sn.Fleet, nil
	}
	var st FleetStats
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		t, err := s.totals(gctx, bson.D{}, true)
		st.Totals = t
		return err
	})
	g.Go(func() error {
		n, err := s.countPipeline(gctx, s.Sessions, mongo.Pipeline{
			{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$" + fieldCharger}}}},
			{{Key: "$count", Value: "n"}},
		})
		st.Chargers = n
		if err != nil {
			return fmt.Errorf("count chargers: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		n, err := s.Rejected.CountDocuments(gctx, bson.D{})
		st.Rejected = n
		if err != nil {
			return fmt.Errorf("count rejected: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return FleetStats{}, fmt.Errorf("fleet stats: %w", err)
	}
	return st, nil
}

// totals runs one query per figure (see the file comment), concurrently; FirstSessionAt
// only when first is set (it costs one more query).
func (s *Store) totals(ctx context.Context, match bson.D, first bool) (Totals, error) {
	var t Totals
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		n, err := s.Sessions.CountDocuments(gctx, match)
		t.Sessions = n
		if err != nil {
			return fmt.Errorf("count sessions: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		v, err := s.sum(gctx, match, fieldEnergy)
		t.EnergyKWh = v
		return err
	})
	g.Go(func() error {
		v, err := s.sum(gctx, match, fieldCost)
		t.CostCents = v
		return err
	})
	if first {
		g.Go(func() error {
			v, err := s.endedAt(gctx, match, 1)
			t.FirstSessionAt = v
			return err
		})
	}
	g.Go(func() error {
		v, err := s.endedAt(gctx, match, -1)
		t.LastSessionAt = v
		return err
	})
	if err := g.Wait(); err != nil {
		return Totals{}, err
	}
	return t, nil
}

// sum returns the sum of field over the sessions matching match (0 when none match).
func (s *Store) sum(ctx context.Context, match bson.D, field string) (float64, error) {
	p := mongo.Pipeline{
		{{Key: "$match", Value: match}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: nil}, {Key: "v", Value: bson.D{{Key: "$sum", Value: "$" + field}}}}}},
	}
	cur, err := s.Sessions.Aggregate(ctx, p)
	if err != nil {
		return 0, fmt.Errorf("sum %s: %w", field, err)
	}
	var rows []struct {
		V bson.RawValue `bson:"v"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return 0, fmt.Errorf("sum %s: %w", field, err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	v, err := number(rows[0].V)
	if err != nil {
		return 0, fmt.Errorf("sum %s: %w", field, err)
	}
	return v, nil
}

// endedAt returns the ended_at of the first session matching match in the given direction
// (1: earliest, -1: latest), or the zero time when none match.
func (s *Store) endedAt(ctx context.Context, match bson.D, dir int) (time.Time, error) {
	var doc struct {
		EndedAt time.Time `bson:"ended_at"`
	}
	opts := options.FindOne().
		SetSort(bson.D{{Key: fieldEndedAt, Value: dir}, {Key: fieldID, Value: dir}}).
		SetProjection(bson.D{{Key: fieldEndedAt, Value: 1}})
	err := s.Sessions.FindOne(ctx, match, opts).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("find ended_at (order %d): %w", dir, err)
	}
	return doc.EndedAt.UTC(), nil
}

// countPipeline runs p, whose last stage is {$count: "n"}, on coll (0 when p yields nothing).
func (s *Store) countPipeline(ctx context.Context, coll *mongo.Collection, p mongo.Pipeline) (int64, error) {
	cur, err := coll.Aggregate(ctx, p)
	if err != nil {
		return 0, err
	}
	var rows []struct {
		N bson.RawValue `bson:"n"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	v, err := number(rows[0].N)
	if err != nil {
		return 0, err
	}
	return int64(v), nil
}

// ListChargerTotals returns the totals of up to limit chargers in ascending charger ID order
// (byte order: "10" sorts before "9"), starting after the charger ID after ("" = first), and
// whether more chargers follow.
// It runs one pipeline per figure over the page's chargers (one $sum each) and finds their
// last sessions with lastSessions.
func (s *Store) ListChargerTotals(ctx context.Context, after string, limit int) ([]ChargerTotals, bool, error) {
	if limit < 1 || limit > MaxQueryLimit {
		return nil, false, fmt.Errorf("list chargers: limit %d outside 1..%d", limit, MaxQueryLimit)
	}
	if sn, err := s.partitionedSnapshot(ctx); err != nil || sn != nil {
		if err != nil {
			return nil, false, fmt.Errorf("list chargers: %w", err)
		}
		out, more := sn.ListChargers(after, limit)
		return out, more, nil
	}
	match := bson.D{}
	if after != "" {
		match = bson.D{{Key: fieldCharger, Value: bson.D{{Key: "$gt", Value: after}}}}
	}
	counts, err := s.groupSum(ctx, mongo.Pipeline{
		{{Key: "$match", Value: match}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$" + fieldCharger}, {Key: "v", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		{{Key: "$sort", Value: bson.D{{Key: "_id", Value: 1}}}},
		{{Key: "$limit", Value: limit + 1}},
	})
	if err != nil {
		return nil, false, fmt.Errorf("list chargers: count sessions: %w", err)
	}
	more := len(counts) > limit
	if more {
		counts = counts[:limit]
	}
	out := make([]ChargerTotals, len(counts))
	ids := make(bson.A, len(counts))
	index := make(map[string]int, len(counts))
	for i, c := range counts {
		out[i] = ChargerTotals{ChargerID: c.id, Totals: Totals{Sessions: int64(c.v)}}
		ids[i] = c.id
		index[c.id] = i
	}
	if len(out) == 0 {
		return out, false, nil
	}
	inPage := bson.D{{Key: fieldCharger, Value: bson.D{{Key: "$in", Value: ids}}}}
	g, gctx := errgroup.WithContext(ctx)
	for _, fig := range []struct {
		field string
		set   func(*ChargerTotals, float64)
	}{
		{fieldEnergy, func(c *ChargerTotals, v float64) { c.EnergyKWh = v }},
		{fieldCost, func(c *ChargerTotals, v float64) { c.CostCents = v }},
	} {
		g.Go(func() error {
			rows, err := s.groupSum(gctx, mongo.Pipeline{
				{{Key: "$match", Value: inPage}},
				{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$" + fieldCharger}, {Key: "v", Value: bson.D{{Key: "$sum", Value: "$" + fig.field}}}}}},
			})
			if err != nil {
				return fmt.Errorf("sum %s: %w", fig.field, err)
			}
			// Each goroutine writes a different field of out's elements: no data race.
			for _, r := range rows {
				if i, ok := index[r.id]; ok {
					fig.set(&out[i], r.v)
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		last, err := s.lastSessions(gctx, ids)
		if err != nil {
			return err
		}
		for id, t := range last {
			out[index[id]].LastSessionAt = t
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, false, fmt.Errorf("list chargers: %w", err)
	}
	return out, more, nil
}

// lastSessions returns the latest ended_at of each charger in ids. One newest-first find over
// those chargers' sessions usually meets every charger within a few documents per charger
// (an active fleet ends sessions all the time); it reads at most lastScanPerCharger documents
// per charger, and chargers it has not met by then get a sort+limit 1 find each (an index
// lookup on MongoDB). On FerretDB, which scans the table for every find, this makes one scan instead
// of one per charger.
func (s *Store) lastSessions(ctx context.Context, ids bson.A) (map[string]time.Time, error) {
	last := make(map[string]time.Time, len(ids))
	if budget := int64(lastScanPerCharger * len(ids)); budget > 0 {
		if err := s.scanLastSessions(ctx, ids, budget, last); err != nil {
			return nil, err
		}
	}
	var missing []string
	for _, id := range ids {
		if _, ok := last[id.(string)]; !ok {
			missing = append(missing, id.(string))
		}
	}
	if len(missing) == 0 {
		return last, nil
	}
	found := make([]time.Time, len(missing))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(chargerQueryConcurrency)
	for i, id := range missing {
		g.Go(func() error {
			t, err := s.endedAt(gctx, bson.D{{Key: fieldCharger, Value: id}}, -1)
			found[i] = t
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i, id := range missing {
		last[id] = found[i]
	}
	return last, nil
}

// scanLastSessions reads the newest sessions of the chargers in ids, at most budget of them,
// and records in last the first ended_at met for each charger.
func (s *Store) scanLastSessions(ctx context.Context, ids bson.A, budget int64, last map[string]time.Time) error {
	opts := options.Find().
		SetSort(bson.D{{Key: fieldEndedAt, Value: -1}}).
		SetProjection(bson.D{{Key: fieldID, Value: 0}, {Key: fieldCharger, Value: 1}, {Key: fieldEndedAt, Value: 1}}).
		SetLimit(budget).
		SetBatchSize(int32(min(budget, 1000)))
	cur, err := s.Sessions.Find(ctx, bson.D{{Key: fieldCharger, Value: bson.D{{Key: "$in", Value: ids}}}}, opts)
	if err != nil {
		return fmt.Errorf("find last sessions: %w", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for len(last) < len(ids) && cur.Next(ctx) {
		var row struct {
			ChargerID string    `bson:"charger_id"`
			EndedAt   time.Time `bson:"ended_at"`
		}
		if err := cur.Decode(&row); err != nil {
			return fmt.Errorf("decode last session: %w", err)
		}
		if _, seen := last[row.ChargerID]; !seen {
			last[row.ChargerID] = row.EndedAt.UTC()
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("read last sessions: %w", err)
	}
	return nil
}

// lastScanPerCharger is how many documents per charger lastSessions reads before it falls
// back to one find per charger not met yet (0: always fall back).
var lastScanPerCharger = 20

// chargerQueryConcurrency bounds the per-charger finds of one lastSessions call.
const chargerQueryConcurrency = 8

type groupRow struct {
	id string
	v  float64
}

// groupSum runs a pipeline whose output documents are {_id: <charger ID>, v: <number>}.
func (s *Store) groupSum(ctx context.Context, p mongo.Pipeline) ([]groupRow, error) {
	cur, err := s.Sessions.Aggregate(ctx, p)
	if err != nil {
		return nil, err
	}
	var rows []struct {
		ID string        `bson:"_id"`
		V  bson.RawValue `bson:"v"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return nil, err
	}
	out := make([]groupRow, len(rows))
	for i, r := range rows {
		v, err := number(r.V)
		if err != nil {
			return nil, fmt.Errorf("charger %q: %w", r.ID, err)
		}
		out[i] = groupRow{id: r.ID, v: v}
	}
	return out, nil
}

// number converts a numeric BSON value ($sum yields int32, int64 or double depending on its
// inputs) to float64.
func number(v bson.RawValue) (float64, error) {
	switch v.Type {
	case bson.TypeInt32:
		return float64(v.Int32()), nil
	case bson.TypeInt64:
		return float64(v.Int64()), nil
	case bson.TypeDouble:
		f := v.Double()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("non-finite sum %v", f)
		}
		return f, nil
	case bson.TypeNull, 0:
		return 0, nil
	default:
		return 0, fmt.Errorf("want a number, got BSON %s", v.Type)
	}
}

// scanNewest returns the newest k sessions matching f, newest first, by streaming the matching
// documents and keeping the k newest in a heap: FerretDB v1 would sort every matching
// document in its own memory (gigabytes at 100k sessions), with no index to help either way.
func (s *Store) scanNewest(ctx context.Context, coll *mongo.Collection, f bson.D, k int) ([]SessionDoc, error) {
	cur, err := coll.Find(ctx, f, options.Find().SetBatchSize(1000))
	if err != nil {
		return nil, fmt.Errorf("find sessions: %w", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	top := &sessionHeap{}
	for cur.Next(ctx) {
		var d SessionDoc
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("read sessions: %w", err)
		}
		if top.Len() < k {
			heap.Push(top, d)
		} else if newer(&d, &(*top)[0]) {
			(*top)[0] = d
			heap.Fix(top, 0)
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("read sessions: %w", err)
	}
	out := make([]SessionDoc, top.Len())
	for i := top.Len() - 1; i >= 0; i-- {
		out[i] = heap.Pop(top).(SessionDoc)
	}
	return out, nil
}
