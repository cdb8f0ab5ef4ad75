//go:build integration

package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/store"
)

// A snapshot holds the same figures and order as the queries over the same sessions, and
// refuses what it cannot answer exactly.
func TestSnapshotMatchesQueries(t *testing.T) {
	st := queryStore(t)
	querySeed(t, st)
	ctx := context.Background()
	for _, k := range []int{100, 3} {
		sn, err := st.ScanSnapshot(ctx, k)
		if err != nil {
			t.Fatalf("ScanSnapshot(%d): %v", k, err)
		}
		f := sn.Fleet
		if f.Sessions != 8 || f.EnergyKWh != 76.75 || f.CostCents != 3442.25 || f.Chargers != 4 ||
			!f.FirstSessionAt.Equal(queryT0) || !f.LastSessionAt.Equal(queryT0.Add(30*time.Minute)) {
			t.Errorf("k=%d fleet %+v", k, f)
		}
		for _, want := range queryWantChargers {
			got, err := sn.Charger(want.ChargerID)
			if err != nil || got.Sessions != want.Sessions || got.EnergyKWh != want.EnergyKWh ||
				got.CostCents != want.CostCents || !got.LastSessionAt.Equal(want.LastSessionAt) || !got.FirstSessionAt.IsZero() {
				t.Errorf("k=%d charger %s: %+v %v, want %+v", k, want.ChargerID, got, err, want)
			}
		}
		if _, err := sn.Charger("nope"); err == nil {
			t.Errorf("unknown charger found")
		}
		// Charger pages in byte order.
		var ids []string
		after := ""
		for {
			rows, more := sn.ListChargers(after, 1)
			for _, r := range rows {
				ids = append(ids, r.ChargerID)
			}
			if !more {
				break
			}
			after = rows[len(rows)-1].ChargerID
		}
		if !slices.Equal(ids, []string{"10", "9", "A", "B"}) {
			t.Errorf("k=%d charger pages %v", k, ids)
		}
	}

	// Sessions pages equal the query pages when every session is kept.
	sn, err := st.ScanSnapshot(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	for limit := 1; limit <= 9; limit++ {
		var got []string
		var after *store.SessionCursor
		for {
			docs, more, ok := sn.Sessions(store.SessionQuery{After: after, Limit: limit})
			if !ok {
				t.Fatalf("limit %d: a complete snapshot refused an unfiltered page", limit)
			}
			got = append(got, queryIDs(docs)...)
			if !more {
				break
			}
			last := docs[len(docs)-1]
			after = &store.SessionCursor{EndedAt: last.EndedAt, ID: last.ID}
		}
		if !slices.Equal(got, queryWantOrder) {
			t.Errorf("limit %d: %v, want %v", limit, got, queryWantOrder)
		}
	}
	if _, _, ok := sn.Sessions(store.SessionQuery{ChargerID: "A", Limit: 10}); ok {
		t.Errorf("a filtered listing answered from the snapshot")
	}
	// Keeping 3 of 8: the first page of 2 is answered, a page reaching past the kept ones is not.
	small, err := st.ScanSnapshot(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if docs, more, ok := small.Sessions(store.SessionQuery{Limit: 2}); !ok || !more || !slices.Equal(queryIDs(docs), queryWantOrder[:2]) {
		t.Errorf("first page of 2 from 3 kept: %v %v %v", queryIDs(docs), more, ok)
	}
	if _, _, ok := small.Sessions(store.SessionQuery{Limit: 3}); ok {
		t.Errorf("a page of 3 from 3 kept of 8 cannot tell whether more follow, yet it was answered")
	}

	// Redeliveries change nothing: the same documents again are duplicates.
	again, _, err := st.FindSessions(ctx, store.SessionQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.InsertSessions(ctx, again)
	if err != nil || res.Inserted != 0 || len(res.Duplicates) != len(again) {
		t.Fatalf("redelivery: %+v %v", res, err)
	}
	after, err := st.ScanSnapshot(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if after.Fleet.Sessions != 8 || after.Fleet.EnergyKWh != 76.75 || after.Fleet.CostCents != 3442.25 {
		t.Errorf("after redelivery: %+v", after.Fleet)
	}
}
