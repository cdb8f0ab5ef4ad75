//go:build integration

package broker_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/broker"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// Fault tests of the whole path publisher → embedded broker → listener → FerretDB, with exact
// per-key accounting: every session the broker acknowledged (PUBACK) must be stored exactly
// once, whatever is killed in between. The listener and, for restarts, the broker run as real
// child processes (this test binary re-executed as `chargesim listener` / `chargesim broker`),
// so a kill -9 is a real crash.

// sessions100k runs the fault tests at 100,000 sessions (`make bench` sets it).
var sessions100k = flag.Bool("faults-100k", false, "run the broker fault tests with 100,000 sessions")

func TestMain(m *testing.M) {
	testenv.RunChildIfAsked(map[string]func(context.Context, []string) error{"listener": listener.Command, "broker": broker.Command})
	os.Exit(m.Run())
}

// metric reads one unlabelled sample from a child's /metrics (the test fails when it cannot).
func metric(t *testing.T, c *testenv.Child, name string) float64 {
	t.Helper()
	v, ok := c.Metric(name)
	if !ok {
		t.Fatalf("%s: no metric %s", c.Kind, name)
	}
	return v
}

func addr(t testing.TB) string { return "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) }

// feed publishes n distinct sessions at QoS 1 with up to 200 in flight and retries each one
// until the broker acknowledges it (connections drop while brokers restart). acked counts
// the acknowledged ones; every one of them must end up stored.
type feed struct {
	n     int
	acked atomic.Int64
	done  chan error
}

func sessionOf(i int) (topic, key string, payload []byte) {
	charger, connector, id := strconv.Itoa(1+i%50), 1+i%2, int64(i+1)
	payload = fmt.Appendf(nil, `{"session_id": %d, "energy_delivered_in_kWh": %d.5, "duration_in_seconds": %d, "session_cost_in_cents": %d}`,
		id, 5+i%60, 600+i%3000, 100+i%900)
	return session.NewTopicBuilder("").Topic(charger, connector, id), session.Key(charger, connector, id), payload
}

// startFeed publishes at most rate sessions a second, so the faults hit a running stream.
func startFeed(t testing.TB, url string, n, rate int) *feed {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("fault-pub-%d", os.Getpid())).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetWriteTimeout(5 * time.Second)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	f := &feed{n: n, done: make(chan error, 1)}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); c.Disconnect(100) })
	go func() {
		const window = 200
		type inflight struct {
			i   int
			tok paho.Token
		}
		pub := func(i int) inflight {
			topic, _, payload := sessionOf(i)
			return inflight{i, c.Publish(topic, 1, false, payload)}
		}
		start := time.Now()
		deadline := start.Add(5 * time.Minute)
		for first := 0; first < n; first += window {
			batch := make([]inflight, 0, window)
			for i := first; i < min(first+window, n); i++ {
				time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
				batch = append(batch, pub(i))
			}
			for _, m := range batch {
				for !m.tok.WaitTimeout(10*time.Second) || m.tok.Error() != nil {
					if time.Now().After(deadline) {
						f.done <- fmt.Errorf("session %d never acknowledged: %w", m.i, m.tok.Error())
						return
					}
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					m = pub(m.i) // at least once: the store keeps one copy per key
				}
				f.acked.Add(1)
			}
		}
		f.done <- nil
	}()
	return f
}

// storedKeys reads every stored session key; a key stored twice fails the test.
func storedKeys(t *testing.T, fdb *testenv.FerretDB, db string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var docs []struct {
		ID string `bson:"_id"`
	}
	for _, coll := range sessionColls(ctx, fdb, db) {
		cur, err := coll.Find(ctx, bson.D{}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatalf("find sessions: %v", err)
		}
		var part []struct {
			ID string `bson:"_id"`
		}
		if err := cur.All(ctx, &part); err != nil {
			t.Fatalf("read sessions: %v", err)
		}
		docs = append(docs, part...)
	}
	keys := make(map[string]bool, len(docs))
	for _, d := range docs {
		if keys[d.ID] {
			t.Errorf("session %s stored twice", d.ID)
		}
		keys[d.ID] = true
	}
	return keys
}

func countStored(fdb *testenv.FerretDB, db string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	for _, coll := range sessionColls(ctx, fdb, db) {
		k, err := coll.CountDocuments(ctx, bson.D{})
		if err != nil {
			return -1
		}
		n += k
	}
	return n
}

// sessionColls lists the collections holding sessions: on FerretDB the time partitions.
func sessionColls(ctx context.Context, fdb *testenv.FerretDB, db string) []*mongo.Collection {
	names, err := fdb.Client().Database(db).ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return nil
	}
	var out []*mongo.Collection
	for _, n := range names {
		if n == store.SessionsCollection || strings.HasPrefix(n, store.PartitionPrefix) {
			out = append(out, fdb.Client().Database(db).Collection(n))
		}
	}
	return out
}

// checkEveryKeyOnce: each of the n published sessions stored once, nothing else stored.
// Waits until the store stops growing, then counts per key.
func checkEveryKeyOnce(t *testing.T, fdb *testenv.FerretDB, db string, n int) {
	t.Helper()
	last, since := int64(-1), time.Now()
	for time.Since(since) < 10*time.Second { // 10 s without growth: the pipeline is idle
		k := countStored(fdb, db)
		if k == int64(n) {
			break
		}
		if k != last {
			last, since = k, time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	keys := storedKeys(t, fdb, db)
	missing := 0
	for i := range n {
		_, key, _ := sessionOf(i)
		if !keys[key] {
			missing++
			if missing <= 5 {
				t.Errorf("session %s acknowledged by the broker, never stored", key)
			}
		}
		delete(keys, key)
	}
	if missing > 0 || len(keys) > 0 {
		t.Errorf("%d of %d acknowledged sessions lost, %d unexpected sessions stored", missing, n, len(keys))
	}
	t.Logf("%d sessions published and acknowledged, %d lost", n, missing)
}

// feedRate spreads the publishing over about 20 s at test size (a stream the faults hit in
// its middle) and keeps the 100k run below what the listener stores, so the broker's backlog
// stays under --max-inflight.
func feedRate(n int) int { return min(n/20, 1000) }

func faultSize(small int) int {
	if *sessions100k {
		return 100_000
	}
	return small
}

// startListenerProc runs `chargesim listener` with a fixed client ID, so a restarted one
// resumes the persistent session.
func startListenerProc(t *testing.T, mqttURL string, fdb *testenv.FerretDB, db, logPath string) *testenv.Child {
	t.Helper()
	return testenv.StartChild(t, "listener", logPath,
		"--mqtt-url="+mqttURL, "--mqtt-client-id=fault-listener",
		"--mongo-uri="+fdb.URI, "--mongo-database="+db, "--flush-interval=20ms")
}

// waitFor polls cond (a description of the state when false) until it holds.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, desc)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Listener kill -9 three times mid-stream against the in-process embedded broker: each restart
// takes over the persistent session while the publisher keeps publishing. Nothing acknowledged
// is lost, and the in-flight gauge never goes negative and ends at 0.
func TestListenerKilledThriceMidStream(t *testing.T) {
	for _, persist := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "data-dir"}[persist], func(t *testing.T) {
			n := faultSize(8_000)
			fdb := testenv.StartFerretDB(t)
			cfg := broker.Config{MQTTAddr: "127.0.0.1:0", MaxInflight: 65535}
			if persist {
				cfg.DataDir = t.TempDir()
			}
			reg := prometheus.NewRegistry()
			b, err := broker.New(cfg, slog.New(slog.DiscardHandler), reg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			brokerDone := make(chan error, 1)
			go func() { brokerDone <- b.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-brokerDone; err != nil {
					t.Errorf("broker: %v", err)
				}
			})
			waitFor(t, "broker ready", func() (bool, string) { return b.Ready(ctx) == nil, "not serving" })
			url := "tcp://" + b.Addr().String()

			// The gauge is sampled all along: it must never go below zero.
			minInflight := make(chan float64, 1)
			stopSampling := make(chan struct{})
			go func() {
				low := 0.0
				for {
					select {
					case <-stopSampling:
						minInflight <- low
						return
					case <-time.After(5 * time.Millisecond):
						low = min(low, gauge(t, reg, "chargesim_broker_inflight_messages"))
					}
				}
			}()

			logPath := filepath.Join(t.TempDir(), "listener.log")
			l := startListenerProc(t, url, fdb, "faults", logPath)
			f := startFeed(t, url, n, feedRate(n))
			for k := 1; k <= 3; k++ {
				// Kill once the publisher is k quarters through, with a backlog at the broker.
				waitFor(t, fmt.Sprintf("publisher %d/4 through", k), func() (bool, string) {
					return f.acked.Load() >= int64(k*n/4), fmt.Sprintf("%d acknowledged", f.acked.Load())
				})
				l.Kill()
				t.Logf("kill %d: %d acknowledged, %d stored, broker holds %v", k, f.acked.Load(), countStored(fdb, "faults"),
					gauge(t, reg, "chargesim_broker_inflight_messages"))
				l = startListenerProc(t, url, fdb, "faults", logPath)
			}
			if err := <-f.done; err != nil {
				t.Fatal(err)
			}
			checkEveryKeyOnce(t, fdb, "faults", n)
			waitFor(t, "broker drained", func() (bool, string) {
				v := gauge(t, reg, "chargesim_broker_inflight_messages")
				return v == 0 && b.Drained(), fmt.Sprintf("inflight gauge %v", v)
			})
			close(stopSampling)
			if low := <-minInflight; low < 0 {
				t.Errorf("chargesim_broker_inflight_messages went down to %v", low)
			}
		})
	}
}

// The broker process is stopped mid-stream (SIGTERM once, kill -9 once) while it holds a
// backlog (the listener is down: killed just before), and started again on the same port with
// the same --data-dir: the sessions it had acknowledged and not yet delivered come back from
// disk, nothing is lost.
func TestBrokerRestartedMidStream(t *testing.T) {
	n := faultSize(8_000)
	fdb := testenv.StartFerretDB(t)
	dir := t.TempDir()
	mqttAddr := addr(t)
	url := "tcp://" + mqttAddr
	brokerLog, listenerLog := filepath.Join(dir, "broker.log"), filepath.Join(dir, "listener.log")
	b := testenv.StartChild(t, "broker", brokerLog, "--mqtt-addr="+mqttAddr, "--data-dir="+filepath.Join(dir, "data"))
	l := startListenerProc(t, url, fdb, "faults", listenerLog)
	f := startFeed(t, url, n, feedRate(n))
	for k, crash := range []bool{false, true} {
		waitFor(t, fmt.Sprintf("publisher %d/3 through", k+1), func() (bool, string) {
			return f.acked.Load() >= int64((k+1)*n/3), fmt.Sprintf("%d acknowledged", f.acked.Load())
		})
		l.Kill()
		backlog := float64(n / 20)
		waitFor(t, "a backlog at the broker", func() (bool, string) {
			v := metric(t, b, "chargesim_broker_inflight_messages")
			return v >= backlog, fmt.Sprintf("broker holds %v", v)
		})
		if crash {
			b.Kill()
		} else {
			b.Stop(t)
		}
		t.Logf("broker %s: %d acknowledged, %d stored", map[bool]string{false: "stopped", true: "killed"}[crash],
			f.acked.Load(), countStored(fdb, "faults"))
		b.Start(t) // same port, same --data-dir
		if held := metric(t, b, "chargesim_broker_inflight_messages"); held < backlog {
			t.Errorf("restarted broker holds %v messages, want at least the %v held before", held, backlog)
		}
		l = startListenerProc(t, url, fdb, "faults", listenerLog)
	}
	if err := <-f.done; err != nil {
		t.Fatal(err)
	}
	checkEveryKeyOnce(t, fdb, "faults", n)
	waitFor(t, "broker drained", func() (bool, string) {
		v := metric(t, b, "chargesim_broker_inflight_messages")
		return v == 0, fmt.Sprintf("inflight gauge %v", v)
	})
	l.Stop(t)
}

func gauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Errorf("gather: %v", err)
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Errorf("no metric %s", name)
	return 0
}
