package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// FerretDB is a FerretDB (MongoDB wire protocol, SQLite backend) started for one test.
// See DEVELOPERS.md for the queries it answers like MongoDB.
type FerretDB struct {
	// URI is what --mongo-uri takes: mongodb://127.0.0.1:<port>/ (with TLS:
	// mongodb://127.0.0.1:<port>/?tls=true, verified with CAFile).
	URI  string
	Addr string // 127.0.0.1:<port>
	Port int

	// With TLS: the CA that signed FerretDB's certificate (CAFile = --mongo-ca-file).
	CA     *CA
	CAFile string

	DataDir string // SQLite files, one per database: kept across Stop/Start
	LogPath string

	tb  testing.TB
	p   *process
	tls *tls.Config
}

// FerretDBOptions configures StartFerretDBWith. The zero value is StartFerretDB.
type FerretDBOptions struct {
	// DataDir holds the SQLite databases ("" = a new tb.TempDir()). Reusing a directory
	// across instances keeps the data.
	DataDir string
	// TLS serves only TLS, with a certificate from a fresh CA (no client certificates).
	TLS bool
}

// StoreCPUsEnv, when set to a CPU list (taskset --cpu-list syntax, e.g. "1"), runs every
// FerretDB on those CPUs only. Benchmarks use it to give the store the same CPU whatever
// runs next to it (hack/bench.sh pins itself to the other CPUs): on a small machine the
// listener's pipeline and the store otherwise compete for the same cores, and the ratio to the
// raw insert loop (which has no pipeline) measures that competition rather than the listener.
const StoreCPUsEnv = "CHARGESIM_BENCH_STORE_CPUS"

// StartFerretDB starts FerretDB with an empty SQLite data directory on a free loopback port
// and waits until it answers ping.
func StartFerretDB(tb testing.TB) *FerretDB {
	tb.Helper()
	return StartFerretDBWith(tb, FerretDBOptions{})
}

// StartFerretDBAt is StartFerretDB with the SQLite files in dataDir (created if missing).
func StartFerretDBAt(tb testing.TB, dataDir string) *FerretDB {
	tb.Helper()
	return StartFerretDBWith(tb, FerretDBOptions{DataDir: dataDir})
}

// StartFerretDBWith starts FerretDB configured by opts.
func StartFerretDBWith(tb testing.TB, opts FerretDBOptions) *FerretDB {
	tb.Helper()
	bin := Bin(tb, "ferretdb")
	dir := tb.TempDir()
	f := &FerretDB{tb: tb, DataDir: opts.DataDir, LogPath: filepath.Join(dir, "ferretdb.log")}
	if f.DataDir == "" {
		f.DataDir = filepath.Join(dir, "data")
	}
	abs, err := filepath.Abs(f.DataDir)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	f.DataDir = abs
	if err := os.MkdirAll(f.DataDir, 0o755); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	var tlsArgs []string
	if opts.TLS {
		f.CA = NewCA(tb, filepath.Join(dir))
		f.CAFile = f.CA.CertFile
		certFile, keyFile := f.CA.Issue(tb, "ferretdb", nil, false)
		tlsArgs = []string{"--listen-tls-cert-file=" + certFile, "--listen-tls-key-file=" + keyFile}
		f.tls = f.CA.ClientTLSConfig(tb, "", "")
	}

	newProc := func(port int) *process {
		args := []string{
			"--handler=sqlite",
			"--sqlite-url=file:" + f.DataDir + "/", // a directory: the trailing slash is required
			"--state-dir=" + dir,                   // state.json (default: the working directory)
			"--debug-addr=-",                       // default 127.0.0.1:8088 would clash between instances
			"--telemetry=disable",                  // no reports to the vendor
			"--log-level=info",
			"--log-format=text",
		}
		if opts.TLS {
			args = append(args, "--listen-addr=", "--listen-tls="+hostPort(port))
			args = append(args, tlsArgs...)
		} else {
			args = append(args, "--listen-addr="+hostPort(port))
		}
		p := newProcess("ferretdb", bin, args, f.LogPath)
		if cpus := os.Getenv(StoreCPUsEnv); cpus != "" {
			// taskset sets the CPU list and execs FerretDB: the pid stays FerretDB's.
			p.bin, p.args = "taskset", append([]string{"--cpu-list", cpus, bin}, args...)
		}
		p.termGrace = ferretdbTermGrace
		return p
	}
	ready := func(p *process, port int) error { return f.waitReady(p, hostPort(port)) }
	p, port := launch(tb, newProc, ready)
	f.p, f.Port, f.Addr = p, port, hostPort(port)
	f.URI = f.uri(f.Addr)
	return f
}

func (f *FerretDB) uri(addr string) string {
	if f.tls != nil {
		return "mongodb://" + addr + "/?tls=true"
	}
	return "mongodb://" + addr + "/"
}

// waitReady waits for the port, then for a successful ping through the Go driver.
func (f *FerretDB) waitReady(p *process, addr string) error {
	const timeout = 30 * time.Second
	if err := waitTCP(addr, timeout, p.exited()); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := f.connect(f.uri(addr))
	if err != nil {
		return err
	}
	defer client.Disconnect(context.Background())
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err = client.Ping(pctx, readpref.Primary())
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited():
			return fmt.Errorf("ferretdb exited before answering ping: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("ferretdb ping after %s: %w", timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (f *FerretDB) connect(uri string) (*mongo.Client, error) {
	o := options.Client().ApplyURI(uri).SetServerSelectionTimeout(2 * time.Second)
	if f.tls != nil {
		o.SetTLSConfig(f.tls)
	}
	client, err := mongo.Connect(o)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", uri, err)
	}
	return client, nil
}

// Client returns a driver client for this FerretDB (TLS set up when needed), disconnected at
// cleanup.
func (f *FerretDB) Client() *mongo.Client {
	f.tb.Helper()
	client, err := f.connect(f.URI)
	if err != nil {
		f.tb.Fatalf("testenv: %v", err)
	}
	f.tb.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client
}

// ferretdbTermGrace bounds a graceful stop: on SIGTERM FerretDB waits up to 3s for idle
// client connections (a driver's pool keeps some) before exiting. Committed SQLite data
// survives SIGKILL, so waiting that long buys nothing.
const ferretdbTermGrace = 300 * time.Millisecond

// Stop shuts FerretDB down (SIGTERM, SIGKILL after 300ms), e.g. to test a store outage;
// data stays in DataDir.
func (f *FerretDB) Stop() {
	f.tb.Helper()
	if err := f.p.stop(syscall.SIGTERM, ferretdbTermGrace, false); err != nil {
		f.tb.Fatalf("testenv: %v", err)
	}
}

// Kill stops FerretDB with SIGKILL, like a crash.
func (f *FerretDB) Kill() {
	f.tb.Helper()
	if err := f.p.stop(syscall.SIGKILL, 10*time.Second, true); err != nil {
		f.tb.Fatalf("testenv: %v", err)
	}
}

// Start restarts a stopped FerretDB on the same port and data directory and waits until it
// answers ping.
func (f *FerretDB) Start() {
	f.tb.Helper()
	if err := f.p.start(); err != nil {
		f.tb.Fatalf("testenv: %v", err)
	}
	if err := f.waitReady(f.p, f.Addr); err != nil {
		f.tb.Fatalf("testenv: restart ferretdb: %v (%s)\nlog %s:\n%s", err, f.p.exitStatus(), f.LogPath, f.p.logTail(maxLogDump))
	}
}

// Running reports whether the FerretDB process is up.
func (f *FerretDB) Running() bool { return f.p.running() }

// Pid is the FerretDB process ID (for its memory in benchmarks), 0 when it is not running.
func (f *FerretDB) Pid() int {
	if !f.p.running() {
		return 0
	}
	return f.p.cmd.Process.Pid
}

// AssertNoPanic fails tb when FerretDB's log reports a panic: FerretDB v1 recovers some of its
// bugs (e.g. createIndexes racing with itself) as a panic that drops the client's connection,
// which a client sees only as a network error.
func (f *FerretDB) AssertNoPanic(tb testing.TB) {
	tb.Helper()
	b, err := os.ReadFile(f.LogPath)
	if err != nil {
		tb.Fatalf("testenv: read ferretdb log: %v", err)
	}
	var hits []string
	for _, line := range strings.Split(string(b), "\n") {
		// Only FerretDB's own lines: testenv's header names the test, which may say "panic".
		if !strings.HasPrefix(line, "--- testenv") && strings.Contains(strings.ToLower(line), "panic") {
			hits = append(hits, line)
		}
	}
	if len(hits) > 0 {
		tb.Errorf("ferretdb log %s reports %d panic line(s):\n%s", f.LogPath, len(hits), strings.Join(hits[:min(len(hits), 20)], "\n"))
	}
}
