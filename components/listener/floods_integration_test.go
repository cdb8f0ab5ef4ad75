//go:build integration

package listener

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// padded returns the message of g with an unknown key padding the payload to size bytes.
func padded(g good, size int) message {
	m := g.message()
	pad := size - len(m.payload) - len(`, "pad": ""`)
	m.payload = []byte(string(m.payload[:len(m.payload)-1]) + `, "pad": "` + strings.Repeat("x", pad) + `"}`)
	return m
}

// Issue 10 (measured): 1 MB payloads during a store outage took the listener from 32 MB to
// 1.84 GB, because --max-pending bounds messages, not bytes. With --max-pending-bytes the
// payload bytes held are bounded while the store is down; after it returns every session is
// stored exactly once.
func TestLargePayloadsDuringOutageBoundedBytes(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("bytes"))
	const size = 256 << 10
	cfg.MaxPayloadBytes = 1 << 20
	cfg.MaxPendingBytes = 4 << 20 // 16 payloads; --max-pending (1000) alone would allow 250 MB
	cfg.BatchSize = 50
	r := startListener(t, cfg, "bytes", nil)

	published := goods(0, 240) // 60 MB
	msgs := make([]message, len(published))
	for i, g := range published {
		msgs[i] = padded(g, size)
	}
	d.fdb.Stop()
	var (
		mu      sync.Mutex
		maxUsed int64
	)
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			u := r.l.budget.inUse()
			mu.Lock()
			maxUsed = max(maxUsed, u)
			mu.Unlock()
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	pubDone := make(chan error, 1)
	go func() { pubDone <- newPub(t, d.mq.URL, pubID("pub")).tryPublish(msgs) }()
	waitUntil(t, 60*time.Second, "blocked at the byte bound with the store down", func() (bool, string) {
		c := r.counts()
		used := r.l.budget.inUse()
		return used > cfg.MaxPendingBytes-size && c.writeErrors > 0, fmt.Sprintf("%d bytes pending; %v", used, c)
	})
	// Blocked on bytes, not on the message count.
	if c := r.counts(); c.pending > float64(cfg.MaxPendingBytes/size) || c.stored != 0 {
		t.Errorf("while blocked: %v; want at most %d pending, none stored", c, cfg.MaxPendingBytes/size)
	}
	time.Sleep(500 * time.Millisecond) // give a leak time to show

	d.fdb.Start()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	coll := sessionsColl(t, d)
	waitUntil(t, 120*time.Second, "all sessions stored after the outage", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == int64(len(published)), fmt.Sprintf("%d stored; %v", n, r.counts())
	})
	c := waitIdle(t, r, "drained")
	close(stopSampling)
	<-sampled
	checkExactlyOnce(t, d, published)
	if c.stored != float64(len(published)) {
		t.Errorf("sessions_stored_total = %v, want %d", c.stored, len(published))
	}
	if maxUsed > cfg.MaxPendingBytes {
		t.Errorf("pending payload bytes peaked at %d, above --max-pending-bytes=%d", maxUsed, cfg.MaxPendingBytes)
	}
	if used := r.l.budget.inUse(); used != 0 {
		t.Errorf("%d bytes still counted pending after everything was acknowledged", used)
	}
	t.Logf("pending payload bytes peaked at %d (bound %d) for %d MB published", maxUsed, cfg.MaxPendingBytes, len(published)*size>>20)
}

// Issue 10 (measured): of 50,000 malformed messages mixed with 5,000 good ones, 1,429 with
// invalid UTF-8 in power_class were stored as sessions with U+FFFD. Every malformed message
// must end in rejected, every good one stored exactly once.
func TestInvalidUTF8FloodKeptAside(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("utf8"))
	cfg.BatchSize = 500
	cfg.MaxPending = 5000
	r := startListener(t, cfg, "utf8", nil)

	const nBad = 50_000
	published := goods(0, 5000)
	bad := make([]message, nBad)
	for i := range bad {
		id := 1_000_000 + i // distinct from the good sessions: each bad message is its own document
		topic := session.NewTopicBuilder("").Topic("7", 1, int64(id))
		var p string
		switch i % 5 {
		case 0: // invalid UTF-8 in power_class (the measured case)
			p = fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "AC`+"\xff"+`11"}`, id)
		case 1: // a truncated multi-byte character
			p = fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "DC`+"\xe2\x82"+`"}`, id)
		case 2: // in an unknown key
			p = fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "vendor`+"\xc3"+`": 1}`, id)
		case 3: // an overlong encoding of '/'
			p = fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "`+"\xc0\xaf"+`"}`, id)
		case 4: // a lone surrogate escape, which encoding/json turns into U+FFFD
			p = fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70, "power_class": "AC\ud800"}`, id)
		}
		bad[i] = message{topic: topic, payload: []byte(p)}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, batch := range [][]message{bad, messagesOf(published)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- newPub(t, d.mq.URL, pubID("pub")).tryPublish(batch)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rejected := d.fdb.Client().Database(testDB).Collection(store.RejectedCollection)
	sessions := sessionsColl(t, d)
	waitUntil(t, 300*time.Second, "good stored, bad kept aside", func() (bool, string) {
		n, k := countDocs(t, sessions, bson.D{}), countDocs(t, rejected, bson.D{})
		return n == int64(len(published)) && k == nBad, fmt.Sprintf("%d sessions, %d rejected; %v", n, k, r.counts())
	})
	c := waitIdle(t, r, "idle")
	checkExactlyOnce(t, d, published) // also: no session beyond the 5,000 good ones
	if c.stored != float64(len(published)) || rejectedTotal(r) != nBad {
		t.Errorf("metrics %v, %v rejected; want %d stored, %d rejected", c, rejectedTotal(r), len(published), nBad)
	}
	if n := countDocs(t, rejected, bson.D{{Key: "reason", Value: string(session.ReasonBadJSON)}}); n != nBad*4/5 {
		t.Errorf("%d rejected as bad_json (invalid UTF-8), want %d", n, nBad*4/5)
	}
	if n := countDocs(t, rejected, bson.D{{Key: "reason", Value: string(session.ReasonOutOfRange)}}); n != nBad/5 {
		t.Errorf("%d rejected as out_of_range (lone surrogate in power_class), want %d", n, nBad/5)
	}
	ctx := context.Background()
	var one store.RejectedDoc
	if err := rejected.FindOne(ctx, bson.D{{Key: "topic", Value: bad[0].topic}}).Decode(&one); err != nil {
		t.Fatal(err)
	}
	if string(one.Payload) != string(bad[0].payload) || !strings.Contains(one.Detail, "invalid UTF-8") {
		t.Errorf("kept as %+v; want the raw payload and an invalid UTF-8 detail", one)
	}
}
