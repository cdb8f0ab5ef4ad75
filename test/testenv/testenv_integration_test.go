//go:build integration

package testenv_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/test/testenv"
)

// recorder collects the payloads a client receives.
type recorder struct {
	mu   sync.Mutex
	got  map[string]int
	cond chan struct{}
}

func newRecorder() *recorder { return &recorder{got: map[string]int{}, cond: make(chan struct{}, 1)} }

func (r *recorder) handle(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	r.got[string(m.Payload())]++
	r.mu.Unlock()
	select {
	case r.cond <- struct{}{}:
	default:
	}
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// waitFor waits until n distinct payloads arrived.
func (r *recorder) waitFor(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for r.distinct() < n {
		select {
		case <-r.cond:
		case <-deadline:
			t.Fatalf("received %d distinct messages, want %d", r.distinct(), n)
		}
	}
}

func connect(t *testing.T, url, clientID string, clean bool, tlsCfg *tls.Config, user, pass string, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(clientID).
		SetCleanSession(clean).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetOrderMatters(false)
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	if onMsg != nil {
		// Messages of a resumed persistent session arrive before any Subscribe call.
		o.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", clientID, url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func wait(t *testing.T, what string, tok mqtt.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v (timed out: %t)", what, tok.Error(), tok.Error() == nil)
	}
}

func roundTrip(t *testing.T, url string, tlsCfg *tls.Config, user, pass string) {
	t.Helper()
	rec := newRecorder()
	sub := connect(t, url, "sub", true, tlsCfg, user, pass, rec.handle)
	wait(t, "subscribe", sub.Subscribe("t/#", 1, rec.handle))
	pub := connect(t, url, "pub", true, tlsCfg, user, pass, nil)
	wait(t, "publish", pub.Publish("t/1", 1, false, "hello"))
	rec.waitFor(t, 1, 10*time.Second)
}

func TestMosquittoRoundTrip(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t)
	if !strings.HasPrefix(m.URL, "tcp://127.0.0.1:") {
		t.Fatalf("URL = %q", m.URL)
	}
	roundTrip(t, m.URL, nil, "", "")
}

// A persistent session (clean session false) keeps QoS 1 messages published while its client
// is offline, across a broker restart, beyond mosquitto's default queue limit of 1000.
func TestMosquittoPersistentSessionSurvivesRestart(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t)

	const subID = "listener-0"
	first := newRecorder()
	sub := connect(t, m.URL, subID, false, nil, "", "", first.handle)
	wait(t, "subscribe", sub.Subscribe("charger/#", 1, first.handle))
	sub.Disconnect(100)

	const n = 1500 // > default max_queued_messages (1000)
	pub := connect(t, m.URL, "publisher", true, nil, "", "", nil)
	toks := make([]mqtt.Token, 0, n)
	for i := range n {
		toks = append(toks, pub.Publish(fmt.Sprintf("charger/%d", i%10), 1, false, fmt.Sprintf("msg-%d", i)))
	}
	for i, tok := range toks {
		wait(t, fmt.Sprintf("publish %d", i), tok)
	}
	pub.Disconnect(100)

	m.Stop()
	if m.Running() {
		t.Fatal("Running after Stop")
	}
	m.Start()

	second := newRecorder()
	connect(t, m.URL, subID, false, nil, "", "", second.handle)
	second.waitFor(t, n, 30*time.Second)
	if got := first.distinct(); got != 0 {
		t.Errorf("offline subscriber got %d messages before reconnect", got)
	}

	// The session, subscription included, survived: new publishes still arrive.
	pub2 := connect(t, m.URL, "publisher-2", true, nil, "", "", nil)
	wait(t, "publish after restart", pub2.Publish("charger/x", 1, false, "after-restart"))
	second.waitFor(t, n+1, 10*time.Second)
}

func TestMosquittoAuth(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquittoAuth(t, "chargesim", "s3cret word")
	roundTrip(t, m.URL, nil, "chargesim", "s3cret word")

	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("anon").SetAutoReconnect(false))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("anonymous connect succeeded on a broker requiring a password")
	}
}

func TestMosquittoTLS(t *testing.T) {
	t.Parallel()
	m, caFile := testenv.StartMosquittoTLS(t)
	if !strings.HasPrefix(m.URL, "ssl://127.0.0.1:") || caFile == "" {
		t.Fatalf("URL = %q, CA = %q", m.URL, caFile)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Fatalf("CA file: %v", err)
	}
	roundTrip(t, m.URL, m.CA.ClientTLSConfig(t, "", ""), "", "")

	// A client that does not trust the CA is refused.
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("untrusting").
		SetAutoReconnect(false).SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("TLS connect without the CA succeeded")
	}
}

func TestMosquittoMutualTLS(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquittoWith(t, testenv.MosquittoOptions{RequireClientCert: true, Username: "u", Password: "p"})
	roundTrip(t, m.URL, m.TLSConfig(), "u", "p")

	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("nocert").SetUsername("u").SetPassword("p").
		SetAutoReconnect(false).SetTLSConfig(m.CA.ClientTLSConfig(t, "", "")))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("TLS connect without a client certificate succeeded")
	}
}

type doc struct {
	ID    string `bson:"_id"`
	Value int    `bson:"value"`
}

func TestFerretDBSurvivesRestart(t *testing.T) {
	t.Parallel()
	f := testenv.StartFerretDB(t)
	if f.URI != fmt.Sprintf("mongodb://127.0.0.1:%d/", f.Port) {
		t.Fatalf("URI = %q", f.URI)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	coll := f.Client().Database("chargesim").Collection("sessions")
	if _, err := coll.InsertMany(ctx, []any{doc{"a", 1}, doc{"b", 2}}); err != nil {
		t.Fatalf("insert: %v", err)
	}

	f.Stop()
	if err := coll.Database().Client().Ping(ctx, nil); err == nil {
		t.Fatal("ping succeeded while FerretDB is stopped")
	}
	f.Start()

	var got doc
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "b"}}).Decode(&got); err != nil {
		t.Fatalf("find after restart: %v", err)
	}
	if got.Value != 2 {
		t.Fatalf("got %+v", got)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{}); err != nil || n != 2 {
		t.Fatalf("count = %d, %v", n, err)
	}
}

// A second instance on the same data directory sees the first one's data.
func TestFerretDBAt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := testenv.StartFerretDBAt(t, dir)
	if _, err := a.Client().Database("db").Collection("c").InsertOne(ctx, doc{"x", 7}); err != nil {
		t.Fatalf("insert: %v", err)
	}
	a.Stop()
	b := testenv.StartFerretDBAt(t, dir)
	var got doc
	if err := b.Client().Database("db").Collection("c").FindOne(ctx, bson.D{}).Decode(&got); err != nil || got.Value != 7 {
		t.Fatalf("find = %+v, %v", got, err)
	}
}

func TestFerretDBTLS(t *testing.T) {
	t.Parallel()
	f := testenv.StartFerretDBWith(t, testenv.FerretDBOptions{TLS: true})
	if f.CAFile == "" || !strings.Contains(f.URI, "tls=true") {
		t.Fatalf("URI %q, CA %q", f.URI, f.CAFile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.Client().Database("db").Collection("c").InsertOne(ctx, doc{"y", 1}); err != nil {
		t.Fatalf("insert over TLS: %v", err)
	}
}

func TestPrometheusScrapes(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# TYPE chargesim_test_total counter\nchargesim_test_total 42\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	p := testenv.StartPrometheus(t, []string{l.Addr().String()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := p.WaitQuery(ctx, `up{job="chargesim"}`, func(s []testenv.Sample) bool { return len(s) == 1 && s[0].Value == 1 })
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Metric["instance"] != l.Addr().String() {
		t.Errorf("instance = %q", res[0].Metric["instance"])
	}
	res, err = p.WaitQuery(ctx, `chargesim_test_total`, func(s []testenv.Sample) bool { return len(s) == 1 })
	if err != nil || res[0].Value != 42 {
		t.Fatalf("chargesim_test_total = %v, %v", res, err)
	}
	if res, err := p.Query(ctx, `scalar(chargesim_test_total) * 2`); err != nil || len(res) != 1 || res[0].Value != 84 {
		t.Fatalf("scalar query = %v, %v", res, err)
	}
	if _, err := p.Query(ctx, `this is not promql`); err == nil {
		t.Fatal("bad query did not fail")
	}
}

// Processes are gone after Stop: nothing keeps listening on the port.
func TestStopReleasesPort(t *testing.T) {
	t.Parallel()
	m := testenv.StartMosquitto(t)
	m.Stop()
	if err := testenv.WaitTCP(m.Addr, 200*time.Millisecond); err == nil {
		t.Fatal("port still accepting after Stop")
	}
}

func TestBinAndFreePort(t *testing.T) {
	for _, name := range []string{"ferretdb", "mosquitto", "mosquitto_passwd", "prometheus", "promtool"} {
		if p := testenv.Bin(t, name); !strings.HasPrefix(p, "/") {
			t.Errorf("Bin(%s) = %q, want an absolute path", name, p)
		}
	}
	if p := testenv.FreePort(t); p <= 0 || p > 65535 {
		t.Errorf("FreePort = %d", p)
	}
}

func BenchmarkStartMosquitto(b *testing.B) {
	for b.Loop() {
		testenv.StartMosquitto(b).Stop()
	}
}

func BenchmarkStartFerretDB(b *testing.B) {
	for b.Loop() {
		testenv.StartFerretDB(b).Stop()
	}
}
