//go:build integration

package publisher

import (
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chargesim/chargesim/components/mqttclient"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/test/testenv"
)

const benchWindow = 1000 // --max-inflight default

// BenchmarkPublisher measures sessions per second through the whole publisher (scheduler,
// physics, encoding, window, collector, paho) to a real mosquitto. The fleet is always due
// (10,000 chargers, each every millisecond of wall-clock time), so the window sets the pace.
func BenchmarkPublisher(b *testing.B) {
	m := testenv.StartMosquitto(b)
	cfg := DefaultConfig()
	cfg.MQTT.URL = m.URL
	cfg.MQTT.ClientID = "bench-publisher"
	cfg.Chargers = 10_000
	cfg.TimeScale = 60_000
	cfg.MaxInflight = benchWindow
	reg := prometheus.NewRegistry()
	p, err := New(cfg, nil, reg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for p.Ready(ctx) != nil {
		time.Sleep(time.Millisecond)
	}
	// Polled every 2 ms: often enough for the measurement, rarely enough not to compete with
	// the publisher for the CPU.
	published := func() float64 { return testutil.ToFloat64(p.m.published) }
	from := published()
	b.ResetTimer()
	start := time.Now()
	for published()-from < float64(b.N) {
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	n := published() - from
	b.ReportMetric(n/elapsed.Seconds(), "msgs/s")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRawPaho is the ceiling: a bare paho client publishing payloads of the publisher's
// size at QoS 1 through a window of the same size (a ring of tokens, waiting on the oldest),
// on the same broker.
func BenchmarkRawPaho(b *testing.B) {
	m := testenv.StartMosquitto(b)
	mc := mqttclient.Config{URL: m.URL, ClientID: "bench-raw"}
	if err := mc.Validate(); err != nil {
		b.Fatal(err)
	}
	opts, err := mc.Options("bench")
	if err != nil {
		b.Fatal(err)
	}
	c := mqtt.NewClient(opts.SetCleanSession(true))
	if err := mqttclient.Wait(c.Connect(), 10*time.Second, "connect"); err != nil {
		b.Fatal(err)
	}
	defer c.Disconnect(100)
	payload, topic := samplePayload()
	ring := make([]mqtt.Token, benchWindow)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		slot := i % benchWindow
		if t := ring[slot]; t != nil {
			<-t.Done()
			if t.Error() != nil {
				b.Fatal(t.Error())
			}
		}
		ring[slot] = c.Publish(topic, 1, false, payload)
	}
	for _, t := range ring {
		if t != nil {
			<-t.Done()
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}

// samplePayload is a typical session of the simulated fleet, as published.
func samplePayload() ([]byte, string) {
	cfg := DefaultConfig()
	cfg.Chargers = 10_000
	p, err := New(cfg, nil, nil)
	if err != nil {
		panic(err)
	}
	var sl slot
	var s session.Session
	p.build(p.fleet, &sl, &s)
	return sl.payload, sl.topic
}
