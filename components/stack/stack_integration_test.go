//go:build integration

package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// The payloads of the original challenge, as its clients publish them.
var contractPayloads = map[int]string{
	1: `{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`,
	2: `{"session_id": 2, "energy_delivered_in_kwh": 12.5, "duration_in_seconds": 3600, "session_cost_in_cents": 437.5}`,
	3: `{"session_id": 3, "energy_delivered_in_kWh": 7, "duration_in_seconds": 900, "session_cost_in_cents": 245, "timestamp": 1764000000}`,
	4: `{"session_id": 4, "energy_delivered_in_kWh": 9.0, "duration_in_seconds": 1200.0, "session_cost_in_cents": 315.0, "timestamp": "2025-11-24 16:00:00"}`,
}

// End to end through `chargesim run`: simulated chargers and a client of the original contract
// publish; the listener stores; the API serves; shutdown loses nothing.
func TestRunPipelineEndToEnd(t *testing.T) {
	f := testenv.StartFerretDB(t)
	var cfg Config
	fs := cli.NewFlagSet("run", "")
	cfg.Register(fs)
	mqttAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	apiAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	if err := cli.Parse(fs, []string{
		// 100 sessions/s: /readings/ (the newest 1000) still holds the legacy client's sessions
		// when the API's next snapshot includes them; at 1000/s they scroll out first.
		"--chargers", "100", "--time-scale", "60", "--mongo-uri", f.URI, "--mongo-database", "e2e",
		"--mqtt-addr", mqttAddr, "--api-addr", apiAddr, // clients follow --mqtt-addr
	}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() { done <- Run(ctx, log, 15*time.Second, cfg, reg) }()
	api := "http://" + apiAddr

	waitFor(t, "the stack to be ready", func() bool { return get(t, api+"/readyz", nil) == http.StatusOK })

	// A client of the original challenge, plus one payload that can never be stored.
	o := mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("legacy-client")
	legacy := mqtt.NewClient(o)
	if tok := legacy.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer legacy.Disconnect(50)
	for id, payload := range contractPayloads {
		if tok := legacy.Publish(fmt.Sprintf("charger/1/connector/1/session/%d", id), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	if tok := legacy.Publish("charger/1/connector/1/session/5", 1, false, `{"session_id": 5, "energy_delivered_in_kWh": -3}`); !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("publish malformed")
	}

	// The original clients' sessions show up in GET /readings/ with their values.
	waitFor(t, "the contract's sessions in /readings/", func() bool {
		var readings []map[string]any
		if get(t, api+"/readings/", &readings) != http.StatusOK {
			return false
		}
		found := 0
		for _, r := range readings {
			if r["charger_id"] == "1" && r["connector_id"] == float64(1) && r["session_id"].(float64) <= 4 {
				found++
				if r["session_id"] == float64(2) && (r["energy_delivered_in_kWh"] != 12.5 || r["session_cost_in_cents"] != 437.5) {
					t.Fatalf("lower-case kwh variant stored as %v", r)
				}
				if r["session_id"] == float64(4) && r["timestamp"] != float64(1764000000) {
					t.Fatalf("string timestamp stored as %v", r["timestamp"])
				}
			}
		}
		return found == len(contractPayloads)
	})
	var stats struct {
		Sessions float64 `json:"sessions"`
		Chargers float64 `json:"chargers"`
		Rejected float64 `json:"rejected"`
	}
	waitFor(t, "simulated sessions from every charger and the reject", func() bool {
		get(t, api+"/api/v1/stats", &stats)
		return stats.Chargers == 100 && stats.Sessions > 500 && stats.Rejected == 1
	})
	var health map[string]any
	if get(t, api+"/health", &health) != http.StatusOK || health["database"] != "up" {
		t.Fatalf("/health = %v", health)
	}
	if code := get(t, api+"/metrics", nil); code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	// Nothing lost on shutdown: every acknowledged publish is stored, exactly once.
	published := counterValue(t, reg, publisher.MetricPublished)
	scheduled := counterValue(t, reg, publisher.MetricScheduled)
	if published != scheduled {
		t.Errorf("published %v of %v scheduled sessions", published, scheduled)
	}
	st, err := store.Connect(context.Background(), store.Config{URI: f.URI, Database: "e2e"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background()) //nolint:errcheck
	n, err := st.CountSessions(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(published) + int64(len(contractPayloads)); n != want {
		t.Fatalf("store holds %d sessions, want %d (%v simulated + %d contract)", n, want, published, len(contractPayloads))
	}
	if stored := counterValue(t, reg, "chargesim_listener_sessions_stored_total"); int64(stored) != n {
		t.Errorf("listener stored_total %v, store holds %d", stored, n)
	}
}

// counterValue is the value of the counter name registered in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func get(t *testing.T, url string, into any) int {
	t.Helper()
	resp, err := http.Get(url) //nolint:gosec,noctx // test-local URL
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if into != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("decode %s: %v", url, err)
		}
	}
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Starting the stack against a fresh store must not crash any store connection: the listener
// and the API used to create the same indexes at once, and FerretDB answered the second
// createIndexes with an internal panic (`slice bounds out of range`) that dropped the connection.
// Several fresh databases, so that the race gets several chances.
func TestRunStartDoesNotPanicTheStore(t *testing.T) {
	f := testenv.StartFerretDB(t)
	for i := range 3 {
		var cfg Config
		fs := cli.NewFlagSet("run", "")
		cfg.Register(fs)
		apiAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		if err := cli.Parse(fs, []string{
			"--chargers", "10", "--mongo-uri", f.URI, "--mongo-database", fmt.Sprintf("fresh%d", i),
			"--mqtt-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--api-addr", apiAddr,
		}); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		go func() { done <- Run(ctx, log, 15*time.Second, cfg, prometheus.NewRegistry()) }()
		waitFor(t, "the stack to be ready", func() bool { return get(t, "http://"+apiAddr+"/readyz", nil) == http.StatusOK })
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
	}
	f.AssertNoPanic(t)
}
