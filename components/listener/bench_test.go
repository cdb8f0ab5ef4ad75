//go:build integration

package listener

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sync/errgroup"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// BenchmarkListenerIngest measures stored sessions per second through mosquitto → listener →
// the store with the default settings (batches of up to 500, adaptive write concurrency up to
// 4). b.N is the number of sessions. The store is a fresh FerretDB, or the MongoDB at
// CHARGESIM_BENCH_MONGO_URI (a fresh database per benchmark, dropped after).
//
//   - live: a publisher streams while the listener stores, never more than liveAhead sessions
//     ahead of what is stored (publishing is in the measurement). The listener always has the
//     next sessions waiting, as on a busy fleet, and the broker never holds a backlog: this is
//     the listener's capacity on a live stream;
//   - burst: the publisher pushes all b.N at once. On a machine where the publisher, mosquitto
//     and the listener share the cores, the burst starves the listener until it is over and the
//     rest is a backlog: this measures that contention (docs/performance.md);
//   - backlog: the sessions wait in the broker for the listener's persistent session, and the
//     listener drains them (the listener and the store alone, e.g. catching up after an outage).
//
// Compare with BenchmarkRawInsertMany: the same documents, batch size and store, no broker.
func BenchmarkListenerIngest(b *testing.B) {
	b.Run("live", func(b *testing.B) { benchStream(b, liveAhead) })
	b.Run("burst", func(b *testing.B) { benchStream(b, 0) })
	b.Run("backlog", func(b *testing.B) {
		d, uri := startBenchDeps(b)
		cfg := benchConfig(d, uri)
		first := startListener(b, cfg, "subscribe", nil) // creates the persistent session
		first.stop(b)
		newPub(b, d.mq.URL, pubID("pub")).publish(b, messagesOf(goods(0, b.N)))
		b.ResetTimer()
		cpu := startCPU(d)
		r := startListener(b, cfg, "bench", nil)
		limit := waitStored(b, r, b.N)
		b.StopTimer()
		cpu.report(b, d)
		reportWrites(b, r, limit)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
	})
}

// liveAhead bounds how far the live benchmark's publisher runs ahead of what is stored: 8 of the
// listener's batches, twice what its writers can hold in flight, so it never waits for input.
const liveAhead = 8 * DefaultBatchSize

// benchStream publishes b.N sessions to a running listener, at most ahead unstored at any time
// (0: no bound), and measures until all are stored.
func benchStream(b *testing.B, ahead int) {
	d, uri := startBenchDeps(b)
	cfg := benchConfig(d, uri)
	r := startListener(b, cfg, "bench", nil)
	// The publisher stands in for chargers that publish from machines of their own, yet here
	// it shares the listener's core: it goes over the listener's buffered connection
	// (conn.go), or paho's write(2) per PUBLISH and read(2)s per PUBACK take a third of that
	// core from the listener (docs/performance.md).
	p := newPub(b, d.mq.URL, pubID("pub"), func(o *mqtt.ClientOptions) { brokerConnFor(o, d.mq.URL) })
	msgs := messagesOf(goods(0, b.N))
	b.ResetTimer()
	cpu := startCPU(d)
	errc := make(chan error, 1)
	go func() {
		if ahead == 0 {
			errc <- p.tryPublish(msgs)
			return
		}
		for i := 0; i < len(msgs); i += pubWindow {
			for float64(i+pubWindow-ahead) > testutil.ToFloat64(r.l.m.stored) {
				time.Sleep(time.Millisecond)
			}
			if err := p.tryPublish(msgs[i:min(i+pubWindow, len(msgs))]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	limit := waitStored(b, r, b.N)
	b.StopTimer()
	cpu.report(b, d)
	reportWrites(b, r, limit)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
}

// benchMongoEnv names a MongoDB to benchmark against instead of a FerretDB started per
// benchmark (docs/performance.md).
const benchMongoEnv = "CHARGESIM_BENCH_MONGO_URI"

// startBenchDeps starts mosquitto and, unless benchMongoEnv is set, FerretDB; it returns the
// store URI to use. With benchMongoEnv the benchmark gets a database of its own, dropped at
// the end, so that each starts empty like a fresh FerretDB.
func startBenchDeps(b *testing.B) (deps, string) {
	b.Helper()
	uri := os.Getenv(benchMongoEnv)
	if uri == "" {
		d := startDeps(b)
		return d, d.fdb.URI
	}
	d := deps{mq: testenv.StartMosquitto(b)}
	benchDB = fmt.Sprintf("bench%d", time.Now().UnixNano())
	b.Cleanup(func() {
		st, err := store.Connect(context.Background(), store.Config{URI: uri, Database: benchDB}, "bench")
		if err == nil {
			_ = st.DB.Drop(context.Background())
			_ = st.Close(context.Background())
		}
	})
	return d, uri
}

// benchDB is the database of the running benchmark (testDB on a fresh FerretDB).
var benchDB = testDB

// benchConfig is the listener at its documented defaults, on the benchmark's broker and store.
func benchConfig(d deps, uri string) Config {
	c := DefaultConfig()
	c.MQTT.URL, c.MQTT.ClientID = d.mq.URL, pubID("bench")
	c.Store.URI, c.Store.Database = uri, benchDB
	c.ShutdownTimeout = 10 * time.Second
	return c
}

// reportWrites adds the listener's mean batch size, write latency and write limit in force: with
// the store's CPU per document they say how it was fed (full batches; one write at a time on
// SQLite, adaptive.go).
func reportWrites(b *testing.B, r *running, limit float64) {
	mean := func(h prometheus.Histogram) float64 {
		var m dto.Metric
		if err := h.Write(&m); err != nil || m.GetHistogram().GetSampleCount() == 0 {
			return 0
		}
		return m.GetHistogram().GetSampleSum() / float64(m.GetHistogram().GetSampleCount())
	}
	b.ReportMetric(mean(r.l.m.batchSize), "docs/batch")
	b.ReportMetric(1000*mean(r.l.m.writeDuration), "ms/write")
	b.ReportMetric(limit, "write-limit")
}

// waitStored waits until n sessions are stored and returns the mean write limit in force
// (adaptive.go) over that time, sampled with the stored counter.
func waitStored(b *testing.B, r *running, n int) float64 {
	b.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	var sum, samples int
	// Only the stored counter: gathering every counter every 2 ms cost the benchmark process
	// ~7% of its CPU in the backlog profile, which the raw loop does not pay.
	for testutil.ToFloat64(r.l.m.stored) < float64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d stored after 10m", r.counts(), n)
		}
		sum += r.l.p.limit.current()
		samples++
		time.Sleep(2 * time.Millisecond)
	}
	return float64(sum) / float64(max(samples, 1))
}

// BenchmarkRawInsertMany is the ceiling: unordered InsertMany of the listener's documents in
// batches of the listener's default size, straight into the same store with the same indexes,
// by 1 writer and by DefaultWriteConcurrency writers (MongoDB runs writes in parallel, SQLite
// one at a time): hack/bench.sh takes the faster as the raw limit.
func BenchmarkRawInsertMany(b *testing.B) {
	for _, writers := range []int{1, DefaultWriteConcurrency} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { rawInsertMany(b, writers) })
	}
}

func rawInsertMany(b *testing.B, writers int) {
	d, uri := startBenchDeps(b)
	ctx := context.Background()
	st, err := store.Connect(ctx, store.Config{URI: uri, Database: benchDB}, "bench")
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
	var next atomic.Int64 // index of the next batch
	b.ResetTimer()
	cpu := startCPU(d)
	var g errgroup.Group
	for range writers {
		g.Go(func() error {
			for {
				i := int(next.Add(1)-1) * DefaultBatchSize
				if i >= len(docs) {
					return nil
				}
				if _, err := st.InsertSessions(ctx, docs[i:min(i+DefaultBatchSize, len(docs))]); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b, d)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
}

// cpuMeter is the CPU time used during a benchmark by the benchmark process (the listener, or
// the raw loop; in live mode also the publisher), mosquitto and FerretDB. On a machine whose
// cores are shared with other work the throughputs swing by 2× between runs, while CPU time per
// document is what each part costs whatever the scheduler does: the figure that says where a
// ratio below 1 comes from (docs/performance.md).
type cpuMeter struct{ self, mq, fdb time.Duration }

func startCPU(d deps) cpuMeter { return sampleCPU(d) }

func sampleCPU(d deps) cpuMeter {
	var m cpuMeter
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		m.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if d.mq != nil {
		m.mq = testenv.ProcCPU(d.mq.Pid())
	}
	if d.fdb != nil {
		m.fdb = testenv.ProcCPU(d.fdb.Pid())
	}
	return m
}

// report adds the CPU microseconds per document of each part since m.
func (m cpuMeter) report(b *testing.B, d deps) {
	now := sampleCPU(d)
	per := func(t time.Duration) float64 { return float64(t.Microseconds()) / float64(b.N) }
	b.ReportMetric(per(now.self-m.self), "bench-cpu-us/doc")
	if d.mq != nil {
		b.ReportMetric(per(now.mq-m.mq), "mosquitto-cpu-us/doc")
	}
	if d.fdb != nil {
		b.ReportMetric(per(now.fdb-m.fdb), "ferretdb-cpu-us/doc")
	}
}
