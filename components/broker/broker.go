// Package broker embeds a mochi-mqtt broker: `chargesim broker` gives clusters and laptops
// without an MQTT broker a small one from the same image. It speaks MQTT 3.1.1 and 5, supports
// shared subscriptions ($share/<group>/...) and keeps persistent sessions in memory, or with
// --data-dir also in a bbolt file, so a restarted broker still delivers what it acknowledged.
// A publisher's QoS 1/2 message is acknowledged only once every subscriber's session holds it
// (see routeHook).
package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/cli"
)

// Config is the broker's settings.
type Config struct {
	MQTTAddr     string
	Username     string
	Password     string
	PasswordFile string
	TLSCertFile  string
	TLSKeyFile   string
	// MaxInflight bounds QoS 1/2 messages held per client (connected or offline); beyond it
	// mochi drops and chargesim_broker_messages_dropped_total counts them.
	MaxInflight int
	// DataDir, when set, keeps sessions, subscriptions and queued messages in a bbolt file
	// there, so a restarted broker delivers what it had acknowledged before it stopped.
	DataDir string
	// DataFsync syncs every change of the state file to disk before the broker acknowledges
	// it: needed to survive a machine crash; a process crash or restart loses nothing without.
	DataFsync bool
}

// Register adds the broker flags.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.MQTTAddr, "mqtt-addr", ":1883", "MQTT TCP listen address")
	fs.StringVar(&c.Username, "username", "", "when set, clients must authenticate with this username")
	fs.StringVar(&c.Password, "password", "", "password for --username (prefer the environment or --password-file)")
	fs.StringVar(&c.PasswordFile, "password-file", "", "file holding the password, or several accepted ones one per line (during a rotation); re-read when it changes, so a mounted Secret can be rotated without restarting the broker")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "serve MQTT over TLS with this certificate (PEM)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "key (PEM) for --tls-cert-file")
	fs.IntVar(&c.MaxInflight, "max-inflight", math.MaxUint16, "QoS 1/2 messages held per client, 1-65535")
	fs.StringVar(&c.DataDir, "data-dir", "", "directory of the broker's persistent state (sessions, subscriptions, queued messages); empty: memory only, lost on restart")
	fs.BoolVar(&c.DataFsync, "data-fsync", false, "with --data-dir: fsync each change before acknowledging it (survives machine crashes, not only broker restarts; slower)")
}

// Validate checks the settings and resolves the password file.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.MQTTAddr); err != nil {
		return cli.Invalid("mqtt-addr", c.MQTTAddr, "want host:port")
	}
	var err error
	if c.Password, err = cli.ReadSecret("password", c.Password, c.PasswordFile); err != nil {
		return err
	}
	if c.PasswordFile != "" && len(passwordLines(c.Password)) == 0 {
		return cli.Invalid("password-file", c.PasswordFile, "holds no password")
	}
	if (c.Username == "") != (c.Password == "") {
		return cli.Invalid("username", c.Username, "--username and --password go together")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return cli.Invalid("tls-cert-file", c.TLSCertFile, "--tls-cert-file and --tls-key-file go together")
	}
	if c.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return cli.Invalid("tls-cert-file", c.TLSCertFile, err.Error())
		}
	}
	if c.DataFsync && c.DataDir == "" {
		return cli.Invalid("data-fsync", c.DataFsync, "needs --data-dir")
	}
	if c.MaxInflight < 1 || c.MaxInflight > math.MaxUint16 {
		return cli.Invalid("max-inflight", c.MaxInflight, "must be 1-65535")
	}
	return nil
}

// Broker is a running embedded broker.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	server *mqtt.Server
	ln     net.Listener
	ready  atomic.Bool
	route  *routeHook
}

// New builds the broker and binds its listener, so the address is known before Run.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Broker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = uint16(cfg.MaxInflight)
	caps.MaximumClientWritesPending = 64 * 1024
	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 log.With("subsystem", "mochi"),
		InlineClient:           true, // the route hook publishes through it
		SysTopicResendInterval: 10,
	})
	if err := server.AddHook(newAuthHook(cfg, log), nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	route := newRouteHook(server)
	if err := server.AddHook(route, nil); err != nil {
		return nil, fmt.Errorf("add route hook: %w", err)
	}
	if cfg.DataDir != "" {
		opts, err := persistConfig(cfg.DataDir, cfg.DataFsync)
		if err != nil {
			return nil, err
		}
		if err := server.AddHook(newPersistHook(), opts); err != nil {
			return nil, fmt.Errorf("open broker state %s: %w", opts.Path, err)
		}
	}
	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load broker certificate: %w", err)
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", cfg.MQTTAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.MQTTAddr, err)
	}
	if err := server.AddListener(listeners.NewNet("mqtt", netListener(ln, tlsCfg))); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("add listener: %w", err)
	}
	b := &Broker{cfg: cfg, log: log, server: server, ln: ln, route: route}
	if reg != nil {
		if err := reg.Register(&collector{info: server.Info, inflight: b.inflight, injected: &route.injected}); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("register broker metrics: %w", err)
		}
	}
	return b, nil
}

func netListener(ln net.Listener, tlsCfg *tls.Config) net.Listener {
	if tlsCfg == nil {
		return ln
	}
	return tls.NewListener(ln, tlsCfg)
}

// Addr is the bound MQTT address.
func (b *Broker) Addr() net.Addr { return b.ln.Addr() }

// Run serves until ctx is done, then closes every client connection.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("serve mqtt: %w", err)
	}
	b.ready.Store(true)
	b.log.Info("mqtt broker listening", "addr", b.ln.Addr().String(), "tls", b.cfg.TLSCertFile != "", "auth", b.cfg.Username != "",
		"data_dir", b.cfg.DataDir, "queued", b.inflight())
	<-ctx.Done()
	b.ready.Store(false)
	// Acknowledge nothing more before the state file closes.
	b.route.close()
	if err := b.server.Close(); err != nil {
		return fmt.Errorf("close mqtt broker: %w", err)
	}
	return nil
}

// Ready reports whether the broker serves.
func (b *Broker) Ready(context.Context) error {
	if !b.ready.Load() {
		return errors.New("broker not serving")
	}
	return nil
}

// Drained reports whether no QoS 1/2 message is waiting for a subscriber's acknowledgement.
// `chargesim run` waits for it before stopping the listener, because its broker keeps queued
// messages only in memory.
func (b *Broker) Drained() bool { return b.inflight() == 0 }

// inflight counts the QoS 1/2 messages the sessions hold, connected or not. It is counted,
// not tracked: mochi's own counter subtracts a session's messages again when another
// connection takes the session over, and goes negative.
func (b *Broker) inflight() int {
	n := 0
	for _, cl := range b.server.Clients.GetAll() {
		n += cl.State.Inflight.Len()
	}
	return n
}

// authHook admits everyone when no username is configured, else only that user with one of
// the accepted passwords. With --password-file the accepted passwords are the file's lines,
// re-read at most once per reloadEvery when a client connects: a Secret volume is updated in
// place by the kubelet, so the operator rotates the password without restarting the broker
// (which would lose the queues of an emptyDir --data-dir). Connected clients are not
// disconnected by a rotation; only new connections are checked.
//
// Username and passwords are compared as SHA-256 digests with subtle.ConstantTimeCompare, and
// every accepted password is compared, so neither the timing of a refusal nor its length
// tells a client how close it came.
type authHook struct {
	mqtt.HookBase
	log  *slog.Logger
	user [32]byte
	open bool // no username: anonymous clients welcome (a laptop's `chargesim run`)
	file string

	mu       sync.Mutex
	accepted [][32]byte
	loaded   time.Time
}

// reloadEvery bounds how often the password file is read (at most once per connect burst).
const reloadEvery = time.Second

func newAuthHook(cfg Config, log *slog.Logger) *authHook {
	h := &authHook{log: log, user: sha256.Sum256([]byte(cfg.Username)), open: cfg.Username == "", file: cfg.PasswordFile}
	h.accepted = digests(passwordLines(cfg.Password))
	h.loaded = time.Now()
	return h
}

// passwordLines are the non-empty lines of a password file (or flag), trimmed.
func passwordLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func digests(pw []string) [][32]byte {
	out := make([][32]byte, 0, len(pw))
	for _, p := range pw {
		out = append(out, sha256.Sum256([]byte(p)))
	}
	return out
}

func (h *authHook) ID() string { return "chargesim-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// passwords returns the accepted password digests, re-reading the file when it is due. A file
// that cannot be read or is empty (mid-update) keeps the last good set: a broken mount must not
// lock everyone out, nor let anyone in.
func (h *authHook) passwords() [][32]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.file == "" || time.Since(h.loaded) < reloadEvery {
		return h.accepted
	}
	h.loaded = time.Now()
	b, err := os.ReadFile(h.file)
	if err != nil {
		h.log.Warn("cannot re-read the password file, keeping the passwords read before", "file", h.file, "error", err.Error())
		return h.accepted
	}
	next := digests(passwordLines(string(b)))
	if len(next) == 0 {
		h.log.Warn("password file holds no password, keeping the passwords read before", "file", h.file)
		return h.accepted
	}
	if !sameDigests(next, h.accepted) {
		// Never the passwords themselves, only how many are accepted now.
		h.log.Info("accepted passwords reloaded", "file", h.file, "count", len(next))
	}
	h.accepted = next
	return h.accepted
}

func sameDigests(a, b [][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (h *authHook) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	if h.open {
		return true
	}
	u := sha256.Sum256(pk.Connect.Username)
	p := sha256.Sum256(pk.Connect.Password)
	ok := subtle.ConstantTimeCompare(u[:], h.user[:])
	match := 0
	for _, a := range h.passwords() {
		match |= subtle.ConstantTimeCompare(p[:], a[:])
	}
	return ok&match == 1
}

func (h *authHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// collector exposes mochi's counters as Prometheus metrics at scrape time.
type collector struct {
	info     *system.Info
	inflight func() int
	injected *atomic.Int64
}

var (
	descClients  = prometheus.NewDesc("chargesim_broker_clients_connected", "MQTT clients currently connected.", nil, nil)
	descReceived = prometheus.NewDesc("chargesim_broker_messages_received_total", "PUBLISH packets received.", nil, nil)
	descSent     = prometheus.NewDesc("chargesim_broker_messages_sent_total", "PUBLISH packets sent.", nil, nil)
	descDropped  = prometheus.NewDesc("chargesim_broker_messages_dropped_total", "Messages dropped: slow subscribers or per-client in-flight limit reached.", nil, nil)
	descInflight = prometheus.NewDesc("chargesim_broker_inflight_messages", "QoS 1/2 messages held for clients.", nil, nil)
	descSubs     = prometheus.NewDesc("chargesim_broker_subscriptions", "Active subscriptions.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClients, descReceived, descSent, descDropped, descInflight, descSubs} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	i := c.info.Clone()
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(i.ClientsConnected))
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(i.MessagesReceived-c.injected.Load()))
	ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(i.MessagesSent))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(i.MessagesDropped+i.InflightDropped))
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(c.inflight()))
	ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, float64(i.Subscriptions))
}

// Command is `chargesim broker`.
func Command(ctx context.Context, args []string) error {
	var cfg Config
	common, log, err := cli.Setup("broker", "Run an embedded MQTT broker (mochi-mqtt) for clusters and laptops without one.", args, ":9090", &cfg)
	if err != nil {
		return err
	}
	reg := cli.NewRegistry()
	b, err := New(cfg, log, reg)
	if err != nil {
		return err
	}
	return cli.RunWithOps(ctx, log, common, reg, b)
}
