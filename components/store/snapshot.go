package store

// The read model for stores that cannot use indexes (FerretDB v1: every find, sort, count and
// $group scans the collection, and sorts happen in its memory). There, every read of totals is
// a full scan whatever query expresses it, so one streamed scan computes everything at once:
// fleet totals, per-charger totals and the newest sessions. The scan does not sort in the
// database (FerretDB would hold the whole collection in memory: 12.7 GB at 100k sessions
// under load), reads in batches, and keeps only O(chargers + newestK) in the API. A SQLite
// SELECT reads one snapshot, so the figures are exact sums over the sessions stored when the
// scan started, count and sums over the same set.

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// IsFerretDB reports whether the server is FerretDB (its buildInfo carries ferretdbVersion).
func (s *Store) IsFerretDB(ctx context.Context) (bool, error) {
	var info bson.M
	if err := s.Client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return false, fmt.Errorf("buildInfo: %w", err)
	}
	_, ok := info["ferretdbVersion"]
	return ok, nil
}

// Snapshot is the read model computed by one scan of the stored sessions.
type Snapshot struct {
	AsOf time.Time     // when the scan started: the figures cover what was stored then
	Took time.Duration // how long the scan took
	// ExactUntil: the totals are exact sums over what is stored for the sessions that ended
	// before it; those of later ones are provisional (the partitioned read model's deltas:
	// they may undercount, never overcount). AsOf on a snapshot of one scan.
	ExactUntil time.Time
	// SessionsAsOf is when the newest sessions were read (the oldest scan they come from).
	SessionsAsOf time.Time
	Fleet        FleetStats
	chargers     map[string]*ChargerTotals
	ids          []string     // charger IDs in ascending byte order
	newest       []SessionDoc // the newest sessions, newest first (ended_at desc, _id desc)
	complete     bool         // newest holds every stored session

	// The partitioned read model (incremental.go): a base snapshot holds the figures of the
	// final partitions, a snapshot served adds the deltas of the others to its base.
	base  *Snapshot       // nil for a base (or a snapshot of one scan)
	exact map[string]bool // base: the time partitions whose totals it holds (final scans)
	floor time.Time       // base: the scan of the open unpartitioned collection its figures are as of
}

// ScanSnapshot reads every stored session once and keeps the newest newestK of them.
// On a partitioned store it reads every partition once (Incremental).
func (s *Store) ScanSnapshot(ctx context.Context, newestK int) (*Snapshot, error) {
	if l, err := s.layout(ctx); err != nil {
		return nil, err
	} else if l.partitioned {
		return newExactIncremental(s, newestK).Refresh(ctx)
	}
	start := time.Now()
	sn := &Snapshot{AsOf: start.UTC(), chargers: map[string]*ChargerTotals{}}
	cur, err := s.Sessions.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return nil, fmt.Errorf("scan sessions: %w", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	top := &sessionHeap{}
	var n int64
	for cur.Next(ctx) {
		var d SessionDoc
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("scan sessions: decode: %w", err)
		}
		n++
		end := d.EndedAt.UTC()

		c := sn.chargers[d.ChargerID]
		if c == nil {
			c = &ChargerTotals{ChargerID: d.ChargerID}
			sn.chargers[d.ChargerID] = c
		}
		c.add(d.EnergyKWh, d.CostCents, end)
		sn.Fleet.add(d.EnergyKWh, d.CostCents, end)
		if newestK > 0 {
			if top.Len() < newestK {
				heap.Push(top, d)
			} else if newer(&d, &(*top)[0]) {
				(*top)[0] = d
				heap.Fix(top, 0)
			}
		}
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("scan sessions: %w", err)
	}
	if err := sn.finish(ctx, s); err != nil {
		return nil, err
	}
	sn.newest = make([]SessionDoc, top.Len())
	for i := top.Len() - 1; i >= 0; i-- {
		sn.newest[i] = heap.Pop(top).(SessionDoc)
	}
	sn.complete = int64(len(sn.newest)) == n
	sn.ExactUntil, sn.SessionsAsOf = sn.AsOf, sn.AsOf

	sn.Took = time.Since(start)
	return sn, nil
}

// finish completes a snapshot whose charger totals are summed: the rejected count (not part
// of the scan: a count of its own) and the sorted charger IDs.
func (sn *Snapshot) finish(ctx context.Context, s *Store) error {
	rejected, err := s.Rejected.CountDocuments(ctx, bson.D{})
	if err != nil {
		return fmt.Errorf("count rejected: %w", err)
	}
	sn.Fleet.Rejected = rejected
	sn.Fleet.Chargers = int64(len(sn.chargers))
	sn.sortIDs()
	return nil
}

// sortIDs lists the charger IDs in ascending byte order.
func (sn *Snapshot) sortIDs() {
	sn.ids = make([]string, 0, len(sn.chargers))
	for id := range sn.chargers {
		sn.ids = append(sn.ids, id)
	}
	sort.Strings(sn.ids)
}

// Base returns the snapshot that holds sn's newest sessions (its base on the partitioned read
// model, else sn): two snapshots with the same Base list the same sessions.
func (sn *Snapshot) Base() *Snapshot {
	if sn.base != nil {
		return sn.base
	}
	return sn
}

func (t *Totals) add(energy, cost float64, end time.Time) {
	t.Sessions++
	t.EnergyKWh += energy
	t.CostCents += cost
	if t.FirstSessionAt.IsZero() || end.Before(t.FirstSessionAt) {
		t.FirstSessionAt = end
	}
	if end.After(t.LastSessionAt) {
		t.LastSessionAt = end
	}
}

// Charger returns the totals of one charger (FirstSessionAt left zero, as ChargerTotals does),
// or ErrNotFound.
func (sn *Snapshot) Charger(id string) (ChargerTotals, error) {
	c, ok := sn.chargers[id]
	if !ok {
		return ChargerTotals{}, fmt.Errorf("charger %q: %w", id, ErrNotFound)
	}
	out := *c
	out.FirstSessionAt = time.Time{}
	return out, nil
}

// ListChargers is ListChargerTotals over the snapshot.
func (sn *Snapshot) ListChargers(after string, limit int) ([]ChargerTotals, bool) {
	i := sort.Search(len(sn.ids), func(i int) bool { return sn.ids[i] > after })
	end := min(len(sn.ids), i+limit)
	out := make([]ChargerTotals, 0, end-i)
	for _, id := range sn.ids[i:end] {
		c, _ := sn.Charger(id)
		out = append(out, c)
	}
	return out, end < len(sn.ids)
}

// Sessions answers q from the snapshot's newest sessions when it can: no charger, connector
// or time filter, and the page lies within the sessions kept (or the snapshot holds every
// session). ok is false when the store must be asked instead.
func (sn *Snapshot) Sessions(q SessionQuery) (docs []SessionDoc, more, ok bool) {
	if q.ChargerID != "" || q.HasConnector || !q.From.IsZero() || !q.To.IsZero() {
		return nil, false, false
	}
	i := 0
	if q.After != nil {
		c := SessionDoc{ID: q.After.ID}
		c.EndedAt = q.After.EndedAt.UTC().Truncate(time.Millisecond)
		// First kept session strictly after the cursor in newest-first order.
		i = sort.Search(len(sn.newest), func(i int) bool { return newer(&c, &sn.newest[i]) })
	}
	if !sn.complete && i+q.Limit+1 > len(sn.newest) {
		return nil, false, false
	}
	end := min(len(sn.newest), i+q.Limit)
	return slices.Clone(sn.newest[i:end]), end < len(sn.newest), true
}

// newer reports whether a comes before b in newest-first order (ended_at desc, _id desc).
func newer(a, b *SessionDoc) bool {
	if !a.EndedAt.Equal(b.EndedAt) {
		return a.EndedAt.After(b.EndedAt)
	}
	return a.ID > b.ID
}

// sessionHeap is a min-heap in newest-first order: its root is the oldest session kept.
type sessionHeap []SessionDoc

func (h sessionHeap) Len() int           { return len(h) }
func (h sessionHeap) Less(i, j int) bool { return newer(&h[j], &h[i]) }
func (h sessionHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sessionHeap) Push(x any)        { *h = append(*h, x.(SessionDoc)) }
func (h *sessionHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
