package publisher

import (
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
)

// BenchmarkFleetMemory builds a 1,000,000-charger publisher (fleet schedule, window, metrics,
// MQTT client; no broker needed) once and reports the heap it holds after a GC. The loop only
// exists for the benchmark protocol, so any -benchtime costs one build.
func BenchmarkFleetMemory(b *testing.B) {
	perCharger, total := fleetHeap(b, 1_000_000)
	for b.Loop() {
	}
	b.ReportMetric(total/1e6, "heap-MB")
	b.ReportMetric(perCharger, "B/charger")
}

// BenchmarkFleetFire is the scheduler's own cost per session on a million-charger heap.
func BenchmarkFleetFire(b *testing.B) {
	cfg := DefaultConfig()
	f := newFleet(paramsOf(cfg), 1_000_000, 0, 1, time.Now().UnixNano())
	b.ReportAllocs()
	for b.Loop() {
		f.fire()
	}
}

// BenchmarkBuild is everything the scheduler does per session before paho: fire, physics,
// payload and topic encoding. The only allocations are the topic string (paho takes a string)
// and the charger ID of chargers ≥ 100.
func BenchmarkBuild(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Chargers = 1_000_000
	p, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	var sl slot
	var s session.Session
	b.ReportAllocs()
	for b.Loop() {
		p.build(p.fleet, &sl, &s)
	}
	b.SetBytes(int64(len(sl.payload)))
}

// BenchmarkAppendJSON encodes one session: no allocation.
func BenchmarkAppendJSON(b *testing.B) {
	cfg := DefaultConfig()
	p, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	var sl slot
	var s session.Session
	p.build(p.fleet, &sl, &s)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}
