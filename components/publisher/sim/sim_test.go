package sim

import (
	"math"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/session"
)

func testParams(seed uint64) Params {
	return Params{Seed: seed, Connectors: 2, DCShare: 0.3, ACTariff: 35, DCTariff: 59, SessionFee: 50, Jitter: 0.2}
}

// forSessions calls f for sessions of many chargers under many seeds (property-style).
func forSessions(t *testing.T, f func(t *testing.T, p *Params, charger uint32, n uint64, d *Draw)) {
	t.Helper()
	for seed := uint64(1); seed <= 40; seed++ {
		p := testParams(seed)
		p.DCShare = float64(seed%5) / 4 // 0, .25, .5, .75, 1: both kinds under every seed family
		p.SessionFee = float64(seed % 3 * 25)
		for charger := uint32(1); charger <= 50; charger++ {
			for n := uint64(0); n < 5; n++ {
				d := p.Session(charger, n)
				f(t, &p, charger, n, &d)
				if t.Failed() {
					t.Fatalf("seed %d charger %d session %d: %+v", seed, charger, n, d)
				}
			}
		}
	}
}

func TestSessionPhysics(t *testing.T) {
	forSessions(t, func(t *testing.T, p *Params, charger uint32, n uint64, d *Draw) {
		if d.BatteryKWh < MinBatteryKWh || d.BatteryKWh > MaxBatteryKWh {
			t.Errorf("battery %g kWh outside %g..%g", d.BatteryKWh, MinBatteryKWh, MaxBatteryKWh)
		}
		if !(d.StartSoC >= 0 && d.StartSoC < d.EndSoC && d.EndSoC <= 100) {
			t.Errorf("SoC %g → %g", d.StartSoC, d.EndSoC)
		}
		if d.Connector < 1 || d.Connector > p.Connectors {
			t.Errorf("connector %d outside 1..%d", d.Connector, p.Connectors)
		}
		stored := d.BatteryKWh * (d.EndSoC - d.StartSoC) / 100
		if d.EnergyKWh > stored+0.0005+1e-9 {
			t.Errorf("energy %g kWh > battery×ΔSoC %g kWh", d.EnergyKWh, stored)
		}
		if d.EnergyKWh <= 0 {
			t.Errorf("energy %g kWh", d.EnergyKWh)
		}
		if d.PeakKW > d.Class.MaxKW || d.PeakKW > d.VehicleMaxKW || d.PeakKW <= 0 {
			t.Errorf("peak %g kW, charger %g kW, vehicle %g kW", d.PeakKW, d.Class.MaxKW, d.VehicleMaxKW)
		}
		// Duration is whole seconds rounded up; energy rounded to Wh.
		if min := (d.EnergyKWh - 0.0005) / d.PeakKW * 3600; d.DurationSeconds < min-1e-6 {
			t.Errorf("duration %gs < energy/peak %gs", d.DurationSeconds, min)
		}
		if d.DurationSeconds != math.Trunc(d.DurationSeconds) || d.DurationSeconds > session.MaxDurationSeconds {
			t.Errorf("duration %g s", d.DurationSeconds)
		}
		wantTariff := p.ACTariff
		if d.Class.DC {
			wantTariff = p.DCTariff
		}
		if d.Tariff != wantTariff {
			t.Errorf("tariff %g, want %g", d.Tariff, wantTariff)
		}
		if diff := math.Abs(d.CostCents - (d.EnergyKWh*d.Tariff + p.SessionFee)); diff > 0.5 {
			t.Errorf("cost %g ≠ %g kWh × %g + %g", d.CostCents, d.EnergyKWh, d.Tariff, p.SessionFee)
		}
		if d.CostCents != math.Trunc(d.CostCents) {
			t.Errorf("cost %g not whole cents", d.CostCents)
		}
		if math.Abs(d.EnergyKWh*1000-math.Round(d.EnergyKWh*1000)) > 1e-6 {
			t.Errorf("energy %g not rounded to Wh", d.EnergyKWh)
		}
	})
}

// The closed-form curve must agree with a plain numerical integration of the model, both in
// time (energy = ∫P dt) and in SoC (duration = ∫ B/(100·P(soc)) dsoc).
func TestEnergyIsIntegralOfPower(t *testing.T) {
	forSessions(t, func(t *testing.T, p *Params, charger uint32, n uint64, d *Draw) {
		const steps = 4000
		dt := d.DurationSeconds / steps
		var energy, peak float64
		for i := 0; i < steps; i++ {
			pw := d.PowerAt((float64(i) + 0.5) * dt)
			energy += pw * dt / 3600
			peak = max(peak, pw)
		}
		if math.Abs(energy-d.EnergyKWh) > 0.003*d.EnergyKWh+0.002 {
			t.Errorf("∫P dt = %g kWh, energy %g kWh", energy, d.EnergyKWh)
		}
		if peak > d.PeakKW+1e-9 {
			t.Errorf("power reaches %g kW above peak %g kW", peak, d.PeakKW)
		}
		var hours float64
		ds := (d.EndSoC - d.StartSoC) / steps
		for i := 0; i < steps; i++ {
			soc := d.StartSoC + (float64(i)+0.5)*ds
			hours += d.BatteryKWh * ds / 100 / d.PowerAtSoC(soc)
		}
		if math.Abs(hours*3600-d.DurationSeconds) > 0.002*d.DurationSeconds+1 {
			t.Errorf("∫dE/P = %gs, duration %gs", hours*3600, d.DurationSeconds)
		}
	})
}

func TestDCTapersAboveKnee(t *testing.T) {
	d := Draw{Class: DCClasses[1], VehicleMaxKW: 200}
	if got := d.PowerAtSoC(KneeSoC); got != 150 {
		t.Fatalf("power at knee %g, want 150", got)
	}
	prev := d.PowerAtSoC(KneeSoC)
	for soc := KneeSoC + 1; soc <= 100; soc++ {
		got := d.PowerAtSoC(soc)
		if got >= prev {
			t.Fatalf("power at %g%% = %g, not below %g", soc, got, prev)
		}
		prev = got
	}
	if want := 150 * (1 - TaperDepth); math.Abs(prev-want) > 1e-9 {
		t.Fatalf("power at 100%% = %g, want %g", prev, want)
	}
	ac := Draw{Class: ACClasses[2], VehicleMaxKW: 11}
	if got := ac.PowerAtSoC(95); got != 11 {
		t.Fatalf("AC power at 95%% = %g, want vehicle limit 11", got)
	}
	// Some generated DC sessions must end in the taper, or the taper code is never exercised.
	p := testParams(7)
	p.DCShare = 1
	tapered := 0
	for c := uint32(1); c <= 200; c++ {
		d := p.Session(c, 0)
		if d.EndSoC > KneeSoC {
			tapered++
			if end := d.PowerAt(d.DurationSeconds - 1); end >= d.PeakKW {
				t.Fatalf("DC session ending at %g%%: power at end %g ≥ peak %g", d.EndSoC, end, d.PeakKW)
			}
		}
	}
	if tapered < 20 {
		t.Fatalf("only %d of 200 DC sessions end above the knee", tapered)
	}
}

func TestFilledSessionIsValidAndRoundTrips(t *testing.T) {
	end := time.Date(2025, 3, 4, 5, 6, 7, 891_234_567, time.Local)
	forSessions(t, func(t *testing.T, p *Params, charger uint32, n uint64, d *Draw) {
		var s session.Session
		id := int64(1_700_000_000_000_000) + int64(charger)*1000 + int64(n)
		cid := ChargerID(charger)
		d.Fill(&s, cid, id, end)
		if err := s.Validate(); err != nil {
			t.Fatalf("Validate: %v", err)
		}
		if got := s.EndedAt.Sub(s.StartedAt); got != time.Duration(s.DurationSeconds)*time.Second {
			t.Errorf("ended_at − started_at = %s, duration %gs", got, s.DurationSeconds)
		}
		if s.Timestamp != s.EndedAt.Unix() || !s.EndedAt.Equal(end.Truncate(time.Millisecond)) {
			t.Errorf("timestamp %d, ended_at %s, end %s", s.Timestamp, s.EndedAt, end)
		}
		topic := session.NewTopicBuilder("x").Topic(cid, s.ConnectorID, id)
		got, err := session.Decode(topic, s.AppendJSON(nil))
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		if got != s {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, s)
		}
	})
}

func TestDeterministicPerSeed(t *testing.T) {
	a, b := testParams(42), testParams(42)
	var first []Draw
	for c := uint32(1); c <= 100; c++ {
		for n := uint64(0); n < 10; n++ {
			first = append(first, a.Session(c, n))
		}
	}
	// Asked in another order (as another scheduler or shard would), same answers.
	for c := uint32(100); c >= 1; c-- {
		for n := uint64(9); n < 10; n-- {
			if got, want := b.Session(c, n), first[uint64(c-1)*10+n]; got != want {
				t.Fatalf("charger %d session %d: %+v, first %+v", c, n, got, want)
			}
			if a.Start(c, n) != b.Start(c, n) {
				t.Fatalf("charger %d session %d: start differs", c, n)
			}
		}
	}
	other := testParams(43)
	same := 0
	for c := uint32(1); c <= 100; c++ {
		if other.Session(c, 0).BatteryKWh == first[(c-1)*10].BatteryKWh {
			same++
		}
	}
	if same > 10 {
		t.Fatalf("seed 43 repeats %d of 100 batteries of seed 42", same)
	}
	// Within one charger, sessions differ.
	if first[0] == first[1] {
		t.Fatalf("sessions 0 and 1 of charger 1 are equal: %+v", first[0])
	}
}

func TestDCShare(t *testing.T) {
	for _, share := range []float64{0, 0.3, 1} {
		p := testParams(5)
		p.DCShare = share
		dc := 0
		const n = 20000
		for c := uint32(1); c <= n; c++ {
			if p.ClassOf(c).DC {
				dc++
			}
		}
		if got := float64(dc) / n; math.Abs(got-share) > 0.02 {
			t.Errorf("DC share %g: got %g", share, got)
		}
	}
}

// No lockstep: first starts of a fleet are spread uniformly over the interval, and jitter moves
// each start by at most ±jitter/2 interval while keeping one session per interval on average.
func TestStartsSpreadOverInterval(t *testing.T) {
	p := testParams(9)
	p.Jitter = 0.5
	const chargers, buckets = 20000, 10
	var hist [buckets]int
	for c := uint32(1); c <= chargers; c++ {
		hist[int(p.Phase(c)*buckets)]++
	}
	for i, h := range hist {
		if f := float64(h) / chargers; math.Abs(f-0.1) > 0.01 {
			t.Errorf("phase bucket %d holds %.3f of chargers, want 0.1", i, f)
		}
	}
	for c := uint32(1); c <= 200; c++ {
		prev := p.Start(c, 0)
		shifted := 0
		for n := uint64(1); n < 200; n++ {
			s := p.Start(c, n)
			if gap := s - prev; gap < 1-p.Jitter-1e-12 || gap > 1+p.Jitter+1e-12 {
				t.Fatalf("charger %d: gap %g between starts %d and %d", c, gap, n-1, n)
			}
			if off := s - float64(n) + 1 - p.Phase(c); math.Abs(off) > p.Jitter/2 {
				t.Fatalf("charger %d start %d shifted by %g", c, n, off)
			} else if math.Abs(off) > 0.01 {
				shifted++
			}
			prev = s
		}
		if shifted < 150 {
			t.Fatalf("charger %d: only %d of 199 starts jittered", c, shifted)
		}
	}
	p.Jitter = 0
	if got, want := p.Start(3, 7), 6+p.Phase(3); got != want {
		t.Fatalf("without jitter start = %g, want %g", got, want)
	}
}

func BenchmarkSession(b *testing.B) {
	p := testParams(1)
	b.ReportAllocs()
	var sink float64
	for i := 0; b.Loop(); i++ {
		d := p.Session(uint32(i%100000)+1, uint64(i/100000))
		sink += d.EnergyKWh
	}
	_ = sink
}

func BenchmarkSessionAppendJSON(b *testing.B) {
	p := testParams(1)
	d := p.Session(12345, 6)
	var s session.Session
	d.Fill(&s, "12345", 1_700_000_000_123_456, time.Now())
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func gridParams(seed uint64, jitter float64, interval time.Duration) Params {
	p := testParams(seed)
	p.Jitter = jitter
	p.Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	p.Interval = int64(interval)
	return p
}

// Slot times follow Start on the grid, strictly increase per charger, and their session IDs
// (microseconds) are distinct even at the smallest allowed gap.
func TestSlotTimesOnGrid(t *testing.T) {
	for _, tc := range []struct {
		jitter   float64
		interval time.Duration
	}{{0.2, time.Minute}, {0.5, 10 * time.Millisecond}, {0.9, 20 * time.Microsecond}, {0, 2 * time.Microsecond}} {
		p := gridParams(7, tc.jitter, tc.interval)
		for c := uint32(1); c <= 100; c++ {
			base := uint64(1_000_000_000 / max(1, tc.interval.Milliseconds())) // months after the epoch
			prevT, prevID := int64(0), int64(0)
			for n := base; n < base+300; n++ {
				at, id := p.SlotTime(c, n), p.SessionID(c, n)
				want := float64(p.Epoch) + p.Start(c, n)*float64(p.Interval)
				if math.Abs(float64(at)-want) > 1e-6*float64(at) {
					t.Fatalf("%+v charger %d slot %d at %d, Start says %.0f", tc, c, n, at, want)
				}
				if n > base && (at <= prevT || id <= prevID) {
					t.Fatalf("%+v charger %d slot %d: time %d id %d after %d/%d", tc, c, n, at, id, prevT, prevID)
				}
				if id >= 1<<53 {
					t.Fatalf("session ID %d beyond 2^53", id)
				}
				if got, ok := p.SlotOfID(c, id); !ok || got != n {
					t.Fatalf("%+v charger %d: SlotOfID(%d) = %d, %v, want %d", tc, c, id, got, ok, n)
				}
				if got := p.SlotAt(c, at); got != n {
					t.Fatalf("%+v charger %d: SlotAt(%d) = %d, want %d", tc, c, at, got, n)
				}
				if got := p.SlotAt(c, at+1); got != n+1 {
					t.Fatalf("%+v charger %d: SlotAt(%d+1) = %d, want %d", tc, c, at, got, n+1)
				}
				prevT, prevID = at, id
			}
		}
	}
}

// IDs of the simulation are recognised, foreign ones are not.
func TestSlotOfIDRejectsForeignIDs(t *testing.T) {
	p := gridParams(3, 0.2, time.Second)
	id := p.SessionID(5, 1000)
	for _, foreign := range []int64{id - 1, id + 1, id + 500_000, time.Now().UnixMicro(), 0, -1} {
		if n, ok := p.SlotOfID(5, foreign); ok {
			t.Errorf("foreign ID %d taken for slot %d", foreign, n)
		}
	}
	if _, ok := p.SlotOfID(6, id); ok {
		t.Errorf("charger 5's ID %d also valid for charger 6", id)
	}
	if p.SlotAt(5, p.Epoch-int64(time.Hour)) != 0 {
		t.Error("slots before the epoch")
	}
}

// A jitter of a whole interval, as the publisher clamps it (1 − MinSlotGap/interval), still
// keeps session IDs distinct at the smallest interval.
func TestFullJitterKeepsIDsDistinct(t *testing.T) {
	interval := 4 * time.Microsecond
	p := gridParams(5, 1-float64(MinSlotGap)/float64(interval), interval)
	for c := uint32(1); c <= 200; c++ {
		prev := int64(-1)
		for n := uint64(1 << 40); n < 1<<40+2000; n++ {
			id := p.SessionID(c, n)
			if id <= prev {
				t.Fatalf("charger %d slot %d: ID %d after %d", c, n, id, prev)
			}
			prev = id
		}
	}
}
