// Package mqttclient builds paho MQTT client options shared by the publisher and the
// listener: broker URL, credentials, TLS, client ID and reconnect policy.
package mqttclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/chargesim/chargesim/components/cli"
)

// Config is the broker connection of a component.
type Config struct {
	URL                string
	Username           string
	Password           string
	PasswordFile       string
	CAFile             string
	CertFile           string
	KeyFile            string
	InsecureSkipVerify bool
	ClientID           string
	TopicPrefix        string
}

// Register adds the MQTT flags.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "mqtt-url", "tcp://127.0.0.1:1883", "broker URL (tcp, mqtt, ssl, tls, mqtts, ws, wss)")
	fs.StringVar(&c.Username, "mqtt-username", "", "broker username")
	fs.StringVar(&c.Password, "mqtt-password", "", "broker password (prefer the environment or --mqtt-password-file)")
	fs.StringVar(&c.PasswordFile, "mqtt-password-file", "", "file holding the broker password")
	fs.StringVar(&c.CAFile, "mqtt-ca-file", "", "PEM CA bundle that signs the broker certificate (enables TLS)")
	fs.StringVar(&c.CertFile, "mqtt-cert-file", "", "client certificate (PEM) for mutual TLS")
	fs.StringVar(&c.KeyFile, "mqtt-key-file", "", "client key (PEM) for mutual TLS")
	fs.BoolVar(&c.InsecureSkipVerify, "mqtt-insecure-skip-verify", false, "do not verify the broker certificate (testing only)")
	fs.StringVar(&c.ClientID, "mqtt-client-id", "", "MQTT client ID (default chargesim-<component>-<hostname>); stable per replica")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", "", "prefix before charger/<id>/connector/<id>/session/<id>")
}

// Validate checks the settings and resolves the password file.
func (c *Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return cli.Invalid("mqtt-url", c.URL, "want scheme://host:port")
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return cli.Invalid("mqtt-url", c.URL, "scheme must be tcp, mqtt, ssl, tls, mqtts, ws or wss")
	}
	if u.Port() == "" && u.Scheme != "ws" && u.Scheme != "wss" {
		return cli.Invalid("mqtt-url", c.URL, "missing port")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return cli.Invalid("mqtt-cert-file", c.CertFile, "--mqtt-cert-file and --mqtt-key-file go together")
	}
	if c.Password, err = cli.ReadSecret("mqtt-password", c.Password, c.PasswordFile); err != nil {
		return err
	}
	if c.Password != "" && c.Username == "" {
		return cli.Invalid("mqtt-username", "", "a password needs a username")
	}
	if len(c.ClientID) > 128 {
		return cli.Invalid("mqtt-client-id", c.ClientID, "at most 128 characters")
	}
	_, err = c.TLSConfig()
	return err
}

// TLSConfig returns the TLS settings, or nil when TLS is not configured.
func (c *Config) TLSConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && !c.InsecureSkipVerify {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in for tests
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, cli.Invalid("mqtt-ca-file", c.CAFile, err.Error())
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, cli.Invalid("mqtt-ca-file", c.CAFile, "no PEM certificate found")
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, cli.Invalid("mqtt-cert-file", c.CertFile, err.Error())
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// brokerURL maps the configured URL to one paho dials: with TLS configured, tcp/mqtt become ssl.
func (c *Config) brokerURL(tlsOn bool) string {
	u, _ := url.Parse(c.URL)
	switch u.Scheme {
	case "mqtt":
		u.Scheme = "tcp"
	case "tls", "mqtts":
		u.Scheme = "ssl"
	}
	if tlsOn && u.Scheme == "tcp" {
		u.Scheme = "ssl"
	}
	return u.String()
}

// Options returns paho options for a long-lived connection: auto-reconnect with capped
// backoff, and the client ID defaulting to chargesim-<component>-<hostname>. Call Validate first.
func (c *Config) Options(component string) (*mqtt.ClientOptions, error) {
	tlsCfg, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	id := c.ClientID
	if id == "" {
		host, _ := os.Hostname()
		id = "chargesim-" + component + "-" + host
	}
	o := mqtt.NewClientOptions().
		AddBroker(c.brokerURL(tlsCfg != nil)).
		SetClientID(id).
		SetUsername(c.Username).
		SetPassword(c.Password).
		SetKeepAlive(30 * time.Second).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(30 * time.Second)
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	return o, nil
}

// ErrNotConnected is reported by readiness checks while the broker is unreachable.
var ErrNotConnected = errors.New("not connected to the MQTT broker")

// Ready reports whether client currently holds a connection.
func Ready(client mqtt.Client) error {
	if client == nil || !client.IsConnectionOpen() {
		return ErrNotConnected
	}
	return nil
}

// Wait waits for a token with a deadline and returns its error. Used only at start-up and
// for subscriptions: the publish path never waits per message.
func Wait(t mqtt.Token, d time.Duration, what string) error {
	if !t.WaitTimeout(d) {
		return fmt.Errorf("%s: timed out after %s", what, d)
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
