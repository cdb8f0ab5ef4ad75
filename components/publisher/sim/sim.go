// Package sim is the physics of the simulated fleet: which power class a charger has, when it
// starts its sessions, and what each session delivers.
//
// Nothing here is stored per charger. Every value is a pure function of (seed, charger ID) or
// (seed, charger ID, slot), drawn from a PCG stream seeded with those numbers, so a
// million-charger fleet costs no memory beyond its schedule, and a run is reproducible whatever
// the order in which a scheduler (or a shard) happens to ask.
//
// Time is a fixed grid anchored at a configured epoch (Params.Epoch, Params.Interval): slot n
// of a charger fires at SlotTime(charger, n) and its session ID is that time in microseconds.
// So a session — key, timing and physics — is a pure function of (seed, charger, slot): a
// restarted publisher, a clock step or two shards briefly owning one charger produce the same
// keys, which the store's idempotence turns into no-ops, and an audit can recompute exactly
// which sessions a window must hold.
package sim

import (
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/chargesim/chargesim/components/session"
)

// Class is a charger's power class.
type Class struct {
	Name  string  // power_class on the wire
	MaxKW float64 // what the charger can deliver
	DC    bool    // DC fast charger: tapers above KneeSoC, DC tariff
}

// AC and DC classes with the share of chargers of that kind that have them.
var (
	ACClasses = []Class{{"AC7.4", 7.4, false}, {"AC11", 11, false}, {"AC22", 22, false}}
	acWeights = []float64{0.3, 0.5, 0.2}
	DCClasses = []Class{{"DC50", 50, true}, {"DC150", 150, true}, {"DC350", 350, true}}
	dcWeights = []float64{0.35, 0.45, 0.2}
)

// Physical constants of the model.
const (
	// KneeSoC is the state of charge above which DC power tapers.
	KneeSoC = 80.0
	// TaperDepth is the fraction of the knee power lost between KneeSoC and 100 %: a car at
	// 100 % would still draw 20 % of its knee power. The taper is linear in SoC, so power
	// decays exponentially in time (see Draw.PowerAt).
	TaperDepth = 0.8
	// Vehicle ranges.
	MinBatteryKWh, MaxBatteryKWh = 40.0, 100.0
	MinStartSoC, MaxStartSoC     = 5.0, 60.0
)

// Vehicle AC acceptance (on-board charger) and its frequency.
var (
	vehicleACKW      = []float64{7.4, 11, 22}
	vehicleACWeights = []float64{0.25, 0.6, 0.15}
)

// Params are the fleet-wide settings the physics and the schedule depend on.
type Params struct {
	Seed       uint64
	Connectors int     // connectors per charger (≥ 1)
	DCShare    float64 // share of DC chargers, 0..1
	ACTariff   float64 // cents per kWh
	DCTariff   float64 // cents per kWh
	SessionFee float64 // cents per session
	Jitter     float64 // fraction of the interval by which a start is shifted, 0..1

	// The time grid: slot n of every charger belongs to the interval [Epoch + (n−1)·Interval,
	// Epoch + (n+1)·Interval) (see SlotTime). Epoch is Unix nanoseconds, Interval wall-clock
	// nanoseconds (the session interval divided by the time scale). Both are configuration,
	// never the clock of a process, so every process computes the same slots.
	Epoch    int64
	Interval int64
}

// Stream domains keep the per-charger and per-session streams apart even for equal numbers.
const (
	domainCharger = 0x9e3779b97f4a7c15
	domainSession = 0xc2b2ae3d27d4eb4f
	// mixCharger spreads charger numbers over the stream's high word (odd: a bijection).
	mixCharger = 0xd6e8feb86659fd93
)

// rng is a PCG stream with the few draws the model needs. It lives on the stack.
type rng struct{ p rand.PCG }

// newRNG seeds the stream of (seed, domain, a, b): distinct (a, b) give distinct PCG states,
// with a 64-bit b so that slot numbers never wrap.
func newRNG(seed, domain, a, b uint64) rng {
	var r rng
	r.p.Seed(seed^domain+a*mixCharger, b)
	return r
}

// float returns a uniform value in [0, 1).
func (r *rng) float() float64 { return float64(r.p.Uint64()>>11) * 0x1p-53 }

func (r *rng) between(lo, hi float64) float64 { return lo + (hi-lo)*r.float() }

func (r *rng) pick(weights []float64) int {
	u := r.float()
	for i, w := range weights {
		if u < w {
			return i
		}
		u -= w
	}
	return len(weights) - 1
}

func (p *Params) chargerRNG(charger uint32) rng {
	return newRNG(p.Seed, domainCharger, uint64(charger), 0)
}

// ClassOf returns the power class of a charger: DC with probability DCShare.
func (p *Params) ClassOf(charger uint32) Class {
	r := p.chargerRNG(charger)
	_ = r.float() // the first draw is the phase
	if r.float() < p.DCShare {
		return DCClasses[r.pick(dcWeights)]
	}
	return ACClasses[r.pick(acWeights)]
}

// Phase returns where in the interval a charger's schedule starts, in [0, 1): chargers are
// spread uniformly over the interval so a fleet never fires in lockstep.
func (p *Params) Phase(charger uint32) float64 {
	r := p.chargerRNG(charger)
	return r.float()
}

// Start returns when slot n (0, 1, …) of a charger ends, in intervals since the epoch:
// n − 1 + phase + Jitter·(u − ½) with u uniform per slot. Starts stay ordered (two
// consecutive ones are at least 1 − Jitter intervals apart) and the mean rate is exactly one
// per interval.
func (p *Params) Start(charger uint32, n uint64) float64 {
	return float64(n) - 1 + p.offset(charger, n)
}

// offset is the slot's place in its interval: phase + shift, in (−½, 1.5).
func (p *Params) offset(charger uint32, n uint64) float64 {
	return p.Phase(charger) + p.shift(charger, n)
}

// shift is the jitter of start n: Jitter·(u − ½), u the first draw of the session's stream.
func (p *Params) shift(charger uint32, n uint64) float64 {
	if p.Jitter == 0 {
		return 0
	}
	r := newRNG(p.Seed, domainSession, uint64(charger), n)
	return p.Jitter * (r.float() - 0.5)
}

// SlotTime returns when slot n of a charger fires (the session ends), in Unix nanoseconds:
// Epoch + (n−1)·Interval + offset·Interval. The whole intervals are integer arithmetic and the
// offset is one rounded product (the explicit conversion forbids a fused multiply-add), so
// every process and architecture computes the same nanosecond. It saturates at MaxInt64.
func (p *Params) SlotTime(charger uint32, n uint64) int64 {
	if p.Interval <= 0 {
		return p.Epoch
	}
	if lim := (math.MaxInt64 - p.Epoch) / p.Interval; lim < 3 || n > uint64(lim-3) {
		return math.MaxInt64
	}
	off := int64(float64(p.offset(charger, n) * float64(p.Interval)))
	return p.Epoch + (int64(n)-1)*p.Interval + off
}

// SlotAt returns the first slot of a charger that fires at or after t (Unix nanoseconds); slots
// before the epoch do not exist (the result is at least 0).
func (p *Params) SlotAt(charger uint32, t int64) uint64 {
	n := uint64(0)
	if p.Interval > 0 && t > p.Epoch {
		// Slot n fires in [Epoch+(n−1.5)·I, Epoch+(n+0.5)·I): start two below the estimate.
		n = uint64((t-p.Epoch)/p.Interval) + 1
		n -= min(n, 3)
	}
	for p.SlotTime(charger, n) < t {
		n++
	}
	return n
}

// SessionID is the wire ID of slot n of a charger: the slot's time in Unix microseconds. Two
// slots of a charger are at least (1 − Jitter)·Interval apart, which the publisher keeps above
// MinSlotGap, so IDs never repeat per charger; below 2^53 until the year 2255.
func (p *Params) SessionID(charger uint32, n uint64) int64 {
	return p.SlotTime(charger, n) / 1000
}

// MinSlotGap is the least wall-clock time between two slots of a charger that keeps session
// IDs (microseconds) distinct: a microsecond, plus room for the rounding of SlotTime.
const MinSlotGap = 2 * time.Microsecond

// SlotOfID returns the slot whose session ID is id, if any: the inverse of SessionID, used to
// tell keys the simulation produces from foreign ones.
func (p *Params) SlotOfID(charger uint32, id int64) (uint64, bool) {
	if id < 0 || id > math.MaxInt64/1000 {
		return 0, false
	}
	t := id * 1000
	if t < p.Epoch-2*p.Interval {
		return 0, false
	}
	n := p.SlotAt(charger, t)
	if p.SessionID(charger, n) == id {
		return n, true
	}
	return 0, false
}

// connector draws the connector of a session: the second draw of its stream.
func (r *rng) connector(connectors int) int {
	return 1 + int(r.p.Uint64()%uint64(max(connectors, 1)))
}

// Connector returns the connector of slot n of a charger (what Session(charger, n).Connector
// is, without the physics): with the session ID it makes the session's key.
func (p *Params) Connector(charger uint32, n uint64) int {
	r := newRNG(p.Seed, domainSession, uint64(charger), n)
	_ = r.float()
	return r.connector(p.Connectors)
}

// Draw is one simulated session: the vehicle, the charge, its duration and cost. Energies in
// kWh, power in kW, SoC in percent, time in seconds, money in cents.
type Draw struct {
	Class        Class
	Connector    int
	BatteryKWh   float64
	VehicleMaxKW float64 // what the vehicle accepts on this class (AC on-board charger or DC limit)
	StartSoC     float64
	EndSoC       float64
	PeakKW       float64 // min(charger, vehicle) at the start SoC
	Tariff       float64 // cents per kWh
	Fee          float64 // cents per session

	// Results, rounded as published: energy to 3 decimals, duration up to whole seconds, cost
	// to whole cents.
	EnergyKWh       float64
	DurationSeconds float64
	CostCents       float64

	// The power curve: flat at PeakKW for flatHours, then P(t) = taperKW·exp(−lambda·t) for
	// taperHours (lambda per hour).
	flatHours, taperHours, taperKW, lambda float64
}

// Session draws the session of slot n of a charger. Deterministic in (Seed, charger, n).
func (p *Params) Session(charger uint32, n uint64) Draw {
	var d Draw
	d.Class = p.ClassOf(charger)
	r := newRNG(p.Seed, domainSession, uint64(charger), n)
	_ = r.float() // the first draw is the start jitter

	d.Connector = r.connector(p.Connectors)
	d.BatteryKWh = round(r.between(MinBatteryKWh, MaxBatteryKWh), 1)
	d.StartSoC = round(r.between(MinStartSoC, MaxStartSoC), 1)
	if d.Class.DC {
		// DC sessions mostly stop near the knee, some push on into the taper.
		d.EndSoC = round(r.between(70, 95), 1)
		// DC acceptance scales with pack size (1.0C … 2.6C), whole kW.
		d.VehicleMaxKW = math.Round(d.BatteryKWh * r.between(1.0, 2.6))
		d.Tariff = p.DCTariff
	} else {
		d.EndSoC = round(r.between(80, 100), 1)
		d.VehicleMaxKW = vehicleACKW[r.pick(vehicleACWeights)]
		d.Tariff = p.ACTariff
	}
	d.integrate()
	d.EnergyKWh = round(d.BatteryKWh*(d.EndSoC-d.StartSoC)/100, 3)
	d.Fee = p.SessionFee
	d.CostCents = math.Round(d.EnergyKWh*d.Tariff + d.Fee)
	return d
}

// knee returns the SoC above which power tapers for this draw (100: no taper).
func (d *Draw) knee() float64 {
	if d.Class.DC {
		return KneeSoC
	}
	return 100
}

// PowerAtSoC is the power the charge runs at when the battery is at soc percent: the lower of
// charger and vehicle limit, tapering linearly above the knee on DC.
func (d *Draw) PowerAtSoC(soc float64) float64 {
	pm := min(d.Class.MaxKW, d.VehicleMaxKW)
	k := d.knee()
	if soc <= k {
		return pm
	}
	return pm * (1 - TaperDepth*(soc-k)/(100-k))
}

// integrate solves the charge in closed form. Below the knee power is constant; above it
// dP/dt = −c·Pm·(100/B)·P, so power decays exponentially and the taper lasts
// ln(P_a/P_end)/λ hours. This is exact where a time-stepped integration only approaches it,
// and costs the same for a 5-minute or a 12-hour session.
func (d *Draw) integrate() {
	pm := min(d.Class.MaxKW, d.VehicleMaxKW)
	k := d.knee()
	d.PeakKW = d.PowerAtSoC(d.StartSoC)
	if d.StartSoC < k {
		flatEnd := min(d.EndSoC, k)
		d.flatHours = d.BatteryKWh * (flatEnd - d.StartSoC) / 100 / pm
	}
	if d.EndSoC > k {
		from := max(d.StartSoC, k)
		d.taperKW = d.PowerAtSoC(from)
		d.lambda = pm * TaperDepth / (100 - k) * 100 / d.BatteryKWh
		d.taperHours = math.Log(d.taperKW/d.PowerAtSoC(d.EndSoC)) / d.lambda
	}
	// Whole seconds, rounded up so duration ≥ energy/peak holds after rounding.
	d.DurationSeconds = math.Ceil((d.flatHours+d.taperHours)*3600 - 1e-9)
}

// PowerAt is the power drawn t seconds into the session (0 after it ends).
func (d *Draw) PowerAt(t float64) float64 {
	h := t / 3600
	switch {
	case h < 0 || h >= d.flatHours+d.taperHours:
		return 0
	case h < d.flatHours:
		return d.PeakKW
	default:
		return d.taperKW * math.Exp(-d.lambda*(h-d.flatHours))
	}
}

// Fill writes the draw into s as the session sessionID of chargerID that ended at end
// (truncated to milliseconds, the wire precision). started_at = end − duration.
func (d *Draw) Fill(s *session.Session, chargerID string, sessionID int64, end time.Time) {
	end = time.UnixMilli(end.UnixMilli()).UTC()
	*s = session.Session{
		SessionID:         sessionID,
		EnergyKWh:         d.EnergyKWh,
		DurationSeconds:   d.DurationSeconds,
		CostCents:         d.CostCents,
		Timestamp:         end.Unix(),
		ChargerID:         chargerID,
		ConnectorID:       d.Connector,
		StartedAt:         end.Add(-time.Duration(d.DurationSeconds) * time.Second),
		EndedAt:           end,
		PowerClass:        d.Class.Name,
		PeakPowerKW:       d.PeakKW,
		BatteryKWh:        d.BatteryKWh,
		StartSoCPercent:   d.StartSoC,
		EndSoCPercent:     d.EndSoC,
		TariffCentsPerKWh: d.Tariff,
		SessionFeeCents:   d.Fee,
	}
}

// ChargerID is the wire form of a charger number.
func ChargerID(charger uint32) string { return strconv.FormatUint(uint64(charger), 10) }

func round(v float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(v*p) / p
}
