//go:build integration

package listener

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/store"
)

// A listener killed mid-stream while it writes timed sessions into several time partitions,
// some of them late (closed for readers), then restarted: the API's incremental read model,
// refreshed all along, ends with totals equal to the sums over every stored document.
func TestCrashMidStreamReadModelExact(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	const (
		n        = 3000
		acked    = 500
		pendingP = 1000
		grace    = 10 * time.Second
	)
	// The first process to connect records the partition layout: a short grace, so that the
	// partitions close within the test.
	ctx := context.Background()
	st, err := store.Connect(ctx, store.Config{URI: d.fdb.URI, Database: testDB, PartitionGrace: grace}, "read-model")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	inc := store.NewIncremental(st, 300)
	inc.OpenRescan = 10 * time.Second // the API's setting: totals of filling partitions come from deltas
	stop := make(chan struct{})
	refreshed := make(chan error, 1)
	checks := 0
	go func() { // the API refreshing all along; its provisional totals never exceed what is stored
		var err error
		for err == nil {
			select {
			case <-stop:
				refreshed <- nil
				return
			case <-time.After(100 * time.Millisecond):
			}
			var sn *store.Snapshot
			if sn, err = inc.Refresh(ctx); err == nil {
				err = atMostStored(ctx, sn, sessionsColl(t, d)) // read after: what is stored only grows
				checks++
			}
		}
		refreshed <- err
	}()

	// Sessions over the last 8 minutes: 9 partitions, the older ones closed (late writes).
	published := goods(0, n)
	now := time.Now().Unix()
	for i := range published {
		published[i].ts = now - int64((n-i)*480/n)
		// Keys that name their end, as the simulator's do (its session ID is the end in
		// microseconds): only those are stored by time; foreign keys go unpartitioned.
		published[i].id = published[i].ts*1_000_000 + int64(i%1000)
	}
	cfg := d.config(pubID("crash-partitions"))
	cfg.MaxPending = pendingP
	a := startChild(t, cfg, acked)
	p := newPub(t, d.mq.URL, pubID("pub"))
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(published)) }()
	coll := sessionsColl(t, d)
	waitUntil(t, 120*time.Second, "crashing listener to store acked+pending", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == acked+pendingP, fmt.Sprintf("%d stored; child %v", k, a.counts())
	})
	a.kill()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	b := startListener(t, cfg, "restarted", nil)
	waitUntil(t, 120*time.Second, "all sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == n, fmt.Sprintf("%d stored; restarted %v", k, b.counts())
	})
	waitIdle(t, b, "restarted idle")
	checkExactlyOnce(t, d, published)
	parts, err := st.Partitions(ctx)
	if err != nil || len(parts) < 9 {
		t.Fatalf("%d partitions (%v), want the 9 minutes the sessions ended in", len(parts), err)
	}

	// Once the last write is grace old every partition is closed: the model is exact.
	time.Sleep(grace + time.Second)
	close(stop)
	if err := <-refreshed; err != nil {
		t.Fatalf("refresh during the run: %v", err)
	}
	sn, err := inc.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := totalsStored(allSessions(t, coll))
	if sn.Fleet.Sessions != int64(want.sessions) || sn.Fleet.EnergyKWh != want.energy || sn.Fleet.CostCents != want.cost {
		t.Fatalf("read model %+v, stored %d sessions %.2f kWh %.0f cents", sn.Fleet, want.sessions, want.energy, want.cost)
	}
	for c, k := range want.perCharger {
		got, err := sn.Charger(c)
		if err != nil || got.Sessions != int64(k) || got.EnergyKWh != want.energyCharger[c] {
			t.Errorf("charger %s: read model %+v %v, stored %d sessions %.2f kWh", c, got, err, k, want.energyCharger[c])
		}
	}
	t.Logf("read model: %d partition scans over the run, %d partitions; provisional totals checked against the store %d times", inc.Scanned, len(parts), checks)
}

// atMostStored fails when a snapshot's totals (fleet or any charger) exceed the sums over
// what is stored: provisional figures (deltas) may undercount, never overcount.
func atMostStored(ctx context.Context, sn *store.Snapshot, set sessionsSet) error {
	colls, err := set.colls(ctx)
	if err != nil {
		return err
	}
	perCharger := map[string]int64{}
	var n int64
	for _, c := range colls {
		cur, err := c.Find(ctx, bson.D{}, options.Find().SetProjection(bson.D{{Key: "charger_id", Value: 1}}))
		if err != nil {
			return err
		}
		var rows []struct {
			ChargerID string `bson:"charger_id"`
		}
		if err := cur.All(ctx, &rows); err != nil {
			return err
		}
		for _, r := range rows {
			perCharger[r.ChargerID]++
			n++
		}
	}
	if sn.Fleet.Sessions > n {
		return fmt.Errorf("read model counts %d sessions, %d stored", sn.Fleet.Sessions, n)
	}
	rows, _ := sn.ListChargers("", 1<<30)
	for _, c := range rows {
		if c.Sessions > perCharger[c.ChargerID] {
			return fmt.Errorf("read model counts %d sessions of charger %s, %d stored", c.Sessions, c.ChargerID, perCharger[c.ChargerID])
		}
	}
	return nil
}
