package mqttclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheFlag(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "broker:1883"}, "--mqtt-url"},
		{Config{URL: "http://broker:1883"}, "--mqtt-url"},
		{Config{URL: "tcp://broker"}, "--mqtt-url"},
		{Config{URL: "tcp://broker:1883", CertFile: "c.pem"}, "--mqtt-cert-file"},
		{Config{URL: "tcp://broker:1883", Password: "pw"}, "--mqtt-username"},
		{Config{URL: "tcp://broker:1883", PasswordFile: filepath.Join(dir, "missing")}, "--mqtt-password-file"},
		{Config{URL: "tcp://broker:1883", CAFile: notPEM}, "--mqtt-ca-file"},
		{Config{URL: "tcp://broker:1883", ClientID: strings.Repeat("x", 129)}, "--mqtt-client-id"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	for _, ok := range []string{"tcp://b:1883", "mqtt://b:1883", "ssl://b:8883", "mqtts://b:8883", "ws://b/mqtt", "wss://b:443/mqtt"} {
		c := Config{URL: ok}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

func TestBrokerURLAndTLS(t *testing.T) {
	ca := writeCA(t)
	for _, tc := range []struct {
		cfg     Config
		want    string
		wantTLS bool
	}{
		{Config{URL: "tcp://b:1883"}, "tcp://b:1883", false},
		{Config{URL: "mqtt://b:1883"}, "tcp://b:1883", false},
		{Config{URL: "mqtts://b:8883"}, "ssl://b:8883", false},
		{Config{URL: "tcp://b:8883", CAFile: ca}, "ssl://b:8883", true}, // a CA turns TLS on
		{Config{URL: "ws://b:80/mqtt"}, "ws://b:80/mqtt", false},
	} {
		if err := tc.cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		tlsCfg, err := tc.cfg.TLSConfig()
		if err != nil {
			t.Fatal(err)
		}
		if (tlsCfg != nil) != tc.wantTLS {
			t.Errorf("%s: TLS config %v, want TLS %v", tc.cfg.URL, tlsCfg, tc.wantTLS)
		}
		if tlsCfg != nil && tlsCfg.RootCAs == nil {
			t.Errorf("%s: CA not loaded", tc.cfg.URL)
		}
		o, err := tc.cfg.Options("publisher")
		if err != nil {
			t.Fatal(err)
		}
		if got := o.Servers[0].String(); got != tc.want {
			t.Errorf("%s: broker %s, want %s", tc.cfg.URL, got, tc.want)
		}
		if host, _ := os.Hostname(); o.ClientID != "chargesim-publisher-"+host {
			t.Errorf("default client ID %q", o.ClientID)
		}
	}
}

func TestPasswordFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{URL: "tcp://b:1883", Username: "sim", PasswordFile: f}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	o, err := c.Options("listener")
	if err != nil {
		t.Fatal(err)
	}
	if o.Username != "sim" || o.Password != "s3cret" {
		t.Fatalf("credentials %q/%q", o.Username, o.Password)
	}
}

func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
