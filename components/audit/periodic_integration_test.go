//go:build integration

package audit_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/store"
)

// scanLog is the real store, recording which windows the audit scans. It does not count
// (audit.Counter): countingLog does.
type scanLog struct {
	st    *store.Store
	mu    sync.Mutex
	scans []audit.Window
}

func (s *scanLog) RunsOverlapping(ctx context.Context, fromNs, toNs int64) ([]store.RunDoc, error) {
	return s.st.RunsOverlapping(ctx, fromNs, toNs)
}

func (s *scanLog) PartitionWidth(ctx context.Context) (time.Duration, error) {
	return s.st.PartitionWidth(ctx)
}

func (s *scanLog) ScanSessions(ctx context.Context, from, to time.Time, charger string, fn func(store.AuditedSession) error) error {
	s.mu.Lock()
	s.scans = append(s.scans, audit.Window{From: from, To: to})
	s.mu.Unlock()
	return s.st.ScanSessions(ctx, from, to, charger, fn)
}

type countingLog struct{ *scanLog }

func (c countingLog) CountStored(ctx context.Context, from, to time.Time) (map[string]int64, bool, error) {
	return c.st.CountStored(ctx, from, to)
}

// stored3000 publishes 3000 sessions through a listener into the store, checks they are all
// stored, and returns the runs' window.
func (e *env) stored3000(t *testing.T) audit.Window {
	t.Helper()
	lis := e.listener(t)
	pub := e.publisher(t, 0, 1)
	waitFor(t, 30*time.Second, "3000 sessions published", func() bool {
		return pub.metric(t, publisher.MetricPublished) >= 3000
	})
	pub.stop(t)
	w := e.runsWindow(t)
	checkClean(t, e.settled(t, w))
	lis.stop(t)
	return w
}

// storedDocs reads every stored session, collection by collection.
func storedDocs(t *testing.T, st *store.Store) ([]*mongo.Collection, []store.SessionDoc) {
	t.Helper()
	ctx := context.Background()
	colls, err := st.SessionCollections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []store.SessionDoc
	for _, coll := range colls {
		cur, err := coll.Find(ctx, bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		var part []store.SessionDoc
		if err := cur.All(ctx, &part); err != nil {
			t.Fatal(err)
		}
		all = append(all, part...)
	}
	return colls, all
}

func (s *scanLog) take() []audit.Window {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.scans
	s.scans = nil
	return out
}

// The periodic audit reads each settled chunk of its window once, reads again only the chunks
// that showed a difference, and its sum equals a one-off audit of the same window: on FerretDB
// re-reading the whole window every pass cost more than ingestion.
func TestPeriodicAuditReadsEachChunkOnce(t *testing.T) {
	e := start(t)
	w := e.stored3000(t)
	width, err := e.st.PartitionWidth(context.Background())
	if err != nil || width <= 0 {
		t.Fatalf("partition width %s, %v: this test needs the partitioned layout (FerretDB)", width, err)
	}

	// Hide 7 sessions: the audit must report them missing, then find them once they are back
	// (a session that arrives late), rereading only their chunks.
	colls, all := storedDocs(t, e.st)
	var hidden []store.SessionDoc
	var hiddenIDs []string
	for i := len(all) / 3; len(hidden) < 7; i += 3 {
		hidden, hiddenIDs = append(hidden, all[i]), append(hiddenIDs, all[i].ID)
	}
	for _, coll := range colls {
		if _, err := coll.DeleteMany(context.Background(), bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: hiddenIDs}}}}); err != nil {
			t.Fatal(err)
		}
	}

	logged := &scanLog{st: e.st}
	cfg := audit.Config{Every: width, Last: w.To.Sub(w.From) + 4*width, Settle: 0, Timeout: time.Minute}
	p, err := audit.NewPeriodicOn(logged, cfg, logger("audit"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := w.To.Add(2 * width)
	first, err := p.AuditAt(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	once, err := audit.Run(context.Background(), e.st, audit.Window{From: first.From, To: first.To})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(first.MissingKeys)
	slices.Sort(hiddenIDs)
	if first.Expected != once.Expected || first.Stored != once.Stored || first.Missing != 7 || once.Missing != 7 ||
		first.Unexpected != once.Unexpected || first.Duplicates != once.Duplicates || first.Complete ||
		!slices.Equal(first.MissingKeys, hiddenIDs) {
		t.Fatalf("periodic %+v\none-off %+v\nhidden %v", first, once, hiddenIDs)
	}
	scans := logged.take()
	covered := time.Duration(0)
	for i, s := range scans {
		covered += s.To.Sub(s.From)
		if i > 0 && !s.From.Equal(scans[i-1].To) {
			t.Fatalf("first pass: scans %v are not consecutive", scans)
		}
	}
	if covered != first.To.Sub(first.From) {
		t.Fatalf("first pass scanned %s of a %s window: %v", covered, first.To.Sub(first.From), scans)
	}

	// The sessions arrive late; the window moves on by two chunks.
	if _, err := e.st.InsertSessions(context.Background(), hidden); err != nil {
		t.Fatal(err)
	}
	second, err := p.AuditAt(context.Background(), now.Add(2*width))
	if err != nil {
		t.Fatal(err)
	}
	if !second.Complete || second.Expected != first.Expected || second.Stored != second.Expected {
		t.Fatalf("after the late arrivals: %+v", second)
	}
	scans = logged.take()
	dirty := map[time.Time]bool{}
	for _, d := range hidden {
		dirty[d.EndedAt.UTC().Truncate(width)] = true
	}
	var reread, fresh int
	for _, s := range scans {
		switch {
		case !s.From.Before(first.To):
			fresh++
		default:
			reread++
			hit := false
			for at := range dirty {
				hit = hit || (!at.Before(s.From) && at.Before(s.To))
			}
			if !hit {
				t.Fatalf("second pass reread %v, which held none of the late sessions (%v)", s, dirty)
			}
		}
	}
	if fresh != 2 || reread == 0 || reread > len(dirty) {
		t.Fatalf("second pass: %d new chunks (want 2), %d reread of %d with late sessions: %v", fresh, reread, len(dirty), scans)
	}
	// A clean window is not read again.
	third, err := p.AuditAt(context.Background(), now.Add(2*width))
	if err != nil || !third.Complete {
		t.Fatalf("third pass: %+v %v", third, err)
	}
	if scans := logged.take(); len(scans) != 0 {
		t.Fatalf("a clean window was read again: %v", scans)
	}
}

// On the partitioned store the periodic audit settles a chunk by the writers' counts (the
// delta documents) when they equal the expected counts, reading no session; a chunk whose
// counts differ is read, and its missing sessions named. The sessions are copied into a second
// database through the listener's write path, all but 7 (lost on the way), then the 7 arrive.
func TestPeriodicAuditCountsBeforeReading(t *testing.T) {
	e := start(t)
	w := e.stored3000(t)
	ctx := context.Background()
	_, all := storedDocs(t, e.st)
	runs, err := e.st.RunsOverlapping(ctx, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.storeConfig()
	cfg.Database = "audit_copy"
	cp, err := store.Connect(ctx, cfg, "audit-copy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close(context.Background()) })
	for _, r := range runs {
		if err := cp.InsertRun(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	var kept, lost []store.SessionDoc
	for i, d := range all {
		if i%400 == 17 && len(lost) < 7 {
			lost = append(lost, d)
			continue
		}
		kept = append(kept, d)
	}
	if _, err := cp.InsertSessions(ctx, kept); err != nil {
		t.Fatal(err)
	}
	width, err := cp.PartitionWidth(ctx)
	if err != nil || width <= 0 {
		t.Fatalf("partition width %s, %v", width, err)
	}
	logged := countingLog{&scanLog{st: cp}}
	p, err := audit.NewPeriodicOn(logged, audit.Config{Every: width, Last: w.To.Sub(w.From) + 4*width, Timeout: time.Minute},
		logger("audit"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := w.To.Add(2 * width)
	first, err := p.AuditAt(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	var lostIDs []string
	dirty := map[time.Time]bool{}
	for _, d := range lost {
		lostIDs = append(lostIDs, d.ID)
		dirty[d.EndedAt.UTC().Truncate(width)] = true
	}
	slices.Sort(lostIDs)
	slices.Sort(first.MissingKeys)
	if first.Missing != 7 || first.Complete || first.Expected != int64(len(all)) || !slices.Equal(first.MissingKeys, lostIDs) {
		t.Fatalf("first pass %+v, lost %v", first, lostIDs)
	}
	scans := logged.take()
	if len(scans) == 0 || len(scans) > len(dirty) {
		t.Fatalf("first pass read %d chunks, want the %d with lost sessions: %v", len(scans), len(dirty), scans)
	}
	for _, s := range scans {
		hit := false
		for at := range dirty {
			hit = hit || (!at.Before(s.From) && at.Before(s.To))
		}
		if !hit {
			t.Fatalf("read %v, which lost nothing", s)
		}
	}
	// The lost sessions arrive: their chunks now agree by counts, nothing is read.
	if _, err := cp.InsertSessions(ctx, lost); err != nil {
		t.Fatal(err)
	}
	second, err := p.AuditAt(ctx, now)
	if err != nil || !second.Complete || second.Stored != int64(len(all)) {
		t.Fatalf("second pass %+v %v", second, err)
	}
	if scans := logged.take(); len(scans) != 0 {
		t.Fatalf("second pass read %v although every count agreed", scans)
	}
}
