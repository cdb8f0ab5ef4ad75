//go:build integration

package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/broker"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/test/testenv"
)

// The cost of the broker's delivery guarantee, measured against itself: the same publisher
// (QoS 1, 200 in flight) and subscriber through the embedded broker in memory, with --data-dir,
// and with --data-dir --data-fsync. `make bench` prints each as a ratio of the memory one.
var brokerModes = []struct {
	name  string
	setup func(tb testing.TB, c *broker.Config)
}{
	{"memory", func(testing.TB, *broker.Config) {}},
	{"data-dir", func(tb testing.TB, c *broker.Config) { c.DataDir = tb.TempDir() }},
	{"data-dir-fsync", func(tb testing.TB, c *broker.Config) { c.DataDir, c.DataFsync = tb.TempDir(), true }},
}

func runBroker(tb testing.TB, cfg broker.Config) *broker.Broker {
	tb.Helper()
	cfg.MQTTAddr, cfg.MaxInflight = "127.0.0.1:0", 65535
	b, err := broker.New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	for b.Ready(ctx) != nil {
		time.Sleep(time.Millisecond)
	}
	return b
}

// BenchmarkBrokerDelivery: publisher → embedded broker → a persistent shared-subscription
// subscriber that acknowledges at once (the listener's subscription, without its store).
func BenchmarkBrokerDelivery(b *testing.B) {
	for _, mode := range brokerModes {
		b.Run(mode.name, func(b *testing.B) {
			var cfg broker.Config
			mode.setup(b, &cfg)
			url := "tcp://" + runBroker(b, cfg).Addr().String()
			var got atomic.Int64
			o := paho.NewClientOptions().AddBroker(url).SetClientID("bench-sub").SetCleanSession(false).
				SetOrderMatters(false).SetDefaultPublishHandler(func(paho.Client, paho.Message) { got.Add(1) })
			sub := paho.NewClient(o)
			if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatalf("subscriber: %v", tok.Error())
			}
			defer sub.Disconnect(100)
			if tok := sub.Subscribe("$share/bench/charger/+/connector/+/session/+", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatalf("subscribe: %v", tok.Error())
			}
			b.ResetTimer()
			start := time.Now()
			f := startFeed(b, url, b.N, 1<<30)
			for got.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if err := <-f.done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkPipelineDelivery: publisher → embedded broker → listener → FerretDB, until every
// session is stored.
func BenchmarkPipelineDelivery(b *testing.B) {
	fdb := testenv.StartFerretDB(b)
	for i, mode := range brokerModes[:2] {
		b.Run(mode.name, func(b *testing.B) {
			var cfg broker.Config
			mode.setup(b, &cfg)
			url := "tcp://" + runBroker(b, cfg).Addr().String()
			db := fmt.Sprintf("bench%d_%d", i, b.N)
			lcfg := listener.DefaultConfig()
			lcfg.MQTT.URL, lcfg.MQTT.ClientID = url, "bench-listener"
			lcfg.Store.URI, lcfg.Store.Database = fdb.URI, db
			lcfg.ShutdownTimeout = 10 * time.Second
			if err := lcfg.Validate(); err != nil {
				b.Fatal(err)
			}
			l, err := listener.New(lcfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- l.Run(ctx) }()
			defer func() { cancel(); <-done }()
			for l.Ready(ctx) != nil {
				time.Sleep(5 * time.Millisecond)
			}
			b.ResetTimer()
			start := time.Now()
			f := startFeed(b, url, b.N, 1<<30)
			for countStored(fdb, db) < int64(b.N) {
				time.Sleep(20 * time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if err := <-f.done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "docs/s")
		})
	}
}
