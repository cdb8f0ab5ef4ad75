//go:build integration

package listener

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// testMsg is a received message as the pipeline sees it: acknowledged once, payload kept.
type testMsg struct {
	payload []byte
	acks    *atomic.Int64
}

func (m testMsg) Ack()            { m.acks.Add(1) }
func (m testMsg) Payload() []byte { return m.payload }

// writeListener is a Listener whose store is connected (to uri): enough to call write directly.
func writeListener(t *testing.T, uri string) *Listener {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Store.URI, cfg.Store.Database = uri, testDB
	l, err := New(cfg, testLogger(t, "write"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, cfg.Store, "write-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	l.store.Store(st)
	return l
}

// batchOf makes a batch of entries for gs, received at recv.
func batchOf(gs []good, recv time.Time) *batch {
	b := &batch{}
	for _, g := range gs {
		m := g.message()
		s, err := session.Decode(m.topic, m.payload)
		if err != nil {
			panic(err)
		}
		d := store.NewSessionDoc(s, m.topic, recv)
		b.entries = append(b.entries, &entry{msg: testMsg{payload: m.payload, acks: new(atomic.Int64)}, session: &d})
	}
	return b
}

func lagCount(t *testing.T, l *Listener) uint64 {
	t.Helper()
	var m dto.Metric
	if err := l.m.lag.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// Issue 10.1: a document the store refuses for good (FerretDB refuses +Inf with code 2, like a
// MongoDB validator refuses with 121) used to fail its batch forever, and acks are in order, so
// the listener stopped. Now it is set aside in rejected with the store's reason, the rest of
// the batch is stored, and the write succeeds. A retry (redelivery) of the refused message
// keeps one rejected document.
func TestStoreRefusalSetAside(t *testing.T) {
	t.Parallel()
	fdb := testenv.StartFerretDB(t)
	l := writeListener(t, fdb.URI)
	gs := goods(0, 20)
	b := batchOf(gs, time.Now())
	// The decoder never lets +Inf through (Validate), so the refused document is made here:
	// it stands for anything a server-side rule refuses.
	b.entries[7].session.EnergyKWh = math.Inf(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.write(ctx, b); err != nil {
		t.Fatalf("write with one refused document: %v (the batch would be retried forever)", err)
	}
	db := fdb.Client().Database(testDB)
	if n := countDocs(t, sessionsSet{db}, bson.D{}); n != 19 {
		t.Errorf("%d sessions stored, want the 19 others", n)
	}
	var rej []store.RejectedDoc
	cur, err := db.Collection(store.RejectedCollection).Find(ctx, bson.D{})
	if err != nil || cur.All(ctx, &rej) != nil {
		t.Fatal(err)
	}
	if len(rej) != 1 || rej[0].Reason != string(session.ReasonStoreRefused) || rej[0].Topic != gs[7].topic() ||
		string(rej[0].Payload) != string(gs[7].message().payload) || !strings.Contains(rej[0].Detail, "code 2") ||
		!strings.Contains(rej[0].Detail, "infinity") {
		t.Fatalf("rejected = %+v, want the refused session with the store's reason", rej)
	}
	if got := testutil.ToFloat64(l.m.stored); got != 19 {
		t.Errorf("stored counter %v, want 19", got)
	}
	if got := testutil.ToFloat64(l.m.rejected.WithLabelValues(string(session.ReasonStoreRefused))); got != 1 {
		t.Errorf("rejected{store_refused} = %v, want 1", got)
	}
	if got := lagCount(t, l); got != 19 {
		t.Errorf("lag observed %d times, want 19 (refused documents are not stored)", got)
	}

	// The same messages delivered again: 19 duplicates, the refused one refused again and
	// kept once.
	b2 := batchOf(gs, time.Now().Add(time.Second))
	b2.entries[7].session.EnergyKWh = math.Inf(1)
	if err := l.write(ctx, b2); err != nil {
		t.Fatal(err)
	}
	if n := countDocs(t, db.Collection(store.RejectedCollection), bson.D{}); n != 1 {
		t.Errorf("%d rejected documents after a redelivery, want 1", n)
	}
	if got := testutil.ToFloat64(l.m.duplicates); got != 19 {
		t.Errorf("duplicates %v, want 19", got)
	}
}

// replyProxy forwards TCP to target; while swallow is set it forwards requests but drops the
// server's replies: a write the server applies but whose answer never arrives.
type replyProxy struct {
	ln      net.Listener
	target  string
	swallow atomic.Bool
	wg      sync.WaitGroup
}

func startReplyProxy(t *testing.T, target string) *replyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyProxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() {
				defer p.wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && !p.swallow.Load() {
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close() })
	return p
}

// Issue 10.4: a write that timed out after the server applied it used to be retried and its
// documents counted as duplicates: stored_total and lag were short by a whole batch. The retry
// now recognises the documents its own earlier attempt stored and counts them stored, once;
// a real duplicate (stored earlier by another delivery) in the same batch stays a duplicate.
func TestWriteAppliedButTimedOutCountsStored(t *testing.T) {
	t.Parallel()
	fdb := testenv.StartFerretDB(t)
	target := strings.TrimPrefix(fdb.URI, "mongodb://")
	target = target[:strings.IndexAny(target+"/", "/?")]
	px := startReplyProxy(t, target)
	l := writeListener(t, strings.Replace(fdb.URI, target, px.ln.Addr().String(), 1))
	sessions := sessionsSet{fdb.Client().Database(testDB)}
	ctx := context.Background()

	gs := goods(0, 50)
	// Timed sessions that just ended, as the simulator sends them: one insert into the
	// current time partition, with no late marker before it (an untimed session's marker
	// would be the write whose reply is lost).
	for i := range gs {
		gs[i].ts = time.Now().Unix()
	}
	// Session 0 was stored before, by another delivery received a minute earlier.
	early := batchOf(gs[:1], time.Now().Add(-time.Minute))
	if err := l.write(ctx, early); err != nil {
		t.Fatal(err)
	}
	base := testutil.ToFloat64(l.m.stored)

	// The batch also holds session 1 twice (a redelivery received in the same millisecond):
	// the second is a duplicate whatever happens to the first.
	b := batchOf(append(gs[:len(gs):len(gs)], gs[1]), time.Now())
	px.swallow.Store(true)
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := l.write(tctx, b)
	cancel()
	if err == nil {
		t.Fatal("write succeeded without a reply")
	}
	waitUntil(t, 10*time.Second, "first attempt applied by the server", func() (bool, string) {
		n := countDocs(t, sessions, bson.D{})
		return n == int64(len(gs)), fmt.Sprintf("%d of %d stored", n, len(gs))
	})
	px.swallow.Store(false)

	var retryErr error
	for attempt := 0; attempt < 20; attempt++ { // the driver may first drop the dead connection
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		retryErr = l.write(rctx, b)
		cancel()
		if retryErr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if retryErr != nil {
		t.Fatalf("retry: %v", retryErr)
	}
	if got := testutil.ToFloat64(l.m.stored) - base; got != float64(len(gs)-1) {
		t.Errorf("stored counted %v for the batch, want %d (its own documents, applied by the timed-out attempt)", got, len(gs)-1)
	}
	if got := testutil.ToFloat64(l.m.duplicates); got != 2 {
		t.Errorf("duplicates %v, want 2 (session 0, stored by an earlier delivery; session 1's second copy)", got)
	}
	if got := lagCount(t, l); got != uint64(len(gs)) {
		t.Errorf("lag observed %d times, want %d (one per stored session)", got, len(gs))
	}
	if n := countDocs(t, sessions, bson.D{}); n != int64(len(gs)) {
		t.Errorf("%d sessions in the store, want %d", n, len(gs))
	}
}
