//go:build integration

package listener

import (
	"context"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// BenchmarkListenerIngest measures stored sessions per second through mosquitto → listener →
// FerretDB with the default batching (500 per write, 4 writes in flight). b.N is the number of
// sessions.
//
//   - live: a publisher streams while the listener stores (publishing is in the measurement);
//   - backlog: the sessions wait in the broker for the listener's persistent session, and the
//     listener drains them (the listener and the store alone, e.g. catching up after an outage).
//
// Compare with BenchmarkRawInsertMany: the same documents, batch size and store, no broker.
func BenchmarkListenerIngest(b *testing.B) {
	b.Run("live", func(b *testing.B) {
		d := startDeps(b)
		cfg := d.config(pubID("bench"))
		benchDefaults(&cfg)
		r := startListener(b, cfg, "bench", nil)
		p := newPub(b, d.mq.URL, pubID("pub"))
		msgs := messagesOf(goods(0, b.N))
		b.ResetTimer()
		errc := make(chan error, 1)
		go func() { errc <- p.tryPublish(msgs) }()
		waitStored(b, r, b.N)
		b.StopTimer()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
	})
	b.Run("backlog", func(b *testing.B) {
		d := startDeps(b)
		cfg := d.config(pubID("bench"))
		benchDefaults(&cfg)
		first := startListener(b, cfg, "subscribe", nil) // creates the persistent session
		first.stop(b)
		newPub(b, d.mq.URL, pubID("pub")).publish(b, messagesOf(goods(0, b.N)))
		b.ResetTimer()
		r := startListener(b, cfg, "bench", nil)
		waitStored(b, r, b.N)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
	})
}

func benchDefaults(c *Config) {
	c.BatchSize = DefaultBatchSize
	c.FlushInterval = DefaultFlushInterval
	c.MaxPending = DefaultMaxPending
	c.WriteConcurrency = DefaultWriteConcurrency
}

func waitStored(b *testing.B, r *running, n int) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for r.counts().stored < float64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d stored after 10m", r.counts(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// BenchmarkRawInsertMany is the ceiling: unordered InsertMany of the listener's documents in
// batches of the listener's default size, one writer, straight into FerretDB.
func BenchmarkRawInsertMany(b *testing.B) {
	d := startDeps(b)
	ctx := context.Background()
	st, err := store.Connect(ctx, store.Config{URI: d.fdb.URI, Database: testDB}, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close(ctx)
	gs := goods(0, b.N)
	now := time.Now()
	docs := make([]store.SessionDoc, 0, len(gs))
	for _, g := range gs {
		m := g.message()
		s, err := session.Decode(m.topic, m.payload)
		if err != nil {
			b.Fatal(err)
		}
		docs = append(docs, store.NewSessionDoc(s, m.topic, now))
	}
	b.ResetTimer()
	for i := 0; i < len(docs); i += DefaultBatchSize {
		if _, err := st.InsertSessions(ctx, docs[i:min(i+DefaultBatchSize, len(docs))]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
}
