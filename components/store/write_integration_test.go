//go:build integration

package store_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

func writeStore(tb testing.TB) *store.Store {
	tb.Helper()
	f := testenv.StartFerretDB(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.Connect(ctx, store.Config{URI: f.URI, Database: "writetest"}, "store-write-test")
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func writeDocs(from, n int) []store.SessionDoc {
	recv := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	docs := make([]store.SessionDoc, n)
	for i := range docs {
		id := from + i
		s := session.Session{
			SessionID: int64(id), ChargerID: strconv.Itoa(id % 97), ConnectorID: 1 + id%2,
			EnergyKWh: 10 + float64(id%50), DurationSeconds: 1800, CostCents: float64(350 + id%500),
			PowerClass: "AC", PeakPowerKW: 11, TariffCentsPerKWh: 35,
		}
		docs[i] = store.NewSessionDoc(s, fmt.Sprintf("charger/%s/connector/%d/session/%d", s.ChargerID, s.ConnectorID, id), recv.Add(time.Duration(id)*time.Second))
	}
	return docs
}

// Duplicates must be told apart from new documents index by index (FerretDB included), and
// a duplicate must leave the stored document untouched.
func TestSessionWritesReportDuplicates(t *testing.T) {
	t.Parallel()
	s := writeStore(t)
	ctx := context.Background()
	first := writeDocs(0, 10)
	r, err := s.InsertSessions(ctx, first)
	if err != nil || r.Inserted != 10 || len(r.Duplicates) != 0 {
		t.Fatalf("first write: %+v, %v", r, err)
	}
	// Docs 5..9 again (with a changed value that must not be applied), 10..14 new, and
	// 12 twice within the batch.
	again := writeDocs(5, 10)
	for i := range again {
		again[i].EnergyKWh = 999
	}
	again = append(again, writeDocs(12, 1)...)
	r, err = s.InsertSessions(ctx, again)
	if err != nil {
		t.Fatalf("second write: %v", err)
	}
	want := []int{0, 1, 2, 3, 4, 10}
	if r.Inserted != 5 || fmt.Sprint(r.Duplicates) != fmt.Sprint(want) {
		t.Errorf("second write: inserted %d duplicates %v; want 5 and %v", r.Inserted, r.Duplicates, want)
	}
	n, err := s.Sessions.CountDocuments(ctx, bson.D{})
	if err != nil || n != 15 {
		t.Errorf("count = %d, %v; want 15", n, err)
	}
	var got store.SessionDoc
	if err := s.Sessions.FindOne(ctx, bson.D{{Key: "_id", Value: first[7].ID}}).Decode(&got); err != nil {
		t.Fatalf("find: %v", err)
	}
	if got.EnergyKWh != first[7].EnergyKWh {
		t.Errorf("duplicate overwrote the stored document: energy %v, want %v", got.EnergyKWh, first[7].EnergyKWh)
	}
	// A document reads back exactly as written (times truncated to ms by NewSessionDoc).
	if got.ID != first[7].ID || got.Topic != first[7].Topic || !got.EndedAt.Equal(first[7].EndedAt) ||
		!got.StartedAt.Equal(first[7].StartedAt) || !got.ReceivedAt.Equal(first[7].ReceivedAt) ||
		got.ChargerID != first[7].ChargerID || got.ConnectorID != first[7].ConnectorID || got.CostCents != first[7].CostCents {
		t.Errorf("read back %+v\nwrote %+v", got, first[7])
	}
}

// Concurrent writers of overlapping batches: every document stored once, and each one counted
// as inserted by exactly one writer.
func TestSessionWritesConcurrentOverlap(t *testing.T) {
	t.Parallel()
	s := writeStore(t)
	const writers, n = 4, 200
	var mu sync.Mutex
	inserted, dups := 0, 0
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.InsertSessions(context.Background(), writeDocs(0, n))
			if err != nil {
				t.Errorf("writer %d: %v", w, err)
				return
			}
			mu.Lock()
			inserted += r.Inserted
			dups += len(r.Duplicates)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if inserted != n || dups != (writers-1)*n {
		t.Errorf("inserted %d duplicates %d; want %d and %d", inserted, dups, n, (writers-1)*n)
	}
	cnt, err := s.Sessions.CountDocuments(context.Background(), bson.D{})
	if err != nil || cnt != n {
		t.Errorf("count = %d, %v; want %d", cnt, err, n)
	}
}

func TestInsertRejectedIdempotent(t *testing.T) {
	s := writeStore(t)
	ctx := context.Background()
	docs := []store.RejectedDoc{
		store.NewRejectedDoc("charger/x!/connector/1/session/1", []byte("{"), session.ReasonBadTopic, "bad", time.Now()),
		store.NewRejectedDoc("charger/1/connector/1/session/1", []byte("nope"), session.ReasonBadJSON, "bad", time.Now()),
	}
	if r, err := s.InsertRejected(ctx, docs); err != nil || r.Inserted != 2 {
		t.Fatalf("insert: %+v %v", r, err)
	}
	if r, err := s.InsertRejected(ctx, docs); err != nil || r.Inserted != 0 || len(r.Duplicates) != 2 {
		t.Fatalf("retry: %+v %v", r, err)
	}
	var got store.RejectedDoc
	if err := s.Rejected.FindOne(ctx, bson.D{{Key: "reason", Value: "bad_json"}}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if string(got.Payload) != "nope" || got.Size != 4 || got.Topic != docs[1].Topic {
		t.Errorf("read back %+v", got)
	}
}

// BenchmarkSessionWrites measures the listener's write path on FerretDB with its default batch
// size: all-new batches (steady state) and half duplicates (a redelivery storm).
func BenchmarkSessionWrites(b *testing.B) {
	const batch = 500
	for _, mix := range []string{"new", "half-dup"} {
		b.Run(mix, func(b *testing.B) {
			s := writeStore(b)
			ctx := context.Background()
			next := 0
			b.ResetTimer()
			docs := 0
			for i := 0; i < b.N; i++ {
				var in []store.SessionDoc
				if mix == "new" {
					in = writeDocs(next, batch)
					next += batch
				} else {
					in = writeDocs(next-batch/2, batch) // first half already stored
					next += batch / 2
				}
				if _, err := s.InsertSessions(ctx, in); err != nil {
					b.Fatal(err)
				}
				docs += batch
			}
			b.ReportMetric(float64(docs)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}

// BenchmarkInsertPath compares, on one FerretDB, the store's insert command of documents
// encoded once (encode.go) with the driver's InsertMany it replaced: stored documents per
// second and the client's CPU per document (marshalling, and InsertMany's re-decoding of every
// document for its _id), batches of 500 as the listener writes them.
func BenchmarkInsertPath(b *testing.B) {
	const batch = 500
	for _, path := range []string{"command", "driver"} {
		b.Run(path, func(b *testing.B) {
			s := writeStore(b)
			ctx := context.Background()
			docs := writeDocs(0, b.N)
			if path == "command" {
				for i := range docs {
					docs[i].Encode() // as the listener does when a message arrives
				}
			}
			b.ResetTimer()
			cpu0 := selfCPU()
			for i := 0; i < len(docs); i += batch {
				if _, err := s.InsertWith(ctx, path == "command", docs[i:min(i+batch, len(docs))]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((selfCPU()-cpu0).Microseconds())/float64(b.N), "client-cpu-us/doc")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
