//go:build integration

package listener

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/cli"
)

// A crash is simulated for real: the listener runs in a child process (this test binary,
// re-executed) that the test SIGKILLs. Nothing gets flushed, nothing more gets acknowledged.
const (
	helperEnv         = "CHARGESIM_LISTENER_TEST_HELPER"    // JSON array of listener flags
	helperAckLimitEnv = "CHARGESIM_LISTENER_TEST_ACK_LIMIT" // acknowledge this many, then none
)

func TestMain(m *testing.M) {
	if args := os.Getenv(helperEnv); args != "" {
		os.Exit(helperMain(args))
	}
	os.Exit(m.Run())
}

// helperMain runs a listener and reports on stdout: READY once ready, then its counters every
// 20ms, until it is killed.
func helperMain(argsJSON string) int {
	var args []string
	if err := json.Unmarshal([]byte(argsJSON), &args); err != nil {
		fmt.Fprintln(os.Stderr, "helper args:", err)
		return 2
	}
	fs := cli.NewFlagSet("listener", "")
	cfg := Config{ShutdownTimeout: 10 * time.Second}
	cfg.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	l, err := New(cfg, log, prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if s := os.Getenv(helperAckLimitEnv); s != "" {
		limit, _ := strconv.Atoi(s)
		var acked atomic.Int64
		l.holdAck = func() bool { return acked.Add(1) <= int64(limit) }
	}
	go func() {
		for l.Ready(context.Background()) != nil {
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Println("READY")
		r := &running{l: l}
		for {
			c := r.counts()
			fmt.Printf("STATE %v %v %v %v %v\n", c.received, c.stored, c.dups, c.writeErrors, c.pending)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if err := l.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// child is a listener process.
type child struct {
	cmd    *exec.Cmd
	log    string
	ready  chan struct{}
	exited chan struct{}
	mu     sync.Mutex
	state  counts
}

func startChild(t *testing.T, cfg Config, ackLimit int) *child {
	t.Helper()
	args := []string{
		"--mqtt-url=" + cfg.MQTT.URL, "--mqtt-client-id=" + cfg.MQTT.ClientID,
		"--mongo-uri=" + cfg.Store.URI, "--mongo-database=" + cfg.Store.Database,
		"--batch-size=" + strconv.Itoa(cfg.BatchSize), "--flush-interval=" + cfg.FlushInterval.String(),
		"--max-pending=" + strconv.Itoa(cfg.MaxPending),
	}
	argsJSON, _ := json.Marshal(args)
	c := &child{log: filepath.Join(t.TempDir(), "child.log"), ready: make(chan struct{}), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0])
	c.cmd.Env = append(os.Environ(), helperEnv+"="+string(argsJSON))
	if ackLimit >= 0 {
		c.cmd.Env = append(c.cmd.Env, helperAckLimitEnv+"="+strconv.Itoa(ackLimit))
	}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c.cmd.Stderr = logf
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start listener process: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		readyOnce := sync.OnceFunc(func() { close(c.ready) })
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "READY":
				readyOnce()
			case strings.HasPrefix(line, "STATE "):
				var s counts
				if _, err := fmt.Sscan(line[6:], &s.received, &s.stored, &s.dups, &s.writeErrors, &s.pending); err == nil {
					c.mu.Lock()
					c.state = s
					c.mu.Unlock()
				}
			}
		}
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			t.Logf("listener process log:\n%s", b)
		}
	})
	select {
	case <-c.ready:
	case <-c.exited:
		b, _ := os.ReadFile(c.log)
		t.Fatalf("listener process exited before ready:\n%s", b)
	case <-time.After(60 * time.Second):
		t.Fatal("listener process not ready after 60s")
	}
	return c
}

func (c *child) counts() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// kill is the crash: SIGKILL, no flush, no acknowledgement, no DISCONNECT.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// 3. A listener killed mid-stream, with stored messages it had not acknowledged yet, and
// restarted under the same client ID: the broker redelivers everything unacknowledged to the
// persistent session; nothing is lost, nothing is stored twice, and the redelivered messages
// already stored are counted as duplicates.
func TestCrashMidStreamRestartSameClientID(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	const (
		n        = 3000
		acked    = 500  // the crashed process acknowledges these, then none
		pendingP = 1000 // and holds this many stored-but-unacknowledged when it dies
	)
	cfg := d.config(pubID("crash"))
	cfg.MaxPending = pendingP
	a := startChild(t, cfg, acked)
	published := goods(0, n)
	p := newPub(t, d.mq.URL, pubID("pub"))
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(published)) }()

	coll := sessionsColl(t, d)
	// The child acknowledges `acked`, then its slots fill with stored, unacknowledged messages
	// and its handler blocks: exactly acked+pendingP stored, and no more can be.
	waitUntil(t, 120*time.Second, "crashing listener to store acked+pending", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == acked+pendingP, fmt.Sprintf("%d stored; child %v", k, a.counts())
	})
	a.kill()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	if k := countDocs(t, coll, bson.D{}); k != acked+pendingP {
		t.Fatalf("%d stored after the crash, want %d", k, acked+pendingP)
	}

	b := startListener(t, cfg, "restarted", nil) // same client ID: resumes the session
	waitUntil(t, 120*time.Second, "all sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == n, fmt.Sprintf("%d stored; restarted %v", k, b.counts())
	})
	c := waitIdle(t, b, "restarted idle")
	checkExactlyOnce(t, d, published)
	if c.stored != n-acked-pendingP {
		t.Errorf("restarted listener stored %v, want %d (the rest was stored before the crash)", c.stored, n-acked-pendingP)
	}
	// Every stored-but-unacknowledged message comes back and is a duplicate; acknowledgements
	// written just before the kill may not have reached the broker, so a few more may come back.
	if c.dups < pendingP || c.dups > pendingP+acked {
		t.Errorf("restarted listener counted %v duplicates, want %d (at most %d)", c.dups, pendingP, pendingP+acked)
	}
}

// 4b. The store is down, the listener holds received messages it could not store, and it
// crashes: had it acknowledged any of them, they would be gone. After the store and a new
// listener come back, every session is there, once.
func TestCrashDuringStoreOutageLosesNothing(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	const n, first = 2000, 500
	cfg := d.config(pubID("outage-crash"))
	cfg.MaxPending = 300
	cfg.BatchSize = 50
	a := startChild(t, cfg, -1)
	published := goods(0, n)
	p := newPub(t, d.mq.URL, pubID("pub"))
	p.publish(t, messagesOf(published[:first]))
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "first sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == first, fmt.Sprintf("%d stored; child %v", k, a.counts())
	})

	d.fdb.Stop()
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(published[first:])) }()
	waitUntil(t, 60*time.Second, "child holding --max-pending unstored messages", func() (bool, string) {
		c := a.counts()
		return c.pending == float64(cfg.MaxPending) && c.writeErrors > 0, c.String()
	})
	a.kill()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	d.fdb.Start()

	b := startListener(t, cfg, "after-crash", nil)
	waitUntil(t, 120*time.Second, "all sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == n, fmt.Sprintf("%d stored; listener %v", k, b.counts())
	})
	c := waitIdle(t, b, "idle")
	checkExactlyOnce(t, d, published)
	if c.stored != n-first {
		t.Errorf("new listener stored %v, want %d", c.stored, n-first)
	}
}
