//go:build integration

package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

const testGrace = 10 * time.Second

func partStore(tb testing.TB, f *testenv.FerretDB, db string) *store.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, store.Config{URI: f.URI, Database: db, PartitionWidth: time.Minute, PartitionGrace: testGrace}, "partition-test")
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(func() { _ = st.Close(context.Background()) })
	if ok, err := st.Partitioned(ctx); err != nil || !ok {
		tb.Fatalf("FerretDB store not partitioned: %v %v", ok, err)
	}
	return st
}

// partDoc is a session of charger c ending at end; energy and cost are multiples of 1/4, so
// every sum is exact whatever order it is computed in. Its session ID names its end as the
// simulator's do (microseconds; seq in the sub-millisecond digits keeps keys apart), so it is
// stored in its time partition (foreign keys go to the unpartitioned collection).
func partDoc(c, seq int, end time.Time) store.SessionDoc {
	s := session.Session{
		SessionID: end.UnixMilli()*1000 + int64(seq%1000), ChargerID: fmt.Sprintf("c%03d", c), ConnectorID: 1 + seq%2,
		EnergyKWh: float64(1+seq%40) / 4, DurationSeconds: 600, CostCents: float64(100+seq%300) / 4,
		EndedAt: end,
	}
	return store.NewSessionDoc(s, "charger/x", end.Add(time.Second))
}

// storedSums reads every stored session in every collection, independently of the read model.
type storedSums struct {
	fleet    store.Totals
	chargers map[string]*store.Totals
	order    []store.SessionDoc
}

func sumStored(tb testing.TB, st *store.Store) storedSums {
	tb.Helper()
	ctx := context.Background()
	names, err := st.DB.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		tb.Fatal(err)
	}
	out := storedSums{chargers: map[string]*store.Totals{}}
	for _, n := range names {
		if n != store.SessionsCollection && !strings.HasPrefix(n, store.PartitionPrefix) {
			continue
		}
		cur, err := st.DB.Collection(n).Find(ctx, bson.D{})
		if err != nil {
			tb.Fatal(err)
		}
		var docs []store.SessionDoc
		if err := cur.All(ctx, &docs); err != nil {
			tb.Fatal(err)
		}
		for _, d := range docs {
			for _, t := range []*store.Totals{&out.fleet, out.charger(d.ChargerID)} {
				t.Sessions++
				t.EnergyKWh += d.EnergyKWh
				t.CostCents += d.CostCents
				if t.FirstSessionAt.IsZero() || d.EndedAt.Before(t.FirstSessionAt) {
					t.FirstSessionAt = d.EndedAt.UTC()
				}
				if d.EndedAt.After(t.LastSessionAt) {
					t.LastSessionAt = d.EndedAt.UTC()
				}
			}
			out.order = append(out.order, d)
		}
	}
	slices.SortFunc(out.order, func(a, b store.SessionDoc) int {
		if c := b.EndedAt.Compare(a.EndedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out
}

func (s *storedSums) charger(id string) *store.Totals {
	t := s.chargers[id]
	if t == nil {
		t = &store.Totals{}
		s.chargers[id] = t
	}
	return t
}

// checkExact compares a snapshot with the sums over every stored document.
func checkExact(t *testing.T, step string, sn *store.Snapshot, want storedSums, newestK int) {
	t.Helper()
	checkTotals(t, step, sn, want)
	// The first page is answered from the snapshot and is the newest stored sessions.
	limit := min(newestK-1, 100)
	docs, more, ok := sn.Sessions(store.SessionQuery{Limit: limit})
	if !ok {
		t.Fatalf("%s: first page of %d not answered from the snapshot", step, limit)
	}
	n := min(limit, len(want.order))
	if !slices.Equal(queryIDs(docs), queryIDs(want.order[:n])) || more != (len(want.order) > limit) {
		t.Fatalf("%s: first page %v more=%v, stored newest %v", step, queryIDs(docs), more, queryIDs(want.order[:n]))
	}
}

func insertAll(t *testing.T, st *store.Store, docs []store.SessionDoc) store.WriteResult {
	t.Helper()
	r, err := st.InsertSessions(context.Background(), docs)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	return r
}

// The incremental read model stays an exact sum over what is stored through new, redelivered
// and late sessions, partitions closing and being folded, spurious markers (a writer that died
// between marker and data) and retention, while reading only what changed.
func TestIncrementalExact(t *testing.T) {
	f := testenv.StartFerretDB(t)
	st := partStore(t, f, "incremental")
	ctx := context.Background()
	const newestK = 150
	now := time.Now().UTC()
	rng := rand.New(rand.NewPCG(1, 2))
	seq := 0
	var all []store.SessionDoc
	// Old sessions over 40 one-minute partitions three hours ago (two fold groups), and live
	// ones in the current and previous minute.
	old := now.Add(-3 * time.Hour).Truncate(time.Hour).Add(-20 * time.Minute)
	for i := 0; i < 4000; i++ {
		seq++
		all = append(all, partDoc(rng.IntN(50), seq, old.Add(time.Duration(rng.Int64N(int64(40*time.Minute)))).Truncate(time.Millisecond)))
	}
	for i := 0; i < 300; i++ {
		seq++
		all = append(all, partDoc(rng.IntN(60), seq, now.Add(-time.Duration(rng.Int64N(int64(90*time.Second))))))
	}
	if r := insertAll(t, st, all); r.Inserted != len(all) {
		t.Fatalf("inserted %d of %d", r.Inserted, len(all))
	}
	parts, err := st.Partitions(ctx)
	if err != nil || len(parts) < 41 {
		t.Fatalf("partitions: %d %v", len(parts), err)
	}
	inc := store.NewIncremental(st, newestK)
	sn, err := inc.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, "first refresh", sn, sumStored(t, st), newestK)
	if inc.Scanned != len(parts) {
		t.Errorf("first refresh scanned %d partitions, want every one (%d)", inc.Scanned, len(parts))
	}

	// Redeliveries: every old session again, split over batches, are duplicates.
	if r := insertAll(t, st, all[:2000]); r.Inserted != 0 || len(r.Duplicates) != 2000 {
		t.Fatalf("redelivery: %+v", r)
	}
	// The old partitions were written behind markers (they were long closed), so they stay
	// open until the markers are grace old; then one more scan each, and they are folded.
	time.Sleep(testGrace + time.Second)
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "after grace", sn, sumStored(t, st), newestK)
	indiv, groups, folded := inc.Stats()
	if folded == 0 || groups == 0 {
		t.Fatalf("nothing folded after grace: %d individual, %d groups, %d folded", indiv, groups, folded)
	}
	t.Logf("after grace: %d individual partitions, %d groups holding %d", indiv, groups, folded)

	// A quiet refresh reads only the open partitions and those still holding the newest.
	before := inc.Scanned
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "quiet", sn, sumStored(t, st), newestK)
	if d := inc.Scanned - before; d > 4 {
		t.Errorf("a quiet refresh scanned %d partitions, want only the open ones (≤ 4)", d)
	}

	// New sessions late into a folded partition and into a closed recent one, plus
	// redeliveries into both: the group is unfolded and rescanned, the totals stay exact.
	var late []store.SessionDoc
	for i := 0; i < 30; i++ {
		seq++
		late = append(late, partDoc(rng.IntN(70), seq, old.Add(90*time.Second+time.Duration(i)*time.Millisecond)))
	}
	late = append(late, all[:5]...)
	r := insertAll(t, st, late)
	if r.Inserted != 30 || len(r.Duplicates) != 5 {
		t.Fatalf("late write: %+v", r)
	}
	before = inc.Scanned
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "late into a folded partition", sn, sumStored(t, st), newestK)
	t.Logf("late write into a folded partition: %d partitions rescanned", inc.Scanned-before)

	// A spurious marker (a writer died between marker and data) only costs a rescan.
	if _, err := st.DB.Collection(store.LateCollection).InsertOne(ctx, bson.D{{Key: "_id", Value: "spurious"}, {Key: "partition", Value: parts[5].Name}, {Key: "at", Value: time.Now().UTC()}}); err != nil {
		t.Fatal(err)
	}
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "spurious marker", sn, sumStored(t, st), newestK)

	// Retention drops whole fold groups older than the cutoff; the model drops their figures.
	n, err := st.DeleteSessionsBefore(ctx, old.Add(30*time.Minute))
	if err != nil || n == 0 {
		t.Fatalf("retention: %d %v", n, err)
	}
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	stored := sumStored(t, st)
	checkExact(t, "after retention", sn, stored, newestK)
	// The dropped partitions' deltas went with them; the others' stayed.
	names, err := st.DB.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	deltas := 0
	for _, n := range names {
		if rest, ok := strings.CutPrefix(n, store.DeltaPrefix); ok {
			deltas++
			if !slices.Contains(names, store.PartitionPrefix+rest) {
				t.Errorf("after retention: %s left without its partition", n)
			}
		}
	}
	if deltas == 0 {
		t.Errorf("after retention: no delta collection left (collections %v)", names)
	}
	if stored.fleet.Sessions >= int64(len(all)+30) || n != int64(len(all)+30)-stored.fleet.Sessions {
		t.Errorf("retention deleted %d, stored %d of %d", n, stored.fleet.Sessions, len(all)+30)
	}

	// A fresh model (another API replica, a restart) computes the same figures.
	sn2, err := store.NewIncremental(st, newestK).Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, "fresh model", sn2, stored, newestK)
}

// An audit reads only the partitions overlapping its window, and finds every session of it.
func TestAuditScansOverlappingPartitions(t *testing.T) {
	f := testenv.StartFerretDB(t)
	st := partStore(t, f, "audit")
	ctx := context.Background()
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Minute)
	var docs []store.SessionDoc
	for i := 0; i < 6000; i++ { // one session every 0.6 s over an hour
		docs = append(docs, partDoc(i%100, i, t0.Add(time.Duration(i)*600*time.Millisecond)))
	}
	insertAll(t, st, docs)
	from, to := t0.Add(30*time.Minute+55*time.Second), t0.Add(31*time.Minute+5*time.Second) // crosses a partition boundary
	colls, err := st.AuditCollections(ctx, from, to)
	if err != nil || len(colls) != 2 {
		t.Fatalf("an audit of a 10 s window over 61 partitions reads %v (%v), want the 2 it overlaps", colls, err)
	}
	var got []string
	if err := st.ScanSessions(ctx, from, to, "", func(a store.AuditedSession) error {
		got = append(got, a.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, d := range docs {
		if !d.EndedAt.Before(from) && d.EndedAt.Before(to) {
			want = append(want, d.ID)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || len(want) != 17 {
		t.Fatalf("audit of [%s, %s): %d sessions, want %d", from, to, len(got), len(want))
	}
}

// With OpenRescan (the API's setting) a partition still filling is read at most that often,
// for its newest sessions; its totals come from the deltas its writers recorded, so they move
// on the next refresh without a scan, and the snapshot says they are provisional.
func TestIncrementalOpenRescan(t *testing.T) {
	f := testenv.StartFerretDB(t)
	st := partStore(t, f, "openrescan")
	ctx := context.Background()
	var live []store.SessionDoc
	for i := range 110 {
		live = append(live, partDoc(i%7, i, time.Now().UTC().Truncate(time.Millisecond)))
	}
	insertAll(t, st, live[:100])
	inc := store.NewIncremental(st, 50)
	inc.OpenRescan = time.Hour
	before := time.Now()
	sn, err := inc.Refresh(ctx)
	if err != nil || sn.Fleet.Sessions != 100 || sn.AsOf.Before(before) {
		t.Fatalf("first refresh: %+v %v", sn, err)
	}
	scans := inc.Scanned
	first := sn
	mid := time.Now()
	insertAll(t, st, append(live[100:], live[:20]...)) // 10 new, 20 redelivered
	// The totals include the new sessions (not the redelivered ones) without a scan; the
	// newest sessions are those of the scan.
	if sn, err = inc.Refresh(ctx); err != nil || inc.Scanned != scans {
		t.Fatalf("refresh within OpenRescan: %v, %d scans (was %d)", err, inc.Scanned, scans)
	}
	checkTotals(t, "refresh within OpenRescan", sn, sumStored(t, st))
	open := live[0].EndedAt.Truncate(time.Minute)
	if !sn.AsOf.After(mid) || sn.ExactUntil.After(open) || !sn.SessionsAsOf.Before(mid) {
		t.Fatalf("refresh within OpenRescan: as of %v (insert at %v), exact until %v (partition %v), sessions as of %v",
			sn.AsOf, mid, sn.ExactUntil, open, sn.SessionsAsOf)
	}
	// The fast path: the deltas added to an older snapshot's exact figures.
	o, err := st.Overlay(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	checkTotals(t, "overlay of the first snapshot", o, sumStored(t, st))
}

// checkTotals compares the totals of a snapshot (fleet and every charger) with the sums over
// every stored document.
func checkTotals(t *testing.T, step string, sn *store.Snapshot, want storedSums) {
	t.Helper()
	f := sn.Fleet
	if f.Sessions != want.fleet.Sessions || f.EnergyKWh != want.fleet.EnergyKWh || f.CostCents != want.fleet.CostCents ||
		!f.FirstSessionAt.Equal(want.fleet.FirstSessionAt) || !f.LastSessionAt.Equal(want.fleet.LastSessionAt) ||
		f.Chargers != int64(len(want.chargers)) {
		t.Fatalf("%s: fleet %+v, stored %+v over %d chargers", step, f, want.fleet, len(want.chargers))
	}
	for id, w := range want.chargers {
		got, err := sn.Charger(id)
		if err != nil || got.Sessions != w.Sessions || got.EnergyKWh != w.EnergyKWh || got.CostCents != w.CostCents || !got.LastSessionAt.Equal(w.LastSessionAt) {
			t.Fatalf("%s: charger %s: %+v %v, stored %+v", step, id, got, err, *w)
		}
	}
}

// checkAtMost checks that a snapshot's totals (fleet and every charger) do not exceed the sums
// over what is stored: provisional figures may undercount, never overcount.
func checkAtMost(t *testing.T, step string, sn *store.Snapshot, stored storedSums) {
	t.Helper()
	if f := sn.Fleet; f.Sessions > stored.fleet.Sessions || f.EnergyKWh > stored.fleet.EnergyKWh || f.CostCents > stored.fleet.CostCents ||
		f.Chargers > int64(len(stored.chargers)) {
		t.Fatalf("%s: fleet %+v exceeds what is stored %+v", step, f, stored.fleet)
	}
	ids, _ := sn.ListChargers("", 1<<30)
	for _, c := range ids {
		w := stored.chargers[c.ChargerID]
		if w == nil || c.Sessions > w.Sessions || c.EnergyKWh > w.EnergyKWh || c.CostCents > w.CostCents {
			t.Fatalf("%s: charger %s %+v exceeds what is stored %+v", step, c.ChargerID, c, w)
		}
	}
}

// Live sessions appear in the totals on the next refresh, while their partition is still open
// and without reading it again (on a store whose open partitions are read once an hour), even
// with redeliveries; a delta the store refused leaves them undercounted (never overcounted)
// until their partition closes, and then the totals are exact sums over what is stored.
func TestDeltasFreshAndUndercountOnly(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx := context.Background()
	const width, grace = 5 * time.Second, 2 * time.Second
	st, err := store.Connect(ctx, store.Config{URI: f.URI, Database: "deltas", PartitionWidth: width, PartitionGrace: grace}, "delta-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	inc := store.NewIncremental(st, 50)
	inc.OpenRescan = time.Hour
	var sent []store.SessionDoc
	seq := 0
	batch := func(n int) []store.SessionDoc {
		var b []store.SessionDoc
		for range n {
			seq++
			b = append(b, partDoc(seq%13, seq, time.Now().UTC().Truncate(time.Millisecond)))
		}
		sent = append(sent, b...)
		return b
	}
	// 3 s of live traffic (partitions filling and closing), each batch followed by a
	// refresh that must already count it: fresh, and exact since no delta failed.
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		b := batch(20)
		if i > 0 {
			b = append(b, sent[len(sent)-30:len(sent)-20]...) // the previous batch's last 10 again
		}
		r := insertAll(t, st, b)
		if r.Inserted != 20 || r.DeltaFailures != 0 {
			t.Fatalf("batch %d: %+v", i, r)
		}
		sn, err := inc.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkTotals(t, fmt.Sprintf("refresh after batch %d", i), sn, sumStored(t, st))
		if !sn.ExactUntil.Before(b[0].EndedAt) {
			t.Fatalf("batch %d: exact until %v, yet its sessions (%v) are in an open partition", i, sn.ExactUntil, b[0].EndedAt)
		}
	}
	open := inc.Scanned

	// The store refuses one delta: the write succeeds, says so, and the totals undercount.
	st.SetDeltaFault(func(p string) error { return fmt.Errorf("refused by the test (%s)", p) })
	lost := batch(15)
	r := insertAll(t, st, lost)
	st.SetDeltaFault(nil)
	if r.Inserted != 15 || r.DeltaFailures != 1 || r.DeltaErr == nil {
		t.Fatalf("insert with a refused delta: %+v", r)
	}
	more := batch(5)
	insertAll(t, st, append(more, lost...)) // a redelivery adds no delta either
	sn, err := inc.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stored := sumStored(t, st)
	checkAtMost(t, "after a refused delta", sn, stored)
	if sn.Fleet.Sessions != stored.fleet.Sessions-15 {
		t.Fatalf("after a refused delta: %d sessions, stored %d, want exactly the 15 uncounted", sn.Fleet.Sessions, stored.fleet.Sessions)
	}
	t.Logf("%d partition scans while ingesting %d sessions", open, len(sent))

	// Once every partition has closed, their final scans replace the deltas: exact.
	time.Sleep(time.Until(sent[len(sent)-1].EndedAt.Truncate(width).Add(width + grace + time.Second)))
	if sn, err = inc.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "after close", sn, sumStored(t, st), 50)
	if last := sent[len(sent)-1].EndedAt; sn.ExactUntil.Before(last) {
		t.Fatalf("after close: exact until %v, before the last session %v", sn.ExactUntil, last)
	}
}

// The _id is the idempotency guarantee only within one collection: a key must always map to
// the same one. A client that sends its session again with a new timestamp (its own retry, not
// a broker redelivery) gets a duplicate, not a second copy in another time partition; the
// simulator's keys (which name their end) go to their partition.
func TestKeyDecidesTheCollection(t *testing.T) {
	f := testenv.StartFerretDB(t)
	st := partStore(t, f, "keycoll")
	ctx := context.Background()
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Minute)
	retry := func(end time.Time) store.SessionDoc {
		s := session.Session{SessionID: 7, ChargerID: "client-1", ConnectorID: 1, EnergyKWh: 1, DurationSeconds: 60, CostCents: 1, EndedAt: end}
		return store.NewSessionDoc(s, "charger/client-1/connector/1/session/7", end)
	}
	if r := insertAll(t, st, []store.SessionDoc{retry(t0)}); r.Inserted != 1 {
		t.Fatalf("first delivery: %+v", r)
	}
	if r := insertAll(t, st, []store.SessionDoc{retry(t0.Add(5 * time.Minute))}); r.Inserted != 0 || len(r.Duplicates) != 1 {
		t.Fatalf("the same key five minutes later: %+v, want a duplicate", r)
	}
	sim := partDoc(1, 1, t0.Add(90*time.Second))
	insertAll(t, st, []store.SessionDoc{sim, sim})
	if n, err := st.CountSessions(ctx, bson.D{}); err != nil || n != 2 {
		t.Fatalf("%d sessions stored (%v), want 2", n, err)
	}
	parts, err := st.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range parts {
		names = append(names, p.Name)
	}
	if want := []string{store.SessionsCollection, store.PartitionPrefix + t0.Add(time.Minute).Format("20060102150405")}; !slices.Equal(sortedCopy(names), sortedCopy(want)) {
		t.Fatalf("collections %v, want %v", names, want)
	}
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }
