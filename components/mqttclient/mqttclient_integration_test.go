//go:build integration

package mqttclient

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/chargesim/chargesim/test/testenv"
)

// roundTrip connects a subscriber and a publisher built from cfg and passes one QoS 1 message.
func roundTrip(t *testing.T, cfg Config) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	connect := func(component string) mqtt.Client {
		o, err := cfg.Options(component)
		if err != nil {
			t.Fatal(err)
		}
		o.SetConnectRetry(false).SetAutoReconnect(false)
		c := mqtt.NewClient(o)
		if err := Wait(c.Connect(), 10*time.Second, "connect "+component); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	sub := connect("listener")
	if err := Wait(sub.Subscribe("charger/+/connector/+/session/+", 1, func(_ mqtt.Client, m mqtt.Message) {
		got <- string(m.Payload())
	}), 10*time.Second, "subscribe"); err != nil {
		t.Fatal(err)
	}
	if err := Ready(sub); err != nil {
		t.Fatal(err)
	}
	pub := connect("publisher")
	if err := Wait(pub.Publish("charger/1/connector/1/session/1", 1, false, "hello"), 10*time.Second, "publish"); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "hello" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message not delivered")
	}
}

func TestTLSWithCA(t *testing.T) {
	m, caFile := testenv.StartMosquittoTLS(t)
	// tcp:// plus a CA file is TLS: what a user configuring only --mqtt-ca-file expects.
	roundTrip(t, Config{URL: "tcp://" + m.Addr, CAFile: caFile})
	roundTrip(t, Config{URL: "mqtts://" + m.Addr, CAFile: caFile})
}

func TestTLSRefusesAnUnknownCA(t *testing.T) {
	m, _ := testenv.StartMosquittoTLS(t)
	other, _ := testenv.StartMosquittoTLS(t) // a different CA
	cfg := Config{URL: "ssl://" + m.Addr, CAFile: other.CAFile}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	o, err := cfg.Options("publisher")
	if err != nil {
		t.Fatal(err)
	}
	o.SetConnectRetry(false).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if err := Wait(c.Connect(), 10*time.Second, "connect"); err == nil {
		c.Disconnect(0)
		t.Fatal("connected to a broker whose certificate the CA did not sign")
	}
}

func TestUsernamePassword(t *testing.T) {
	m := testenv.StartMosquittoAuth(t, "sim", "s3cret")
	roundTrip(t, Config{URL: m.URL, Username: "sim", Password: "s3cret"})

	bad := Config{URL: m.URL, Username: "sim", Password: "wrong"}
	o, err := bad.Options("publisher")
	if err != nil {
		t.Fatal(err)
	}
	o.SetConnectRetry(false).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if err := Wait(c.Connect(), 10*time.Second, "connect"); err == nil {
		c.Disconnect(0)
		t.Fatal("connected with a wrong password")
	}
}
