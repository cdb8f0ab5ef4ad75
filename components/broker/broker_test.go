package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func startBroker(t *testing.T, cfg Config) (string, *prometheus.Registry) {
	t.Helper()
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = 65535
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker run: %v", err)
		}
	})
	for b.Ready(ctx) != nil {
		time.Sleep(5 * time.Millisecond)
	}
	return "tcp://" + b.Addr().String(), reg
}

func connect(t *testing.T, url, id string, clean bool, user, pass string, onMsg paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func wait(t *testing.T, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("token: %v", tok.Error())
	}
}

type recorder struct {
	mu   sync.Mutex
	seen map[string]int
	n    int
}

func (r *recorder) handle(_ paho.Client, m paho.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	r.seen[string(m.Payload())]++
	r.n++
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The listener relies on MQTT 3.1.1 clients (paho) sharing a $share subscription: each message
// goes to exactly one member of the group.
func TestSharedSubscriptionSplitsLoadForMQTT311Clients(t *testing.T) {
	url, _ := startBroker(t, Config{})
	var a, b recorder
	ca := connect(t, url, "listener-a", true, "", "", a.handle)
	cb := connect(t, url, "listener-b", true, "", "", b.handle)
	filter := "$share/g/charger/+/connector/+/session/+"
	wait(t, ca.Subscribe(filter, 1, nil))
	wait(t, cb.Subscribe(filter, 1, nil))
	pub := connect(t, url, "pub", true, "", "", nil)
	const n = 400
	for i := range n {
		wait(t, pub.Publish(fmt.Sprintf("charger/%d/connector/1/session/%d", i%7, i), 1, false, fmt.Sprint(i)))
	}
	eventually(t, "all messages", func() bool { return a.count()+b.count() >= n })
	time.Sleep(100 * time.Millisecond) // a duplicate delivery would arrive now
	if a.count()+b.count() != n {
		t.Fatalf("delivered %d+%d, want %d in total", a.count(), b.count(), n)
	}
	if a.count() == 0 || b.count() == 0 {
		t.Fatalf("load not shared: a=%d b=%d", a.count(), b.count())
	}
	for i := range n {
		if a.seen[fmt.Sprint(i)]+b.seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("message %d delivered %d times", i, a.seen[fmt.Sprint(i)]+b.seen[fmt.Sprint(i)])
		}
	}
}

// A listener with a persistent session gets what was published while it was away.
func TestPersistentSessionQueuesQoS1WhileOffline(t *testing.T) {
	url, _ := startBroker(t, Config{})
	var r recorder
	sub := connect(t, url, "listener", false, "", "", r.handle)
	wait(t, sub.Subscribe("charger/+/connector/+/session/+", 1, nil))
	sub.Disconnect(50)
	pub := connect(t, url, "pub", true, "", "", nil)
	for i := range 50 {
		wait(t, pub.Publish(fmt.Sprintf("charger/1/connector/1/session/%d", i), 1, false, fmt.Sprint(i)))
	}
	connect(t, url, "listener", false, "", "", r.handle)
	eventually(t, "queued messages", func() bool { return r.count() == 50 })
}

func TestAuthentication(t *testing.T) {
	url, _ := startBroker(t, Config{Username: "sim", Password: "s3cret"})
	connect(t, url, "ok", true, "sim", "s3cret", nil)
	for _, tc := range []struct{ user, pass string }{{"sim", "wrong"}, {"", ""}, {"other", "s3cret"}} {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("bad").
			SetUsername(tc.user).SetPassword(tc.pass).SetConnectTimeout(5 * time.Second))
		tok := c.Connect()
		tok.WaitTimeout(10 * time.Second)
		if tok.Error() == nil {
			c.Disconnect(0)
			t.Fatalf("user %q password %q accepted", tc.user, tc.pass)
		}
	}
}

// refused connects with the given credentials and fails the test if the broker lets it in.
func refused(t *testing.T, url, user, pass string) {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("bad-" + user + "-" + pass).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Fatalf("user %q password %q accepted", user, pass)
	}
}

// TestPasswordFileRotation is the managed broker's rotation as the operator drives it through
// a mounted Secret: the file first holds the old password, then new and old (both accepted,
// no restart), then only the new one (the old refused). A client connected with the old
// password stays connected throughout and keeps delivering.
func TestPasswordFileRotation(t *testing.T) {
	file := filepath.Join(t.TempDir(), "accepted")
	write := func(content string) {
		t.Helper()
		// As the kubelet does: a new file renamed into place.
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write("old-pass\n")
	url, _ := startBroker(t, Config{Username: "sim", PasswordFile: file})
	refused(t, url, "", "")
	refused(t, url, "sim", "")
	refused(t, url, "sim", "new-pass")
	got := make(chan string, 10)
	sub := connect(t, url, "sub-old", true, "sim", "old-pass", func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	wait(t, sub.Subscribe("t", 1, nil))

	write("new-pass\nold-pass\n")
	eventually(t, "the new password accepted", func() bool { return tryConnect(url, "sim", "new-pass") })
	if !tryConnect(url, "sim", "old-pass") {
		t.Fatal("old password refused while both are accepted")
	}

	write("new-pass\n")
	eventually(t, "the old password refused", func() bool { return !tryConnect(url, "sim", "old-pass") })
	refused(t, url, "sim", "old-pass")
	refused(t, url, "other", "new-pass")
	pub := connect(t, url, "pub-new", true, "sim", "new-pass", nil)
	wait(t, pub.Publish("t", 1, false, "after rotation"))
	select {
	case m := <-got:
		if m != "after rotation" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client connected with the old password lost its subscription")
	}

	// A file emptied mid-update keeps the last good set instead of locking everyone out.
	write("")
	time.Sleep(reloadEvery + 100*time.Millisecond)
	if !tryConnect(url, "sim", "new-pass") {
		t.Fatal("an empty password file locked the right password out")
	}
	refused(t, url, "sim", "")
}

func tryConnect(url, user, pass string) bool {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("try").
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	if tok.Error() != nil {
		return false
	}
	c.Disconnect(0)
	return true
}

func TestMetrics(t *testing.T) {
	url, reg := startBroker(t, Config{})
	pub := connect(t, url, "pub", true, "", "", nil)
	for i := range 3 {
		wait(t, pub.Publish(fmt.Sprintf("charger/1/connector/1/session/%d", i), 1, false, "x"))
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP chargesim_broker_messages_received_total PUBLISH packets received.
# TYPE chargesim_broker_messages_received_total counter
chargesim_broker_messages_received_total 3
`), "chargesim_broker_messages_received_total"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MQTTAddr: "nope", MaxInflight: 10}, "--mqtt-addr"},
		{Config{MQTTAddr: ":1883", MaxInflight: 0}, "--max-inflight"},
		{Config{MQTTAddr: ":1883", MaxInflight: 10, Username: "u"}, "--username"},
		{Config{MQTTAddr: ":1883", MaxInflight: 10, TLSCertFile: "c.pem"}, "--tls-cert-file"},
		{Config{MQTTAddr: ":1883", MaxInflight: 10, PasswordFile: "/does/not/exist"}, "--password-file"},
		{Config{MQTTAddr: ":1883", MaxInflight: 10, Username: "u", PasswordFile: "/dev/null"}, "--password-file"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want error naming %s", tc.cfg, err, tc.want)
		}
	}
}

// runBroker runs a broker on addr until the returned stop is called.
func runBroker(t *testing.T, cfg Config) (b *Broker, reg *prometheus.Registry, stop func()) {
	t.Helper()
	cfg.MaxInflight = 65535
	reg = prometheus.NewRegistry()
	b, err := New(cfg, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	eventually(t, "broker ready", func() bool { return b.Ready(ctx) == nil })
	return b, reg, stop
}

// With --data-dir, messages queued for an offline persistent session survive a broker restart
// and are delivered, once each, when the session's client comes back.
func TestDataDirKeepsQueuedMessagesAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	b, _, stop := runBroker(t, Config{MQTTAddr: "127.0.0.1:0", DataDir: dir})
	addr := b.Addr().String()
	url := "tcp://" + addr
	var r recorder
	sub := connect(t, url, "listener", false, "", "", r.handle)
	wait(t, sub.Subscribe("$share/g/charger/+/connector/+/session/+", 1, nil))
	sub.Disconnect(50)
	pub := connect(t, url, "pub", true, "", "", nil)
	const n = 300
	for i := range n {
		wait(t, pub.Publish(fmt.Sprintf("charger/1/connector/1/session/%d", i), 1, false, fmt.Sprint(i)))
	}
	pub.Disconnect(50)
	eventually(t, "the session to hold every message", func() bool { return b.inflight() == n })
	stop()

	b2, _, _ := runBroker(t, Config{MQTTAddr: addr, DataDir: dir})
	if got := b2.inflight(); got != n {
		t.Fatalf("restarted broker holds %d messages, want %d", got, n)
	}
	connect(t, url, "listener", false, "", "", r.handle)
	eventually(t, "queued messages after the restart", func() bool { return r.count() >= n })
	eventually(t, "broker drained", b2.Drained)
	for i := range n {
		if c := r.seen[fmt.Sprint(i)]; c != 1 {
			t.Errorf("message %d delivered %d times", i, c)
		}
	}
}

// A second broker on the same --data-dir fails at start instead of sharing the file.
func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	runBroker(t, Config{MQTTAddr: "127.0.0.1:0", DataDir: dir})
	if _, err := New(Config{MQTTAddr: "127.0.0.1:0", MaxInflight: 10, DataDir: dir}, slog.New(slog.DiscardHandler), nil); err == nil {
		t.Fatal("second broker opened a locked data dir")
	}
}

// Sessions taken over again and again (a listener restarted under its client ID before the
// broker noticed the old connection died) while messages keep coming: every message reaches
// the session, and the in-flight gauge never goes negative and ends at 0.
func TestTakeoverLosesNothingAndGaugeStaysExact(t *testing.T) {
	for _, dataDir := range []string{"", t.TempDir()} {
		b, reg, _ := runBroker(t, Config{MQTTAddr: "127.0.0.1:0", DataDir: dataDir})
		url := "tcp://" + b.Addr().String()
		silent := func() paho.Client { // receives, never acknowledges
			o := paho.NewClientOptions().AddBroker(url).SetClientID("listener").SetCleanSession(false).
				SetAutoReconnect(false).SetAutoAckDisabled(true)
			c := paho.NewClient(o)
			wait(t, c.Connect())
			return c
		}
		first := silent()
		wait(t, first.Subscribe("$share/g/charger/+/connector/+/session/+", 1, nil))
		pub := connect(t, url, "pub", true, "", "", nil)
		const n = 20_000
		published := make(chan struct{})
		go func() {
			defer close(published)
			for i := range n {
				tok := pub.Publish(fmt.Sprintf("charger/1/connector/1/session/%d", i), 1, false, fmt.Sprint(i))
				if i%100 == 99 {
					tok.Wait()
				}
			}
		}()
		low := 0.0
		for range 8 { // each connect takes the session over from the previous one
			time.Sleep(20 * time.Millisecond)
			silent()
			low = min(low, inflightGauge(t, reg))
		}
		<-published
		var r recorder
		connect(t, url, "listener", false, "", "", r.handle)
		eventually(t, "every message", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.seen) == n })
		eventually(t, "broker drained", b.Drained)
		if low < 0 || inflightGauge(t, reg) != 0 {
			t.Errorf("inflight gauge: lowest %v, at the end %v", low, inflightGauge(t, reg))
		}
	}
}

// inflightGauge reads chargesim_broker_inflight_messages.
func inflightGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "chargesim_broker_inflight_messages" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no chargesim_broker_inflight_messages")
	return 0
}
