//go:build integration

package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// pages walks q's listing to its end, limit sessions per page.
func pages(t *testing.T, st *store.Store, q store.SessionQuery) []string {
	t.Helper()
	var ids []string
	for n := 0; ; n++ {
		docs, more, err := st.FindSessions(context.Background(), q)
		if err != nil {
			t.Fatalf("page %d: %v", n, err)
		}
		ids = append(ids, queryIDs(docs)...)
		if !more {
			return ids
		}
		last := docs[len(docs)-1]
		q.After = &store.SessionCursor{EndedAt: last.EndedAt, ID: last.ID}
	}
}

// Paging through closed partitions reads each partition once (then from memory) and gives
// exactly the store's order, with filters; a late write into a closed partition is seen at
// once (the partition is read from the store while its marker is fresh), then cached again.
func TestPagesOfClosedPartitionsReadOnce(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx := context.Background()
	const grace = 2 * time.Second
	st, err := store.Connect(ctx, store.Config{URI: f.URI, Database: "pages", PartitionWidth: time.Minute, PartitionGrace: grace}, "pages-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	// Three closed partitions an hour ago, 400 sessions each over 20 chargers; several
	// sessions share a millisecond (the _id breaks the tie).
	base := time.Now().Add(-time.Hour).Truncate(time.Minute)
	var docs []store.SessionDoc
	for p := range 3 {
		for i := range 400 {
			end := base.Add(time.Duration(p)*time.Minute + time.Duration(i/2)*100*time.Millisecond)
			docs = append(docs, partDoc(i%20, p*1000+i, end))
		}
	}
	insertAll(t, st, docs)
	// Writing into past partitions marks them late: they count as closed once grace has
	// passed since the markers.
	time.Sleep(grace + 500*time.Millisecond)
	want := sumStored(t, st)
	if len(want.order) != 1200 {
		t.Fatalf("stored %d", len(want.order))
	}

	got := pages(t, st, store.SessionQuery{Limit: 50})
	if !slices.Equal(got, queryIDs(want.order)) {
		t.Fatalf("pages differ from the stored order: %d vs %d sessions", len(got), len(want.order))
	}
	if r := st.PageReads(); r != 3 {
		t.Fatalf("%d partition reads for 24 pages over 3 partitions, want 3", r)
	}
	// Filters: one charger, a time range, a connector.
	from, to := base.Add(30*time.Second), base.Add(90*time.Second)
	var wantF []string
	for _, d := range want.order {
		if d.ChargerID == "c007" && d.ConnectorID == 2 && !d.EndedAt.Before(from) && d.EndedAt.Before(to) {
			wantF = append(wantF, d.ID)
		}
	}
	gotF := pages(t, st, store.SessionQuery{ChargerID: "c007", HasConnector: true, ConnectorID: 2, From: from, To: to, Limit: 3})
	if len(wantF) < 5 || !slices.Equal(gotF, wantF) {
		t.Fatalf("filtered pages %v, want %v", gotF, wantF)
	}
	if r := st.PageReads(); r != 3 {
		t.Fatalf("filtered pages read the store again: %d reads", r)
	}

	// A late session into the middle partition: listed at once, and the partition is read
	// into memory again once its marker has aged past the grace.
	late := partDoc(5, 1999, base.Add(time.Minute+30*time.Second+7*time.Millisecond))
	insertAll(t, st, []store.SessionDoc{late})
	want = sumStored(t, st)
	if got := pages(t, st, store.SessionQuery{Limit: 100}); !slices.Equal(got, queryIDs(want.order)) || !slices.Contains(got, late.ID) {
		t.Fatalf("after a late write: %d listed, want %d with %s", len(got), len(want.order), late.ID)
	}
	time.Sleep(grace + 500*time.Millisecond)
	before := st.PageReads()
	if got := pages(t, st, store.SessionQuery{Limit: 100}); !slices.Equal(got, queryIDs(want.order)) {
		t.Fatalf("after the marker aged: %d listed, want %d", len(got), len(want.order))
	}
	if r := st.PageReads() - before; r != 1 {
		t.Fatalf("%d partitions read again after one late write, want 1", r)
	}
}
