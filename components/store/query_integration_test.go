//go:build integration

package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// queryT0 is the end time of the earliest fixture session.
var queryT0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// queryFixture is a small fleet whose totals are computed by hand below. Values are binary
// fractions so that every sum is exact whatever order the database adds them in. Several
// sessions end in the same minute to exercise the _id tie-break.
var queryFixture = []struct {
	charger string
	conn    int
	sid     int64
	endMin  int
	kwh     float64
	cents   float64
}{
	{"A", 1, 1, 0, 10.5, 367.5},
	{"A", 1, 2, 10, 20.25, 708.75},
	{"A", 2, 3, 10, 7.75, 271.25},
	{"B", 1, 1, 10, 1.5, 88.5},
	{"B", 1, 2, 20, 30, 1770},
	{"10", 1, 1, 5, 2.25, 78.75},
	{"9", 0, 7, 30, 4, 140},
	{"9", 0, 8, 30, 0.5, 17.5},
}

// Hand-computed totals of queryFixture.
var queryWantChargers = []store.ChargerTotals{
	// Byte order of charger IDs: "10" < "9" < "A" < "B".
	{ChargerID: "10", Totals: store.Totals{Sessions: 1, EnergyKWh: 2.25, CostCents: 78.75, LastSessionAt: queryT0.Add(5 * time.Minute)}},
	{ChargerID: "9", Totals: store.Totals{Sessions: 2, EnergyKWh: 4.5, CostCents: 157.5, LastSessionAt: queryT0.Add(30 * time.Minute)}},
	{ChargerID: "A", Totals: store.Totals{Sessions: 3, EnergyKWh: 38.5, CostCents: 1347.5, LastSessionAt: queryT0.Add(10 * time.Minute)}},
	{ChargerID: "B", Totals: store.Totals{Sessions: 2, EnergyKWh: 31.5, CostCents: 1858.5, LastSessionAt: queryT0.Add(20 * time.Minute)}},
}

// queryWantOrder is queryFixture newest first: ended_at desc, then _id desc.
var queryWantOrder = []string{"9/0/8", "9/0/7", "B/1/2", "B/1/1", "A/2/3", "A/1/2", "10/1/1", "A/1/1"}

func queryStore(tb testing.TB) *store.Store {
	tb.Helper()
	return queryStoreOn(tb, testenv.StartFerretDB(tb), "querytest")
}

func queryStoreOn(tb testing.TB, f *testenv.FerretDB, db string) *store.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, store.Config{URI: f.URI, Database: db}, "query-test")
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(func() { _ = st.Close(context.Background()) })
	return st
}

// queryLayouts returns stores holding queryFixture in each layout, on one FerretDB: "single"
// is MongoDB's (one collection, indexed queries), "partitioned" FerretDB's (time partitions,
// client-side scans), "legacy" a partitioned store reading sessions an older version stored
// in the single collection.
func queryLayouts(tb testing.TB) map[string]*store.Store {
	tb.Helper()
	f := testenv.StartFerretDB(tb)
	single := queryStoreOn(tb, f, "single")
	single.SetNoIndexes(false)
	querySeed(tb, single)
	part := queryStoreOn(tb, f, "partitioned")
	querySeed(tb, part)
	if ok, err := part.Partitioned(context.Background()); err != nil || !ok {
		tb.Fatalf("FerretDB store not partitioned: %v %v", ok, err)
	}
	legacy := queryStoreOn(tb, f, "legacy")
	legacy.SetNoIndexes(false)
	querySeed(tb, legacy)
	legacy.SetNoIndexes(true)
	return map[string]*store.Store{"single": single, "partitioned": part, "legacy": legacy}
}

func querySeed(tb testing.TB, st *store.Store) {
	tb.Helper()
	docs := make([]store.SessionDoc, 0, len(queryFixture))
	for _, f := range queryFixture {
		end := queryT0.Add(time.Duration(f.endMin) * time.Minute)
		s := session.Session{
			SessionID: f.sid, EnergyKWh: f.kwh, DurationSeconds: 1800, CostCents: f.cents,
			ChargerID: f.charger, ConnectorID: f.conn, StartedAt: end.Add(-30 * time.Minute), EndedAt: end,
		}
		docs = append(docs, store.SessionDoc{ID: s.Key(), Session: s, Topic: "charger/" + f.charger, ReceivedAt: end.Add(time.Second)})
	}
	// The listener's write path: on a partitioned store, into the partitions.
	if r, err := st.InsertSessions(context.Background(), docs); err != nil || r.Inserted != len(docs) {
		tb.Fatalf("seed sessions: %+v %v", r, err)
	}
}

func queryIDs(docs []store.SessionDoc) []string {
	ids := make([]string, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	return ids
}

func TestQueryFindSessionsFiltersAndOrder(t *testing.T) {
	stores := queryLayouts(t)
	ctx := context.Background()
	at := func(min int) time.Time { return queryT0.Add(time.Duration(min) * time.Minute) }
	for _, tc := range []struct {
		name string
		q    store.SessionQuery
		want []string
	}{
		{"all", store.SessionQuery{Limit: 100}, queryWantOrder},
		{"charger", store.SessionQuery{ChargerID: "A", Limit: 100}, []string{"A/2/3", "A/1/2", "A/1/1"}},
		{"charger and connector", store.SessionQuery{ChargerID: "A", ConnectorID: 1, HasConnector: true, Limit: 100}, []string{"A/1/2", "A/1/1"}},
		{"connector 0", store.SessionQuery{ConnectorID: 0, HasConnector: true, Limit: 100}, []string{"9/0/8", "9/0/7"}},
		{"from inclusive", store.SessionQuery{From: at(20), Limit: 100}, []string{"9/0/8", "9/0/7", "B/1/2"}},
		{"to exclusive", store.SessionQuery{To: at(10), Limit: 100}, []string{"10/1/1", "A/1/1"}},
		{"range", store.SessionQuery{From: at(5), To: at(20), Limit: 100}, []string{"B/1/1", "A/2/3", "A/1/2", "10/1/1"}},
		{"range and charger", store.SessionQuery{ChargerID: "B", From: at(5), To: at(30), Limit: 100}, []string{"B/1/2", "B/1/1"}},
		{"no match", store.SessionQuery{ChargerID: "nope", Limit: 100}, []string{}},
		// A string that looks like an operator is a literal value: it matches nothing.
		{"operator-looking charger", store.SessionQuery{ChargerID: `{"$gt":""}`, Limit: 100}, []string{}},
		{"limit", store.SessionQuery{Limit: 3}, queryWantOrder[:3]},
		{"after tie", store.SessionQuery{After: &store.SessionCursor{EndedAt: at(10), ID: "A/2/3"}, Limit: 100}, queryWantOrder[5:]},
		{"after tie with filter", store.SessionQuery{ChargerID: "A", After: &store.SessionCursor{EndedAt: at(10), ID: "B/1/1"}, Limit: 100}, []string{"A/2/3", "A/1/2", "A/1/1"}},
	} {
		// Every layout: sorted by the database (MongoDB, indexed) and sorted in the client
		// with a bounded heap over the partitions (FerretDB, no index).
		for name, st := range stores {
			t.Run(fmt.Sprintf("%s/%s", tc.name, name), func(t *testing.T) {
				docs, more, err := st.FindSessions(ctx, tc.q)
				if err != nil {
					t.Fatalf("FindSessions: %v", err)
				}
				if got := queryIDs(docs); !slices.Equal(got, tc.want) {
					t.Errorf("got %v, want %v", got, tc.want)
				}
				wantMore := tc.name == "limit"
				if more != wantMore {
					t.Errorf("more = %v, want %v", more, wantMore)
				}
			})
		}
	}
}

func TestQueryFindSessionsPages(t *testing.T) {
	for _, st := range queryLayouts(t) {
		walkPages(t, st)
	}
	if st := queryStore(t); !st.NoIndexes() {
		t.Fatalf("FerretDB not detected as a store without indexes")
	}
}

func walkPages(t *testing.T, st *store.Store) {
	t.Helper()
	for limit := 1; limit <= len(queryFixture)+1; limit++ {
		var got []string
		var after *store.SessionCursor
		for page := 0; ; page++ {
			if page > len(queryFixture) {
				t.Fatalf("limit %d: more pages than sessions", limit)
			}
			docs, more, err := st.FindSessions(context.Background(), store.SessionQuery{After: after, Limit: limit})
			if err != nil {
				t.Fatalf("limit %d page %d: %v", limit, page, err)
			}
			if len(docs) > limit {
				t.Fatalf("limit %d page %d: %d documents", limit, page, len(docs))
			}
			got = append(got, queryIDs(docs)...)
			if !more {
				break
			}
			last := docs[len(docs)-1]
			after = &store.SessionCursor{EndedAt: last.EndedAt, ID: last.ID}
		}
		if !slices.Equal(got, queryWantOrder) {
			t.Errorf("limit %d: walked %v, want %v", limit, got, queryWantOrder)
		}
	}
}

func TestQueryFindSession(t *testing.T) {
	st := queryStore(t)
	querySeed(t, st)
	doc, err := st.FindSession(context.Background(), "B/1/2")
	if err != nil {
		t.Fatalf("FindSession: %v", err)
	}
	if doc.ChargerID != "B" || doc.ConnectorID != 1 || doc.SessionID != 2 || doc.EnergyKWh != 30 || doc.CostCents != 1770 ||
		!doc.EndedAt.Equal(queryT0.Add(20*time.Minute)) {
		t.Errorf("FindSession(B/1/2) = %+v", doc)
	}
	if _, err := st.FindSession(context.Background(), "B/1/3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FindSession(B/1/3) error = %v, want ErrNotFound", err)
	}
}

func queryCheckTotals(t *testing.T, got, want store.ChargerTotals) {
	t.Helper()
	if got.ChargerID != want.ChargerID || got.Sessions != want.Sessions || got.EnergyKWh != want.EnergyKWh ||
		got.CostCents != want.CostCents || !got.LastSessionAt.Equal(want.LastSessionAt) {
		t.Errorf("totals of %s:\n got %+v\nwant %+v", want.ChargerID, got, want)
	}
}

func TestQueryChargerTotals(t *testing.T) {
	st := queryStore(t)
	querySeed(t, st)
	ctx := context.Background()
	for _, want := range queryWantChargers {
		got, err := st.ChargerTotals(ctx, want.ChargerID)
		if err != nil {
			t.Fatalf("ChargerTotals(%s): %v", want.ChargerID, err)
		}
		queryCheckTotals(t, got, want)
	}
	if _, err := st.ChargerTotals(ctx, "C"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ChargerTotals(C) error = %v, want ErrNotFound", err)
	}

	// Per-charger scan budgets: 0 = one find per charger; 1 = the shared scan meets the two
	// newest chargers (9, B) and the others fall back; 20 = the shared scan meets all.
	for _, perCharger := range []int{0, 1, 20} {
		restore := store.SetLastScanPerCharger(perCharger)
		t.Run(fmt.Sprintf("scan%d", perCharger), func(t *testing.T) {
			for limit := 1; limit <= len(queryWantChargers)+1; limit++ {
				var got []store.ChargerTotals
				after := ""
				for page := 0; ; page++ {
					if page > len(queryWantChargers) {
						t.Fatalf("limit %d: more pages than chargers", limit)
					}
					rows, more, err := st.ListChargerTotals(ctx, after, limit)
					if err != nil {
						t.Fatalf("ListChargerTotals(%q, %d): %v", after, limit, err)
					}
					if len(rows) > limit {
						t.Fatalf("limit %d: %d rows", limit, len(rows))
					}
					got = append(got, rows...)
					if !more {
						break
					}
					after = rows[len(rows)-1].ChargerID
				}
				if len(got) != len(queryWantChargers) {
					t.Fatalf("budget %d limit %d: %d chargers, want %d: %+v", perCharger, limit, len(got), len(queryWantChargers), got)
				}
				for i := range got {
					queryCheckTotals(t, got[i], queryWantChargers[i])
				}
			}
		})
		restore()
	}
}

func TestQueryFleetStats(t *testing.T) {
	st := queryStore(t)
	ctx := context.Background()

	empty, err := st.FleetStats(ctx)
	if err != nil {
		t.Fatalf("FleetStats on an empty store: %v", err)
	}
	if empty != (store.FleetStats{}) {
		t.Errorf("FleetStats on an empty store = %+v, want zeros", empty)
	}
	rows, more, err := st.ListChargerTotals(ctx, "", 10)
	if err != nil || len(rows) != 0 || more {
		t.Errorf("ListChargerTotals on an empty store = %v, %v, %v", rows, more, err)
	}

	querySeed(t, st)
	for i := range 3 {
		doc := store.RejectedDoc{Topic: "x", Payload: []byte("{"), Size: 1, Reason: string(session.ReasonBadJSON), ReceivedAt: queryT0.Add(time.Duration(i) * time.Second)}
		if _, err := st.Rejected.InsertOne(ctx, doc); err != nil {
			t.Fatalf("insert rejected: %v", err)
		}
	}
	got, err := st.FleetStats(ctx)
	if err != nil {
		t.Fatalf("FleetStats: %v", err)
	}
	want := store.FleetStats{
		Totals: store.Totals{Sessions: 8, EnergyKWh: 76.75, CostCents: 3442.25,
			FirstSessionAt: queryT0, LastSessionAt: queryT0.Add(30 * time.Minute)},
		Chargers: 4, Rejected: 3,
	}
	if got.Sessions != want.Sessions || got.EnergyKWh != want.EnergyKWh || got.CostCents != want.CostCents ||
		got.Chargers != want.Chargers || got.Rejected != want.Rejected ||
		!got.FirstSessionAt.Equal(want.FirstSessionAt) || !got.LastSessionAt.Equal(want.LastSessionAt) {
		t.Errorf("FleetStats:\n got %+v\nwant %+v", got, want)
	}
}

func TestQueryStoreDown(t *testing.T) {
	f := testenv.StartFerretDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, store.Config{URI: f.URI, Database: "querytest"}, "query-test")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer st.Close(context.Background())
	f.Stop()
	qctx, qcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer qcancel()
	_, _, err = st.FindSessions(qctx, store.SessionQuery{Limit: 1})
	if err == nil || !strings.Contains(err.Error(), "find sessions") {
		t.Errorf("FindSessions with the store down: err = %v, want a wrapped error", err)
	}
}
