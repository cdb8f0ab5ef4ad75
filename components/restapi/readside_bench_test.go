//go:build integration

package restapi

// BenchmarkReadSide is issue 11's benchmark (run by `make bench`): a FerretDB holding
// BENCH_READ_SESSIONS sessions (default 1,000,000) over 10,000 chargers, loaded once with big
// InsertMany batches and cached under ~/.cache/chargesim keyed by the data-model version;
// sessions are written at BENCH_INGEST_RATE/s (default 1,000) through store.InsertSessions,
// the listener's write path, while the API (served over HTTP, default settings) is read by
//   - 4 clients per endpoint (latency percentiles);
//   - a seed-style API (find().limit(1000), the original challenge's FastAPI in Go) and the
//     bare driver reading 1000 sessions, 4 clients each, in the same run;
//   - 64 clients hammering every endpoint (ingest rate, 5xx, FerretDB's peak RSS).
// Figures are reported as benchmark metrics; hack/bench.sh prints them next to the goals.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// readBenchDataVersion keys the cached data directory: bump it when the stored document shape
// or collection layout changes.
const readBenchDataVersion = "sessions-v5-keytime-10s-grace-10s"

const readBenchChargers = 10_000

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchSession is session number i of the benchmark fleet (deterministic). Its session ID is
// its end in microseconds, as the simulator's are: the partitioned layout places only such
// keys by time (store.partitionOfDoc), others go to the unpartitioned collection.
func benchSession(i int, end time.Time) store.SessionDoc {
	s := session.Session{
		SessionID: end.UnixMicro(), ChargerID: strconv.Itoa(i%readBenchChargers + 1), ConnectorID: i%2 + 1,
		EnergyKWh: float64(i%61) + 0.5, DurationSeconds: 1800 + float64(i%600), CostCents: float64(i%61)*40 + 20,
		EndedAt: end, PowerClass: "AC", PeakPowerKW: 11, BatteryKWh: 60, StartSoCPercent: 20, EndSoCPercent: 80,
		TariffCentsPerKWh: 40, SessionFeeCents: 0,
	}
	return store.NewSessionDoc(s, "charger/"+s.ChargerID+"/connector/1/session/"+strconv.Itoa(i), end)
}

// readBenchData returns a FerretDB data directory holding n sessions: a copy of the cached
// one, loaded (and cached) first when missing.
func readBenchData(b *testing.B, n int) string {
	cache := os.Getenv("CHARGESIM_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "chargesim")
	}
	cached := filepath.Join(cache, fmt.Sprintf("readbench-%s-%d", readBenchDataVersion, n))
	if _, err := os.Stat(filepath.Join(cached, "complete")); err != nil {
		b.Logf("loading %d sessions into %s (once; cached)", n, cached)
		tmp := cached + ".tmp"
		_ = os.RemoveAll(tmp)
		db := testenv.StartFerretDBAt(b, filepath.Join(tmp, "data"))
		st := connectBench(b, db.URI)
		t0 := time.Now().Add(-time.Duration(n) * time.Millisecond).UTC()
		const batch = 10_000
		for from := 0; from < n; from += batch {
			docs := make([]store.SessionDoc, 0, batch)
			for i := from; i < min(n, from+batch); i++ {
				docs = append(docs, benchSession(i, t0.Add(time.Duration(i)*time.Millisecond)))
			}
			if _, err := st.InsertSessions(context.Background(), docs); err != nil {
				b.Fatalf("load: %v", err)
			}
		}
		_ = st.Close(context.Background())
		db.Stop()
		if err := os.WriteFile(filepath.Join(tmp, "complete"), nil, 0o644); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(cached)
		if err := os.Rename(tmp, cached); err != nil {
			b.Fatal(err)
		}
	}
	dir := filepath.Join(b.TempDir(), "data")
	if out, err := exec.Command("cp", "-a", filepath.Join(cached, "data"), dir).CombinedOutput(); err != nil {
		b.Fatalf("copy cached data: %v %s", err, out)
	}
	return dir
}

func connectBench(b *testing.B, uri string) *store.Store {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := store.Connect(ctx, store.Config{URI: uri, Database: "chargesim"}, "readbench")
	if err != nil {
		b.Fatalf("connect: %v", err)
	}
	return st
}

// ingest offers rate sessions/s to the store through InsertSessions, like the listener: every
// 100 ms it writes what is due, in batches of at most 1000 when it fell behind (the listener's
// batches grow with its backlog too). stored counts what was stored.
type ingest struct {
	stored atomic.Int64
	stop   chan struct{}
	done   chan struct{}
}

func startIngest(st *store.Store, rate, first int) *ingest {
	in := &ingest{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(in.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		start, sent := time.Now(), 0
		for {
			select {
			case <-in.stop:
				return
			case <-tick.C:
			}
			due := int(float64(rate)*time.Since(start).Seconds()) - sent
			for due > 0 {
				select {
				case <-in.stop:
					return
				default:
				}
				now := time.Now().UTC()
				docs := make([]store.SessionDoc, min(due, 1000))
				for i := range docs {
					docs[i] = benchSession(first+sent+i, now.Add(time.Duration(i)*time.Microsecond))
				}
				res, err := st.InsertSessions(context.Background(), docs)
				if err != nil {
					break // retried on the next tick, like the listener
				}
				in.stored.Add(int64(res.Inserted))
				sent += len(docs)
				due -= len(docs)
			}
		}
	}()
	return in
}

// rate measures the stored sessions per second over d.
func (in *ingest) rate(d time.Duration) float64 {
	n0 := in.stored.Load()
	time.Sleep(d)
	return float64(in.stored.Load()-n0) / d.Seconds()
}

type loadResult struct {
	lat            []time.Duration
	codes          map[int]int
	shed, errs, n5 int
}

func (r *loadResult) pct(p float64) float64 {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	return float64(r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))].Microseconds()) / 1000
}

// load runs clients goroutines, each requesting next() in a loop for d.
func load(clients int, d time.Duration, do func(rnd *rand.Rand) (int, http.Header, error)) *loadResult {
	res := &loadResult{codes: map[int]int{}}
	var mu sync.Mutex
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(c), 7))
			var lat []time.Duration
			codes := map[int]int{}
			var shed, errs, n5 int
			for time.Now().Before(end) {
				t := time.Now()
				code, h, err := do(rnd)
				lat = append(lat, time.Since(t))
				switch {
				case err != nil:
					errs++
				case code == http.StatusServiceUnavailable && h.Get("Retry-After") != "":
					shed++
				case code >= 500:
					n5++
				}
				codes[code]++
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			for k, v := range codes {
				res.codes[k] += v
			}
			res.shed += shed
			res.errs += errs
			res.n5 += n5
			mu.Unlock()
		})
	}
	wg.Wait()
	return res
}

func httpGet(client *http.Client, url string) (int, http.Header, error) {
	res, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, res.Header, nil
}

func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// serve runs h on a loopback port until the benchmark ends and returns its base URL.
func serve(b *testing.B, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cli.ServeListener(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), ln, h, 5*time.Second)
	}()
	b.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String()
}

// seedStyleAPI is the original challenge's FastAPI GET /readings/ in Go: find().limit(1000)
// on the sessions, every document returned as JSON.
func seedStyleAPI(coll *mongo.Collection) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur, err := coll.Find(r.Context(), bson.D{}, options.Find().SetLimit(1000))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var docs []bson.M
		if err := cur.All(r.Context(), &docs); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(docs)
	})
}

func BenchmarkReadSide(b *testing.B) {
	n := envInt("BENCH_READ_SESSIONS", 1_000_000)
	rate := envInt("BENCH_INGEST_RATE", 1000)
	phase := envDuration("BENCH_READ_TIME", 10*time.Second)
	hammer := envDuration("BENCH_HAMMER_TIME", 60*time.Second)
	dir := readBenchData(b, n)
	db := testenv.StartFerretDBAt(b, dir)
	st := connectBench(b, db.URI)
	b.Cleanup(func() { _ = st.Close(context.Background()) })
	reg := prometheus.NewRegistry()
	srv, err := New(DefaultConfig(), st, slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError})), reg, reg)
	if err != nil {
		b.Fatal(err)
	}
	api := serve(b, srv.Handler())
	// On the partitioned layout the seed-style API and the bare driver read one full
	// partition (a collection of ~60,000 sessions at the default width): what a find().limit()
	// on "the sessions" can be on this store.
	coll := st.Sessions
	if parts, err := st.Partitions(context.Background()); err != nil {
		b.Fatal(err)
	} else if len(parts) == 1 && n >= 20_000 {
		// Sessions whose keys do not name their end all go to one unpartitioned collection:
		// the benchmark would measure a layout the simulator's data never has.
		b.Fatalf("%d sessions loaded into %s alone: the partitioned layout was not used", n, parts[0].Name)
	} else if len(parts) > 0 {
		coll = st.DB.Collection(parts[len(parts)/2].Name)
		fmt.Printf("# %d partitions; seed-style API and bare driver read %s\n", len(parts), coll.Name())
	}
	seed := serve(b, seedStyleAPI(coll))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}, Timeout: 60 * time.Second}

	in := startIngest(st, rate, n)
	defer func() { close(in.stop); <-in.done }()
	baseline := in.rate(10 * time.Second)

	// The first snapshot: its scan time is what a cold start costs.
	t0 := time.Now()
	for {
		code, _, err := httpGet(client, api+"/api/v1/stats")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Since(t0) > 30*time.Minute {
			b.Fatalf("no stats 30 minutes after start")
		}
		time.Sleep(time.Second)
	}
	b.ReportMetric(time.Since(t0).Seconds(), "first-snapshot-s")
	// The first snapshot read every partition while sessions kept arriving: the next refreshes
	// catch up with the partitions that closed meanwhile, then read only what changes. The
	// figures below are the steady state of both layers: measured once the totals are less
	// than 20 s old and exact up to less than a minute ago (X-Data-Exact-Until: the slow layer
	// has scanned the closed partitions), or after 5 minutes of waiting for that.
	for warm := time.Now(); time.Since(warm) < 5*time.Minute; {
		res, err := client.Get(api + "/api/v1/stats")
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			asOf, perr := time.Parse(time.RFC3339Nano, res.Header.Get("X-Data-As-Of"))
			exact, eerr := time.Parse(time.RFC3339Nano, res.Header.Get("X-Data-Exact-Until"))
			if perr == nil && eerr == nil && time.Since(asOf) < 20*time.Second && time.Since(exact) < time.Minute {
				break
			}
		}
		time.Sleep(time.Second)
	}
	b.ReportMetric(time.Since(t0).Seconds(), "warm-up-s")

	// Cursors 100 pages deep.
	sessCursor, chargerCursor := "", encodeChargerCursor(strconv.Itoa(readBenchChargers/2))
	next := api + "/api/v1/sessions?limit=100"
	for range 100 {
		res, err := client.Get(next)
		if err != nil {
			b.Fatal(err)
		}
		var p SessionPage
		_ = json.NewDecoder(res.Body).Decode(&p)
		res.Body.Close()
		if p.NextCursor == nil {
			b.Fatalf("fewer than 100 pages of sessions")
		}
		sessCursor = *p.NextCursor
		next = api + "/api/v1/sessions?limit=100&cursor=" + sessCursor
	}
	endpoints := []struct {
		name string
		url  func(rnd *rand.Rand) string
	}{
		{"stats", func(*rand.Rand) string { return api + "/api/v1/stats" }},
		{"charger", func(rnd *rand.Rand) string {
			return api + "/api/v1/chargers/" + strconv.Itoa(rnd.IntN(readBenchChargers)+1)
		}},
		{"chargers-first", func(*rand.Rand) string { return api + "/api/v1/chargers?limit=100" }},
		{"chargers-deep", func(*rand.Rand) string { return api + "/api/v1/chargers?limit=100&cursor=" + chargerCursor }},
		{"sessions-first", func(*rand.Rand) string { return api + "/api/v1/sessions?limit=100" }},
		{"sessions-deep", func(*rand.Rand) string { return api + "/api/v1/sessions?limit=100&cursor=" + sessCursor }},
		{"health", func(*rand.Rand) string { return api + "/health" }},
		{"readings", func(*rand.Rand) string { return api + "/readings/" }},
		{"seed-readings", func(*rand.Rand) string { return seed + "/readings/" }},
	}
	report := func(name string, r *loadResult) {
		b.ReportMetric(r.pct(0.50), name+"-p50-ms")
		b.ReportMetric(r.pct(0.99), name+"-p99-ms")
		b.ReportMetric(float64(r.n5+r.errs), name+"-5xx")
		fmt.Printf("# %s: %d requests, codes %v, shed %d, errors %d\n", name, len(r.lat), r.codes, r.shed, r.errs)
	}
	// Freshness: the age of the data an answer is computed from (X-Data-As-Of), sampled on
	// every answer of the totals and listing endpoints; separately for the totals (stats,
	// chargers), whose provisional figures come from the deltas, and how far back they are
	// provisional (now − X-Data-Exact-Until).
	var ageMu sync.Mutex
	var ages, totalAges, provisional []time.Duration
	withAge := func(totals bool, code int, h http.Header, err error) (int, http.Header, error) {
		if asOf, perr := time.Parse(time.RFC3339Nano, h.Get("X-Data-As-Of")); err == nil && perr == nil {
			ageMu.Lock()
			ages = append(ages, time.Since(asOf))
			if totals {
				totalAges = append(totalAges, time.Since(asOf))
				if exact, perr := time.Parse(time.RFC3339Nano, h.Get("X-Data-Exact-Until")); perr == nil {
					provisional = append(provisional, time.Since(exact))
				}
			}
			ageMu.Unlock()
		}
		return code, h, err
	}
	for _, ep := range endpoints {
		totals := ep.name == "stats" || strings.HasPrefix(ep.name, "charger")
		report(ep.name, load(4, phase, func(rnd *rand.Rand) (int, http.Header, error) {
			code, h, err := httpGet(client, ep.url(rnd))
			return withAge(totals, code, h, err)
		}))
	}
	for _, a := range []struct {
		name string
		d    []time.Duration
	}{{"freshness", ages}, {"freshness-totals", totalAges}, {"provisional-span", provisional}} {
		if len(a.d) > 0 {
			slices.Sort(a.d)
			b.ReportMetric(a.d[len(a.d)/2].Seconds(), a.name+"-p50-s")
			b.ReportMetric(a.d[len(a.d)*99/100].Seconds(), a.name+"-p99-s")
			b.ReportMetric(a.d[len(a.d)-1].Seconds(), a.name+"-max-s")
		}
	}
	// The audit's read of a 10 s window (the newest closed seconds) while ingesting.
	auditStart := time.Now()
	var audited int
	to := time.Now().Add(-5 * time.Second)
	if err := st.ScanSessions(context.Background(), to.Add(-10*time.Second), to, "", func(store.AuditedSession) error {
		audited++
		return nil
	}); err != nil {
		b.Fatalf("audit scan: %v", err)
	}
	b.ReportMetric(float64(time.Since(auditStart).Milliseconds()), "audit-10s-window-ms")
	fmt.Printf("# audit scan of a 10 s window: %d sessions in %v\n", audited, time.Since(auditStart))
	bare := load(4, phase, func(*rand.Rand) (int, http.Header, error) {
		cur, err := coll.Find(context.Background(), bson.D{}, options.Find().SetLimit(1000))
		if err != nil {
			return 0, nil, err
		}
		var docs []bson.Raw
		if err := cur.All(context.Background(), &docs); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, nil, nil
	})
	report("bare-find-limit-1000", bare)

	// 64 clients over every endpoint; the ingest rate meanwhile.
	var during float64
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(5 * time.Second)
		during = in.rate(hammer - 10*time.Second)
	})
	all := endpoints[:len(endpoints)-1] // not the seed-style API
	h := load(64, hammer, func(rnd *rand.Rand) (int, http.Header, error) {
		return httpGet(client, all[rnd.IntN(len(all))].url(rnd))
	})
	wg.Wait()
	report("hammer64", h)
	b.ReportMetric(float64(h.shed), "hammer64-shed")
	b.ReportMetric(baseline, "ingest-baseline-docs/s")
	b.ReportMetric(during, "ingest-hammer-docs/s")
	b.ReportMetric(rssMB(db.Pid()), "ferretdb-peak-RSS-MB")
	// The API's live heap (the benchmark's clients and ingest share the process): after a
	// collection, so garbage from the hammering does not count.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "api-heap-MB")
	b.ReportMetric(float64(n), "stored-sessions")
	for range b.N {
		// The figures above are one measurement; b.N is not used.
	}
}
