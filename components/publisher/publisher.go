// Package publisher simulates a fleet of EV chargers and publishes every charging session
// they complete to MQTT at QoS 1.
//
// # Fleet and time
//
// Charger c (ID "c", 1..--chargers) belongs to this process iff (c-1) % shard-count ==
// shard-index. Its power class, the phase of its schedule and every session are derived from
// (--seed, c, session number) by package sim: nothing is stored per charger but 24 bytes of
// schedule, so one process carries a million chargers with one scheduler goroutine.
//
// Each charger completes one session per --session-interval of simulated time (shifted by
// --session-jitter), i.e. every interval/--time-scale of wall-clock time. When a session's event
// fires it has just ended: ended_at (and timestamp) is the wall-clock time of the event, and
// started_at = ended_at − duration, the duration being simulated. So the listener's
// end-to-end lag (receive time − ended_at) is meaningful at any time scale, but recorded
// sessions of one connector overlap in time whenever a session lasts longer than the
// wall-clock spacing of that connector's sessions, which a time scale above 1 makes the
// rule (a 2-hour AC charge, recorded every few seconds).
//
// # Slots and session IDs
//
// Time is a fixed grid anchored at --epoch (sim.Params.SlotTime): slot n of charger c fires at
// a time that depends only on (seed, epoch, interval/time scale, jitter, c, n), and its session
// ID is that time in microseconds (below 2^53 until the year 2255). The scheduler fires a slot
// when the wall clock reaches it. So a session is a pure function of (seed, charger, slot): a
// restarted publisher, a clock step or two shards briefly owning one charger produce the same
// keys, and the store's idempotence makes the repeats harmless. A clock step back only delays
// the next slots (no slot fires twice in a process); a step forward fires the skipped slots
// late (none is lost).
//
// # Run records and resuming
//
// With --record-runs the publisher writes a run record (store.RunDoc: grid, shard, from, to)
// and moves its end forward every --heartbeat-interval to the slot time before which every
// session was acknowledged by the broker. A starting publisher resumes from the earliest end
// of the simulation's runs that stopped within --resume-window: what a killed or rolled-over
// process (or the old shard layout of a resharding) may have left unpublished is published
// again, under the same keys. The audit (components/audit) recomputes the expected sessions
// from these records.
//
// # Delivery
//
// One MQTT connection per process, clean session, automatic reconnect with capped backoff.
// Publishing is asynchronous within a window of --max-inflight unacknowledged publishes: the
// scheduler never waits for a PUBACK, only for a free slot of the window (backpressure: late
// sessions are published late, never dropped). One collector goroutine settles the slots in
// order: PUBACK → published (and its latency observed); an error → published again. Messages
// unacknowledged when the connection drops stay in paho's store and are resent after the
// reconnect. On shutdown the scheduler stops, the window is flushed within
// ShutdownTimeout, and whatever is still unacknowledged then is counted as failed.
package publisher

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/mqttclient"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/session"
)

// Publisher is the simulated fleet of one process and its MQTT connection.
type Publisher struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	params sim.Params
	fleet  *fleet
	topics session.TopicBuilder
	store  *ackStore
	client mqtt.Client

	// The window: free holds the slots not in use; pending the slots sent and not yet settled,
	// in publish order. Both have room for every slot, so handing a slot over never blocks.
	slots   int
	free    chan *slot
	pending chan *slot
	inUse   atomic.Int64

	// Progress, in slot times (Unix ns), for the run record: every slot before firedBefore was
	// fired; every slot before settledBefore was acknowledged, unless a retry is outstanding.
	firedBefore   atomic.Int64
	settledBefore atomic.Int64
	retrying      atomic.Int64
	lost          atomic.Bool // sessions were given up at shutdown: only settledBefore counts

	// Replays after a reconnect: lostAt is when the connection was lost (0: connected);
	// replays carries windows to publish again to the scheduler.
	lostAt  atomic.Int64
	replays chan window
	from    int64 // the slot time the fleet started at

	ran atomic.Bool
}

// slot is one place in the window. Its buffers are reused from session to session: paho keeps
// a reference to the payload until the PUBACK, and a slot is only reused after that.
type slot struct {
	tok      mqtt.Token
	at       int64 // slot time (Unix ns)
	topic    string
	topicBuf []byte
	payload  []byte
	sentAt   time.Time
	attempts int
}

// New builds a publisher: its fleet schedule, metrics (registered on reg; nil: a private
// registry) and MQTT client. It does not connect; Run does.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	p := &Publisher{
		cfg:     cfg,
		log:     log,
		m:       m,
		params:  paramsOf(cfg),
		topics:  session.NewTopicBuilder(cfg.MQTT.TopicPrefix),
		store:   newAckStore(),
		slots:   cfg.MaxInflight,
		free:    make(chan *slot, cfg.MaxInflight),
		pending: make(chan *slot, cfg.MaxInflight),
		replays: make(chan window, 16),
	}
	p.from = p.now()
	p.fleet = newFleet(p.params, cfg.Chargers, cfg.ShardIndex, cfg.ShardCount, p.from)
	for range p.slots {
		p.free <- &slot{}
	}
	m.chargers.Set(float64(p.fleet.len()))
	m.rate.Set(cfg.SessionRate())

	opts, err := cfg.MQTT.Options("publisher")
	if err != nil {
		return nil, fmt.Errorf("mqtt options: %w", err)
	}
	// Clean session: the broker keeps nothing for a publisher. Unacknowledged publishes live
	// in the client's store (ackStore) and are resent after a reconnect.
	opts.SetCleanSession(true).
		SetStore(p.store).
		SetConnectionNotificationHandler(p.onConnection)
	p.client = mqtt.NewClient(opts)
	return p, nil
}

// paramsOf returns the physics settings of cfg.
func paramsOf(cfg Config) sim.Params {
	return sim.Params{
		Seed:       cfg.Seed,
		Connectors: cfg.Connectors,
		DCShare:    cfg.DCShare,
		ACTariff:   cfg.ACTariff,
		DCTariff:   cfg.DCTariff,
		SessionFee: cfg.SessionFee,
		Jitter:     cfg.Jitter(),
		Epoch:      cfg.Epoch.UnixNano(),
		Interval:   int64(cfg.WallInterval()),
	}
}

// onConnection keeps the connected gauge and logs connection changes. paho calls it from
// goroutines, possibly out of order, so the gauge follows the client's state, not the event.
func (p *Publisher) onConnection(c mqtt.Client, n mqtt.ConnectionNotification) {
	if c.IsConnectionOpen() {
		p.m.connected.Set(1)
	} else {
		p.m.connected.Set(0)
	}
	switch n := n.(type) {
	case mqtt.ConnectionNotificationConnected:
		p.log.Info("connected to MQTT broker", "url", p.cfg.MQTT.URL)
		p.scheduleReplay()
	case mqtt.ConnectionNotificationLost:
		p.lostAt.CompareAndSwap(0, p.now())
		p.log.Warn("lost MQTT connection, reconnecting", "url", p.cfg.MQTT.URL, "err", n.Reason)
	case mqtt.ConnectionNotificationFailed:
		p.log.Warn("MQTT connection attempt failed", "url", p.cfg.MQTT.URL, "err", n.Reason)
	}
}

// scheduleReplay arranges, after a reconnect, that the sessions from ReplayBefore before the
// connection was lost up to ReplayAfter after the reconnect are published again once
// ReplayAfter has passed. Why: a broker that restarted may have lost what it had acknowledged
// but not delivered (kill -9), and mosquitto does not restore the `$share` subscriptions of
// offline sessions, so until every listener has reconnected and subscribed again the sessions
// published are acknowledged and dropped. Deterministic keys make the replay harmless.
func (p *Publisher) scheduleReplay() {
	lost := p.lostAt.Swap(0)
	if lost == 0 || p.cfg.ReplayAfter <= 0 {
		return
	}
	from := lost - int64(p.cfg.ReplayBefore)
	time.AfterFunc(p.cfg.ReplayAfter, func() {
		select {
		case p.replays <- window{from: from, to: p.now()}:
		default:
			p.log.Error("too many replays pending; this one is dropped", "from", time.Unix(0, from).UTC())
		}
	})
}

// now is the wall clock in Unix nanoseconds (Config.Clock in tests).
func (p *Publisher) now() int64 {
	if p.cfg.Clock != nil {
		return p.cfg.Clock.Now().UnixNano()
	}
	return time.Now().UnixNano()
}

// Ready reports whether the publisher holds a connection to the broker.
func (p *Publisher) Ready(context.Context) error { return mqttclient.Ready(p.client) }

// Run connects (retrying until ctx is done), then simulates the fleet until ctx is done, then
// shuts down gracefully: stops scheduling, flushes the window within ShutdownTimeout, counts
// what is left as failed and disconnects. It returns nil after a shutdown.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.ran.CompareAndSwap(false, true) {
		return errAlreadyRun
	}
	p.log.Info("publisher starting", "url", p.cfg.MQTT.URL, "chargers", p.fleet.len(),
		"fleet", p.cfg.Chargers, "shard", p.cfg.ShardIndex, "shards", p.cfg.ShardCount,
		"sessions_per_second", p.cfg.SessionRate(), "max_inflight", p.slots)
	if p.fleet.len() == 0 {
		p.log.Warn("this shard owns no charger: --shard-index is beyond --chargers")
	}
	// Scheduling starts only once connected: with a clean session paho wipes its store when
	// the first connection comes up, which would lose anything published before.
	tok := p.client.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("connect to MQTT broker %s: %w", p.cfg.MQTT.URL, err)
		}
	case <-ctx.Done():
		p.client.Disconnect(0)
		p.log.Info("publisher stopped before connecting")
		return nil
	}
	var rec *runRecorder
	if p.cfg.RecordRuns {
		var err error
		if rec, err = p.startRun(ctx); err != nil || rec == nil {
			p.client.Disconnect(250)
			return unlessStopped(ctx, err)
		}
	}
	abandon := make(chan struct{})
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		p.collect(abandon)
	}()
	beat := make(chan struct{})
	hctx, stopBeat := context.WithCancel(ctx)
	go func() {
		defer close(beat)
		if rec != nil {
			rec.heartbeat(hctx)
		}
	}()
	p.schedule(ctx)
	p.shutdown(abandon, collected)
	stopBeat()
	<-beat
	if rec != nil {
		rec.finish()
	}
	return nil
}

// schedule fires the fleet's sessions as they fall due until ctx is done.
func (p *Publisher) schedule(ctx context.Context) {
	done := ctx.Done()
	defer func() {
		// Every slot before the fleet's next one has been fired: the run's exact end.
		if next, ok := p.fleet.peek(); ok {
			p.firedBefore.Store(next)
		}
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var s session.Session
	for {
		select {
		case <-done:
			return
		case r := <-p.replays:
			if !p.replay(ctx, r, &s) {
				return
			}
			continue
		default:
		}
		next, ok := p.fleet.peek()
		if !ok {
			select {
			case <-done:
				return
			case r := <-p.replays:
				if !p.replay(ctx, r, &s) {
					return
				}
				continue
			}
		}
		p.firedBefore.Store(next) // every slot before next has been fired
		// The wall clock, not the monotonic one: slots are fixed points in wall-clock time. The
		// wait is capped so that a clock step forward is noticed soon.
		if wait := time.Duration(next - p.now()); wait > 0 {
			timer.Reset(min(wait, maxWait))
			select {
			case <-done:
				return
			case <-timer.C:
			case r := <-p.replays:
				timer.Stop()
				if !p.replay(ctx, r, &s) {
					return
				}
			}
			continue
		}
		sl := p.freeSlot(done)
		if sl == nil {
			return
		}
		p.fire(p.fleet, sl, &s)
	}
}

// freeSlot returns a free slot of the window, waiting for PUBACKs when it is full (a session
// fires late rather than not at all); nil when done.
func (p *Publisher) freeSlot(done <-chan struct{}) *slot {
	select {
	case sl := <-p.free:
		return sl
	default:
	}
	select {
	case sl := <-p.free:
		return sl
	case <-done:
		return nil
	}
}

// replay publishes again every slot of this process's chargers in [r.from, r.to), from a
// transient fleet (24 bytes per charger while it runs). Same slots, same keys: sessions the
// store already holds are dropped as duplicates; sessions a broker lost are stored now. It
// returns false when ctx ended first.
func (p *Publisher) replay(ctx context.Context, r window, s *session.Session) bool {
	from := max(r.from, p.from)
	if from >= r.to {
		return true
	}
	f := newFleet(p.params, p.cfg.Chargers, p.cfg.ShardIndex, p.cfg.ShardCount, from)
	n := 0
	for {
		if next, ok := f.peek(); !ok || next >= r.to {
			break
		}
		sl := p.freeSlot(ctx.Done())
		if sl == nil {
			return false
		}
		p.fire(f, sl, s)
		p.m.replayed.Inc()
		n++
	}
	p.log.Info("replayed sessions after a reconnect", "sessions", n,
		"from", time.Unix(0, from).UTC(), "to", time.Unix(0, r.to).UTC())
	return true
}

// window is a stretch of slot times [from, to), Unix nanoseconds.
type window struct{ from, to int64 }

// maxWait bounds one wait of the scheduler, so it rereads the wall clock at least this often.
const maxWait = time.Second

// fire generates the next session of f into sl and publishes it without waiting.
func (p *Publisher) fire(f *fleet, sl *slot, s *session.Session) {
	p.build(f, sl, s)
	p.inUse.Add(1)
	p.m.inflight.Inc()
	p.m.scheduled.Inc()
	sl.tok = p.client.Publish(sl.topic, 1, false, sl.payload)
	p.pending <- sl
}

// build takes the next slot of f (the fleet, or a replay's) and encodes its session's topic and payload into sl. The
// session ends at the slot's time, whenever it is built.
func (p *Publisher) build(f *fleet, sl *slot, s *session.Session) {
	charger, n, at := f.fire()
	d := p.params.Session(charger, n)
	cid := sim.ChargerID(charger)
	id := at / 1000 // p.params.SessionID(charger, n), without computing the slot again
	d.Fill(s, cid, id, time.Unix(0, at))
	sl.payload = s.AppendJSON(sl.payload[:0])
	sl.topicBuf = p.topics.Append(sl.topicBuf[:0], cid, s.ConnectorID, id)
	sl.topic = string(sl.topicBuf)
	sl.at = at
	sl.sentAt = time.Now()
	sl.attempts = 0
}

// collect settles the window's slots in publish order until abandon is closed.
func (p *Publisher) collect(abandon <-chan struct{}) {
	for {
		select {
		case sl := <-p.pending:
			if !p.settle(sl, abandon) {
				return
			}
		case <-abandon:
			return
		}
	}
}

// settle waits for one slot's publish to be acknowledged (then frees the slot) or to fail
// (then publishes it again at the back of the window). It returns false when abandoned.
func (p *Publisher) settle(sl *slot, abandon <-chan struct{}) bool {
	select {
	case <-sl.tok.Done():
	case <-abandon:
		return false
	}
	if err := sl.tok.Error(); err != nil {
		return p.retry(sl, err, abandon)
	}
	// A token without error is a PUBACK, unless paho completed it because it is resending the
	// message from its store after a reconnect (see ackStore): then wait for that PUBACK.
	var mid uint16
	if pt, ok := sl.tok.(*mqtt.PublishToken); ok {
		mid = pt.MessageID()
	}
	if acked := p.store.pending(mid, sl.payload); acked != nil {
		select {
		case <-acked:
		case <-abandon:
			return false
		}
	}
	p.m.latency.Observe(time.Since(sl.sentAt).Seconds())
	if sl.attempts > 0 {
		p.retrying.Add(-1)
	}
	if p.retrying.Load() == 0 && sl.at > p.settledBefore.Load() {
		// Slots are settled in firing (time) order unless a retry moved one to the back.
		p.settledBefore.Store(sl.at)
	}
	p.m.published.Inc()
	p.m.inflight.Dec()
	p.inUse.Add(-1)
	sl.tok = nil
	p.free <- sl
	return true
}

// Retry backoff: a failing publish usually means a broken connection that paho is already
// re-establishing, so retries need not be fast, only certain.
const (
	retryBase = 50 * time.Millisecond
	retryMax  = 5 * time.Second
)

func (p *Publisher) retry(sl *slot, err error, abandon <-chan struct{}) bool {
	sl.attempts++
	if sl.attempts == 1 {
		p.retrying.Add(1)
	}
	p.m.retries.Inc()
	if sl.attempts == 1 || sl.attempts%10 == 0 {
		p.log.Warn("publish failed, retrying", "topic", sl.topic, "attempt", sl.attempts, "err", err)
	}
	delay := min(retryBase<<min(sl.attempts-1, 10), retryMax)
	t := time.NewTimer(delay)
	select {
	case <-t.C:
	case <-abandon:
		t.Stop()
		return false
	}
	// paho may still hold the old payload in its store and resend it later; a fresh copy
	// keeps the session that reuses this slot next from overwriting it.
	sl.payload = bytes.Clone(sl.payload)
	sl.tok = p.client.Publish(sl.topic, 1, false, sl.payload)
	p.pending <- sl
	return true
}

// shutdown flushes the window within ShutdownTimeout, counts the rest as failed, and
// disconnects.
func (p *Publisher) shutdown(abandon chan struct{}, collected <-chan struct{}) {
	start := time.Now()
	p.log.Info("publisher stopping: flushing in-flight sessions", "inflight", p.inUse.Load(), "timeout", p.cfg.ShutdownTimeout)
	deadline := time.NewTimer(p.cfg.ShutdownTimeout)
	defer deadline.Stop()
	for returned := 0; returned < p.slots; returned++ {
		select {
		case <-p.free:
			continue
		case <-deadline.C:
		}
		break
	}
	close(abandon)
	<-collected
	if n := p.inUse.Swap(0); n > 0 {
		p.lost.Store(true)
		p.m.failed.Add(float64(n))
		p.m.inflight.Sub(float64(n))
		p.log.Error("shutdown timeout: sessions left unacknowledged", "failed", n, "timeout", p.cfg.ShutdownTimeout)
	}
	p.client.Disconnect(250)
	p.m.connected.Set(0)
	p.log.Info("publisher stopped", "flush", time.Since(start).Round(time.Millisecond))
}

var _ cli.Component = (*Publisher)(nil)

// unlessStopped is err unless ctx ended: a stop while the run is being recorded (a Ctrl-C
// right after start) published nothing, so there is nothing to record, and is not a failure.
func unlessStopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = nil
	}
	return err
}
