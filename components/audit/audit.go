// Package audit proves, for a window of time, that the pipeline stored exactly the sessions
// the simulation produced: nothing lost, nothing foreign, nothing twice.
//
// It works because sessions are deterministic (package sim): slot n of charger c has a key,
// a time and a connector that are a pure function of (seed, grid, charger, slot). Publishers
// record which part of the fleet they simulated and when (store.RunDoc, written by Recorder),
// so the audit recomputes every key the window must hold, looks them up by `_id` (the only
// index FerretDB v1 uses, and MongoDB's cheapest query) and scans the window once for stored
// sessions that are not expected.
//
// Report fields:
//   - Expected: distinct keys of slots in the window covered by some publisher run.
//   - Stored: how many of those are stored; Missing = Expected − Stored (keys listed, bounded).
//   - Unexpected: stored sessions in the window whose key the simulation never produces
//     (foreign data, a publisher with other settings that recorded no run).
//   - Duplicates: stored sessions under a foreign key that repeat an expected session (same
//     charger, connector and end time): the same session stored twice under two keys.
//   - OutsideRuns: stored sessions with a valid simulation key but outside every recorded
//     run (a publisher that died after its last heartbeat had published them). Not an error.
package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// MaxListed bounds each list of keys in a report.
const MaxListed = 100

// MaxExpected bounds the sessions one audit may expect: beyond it, audit shorter windows.
const MaxExpected = 50_000_000

// Window is what to audit: sessions that ended in [From, To), of one charger when Charger is
// set. Times are truncated to milliseconds, the stored precision.
type Window struct {
	From, To time.Time
	Charger  string
}

// Report is an audit's result.
type Report struct {
	From           time.Time `json:"from"`
	To             time.Time `json:"to"`
	Charger        string    `json:"charger,omitempty"`
	Runs           int       `json:"runs"`
	Expected       int64     `json:"expected"`
	Stored         int64     `json:"stored"`
	Missing        int64     `json:"missing"`
	Unexpected     int64     `json:"unexpected"`
	Duplicates     int64     `json:"duplicates"`
	OutsideRuns    int64     `json:"outside_runs"`
	MissingKeys    []string  `json:"missing_keys"`
	UnexpectedKeys []string  `json:"unexpected_keys"`
	DuplicateKeys  []string  `json:"duplicate_keys"`
	Complete       bool      `json:"complete"` // no missing, unexpected or duplicate session
}

// Store is the part of the store the audit reads (implemented by *store.Store).
type Store interface {
	RunsOverlapping(ctx context.Context, fromNs, toNs int64) ([]store.RunDoc, error)
	LookupSessions(ctx context.Context, ids []string) (map[string]bool, error)
	ScanSessions(ctx context.Context, from, to time.Time, charger string, fn func(store.AuditedSession) error) error
}

// ParamsOf returns the simulation parameters a run record fixes (those the keys depend on).
func ParamsOf(r store.RunDoc) sim.Params {
	return sim.Params{Seed: uint64(r.Seed), Connectors: r.Connectors, Jitter: r.Jitter, Epoch: r.EpochNs, Interval: r.IntervalNs} //nolint:gosec // the seed's bits round-trip through int64
}

// grid is a set of runs that share the simulation parameters (the same keys).
type grid struct {
	p    sim.Params
	runs []store.RunDoc
}

// span is a covered stretch of slot times [from, to).
type span struct{ from, to int64 }

// auditor holds one audit's state.
type auditor struct {
	st       Store
	from, to int64
	grids    []*grid
	rep      Report
	batch    []string
	spans    []span
	keys     map[string]bool
}

// Run audits a window.
func Run(ctx context.Context, st Store, w Window) (Report, error) {
	from, to := w.From.UTC().Truncate(time.Millisecond), w.To.UTC().Truncate(time.Millisecond)
	if !from.Before(to) {
		return Report{}, errors.New("audit: the window is empty (from must be before to)")
	}
	var charger uint32
	if w.Charger != "" {
		c, err := strconv.ParseUint(w.Charger, 10, 32)
		if err != nil || c == 0 || sim.ChargerID(uint32(c)) != w.Charger {
			return Report{}, fmt.Errorf("audit: charger %q is not a simulated charger ID (1, 2, …)", w.Charger)
		}
		charger = uint32(c)
	}
	a := &auditor{st: st, from: from.UnixNano(), to: to.UnixNano(), keys: map[string]bool{}}
	a.rep = Report{From: from, To: to, Charger: w.Charger, MissingKeys: []string{}, UnexpectedKeys: []string{}, DuplicateKeys: []string{}}
	runs, err := st.RunsOverlapping(ctx, a.from, a.to)
	if err != nil {
		return Report{}, fmt.Errorf("audit: %w", err)
	}
	a.rep.Runs = len(runs)
	fleet := 0
	for _, r := range runs {
		if r.Shards < 1 || r.Shard < 0 || r.Shard >= r.Shards || r.IntervalNs <= 0 {
			return Report{}, fmt.Errorf("audit: run %s has an invalid shard %d/%d or interval %d", r.ID, r.Shard, r.Shards, r.IntervalNs)
		}
		fleet = max(fleet, r.Chargers)
		p := ParamsOf(r)
		i := slices.IndexFunc(a.grids, func(g *grid) bool { return g.p == p })
		if i < 0 {
			a.grids = append(a.grids, &grid{p: p})
			i = len(a.grids) - 1
		}
		a.grids[i].runs = append(a.grids[i].runs, r)
	}
	lo, hi := uint32(1), uint32(fleet) //nolint:gosec // fleet ≤ publisher.MaxChargers
	if charger != 0 {
		lo, hi = charger, min(charger, hi)
	}
	for c := lo; c <= hi && c != 0; c++ {
		if err := a.expect(ctx, c); err != nil {
			return Report{}, err
		}
	}
	if err := a.lookup(ctx); err != nil {
		return Report{}, err
	}
	if err := st.ScanSessions(ctx, from, to, w.Charger, a.classify); err != nil {
		return Report{}, fmt.Errorf("audit: %w", err)
	}
	a.rep.Missing = a.rep.Expected - a.rep.Stored
	a.rep.Complete = a.rep.Missing == 0 && a.rep.Unexpected == 0 && a.rep.Duplicates == 0
	return a.rep, nil
}

// owns reports whether run r simulated charger c.
func owns(r *store.RunDoc, c uint32) bool {
	return int(c) <= r.Chargers && (int(c)-1)%r.Shards == r.Shard
}

// covered returns the merged stretches of slot times within the window during which some run
// of g simulated charger c.
func (a *auditor) covered(g *grid, c uint32) []span {
	a.spans = a.spans[:0]
	for i := range g.runs {
		r := &g.runs[i]
		if owns(r, c) {
			if f, t := max(r.FromNs, a.from), min(r.ToNs, a.to); f < t {
				a.spans = append(a.spans, span{f, t})
			}
		}
	}
	slices.SortFunc(a.spans, func(x, y span) int { return cmp.Compare(x.from, y.from) })
	merged := a.spans[:0]
	for _, s := range a.spans {
		if n := len(merged); n > 0 && s.from <= merged[n-1].to {
			merged[n-1].to = max(merged[n-1].to, s.to)
			continue
		}
		merged = append(merged, s)
	}
	return merged
}

// expect enumerates the expected keys of charger c and queues them for lookup.
func (a *auditor) expect(ctx context.Context, c uint32) error {
	cid := sim.ChargerID(c)
	clear(a.keys)
	for _, g := range a.grids {
		for _, s := range a.covered(g, c) {
			for n := g.p.SlotAt(c, s.from); ; n++ {
				t := g.p.SlotTime(c, n)
				if t >= s.to {
					break
				}
				key := session.Key(cid, g.p.Connector(c, n), t/1000)
				if a.keys[key] {
					continue // the same key from two grids: one session
				}
				a.keys[key] = true
				a.rep.Expected++
				if a.rep.Expected > MaxExpected {
					return fmt.Errorf("audit: more than %d expected sessions: audit a shorter window or one charger", MaxExpected)
				}
				a.batch = append(a.batch, key)
				if len(a.batch) == store.MaxLookupIDs {
					if err := a.lookup(ctx); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// lookup checks the queued keys against the store.
func (a *auditor) lookup(ctx context.Context) error {
	if len(a.batch) == 0 {
		return nil
	}
	found, err := a.st.LookupSessions(ctx, a.batch)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	for _, k := range a.batch {
		if found[k] {
			a.rep.Stored++
		} else if len(a.rep.MissingKeys) < MaxListed {
			a.rep.MissingKeys = append(a.rep.MissingKeys, k)
		}
	}
	a.batch = a.batch[:0]
	return nil
}

// coveredAt reports whether a run of g simulated charger c at slot time t.
func coveredAt(g *grid, c uint32, t int64) bool {
	for i := range g.runs {
		if r := &g.runs[i]; owns(r, c) && r.FromNs <= t && t < r.ToNs {
			return true
		}
	}
	return false
}

// classify sorts a stored session of the window: expected (counted by lookup), outside every
// run, a duplicate of an expected session under another key, or unexpected.
func (a *auditor) classify(d store.AuditedSession) error {
	c64, err := strconv.ParseUint(d.ChargerID, 10, 32)
	c := uint32(c64)
	if err != nil || c == 0 || sim.ChargerID(c) != d.ChargerID || d.ID != session.Key(d.ChargerID, d.ConnectorID, d.SessionID) {
		a.unexpected(d.ID)
		return nil
	}
	valid := false
	for _, g := range a.grids {
		if n, ok := g.p.SlotOfID(c, d.SessionID); ok && g.p.Connector(c, n) == d.ConnectorID {
			valid = true
			if coveredAt(g, c, g.p.SlotTime(c, n)) {
				return nil // expected: counted by the lookup
			}
		}
	}
	if valid {
		a.rep.OutsideRuns++
		return nil
	}
	// A foreign key: is it an expected session again (same charger, connector, end time)?
	end := d.EndedAt.UnixNano()
	for _, g := range a.grids {
		for n := g.p.SlotAt(c, end); ; n++ {
			t := g.p.SlotTime(c, n)
			if t >= end+int64(time.Millisecond) {
				break
			}
			if g.p.Connector(c, n) == d.ConnectorID && coveredAt(g, c, t) {
				a.rep.Duplicates++
				if len(a.rep.DuplicateKeys) < MaxListed {
					a.rep.DuplicateKeys = append(a.rep.DuplicateKeys, d.ID)
				}
				return nil
			}
		}
	}
	a.unexpected(d.ID)
	return nil
}

func (a *auditor) unexpected(key string) {
	a.rep.Unexpected++
	if len(a.rep.UnexpectedKeys) < MaxListed {
		a.rep.UnexpectedKeys = append(a.rep.UnexpectedKeys, key)
	}
}
