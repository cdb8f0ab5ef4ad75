package publisher

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/store"
)

// runRecorder keeps this process's run record (store.RunDoc) up to date.
type runRecorder struct {
	p   *Publisher
	st  *store.Store
	doc store.RunDoc
}

// keyParams are the parameters session keys depend on (what a run record holds).
func keyParams(p sim.Params) sim.Params {
	return sim.Params{Seed: p.Seed, Connectors: p.Connectors, Jitter: p.Jitter, Epoch: p.Epoch, Interval: p.Interval}
}

// startRun opens the store, finds where this simulation's earlier runs stopped, moves the
// fleet back to there (at most ResumeWindow) and records the new run. It returns nil, nil when
// ctx ends first.
func (p *Publisher) startRun(ctx context.Context) (*runRecorder, error) {
	st, err := store.Open(p.cfg.Store, "chargesim-publisher")
	if err != nil {
		return nil, fmt.Errorf("run records: %w", err)
	}
	now := p.now()
	earliest := now - int64(p.cfg.ResumeWindow)
	var runs []store.RunDoc
	for backoff := 250 * time.Millisecond; ; backoff = min(2*backoff, 10*time.Second) {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		runs, err = st.RunsOverlapping(qctx, earliest, math.MaxInt64)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			_ = st.Close(context.Background())
			return nil, nil //nolint:nilerr // stopping while the store is down is no failure
		}
		if !store.Unavailable(err) {
			_ = st.Close(context.Background())
			return nil, fmt.Errorf("run records: %w", err)
		}
		p.log.Warn("store unreachable; waiting to read run records", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			_ = st.Close(context.Background())
			return nil, nil
		case <-time.After(backoff):
		}
	}
	// Resume from the earliest end among the simulation's recent runs: a run that stopped (or
	// was killed) there may have left its later slots unpublished, and its chargers may be
	// ours now. Re-publishing is harmless: the same slots have the same keys.
	from := now
	for _, r := range p.resumeFrom(runs, now) {
		from = min(from, max(r.ToNs, earliest))
	}
	p.fleet.reset(from)
	p.from = from
	host, _ := os.Hostname()
	rec := &runRecorder{p: p, st: st, doc: store.RunDoc{
		ID:         fmt.Sprintf("%s-%d-%dof%d", host, now, p.cfg.ShardIndex, p.cfg.ShardCount),
		Seed:       int64(p.params.Seed), //nolint:gosec // the seed's bits
		Chargers:   p.cfg.Chargers,
		Connectors: p.cfg.Connectors,
		Shard:      p.cfg.ShardIndex,
		Shards:     p.cfg.ShardCount,
		EpochNs:    p.params.Epoch,
		IntervalNs: p.params.Interval,
		Jitter:     p.params.Jitter,
		FromNs:     from,
		ToNs:       from,
		Host:       host,
		StartedAt:  time.Unix(0, now).UTC(),
		UpdatedAt:  time.Unix(0, now).UTC(),
	}}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := st.InsertRun(ictx, rec.doc); err != nil {
		_ = st.Close(context.Background())
		return nil, err
	}
	p.log.Info("run recorded", "run", rec.doc.ID, "resumed_from", time.Unix(0, from).UTC(), "behind", time.Duration(now-from))
	return rec, nil
}

// resumeFrom returns the runs of this simulation whose end may have left slots unpublished
// that this process must publish again: runs that stopped (cleanly, or silent for three
// heartbeats, or this very shard's predecessor, which cannot still be running) and that no
// other run took over from where they stopped. Runs still alive need nothing: their chargers
// are simulated, and when they stop, the next process to start picks up behind them.
func (p *Publisher) resumeFrom(runs []store.RunDoc, now int64) []store.RunDoc {
	mine := keyParams(p.params)
	stale := now - 3*int64(p.cfg.HeartbeatInterval)
	var out []store.RunDoc
	for _, r := range runs {
		if audit.ParamsOf(r) != mine {
			continue
		}
		predecessor := r.Shard == p.cfg.ShardIndex && r.Shards == p.cfg.ShardCount
		if !r.Ended && !predecessor && r.UpdatedAt.UnixNano() > stale {
			continue
		}
		if !slices.ContainsFunc(runs, func(o store.RunDoc) bool { return takesOver(o, r) }) {
			out = append(out, r)
		}
	}
	return out
}

// takesOver reports whether run o simulated every charger of run r from where r stopped on.
func takesOver(o, r store.RunDoc) bool {
	if o.ID == r.ID || audit.ParamsOf(o) != audit.ParamsOf(r) || o.FromNs > r.ToNs || o.ToNs <= r.ToNs || o.Chargers < r.Chargers {
		return false
	}
	// o owns every charger of r iff r's shards refine o's: c ≡ r.Shard (mod r.Shards) implies
	// c ≡ o.Shard (mod o.Shards).
	return r.Shards%o.Shards == 0 && r.Shard%o.Shards == o.Shard
}

// progress is the slot time before which every slot of this process was acknowledged.
func (p *Publisher) progress() int64 {
	// settledBefore holds whenever it is read: it only moves while no retry is outstanding,
	// and sessions given up at shutdown come after it. firedBefore holds once nothing is in
	// flight (read first: anything fired before it was read has settled if inUse is 0 after).
	fired := p.firedBefore.Load()
	settled := p.settledBefore.Load()
	if p.inUse.Load() == 0 && p.retrying.Load() == 0 && !p.lost.Load() {
		settled = max(settled, fired)
	}
	return max(settled, p.from)
}

// heartbeat moves the run's end forward every HeartbeatInterval until ctx is done.
func (r *runRecorder) heartbeat(ctx context.Context) {
	t := time.NewTicker(r.p.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.advance(ctx, false)
		}
	}
}

func (r *runRecorder) advance(ctx context.Context, ended bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	to := r.p.progress()
	if err := r.st.AdvanceRun(ctx, r.doc.ID, to, ended); err != nil {
		r.p.log.Warn("run record not advanced", "run", r.doc.ID, "err", err)
	}
}

// finish records the run's final end and closes the store.
func (r *runRecorder) finish() {
	r.advance(context.Background(), true)
	_ = r.st.Close(context.Background())
}
