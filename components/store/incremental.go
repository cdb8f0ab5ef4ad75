package store

// The incremental read model of a partitioned store (partition.go). A closed partition is
// scanned once; its figures are kept per partition while it is recent, then folded into the
// aggregate of its group (the partitions of one hour). Each refresh rescans only
// the open partitions, the partitions named by new late markers (a group holding one is
// unfolded: its partitions become individual again and are rescanned once) and the newest
// partitions whose sessions the snapshot must keep. Sums are therefore exact sums over what is
// stored: a partition's figures are replaced, never patched, and a partition counted in a
// group is one that no writer touched since it was scanned.
//
// Memory: per-charger figures per recent partition (recentPartitions of them) and per group
// (one per stored hour), the newest
// sessions (newestK, plus those of the partition that crosses it), and per-partition counts.

import (
	"container/heap"
	"context"
	"fmt"
	"maps"
	"sort"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// recentPartitions is how many of the newest closed partitions keep their own figures (at
// least those of the last recentSpan): a late write into one of them (a listener catching up a
// backlog) costs a rescan of that partition only; into an older one, a rescan of its group.
func (l layout) recentPartitions() int { return max(15, int(recentSpan/l.width)) }

const recentSpan = 5 * time.Minute

// partAgg is the figures of one partition, from one scan.
type partAgg struct {
	p         Partition
	fleet     Totals
	chargers  map[string]*ChargerTotals
	newest    []SessionDoc // its newest sessions, newest first, when kept (see cover)
	kept      bool         // newest was computed by the last scan
	keptAll   bool         // newest holds every session of the partition
	markers   int          // late markers seen before the last scan
	final     bool         // the last scan started after the partition closed
	scannedAt time.Time    // when the last scan started
}

// groupAgg is the sum of the folded partitions of one group.
type groupAgg struct {
	counts   map[string]int64 // partition → sessions, for the partitions folded in
	markers  map[string]int   // partition → late markers seen when it was folded
	fleet    Totals
	chargers map[string]*ChargerTotals
}

func mergeTotals(dst map[string]*ChargerTotals, src map[string]*ChargerTotals) {
	for id, c := range src {
		d := dst[id]
		if d == nil {
			d = &ChargerTotals{ChargerID: id}
			dst[id] = d
		}
		d.merge(&c.Totals)
	}
}

func (t *Totals) merge(o *Totals) {
	if o.Sessions == 0 {
		return
	}
	t.Sessions += o.Sessions
	t.EnergyKWh += o.EnergyKWh
	t.CostCents += o.CostCents
	if t.FirstSessionAt.IsZero() || o.FirstSessionAt.Before(t.FirstSessionAt) {
		t.FirstSessionAt = o.FirstSessionAt
	}
	if o.LastSessionAt.After(t.LastSessionAt) {
		t.LastSessionAt = o.LastSessionAt
	}
}

// Incremental is the read model of one API process over a partitioned store. Refresh is not
// safe for concurrent use (the API runs one at a time); the snapshots it returns are
// immutable.
type Incremental struct {
	st      *Store
	l       layout
	newestK int
	parts   map[string]*partAgg
	groups  map[time.Time]*groupAgg
	// Scanned counts the partition scans, for tests and logs.
	Scanned int
	// OpenRescan, when set, is how often a partition still open and holding some of the
	// newest sessions is read again for them (they stand meanwhile, and the snapshot's
	// SessionsAsOf says how old they are; its totals come from its deltas); 0 reads them on
	// every refresh. The API sets the partition width: on a busy store, reading the filling
	// partitions on every refresh read each session many times over.
	OpenRescan time.Duration
	// exactOpen makes every refresh scan the partitions that are not final and count them
	// from those scans instead of their deltas: exact sums as of the refresh, at the price
	// of the scans (the per-request queries read model and one-shot ScanSnapshot).
	exactOpen bool
}

// newExactIncremental returns a read model whose every refresh is exact (exactOpen).
func newExactIncremental(st *Store, newestK int) *Incremental {
	m := NewIncremental(st, newestK)
	m.exactOpen = true
	return m
}

// NewIncremental returns an empty read model of st keeping the newest newestK sessions.
func NewIncremental(st *Store, newestK int) *Incremental {
	return &Incremental{st: st, newestK: newestK, parts: map[string]*partAgg{}, groups: map[time.Time]*groupAgg{}}
}

// Refresh brings the model up to date and returns a snapshot of it: the exact figures of the
// final partitions plus the deltas of the others (Overlay). A failed refresh leaves the model
// consistent (each partition's figures are replaced whole), so the next one goes on from
// where it stopped.
func (m *Incremental) Refresh(ctx context.Context) (*Snapshot, error) {
	base, err := m.refreshBase(ctx)
	if err != nil {
		return nil, err
	}
	if m.exactOpen {
		// Every partition counted from a scan: nothing provisional to add.
		if err := base.finish(ctx, m.st); err != nil {
			return nil, err
		}
		base.exact = nil // not a base to overlay deltas on
		return base, nil
	}
	return m.st.Overlay(ctx, base)
}

// refreshBase scans what changed and returns the base snapshot: totals of the final
// partitions (and of the unpartitioned collection) only, the newest sessions.
func (m *Incremental) refreshBase(ctx context.Context) (*Snapshot, error) {
	start := time.Now()
	l, err := m.st.layout(ctx)
	if err != nil {
		return nil, err
	}
	if !l.partitioned {
		return nil, fmt.Errorf("incremental read model: the store is not partitioned")
	}
	m.l = l
	// Markers first: a marker written after this point is seen by the next refresh.
	markers, err := m.st.lateMarkers(ctx)
	if err != nil {
		return nil, err
	}
	list, err := m.st.listPartitions(ctx, l)
	if err != nil {
		return nil, err
	}
	present := make(map[string]bool, len(list))
	for _, p := range list {
		present[p.Name] = true
	}

	// A group that lost a partition (retention) or holds one with new late markers is
	// unfolded: what is left of it is rescanned as individual partitions.
	inGroup := map[string]bool{}
	for key, g := range m.groups {
		unfold := false
		for name, seen := range g.markers {
			if !present[name] || markers[name].n > seen {
				unfold = true
				break
			}
		}
		if unfold {
			delete(m.groups, key)
			continue
		}
		for name := range g.counts {
			inGroup[name] = true
		}
	}
	for name := range m.parts {
		if !present[name] {
			delete(m.parts, name)
		}
	}

	cover := m.cover(list)
	for _, p := range list {
		if inGroup[p.Name] {
			continue
		}
		a := m.parts[p.Name]
		mk := markers[p.Name]
		keep := cover[p.Name] || p.Unbounded()
		if a != nil && a.final && mk.n == a.markers && (!keep || a.kept) {
			if !keep && a.kept {
				a.newest, a.kept, a.keptAll = nil, false, false
			}
			continue
		}
		closeAt := p.End.Add(l.grace)
		if mk.n > 0 && mk.last.Add(l.grace).After(closeAt) {
			closeAt = mk.last.Add(l.grace)
		}
		if p.Unbounded() && mk.n == 0 {
			closeAt = time.Time{}
		}
		open := !time.Now().After(closeAt)
		if open && !p.Unbounded() && !keep && !m.exactOpen {
			// Its totals come from its deltas until it closes; nothing to read before. A
			// final partition written late again (a new marker) is no longer final.
			if a != nil && mk.n != a.markers {
				a.final = false
			}
			if a != nil && a.kept { // no longer needed for the newest sessions
				a.newest, a.kept, a.keptAll = nil, false, false
			}
			continue
		}
		if a != nil && !a.final && mk.n == a.markers && (!keep || a.kept) && m.OpenRescan > 0 &&
			time.Since(a.scannedAt) < m.OpenRescan && open {
			// Still open, read recently: its newest sessions (and, for the unpartitioned
			// collection, its figures) stand as of their scan until the next rescan or
			// its close.
			continue
		}
		scanStart := time.Now()
		k := 0
		if keep {
			k = m.newestK
		}
		na, err := m.st.scanPartition(ctx, p, k)
		if err != nil {
			return nil, err
		}
		m.Scanned++
		na.markers, na.final, na.scannedAt = mk.n, scanStart.After(closeAt), scanStart
		m.parts[p.Name] = na
	}

	// Fold the closed partitions that are neither recent nor needed for the newest sessions.
	recent := 0
	for _, p := range list {
		a := m.parts[p.Name]
		if a == nil || p.Unbounded() {
			continue
		}
		if recent < l.recentPartitions() || !a.final || cover[p.Name] {
			recent++
			continue
		}
		key := l.groupOf(p)
		g := m.groups[key]
		if g == nil {
			g = &groupAgg{counts: map[string]int64{}, markers: map[string]int{}, chargers: map[string]*ChargerTotals{}}
			m.groups[key] = g
		}
		g.counts[p.Name] = a.fleet.Sessions
		g.markers[p.Name] = a.markers
		g.fleet.merge(&a.fleet)
		mergeTotals(g.chargers, a.chargers)
		delete(m.parts, p.Name)
	}
	return m.compose(list, start), nil
}

// cover returns the partitions whose sessions the snapshot must keep: the newest ones until
// newestK sessions are covered (a partition not scanned yet counts as empty, so it is kept).
func (m *Incremental) cover(list []Partition) map[string]bool {
	out := map[string]bool{}
	var n int64
	for _, p := range list {
		if p.Unbounded() || n >= int64(m.newestK) {
			continue
		}
		out[p.Name] = true
		if a := m.parts[p.Name]; a != nil {
			n += a.fleet.Sessions
		} else if g := m.groups[m.groupKey(p)]; g != nil {
			n += g.counts[p.Name]
		}
	}
	return out
}

func (m *Incremental) groupKey(p Partition) time.Time { return m.l.groupOf(p) }

// compose sums the figures of the final partitions into a base snapshot (Overlay adds the
// deltas of the others) and collects the newest sessions.
func (m *Incremental) compose(list []Partition, start time.Time) *Snapshot {
	sn := &Snapshot{AsOf: start.UTC(), SessionsAsOf: start.UTC(), chargers: map[string]*ChargerTotals{}, exact: map[string]bool{}}
	for _, g := range m.groups {
		sn.Fleet.merge(&g.fleet)
		mergeTotals(sn.chargers, g.chargers)
		for name := range g.counts {
			sn.exact[name] = true
		}
	}
	for name, a := range m.parts {
		if a.p.Unbounded() {
			// No deltas there: its scan's figures, as of that scan when still open.
			if !a.final {
				sn.floor = a.scannedAt.UTC()
			}
		} else if !a.final && !m.exactOpen {
			continue // its totals come from its deltas
		} else {
			sn.exact[name] = true
		}
		sn.Fleet.merge(&a.fleet)
		mergeTotals(sn.chargers, a.chargers)
	}
	// Exact until the oldest partition that is not final (before it every partition is
	// final: exact sums over what is stored), else up to this refresh.
	var oldestOpen time.Time
	var scanned int64 // sessions of the partitions scanned, to tell whether newest holds all
	all := true
	for _, p := range list {
		if a := m.parts[p.Name]; a != nil {
			scanned += a.fleet.Sessions
		} else if g := m.groups[m.groupKey(p)]; g != nil && sn.exact[p.Name] {
			scanned += g.counts[p.Name]
		} else {
			all = false
		}
		if p.Unbounded() {
			continue
		}
		if !sn.exact[p.Name] && (oldestOpen.IsZero() || p.Start.Before(oldestOpen)) {
			oldestOpen = p.Start
		}
	}
	switch {
	case m.exactOpen:
		sn.ExactUntil = start.UTC()
	case !oldestOpen.IsZero():
		sn.ExactUntil = oldestOpen.UTC()
	default:
		sn.ExactUntil = start.UTC()
	}
	// The newest sessions: partitions are disjoint in ended_at and listed newest first, so
	// their kept sessions concatenate in order, up to the first partition not kept whole.
	var newest []SessionDoc
	complete := true
	var boundary *SessionDoc // sessions older than this are not all known
	for _, p := range list {
		if p.Unbounded() {
			continue
		}
		a := m.parts[p.Name]
		if a == nil || !a.kept {
			complete = false
			boundary = &SessionDoc{}
			boundary.EndedAt = p.End
			break
		}
		newest = append(newest, a.newest...)
		sn.sessionsReadAt(a)
		if !a.keptAll {
			complete = false
			if len(a.newest) > 0 {
				boundary = &a.newest[len(a.newest)-1]
			}
			break
		}
		if len(newest) >= m.newestK {
			if len(newest) > 0 {
				boundary = &newest[len(newest)-1]
			}
			break
		}
	}
	if len(list) > 0 && list[len(list)-1].Unbounded() {
		if a := m.parts[list[len(list)-1].Name]; a != nil && a.kept {
			newest = mergeNewest(newest, a.newest)
			sn.sessionsReadAt(a)
			if !a.keptAll {
				complete = false
				if len(a.newest) > 0 && (boundary == nil || newer(boundary, &a.newest[len(a.newest)-1])) {
					boundary = &a.newest[len(a.newest)-1]
				}
			}
		} else {
			complete = false
			newest = nil
		}
	}
	if boundary != nil {
		// Keep only what is exact: sessions at or before the boundary in newest-first order.
		i := sort.Search(len(newest), func(i int) bool { return newer(boundary, &newest[i]) })
		newest = newest[:i]
	}
	if len(newest) > m.newestK {
		newest = newest[:m.newestK]
		complete = false
	}
	if !all || int64(len(newest)) != scanned {
		complete = false
	}
	sn.newest, sn.complete = newest, complete
	sn.sortIDs()
	sn.Took = time.Since(start)
	return sn
}

// Overlay returns sn's base (the exact figures of the final partitions; sn itself when it is
// one) plus the sums of the deltas of every other time partition, read now: the totals of a
// partition still filling move within a read of its deltas (a few small documents) of a
// session being stored, without waiting for a scan. It reads the store but no state of the
// Incremental, so it may run while a Refresh does (the API's fast path). AsOf is when it
// started reading (or older, when the unpartitioned collection's figures are still those of
// a scan of it while it was open); ExactUntil is the start of the oldest partition whose
// figures are provisional (deltas: they may undercount, never overcount).
func (s *Store) Overlay(ctx context.Context, sn *Snapshot) (*Snapshot, error) {
	b := sn
	if sn.base != nil {
		b = sn.base
	}
	if b.exact == nil {
		return nil, fmt.Errorf("overlay: not a snapshot of the partitioned read model")
	}
	start := time.Now()
	l, err := s.layout(ctx)
	if err != nil {
		return nil, err
	}
	parts, err := s.deltaPartitions(ctx, l)
	if err != nil {
		return nil, err
	}
	out := &Snapshot{AsOf: start.UTC(), SessionsAsOf: b.SessionsAsOf, ExactUntil: b.ExactUntil, base: b,
		Fleet: b.Fleet, chargers: b.chargers, ids: b.ids, newest: b.newest, complete: b.complete}
	if !b.floor.IsZero() && b.floor.Before(out.AsOf) {
		out.AsOf = b.floor
	}
	own := map[string]bool{} // entries of out.chargers copied from the base's
	cloned, newIDs := false, false
	for _, p := range parts {
		if b.exact[p.Name] {
			continue
		}
		d, err := s.readDeltas(ctx, p.Name)
		if err != nil {
			return nil, err
		}
		if p.Start.Before(out.ExactUntil) {
			out.ExactUntil = p.Start.UTC()
		}
		if d.docs == 0 {
			continue
		}
		if !cloned { // the base is shared by every overlay: copy on write
			out.chargers, cloned = maps.Clone(b.chargers), true
		}
		out.Fleet.merge(&d.fleet)
		for id, c := range d.chargers {
			t := out.chargers[id]
			switch {
			case t == nil:
				t = &ChargerTotals{ChargerID: id}
				newIDs = true
			case !own[id]:
				cp := *t
				t = &cp
			}
			own[id] = true
			out.chargers[id] = t
			t.merge(&c.Totals)
		}
	}
	if newIDs {
		out.sortIDs()
	}
	rejected, err := s.Rejected.CountDocuments(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("count rejected: %w", err)
	}
	out.Fleet.Rejected = rejected
	out.Fleet.Chargers = int64(len(out.chargers))
	out.Took = time.Since(start)
	return out, nil
}

// sessionsReadAt notes that sn lists the newest sessions of a: when a may still change, they
// are as of its scan.
func (sn *Snapshot) sessionsReadAt(a *partAgg) {
	if !a.final && a.scannedAt.Before(sn.SessionsAsOf) {
		sn.SessionsAsOf = a.scannedAt.UTC()
	}
}

// mergeNewest merges two newest-first lists.
func mergeNewest(a, b []SessionDoc) []SessionDoc {
	out := make([]SessionDoc, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if newer(&a[0], &b[0]) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// scanPartition reads one partition whole and keeps its newest k sessions.
func (s *Store) scanPartition(ctx context.Context, p Partition, k int) (*partAgg, error) {
	a := &partAgg{p: p, chargers: map[string]*ChargerTotals{}, kept: k > 0}
	top := &sessionHeap{}
	err := s.scanColl(ctx, p.Name, bson.D{}, func(d *SessionDoc) {
		end := d.EndedAt.UTC()
		c := a.chargers[d.ChargerID]
		if c == nil {
			c = &ChargerTotals{ChargerID: d.ChargerID}
			a.chargers[d.ChargerID] = c
		}
		c.add(d.EnergyKWh, d.CostCents, end)
		a.fleet.add(d.EnergyKWh, d.CostCents, end)
		if k > 0 {
			pushNewest(top, *d, k)
		}
	})
	if err != nil {
		return nil, err
	}
	a.newest = popNewest(top)
	a.keptAll = a.kept && int64(len(a.newest)) == a.fleet.Sessions
	return a, nil
}

// scanColl streams the documents of one collection matching f.
func (s *Store) scanColl(ctx context.Context, coll string, f bson.D, fn func(*SessionDoc)) error {
	cur, err := s.DB.Collection(coll).Find(ctx, f, options.Find().SetBatchSize(1000))
	if err != nil {
		return fmt.Errorf("scan %s: %w", coll, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		var d SessionDoc
		if err := cur.Decode(&d); err != nil {
			return fmt.Errorf("scan %s: decode: %w", coll, err)
		}
		fn(&d)
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("scan %s: %w", coll, err)
	}
	return nil
}

// Stats describes the model, for logs and tests.
func (m *Incremental) Stats() (individual, groups, folded int) {
	for _, g := range m.groups {
		folded += len(g.counts)
	}
	return len(m.parts), len(m.groups), folded
}

func pushNewest(top *sessionHeap, d SessionDoc, k int) {
	if top.Len() < k {
		heap.Push(top, d)
	} else if newer(&d, &(*top)[0]) {
		(*top)[0] = d
		heap.Fix(top, 0)
	}
}

// popNewest empties top into a newest-first slice.
func popNewest(top *sessionHeap) []SessionDoc {
	out := make([]SessionDoc, top.Len())
	for i := top.Len() - 1; i >= 0; i-- {
		out[i] = heap.Pop(top).(SessionDoc)
	}
	return out
}
