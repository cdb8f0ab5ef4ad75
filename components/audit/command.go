package audit

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/store"
)

// Config is `chargesim audit`'s configuration; see docs/configuration.md.
type Config struct {
	Store   store.Config
	From    string        // --from (RFC 3339); with --to, a fixed window
	To      string        // --to
	Last    time.Duration // --last: without --from/--to, the window [now−settle−last, now−settle)
	Settle  time.Duration // --settle: how long after a session's end it must be stored
	Charger string        // --charger
	Every   time.Duration // --every: 0 audits once and exits; else audits periodically, serving metrics
	Timeout time.Duration // --timeout: bound of one audit

	from, to time.Time
}

// Register adds the flags.
func (c *Config) Register(fs *flag.FlagSet) {
	c.Store.Register(fs)
	fs.StringVar(&c.From, "from", "", "window start (RFC 3339); with --to: audit that fixed window")
	fs.StringVar(&c.To, "to", "", "window end (RFC 3339), exclusive")
	fs.DurationVar(&c.Last, "last", 10*time.Minute, "without --from/--to: audit the sessions that ended in the last this long, before --settle")
	fs.DurationVar(&c.Settle, "settle", time.Minute, "without --from/--to: leave out sessions that ended this recently (still on their way)")
	fs.StringVar(&c.Charger, "charger", "", "audit one charger only")
	fs.DurationVar(&c.Every, "every", 0, "0: audit once, print the report as JSON, exit 1 unless complete; else audit this often and export the result as metrics on --http-addr")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "time limit of one audit")
}

// Validate checks the settings.
func (c *Config) Validate() error {
	if (c.From == "") != (c.To == "") {
		return cli.Invalid("from", c.From, "set both --from and --to, or neither")
	}
	if c.From != "" {
		var err error
		if c.from, err = time.Parse(time.RFC3339Nano, c.From); err != nil {
			return cli.Invalid("from", c.From, "must be an RFC 3339 time")
		}
		if c.to, err = time.Parse(time.RFC3339Nano, c.To); err != nil {
			return cli.Invalid("to", c.To, "must be an RFC 3339 time")
		}
		if !c.from.Before(c.to) {
			return cli.Invalid("to", c.To, "must be later than --from")
		}
		if c.Every > 0 {
			return cli.Invalid("every", c.Every, "a fixed window (--from/--to) is audited once")
		}
	}
	switch {
	case c.Last <= 0:
		return cli.Invalid("last", c.Last, "must be > 0")
	case c.Settle < 0:
		return cli.Invalid("settle", c.Settle, "must be ≥ 0")
	case c.Every < 0:
		return cli.Invalid("every", c.Every, "must be ≥ 0")
	case c.Timeout <= 0:
		return cli.Invalid("timeout", c.Timeout, "must be > 0")
	}
	if c.Charger != "" {
		if _, err := ParseCharger(c.Charger); err != nil {
			return cli.Invalid("charger", c.Charger, "must be a simulated charger ID: 1, 2, …")
		}
	}
	return c.Store.Validate()
}

// Window returns the window to audit at now.
func (c *Config) Window(now time.Time) Window {
	if !c.from.IsZero() {
		return Window{From: c.from, To: c.to, Charger: c.Charger}
	}
	to := now.Add(-c.Settle)
	return Window{From: to.Add(-c.Last), To: to, Charger: c.Charger}
}

// Command is `chargesim audit`.
func Command(ctx context.Context, args []string) error {
	var cfg Config
	common, log, err := cli.Setup("audit",
		"Compare the sessions the simulation produced in a window with the stored ones: expected, stored, missing, unexpected, duplicates.",
		args, ":9094", &cfg)
	if err != nil {
		return err
	}
	if cfg.Every == 0 {
		return Once(ctx, cfg, os.Stdout)
	}
	reg := cli.NewRegistry()
	p, err := NewPeriodic(cfg, log, reg)
	if err != nil {
		return err
	}
	return cli.RunWithOps(ctx, log, common, reg, p)
}

// Once audits cfg's window, writes the report to w as JSON and fails unless it is complete.
func Once(ctx context.Context, cfg Config, w io.Writer) error {
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	st, err := store.Open(cfg.Store, "chargesim-audit")
	if err != nil {
		return err
	}
	defer func() { _ = st.Close(context.Background()) }()
	rep, err := Run(cctx, st, cfg.Window(time.Now()))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if !rep.Complete {
		return fmt.Errorf("incomplete: %d missing, %d unexpected, %d duplicates of %d expected", rep.Missing, rep.Unexpected, rep.Duplicates, rep.Expected)
	}
	return nil
}

// Periodic audits the sliding window every cfg.Every and exports each result as metrics.
// An operator or `chargesim run` runs it in-process over its own store (NewPeriodicOn).
//
// It audits incrementally: the window is kept as consecutive chunks, each audited on its own
// (a report is a sum over sessions, so the chunks' reports add up to the window's). A pass
// audits the chunk that settled since the last one, audits again the chunks that showed a
// difference (a session still on its way arrives; a loss stays), and reuses the clean ones.
// On a store that scans to answer a range (FerretDB), re-reading the whole window every pass
// cost more than ingestion itself: a 5-minute window at 5,000 sessions/s is 1.5 million
// sessions read every 15 s. A clean chunk is not read again: a session deleted from the store
// after its chunk was audited is found by a one-off audit (`chargesim audit`, the API's
// /api/v1/audit), not by the periodic one.
type Periodic struct {
	cfg    Config
	log    *slog.Logger
	m      *Metrics
	st     Store
	owned  *store.Store // opened by NewPeriodic, closed by Run
	chunks []Report     // the audited window, oldest first, contiguous
}

// NewPeriodic opens cfg.Store and registers the audit metrics on reg.
func NewPeriodic(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Periodic, error) {
	st, err := store.Open(cfg.Store, "chargesim-audit")
	if err != nil {
		return nil, err
	}
	p, err := NewPeriodicOn(st, cfg, log, reg)
	if err != nil {
		_ = st.Close(context.Background())
		return nil, err
	}
	p.owned = st
	return p, nil
}

// NewPeriodicOn audits st (cfg.Store is not used) and registers the audit metrics on reg.
func NewPeriodicOn(st Store, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Periodic, error) {
	if cfg.Every <= 0 || cfg.Timeout <= 0 {
		return nil, fmt.Errorf("audit: periodic audit needs every > 0 and timeout > 0 (got %s, %s)", cfg.Every, cfg.Timeout)
	}
	m, err := NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Periodic{cfg: cfg, log: log, m: m, st: st}, nil
}

// Ready reports whether the store answers.
func (p *Periodic) Ready(ctx context.Context) error {
	if p.owned == nil {
		return nil
	}
	return p.owned.Ping(ctx)
}

// Run audits until ctx is done.
func (p *Periodic) Run(ctx context.Context) error {
	if p.owned != nil {
		defer func() { _ = p.owned.Close(context.Background()) }()
	}
	t := time.NewTicker(p.cfg.Every)
	defer t.Stop()
	for {
		p.once(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Periodic) once(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	start := time.Now()
	rep, err := p.AuditAt(cctx, start)
	p.m.Observe(rep, err, time.Since(start))
	switch {
	case err != nil && ctx.Err() == nil:
		p.log.Error("audit failed", "err", err)
	case err != nil:
	case rep.Complete:
		p.log.Info("audit complete", "from", rep.From, "to", rep.To, "expected", rep.Expected, "stored", rep.Stored, "outside_runs", rep.OutsideRuns)
	default:
		p.log.Warn("audit found differences", "from", rep.From, "to", rep.To, "expected", rep.Expected, "missing", rep.Missing,
			"unexpected", rep.Unexpected, "duplicates", rep.Duplicates, "missing_keys", rep.MissingKeys, "unexpected_keys", rep.UnexpectedKeys)
	}
}

// AuditAt brings the chunks up to date with the window at now and returns their sum. Chunk
// edges are multiples of the store's partition width, if it has partitions (a chunk then reads
// exactly its own partitions), else of the audit period.
func (p *Periodic) AuditAt(ctx context.Context, now time.Time) (Report, error) {
	w := p.cfg.Window(now)
	align := p.cfg.Every
	if ps, ok := p.st.(interface {
		PartitionWidth(context.Context) (time.Duration, error)
	}); ok {
		width, err := ps.PartitionWidth(ctx)
		if err != nil {
			return Report{}, fmt.Errorf("audit: %w", err)
		}
		if width > 0 {
			align = width
		}
	}
	from, to := w.From.UTC().Truncate(align), w.To.UTC().Truncate(align)
	// Chunks that left the window go; a window that moved back (a clock step) starts over.
	for len(p.chunks) > 0 && !p.chunks[0].To.After(from) {
		p.chunks = p.chunks[1:]
	}
	if len(p.chunks) > 0 && p.chunks[len(p.chunks)-1].To.After(to) {
		p.chunks = nil
	}
	for i, c := range p.chunks {
		if c.Complete {
			continue
		}
		rep, err := p.chunk(ctx, Window{From: c.From, To: c.To, Charger: w.Charger})
		if err != nil {
			return Report{}, err
		}
		p.chunks[i] = rep
	}
	next := from
	if len(p.chunks) > 0 {
		next = p.chunks[len(p.chunks)-1].To
	}
	// New chunks of at most one period each: a pass that runs out of time keeps what it did.
	step := max(align, p.cfg.Every.Truncate(align))
	for next.Before(to) {
		end := next.Add(step)
		if end.After(to) {
			end = to
		}
		rep, err := p.chunk(ctx, Window{From: next, To: end, Charger: w.Charger})
		if err != nil {
			return Report{}, err
		}
		p.chunks = append(p.chunks, rep)
		next = end
	}
	if len(p.chunks) == 0 {
		return Report{}, errors.New("audit: the window is empty (--last is shorter than one partition)")
	}
	return sumReports(p.chunks), nil
}

// chunk audits one chunk: by counts when the store can count and they agree (countCheck),
// else by reading its keys.
func (p *Periodic) chunk(ctx context.Context, w Window) (Report, error) {
	if rep, ok, err := countCheck(ctx, p.st, w); err != nil || ok {
		return rep, err
	}
	return Run(ctx, p.st, w)
}

// sumReports adds up the reports of consecutive windows (lists stay bounded by MaxListed).
func sumReports(reps []Report) Report {
	sum := Report{From: reps[0].From, To: reps[len(reps)-1].To, Charger: reps[0].Charger, Complete: true,
		MissingKeys: []string{}, UnexpectedKeys: []string{}, DuplicateKeys: []string{}, OutsideKeys: []string{}}
	add := func(dst *[]string, src []string) {
		*dst = append(*dst, src[:min(len(src), MaxListed-len(*dst))]...)
	}
	for _, r := range reps {
		sum.Runs = max(sum.Runs, r.Runs) // runs span chunks: the largest count, not a sum
		sum.Expected += r.Expected
		sum.Stored += r.Stored
		sum.Missing += r.Missing
		sum.Unexpected += r.Unexpected
		sum.Duplicates += r.Duplicates
		sum.OutsideRuns += r.OutsideRuns
		sum.Complete = sum.Complete && r.Complete
		add(&sum.MissingKeys, r.MissingKeys)
		add(&sum.UnexpectedKeys, r.UnexpectedKeys)
		add(&sum.DuplicateKeys, r.DuplicateKeys)
		add(&sum.OutsideKeys, r.OutsideKeys)
	}
	return sum
}
