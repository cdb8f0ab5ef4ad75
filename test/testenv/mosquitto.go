package testenv

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Mosquitto is a mosquitto broker started for one test.
type Mosquitto struct {
	// URL is what paho and --mqtt-url take: tcp://127.0.0.1:<port>, ssl://127.0.0.1:<port> with TLS.
	URL  string
	Addr string // 127.0.0.1:<port>
	Port int

	// Username and Password are set when the broker requires them (anonymous clients refused).
	Username, Password string

	// With TLS: the CA that signed the broker's certificate (CAFile = --mqtt-ca-file) and a
	// client certificate signed by it (--mqtt-cert-file/--mqtt-key-file), required by the broker
	// when MosquittoOptions.RequireClientCert is set.
	CA             *CA
	CAFile         string
	ClientCertFile string
	ClientKeyFile  string

	ConfigPath string
	DataDir    string // persistence_location: kept across Stop/Start
	LogPath    string

	tb testing.TB
	p  *process
}

// MosquittoOptions configures StartMosquittoWith. The zero value is StartMosquitto.
type MosquittoOptions struct {
	// Username and Password: when Username is set, clients must log in with them
	// (a password file made by mosquitto_passwd; anonymous access is refused).
	Username, Password string
	// TLS serves MQTT over TLS only, with a certificate from a fresh CA.
	TLS bool
	// RequireClientCert makes the broker demand a client certificate signed by the CA
	// (mutual TLS); implies TLS.
	RequireClientCert bool
	// ExtraConfig lines are appended to mosquitto.conf.
	ExtraConfig []string
}

// StartMosquitto starts an anonymous plain-TCP broker on a free loopback port.
//
// Its configuration fits the product: persistence on (a Stop/Start keeps persistent sessions
// and their queued messages), max_queued_messages 0 and max_inflight_messages 0 (unlimited:
// mosquitto otherwise drops QoS 1 messages for offline clients past 1000, silently).
func StartMosquitto(tb testing.TB) *Mosquitto {
	tb.Helper()
	return StartMosquittoWith(tb, MosquittoOptions{})
}

// StartMosquittoAuth starts a broker that requires username and password.
func StartMosquittoAuth(tb testing.TB, username, password string) *Mosquitto {
	tb.Helper()
	return StartMosquittoWith(tb, MosquittoOptions{Username: username, Password: password})
}

// StartMosquittoTLS starts a broker serving MQTT over TLS (URL ssl://127.0.0.1:<port>) and
// returns it with the path of the PEM CA certificate that verifies it.
func StartMosquittoTLS(tb testing.TB) (*Mosquitto, string) {
	tb.Helper()
	m := StartMosquittoWith(tb, MosquittoOptions{TLS: true})
	return m, m.CAFile
}

// StartMosquittoWith starts a broker configured by opts.
func StartMosquittoWith(tb testing.TB, opts MosquittoOptions) *Mosquitto {
	tb.Helper()
	bin := Bin(tb, "mosquitto")
	dir := tb.TempDir()
	m := &Mosquitto{
		tb:         tb,
		Username:   opts.Username,
		Password:   opts.Password,
		ConfigPath: filepath.Join(dir, "mosquitto.conf"),
		DataDir:    filepath.Join(dir, "data"),
		LogPath:    filepath.Join(dir, "mosquitto.log"),
	}
	if err := os.Mkdir(m.DataDir, 0o755); err != nil {
		tb.Fatalf("testenv: %v", err)
	}

	var common []string
	if opts.Username != "" {
		pwFile := filepath.Join(dir, "passwd")
		out, err := exec.Command(Bin(tb, "mosquitto_passwd"), "-b", "-c", pwFile, opts.Username, opts.Password).CombinedOutput()
		if err != nil {
			tb.Fatalf("testenv: mosquitto_passwd: %v: %s", err, out)
		}
		common = append(common, "allow_anonymous false", "password_file "+pwFile)
	} else {
		common = append(common, "allow_anonymous true")
	}
	var listenerTLS []string
	scheme := "tcp"
	if opts.TLS || opts.RequireClientCert {
		scheme = "ssl"
		m.CA = NewCA(tb, filepath.Join(dir))
		m.CAFile = m.CA.CertFile
		certFile, keyFile := m.CA.Issue(tb, "mosquitto", nil, false)
		m.ClientCertFile, m.ClientKeyFile = m.CA.Issue(tb, "client", nil, true)
		listenerTLS = append(listenerTLS,
			"cafile "+m.CAFile,
			"certfile "+certFile,
			"keyfile "+keyFile,
			fmt.Sprintf("require_certificate %t", opts.RequireClientCert),
		)
	}

	newProc := func(port int) *process {
		lines := []string{
			"# written by chargesim test/testenv",
			"per_listener_settings false",
			fmt.Sprintf("listener %d 127.0.0.1", port),
		}
		lines = append(lines, listenerTLS...)
		lines = append(lines, common...)
		lines = append(lines,
			"persistence true",
			"persistence_location "+m.DataDir+"/",
			"persistence_file mosquitto.db",
			// Unlimited: with the default 1000, QoS 1 messages for an offline persistent
			// session beyond that are dropped without a word to the publisher.
			"max_queued_messages 0",
			"max_queued_bytes 0",
			"max_inflight_messages 0",
			"set_tcp_nodelay true",
			"log_dest stderr",
			"log_type error",
			"log_type warning",
			"log_type notice",
			"log_type information",
			"connection_messages true",
			"log_timestamp true",
			"log_timestamp_format %Y-%m-%dT%H:%M:%S",
		)
		if os.Geteuid() == 0 {
			// As root mosquitto switches to user mosquitto, which cannot write our temp dirs.
			lines = append(lines, "user root")
		}
		lines = append(lines, opts.ExtraConfig...)
		writeFile(tb, m.ConfigPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
		return newProcess("mosquitto", bin, []string{"-c", m.ConfigPath}, m.LogPath)
	}
	ready := func(p *process, port int) error {
		return waitTCP(hostPort(port), 10*time.Second, p.exited())
	}
	p, port := launch(tb, newProc, ready)
	m.p, m.Port, m.Addr = p, port, hostPort(port)
	m.URL = fmt.Sprintf("%s://%s", scheme, m.Addr)
	return m
}

// Stop shuts the broker down gracefully (SIGTERM): mosquitto writes its persistence file, so a
// later Start restores persistent sessions, their subscriptions and queued messages.
func (m *Mosquitto) Stop() {
	m.tb.Helper()
	if err := m.p.stop(syscall.SIGTERM, 10*time.Second, true); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// Kill stops the broker with SIGKILL, like a crash: whatever changed since it started (or
// since the last autosave, every 30 min by default) is lost.
func (m *Mosquitto) Kill() {
	m.tb.Helper()
	if err := m.p.stop(syscall.SIGKILL, 10*time.Second, true); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
}

// Start restarts a stopped broker on the same port with the same persistence directory and
// waits until it accepts connections.
func (m *Mosquitto) Start() {
	m.tb.Helper()
	if err := m.p.start(); err != nil {
		m.tb.Fatalf("testenv: %v", err)
	}
	if err := waitTCP(m.Addr, 10*time.Second, m.p.exited()); err != nil {
		m.tb.Fatalf("testenv: restart mosquitto: %v (%s)\nlog %s:\n%s", err, m.p.exitStatus(), m.LogPath, m.p.logTail(maxLogDump))
	}
}

// Running reports whether the broker process is up.
func (m *Mosquitto) Running() bool { return m.p.running() }

// TLSConfig returns a client TLS configuration trusting the broker's CA and presenting the
// client certificate (nil for a plain broker).
func (m *Mosquitto) TLSConfig() *tls.Config {
	m.tb.Helper()
	if m.CA == nil {
		return nil
	}
	return m.CA.ClientTLSConfig(m.tb, m.ClientCertFile, m.ClientKeyFile)
}

// Pid is the mosquitto process ID (for its CPU time in benchmarks), 0 when it is not running.
func (m *Mosquitto) Pid() int {
	if !m.p.running() {
		return 0
	}
	return m.p.cmd.Process.Pid
}
