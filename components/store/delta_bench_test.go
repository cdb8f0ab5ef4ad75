//go:build integration

package store_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// The write cost of the deltas: live batches of 500 sessions over 10,000 chargers into the
// time partitions, with the delta insert (the default) and without it (the insert skipped by
// the test fault). Reports the CPU of FerretDB and of this process per stored session.
//
//	go test -tags integration -run '^$' -bench BenchmarkInsertPartitioned -benchtime 20000x ./components/store/
func BenchmarkInsertPartitioned(b *testing.B) {
	for _, withDeltas := range []bool{true, false} {
		name := map[bool]string{true: "deltas", false: "no-deltas"}[withDeltas]
		b.Run(name, func(b *testing.B) {
			f := testenv.StartFerretDB(b)
			st := partStore(b, f, "bench")
			if !withDeltas {
				skip := errors.New("delta skipped by the benchmark")
				st.SetDeltaFault(func(string) error { return skip })
			}
			const batch = 500
			docs := make([]store.SessionDoc, b.N)
			now := time.Now().UTC().Truncate(time.Millisecond)
			for i := range docs {
				s := session.Session{SessionID: now.UnixMilli()*1000 + int64(i%1000), ChargerID: "charger-" + strconv.Itoa(i*7919%10_000),
					ConnectorID: 1, EnergyKWh: float64(i%40) / 4, DurationSeconds: 600, CostCents: float64(i%300) / 4, EndedAt: now}
				docs[i] = store.NewSessionDoc(s, "charger/x", now)
				now = now.Add(time.Millisecond) // 1,000 sessions/s of simulated time
			}
			fdb0, self0 := testenv.ProcCPU(f.Pid()), testenv.ProcCPU(os.Getpid())
			b.ResetTimer()
			for i := 0; i < len(docs); i += batch {
				r, err := st.InsertSessions(context.Background(), docs[i:min(i+batch, len(docs))])
				if err != nil || r.Inserted != min(batch, len(docs)-i) {
					b.Fatalf("insert: %+v %v", r, err)
				}
			}
			b.StopTimer()
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
			b.ReportMetric(per(testenv.ProcCPU(f.Pid())-fdb0), "ferretdb-cpu-us/doc")
			b.ReportMetric(per(testenv.ProcCPU(os.Getpid())-self0), "bench-cpu-us/doc")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}
