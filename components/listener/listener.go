package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/mqttclient"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

// appName identifies the listener to MongoDB (visible in server logs and currentOp).
const appName = "chargesim-listener"

// Listener consumes session messages and stores them. Build it with New, run it with Run.
type Listener struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	behind *behindDetector
	lim    *logLimiter
	filter string // the subscription, $share/<group>/... unless the group is empty

	p      *pipeline
	budget *byteBudget // payload bytes of pending messages (--max-pending-bytes)

	store      atomic.Pointer[store.Store]
	client     atomic.Value // mqtt.Client, set once Run has built it
	subscribed atomic.Bool
	stopping   chan struct{} // closed when Run starts shutting down
	released   atomic.Int64  // messages let go unacknowledged (shutdown, dead connection)
	stopOnce   sync.Once

	// Test hooks (nil in production).
	holdAck  func() bool               // see pipeline.holdAck
	mqttOpts func(*mqtt.ClientOptions) // adjusts the client options
}

// New validates nothing (call cfg.Validate first) and connects nothing: Run does. reg receives
// the listener's metrics (nil: not registered).
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register listener metrics: %w", err)
	}
	bm, err := newBehindMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register listener metrics: %w", err)
	}
	l := &Listener{
		cfg:      cfg,
		log:      log,
		m:        m,
		lim:      newLogLimiter(logInterval, nil),
		filter:   session.SharedSubscription(cfg.ShareGroup, session.SubscriptionFilter(cfg.MQTT.TopicPrefix)),
		stopping: make(chan struct{}),
		budget:   newByteBudget(cfg.MaxPendingBytes),
		behind:   newBehindDetector(cfg.LagObjective, bm, log),
	}
	l.p = newPipeline(pipelineConfig{
		batchSize:   cfg.BatchSize,
		interval:    cfg.FlushInterval,
		quiet:       min(quietFlush, cfg.FlushInterval),
		maxPending:  cfg.MaxPending,
		concurrency: cfg.WriteConcurrency,
		onLimit:     func(n int) { bm.writeLimit.Set(float64(n)) },
	}, l.write, m, log)
	l.p.onBlocked = l.behind.observeBlocked
	return l, nil
}

// Subscription returns the topic filter the listener subscribes to.
func (l *Listener) Subscription() string { return l.filter }

// Run connects to the store (retrying until it answers), then to the broker, and consumes until
// ctx is cancelled. It then stops taking messages, stores what it holds within
// cfg.ShutdownTimeout, acknowledges what was stored and disconnects; anything not stored stays
// unacknowledged and the broker redelivers it. It returns nil after a graceful shutdown. Run is
// called once per Listener.
func (l *Listener) Run(ctx context.Context) error {
	opts, err := l.cfg.MQTT.Options("listener")
	if err != nil {
		return fmt.Errorf("mqtt options: %w", err)
	}
	l.clientOptions(opts)
	st, err := store.ConnectRetry(ctx, l.cfg.Store, appName, l.log)
	if err != nil {
		return err
	}
	if st == nil {
		return nil // cancelled before the store answered: nothing received, nothing to flush
	}
	l.store.Store(st)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Close(cctx); err != nil {
			l.log.Warn("close store connection", "error", err)
		}
	}()

	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	l.p.holdAck = l.holdAck
	l.p.start(hard)
	go l.behind.run(l.stopping, func() int { return len(l.p.slots) })

	client := mqtt.NewClient(opts)
	l.client.Store(client)
	l.log.Info("connecting to broker", "url", redactURL(l.cfg.MQTT.URL), "client_id", opts.ClientID, "subscription", l.filter)
	tok := client.Connect() // with ConnectRetry the token completes once connected
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			l.shutdown(cancelHard)
			return fmt.Errorf("connect to broker %s: %w", redactURL(l.cfg.MQTT.URL), err)
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	l.shutdown(cancelHard)
	// Acks were handed to paho before this point, and paho writes them before DISCONNECT.
	client.Disconnect(250)
	l.m.connected.Set(0)
	l.log.Info("listener stopped")
	return nil
}

// shutdown stops consumption and waits for the final flush, up to the shutdown timeout.
func (l *Listener) shutdown(cancelHard context.CancelFunc) {
	l.stopOnce.Do(func() { close(l.stopping) })
	l.p.close()
	l.log.Info("shutting down: flushing pending messages", "pending", l.p.seq.len(), "timeout", l.cfg.ShutdownTimeout)
	t := time.NewTimer(l.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-l.p.done:
		l.log.Info("flushed all pending messages")
	case <-t.C:
		cancelHard()
		<-l.p.done
		l.log.Warn("shutdown timeout: messages not stored are left unacknowledged for redelivery",
			"unacknowledged", l.p.seq.len())
	}
}

func (l *Listener) clientOptions(o *mqtt.ClientOptions) {
	o.SetCleanSession(false) // the broker keeps our subscription and unacknowledged messages
	o.SetAutoAckDisabled(true)
	o.SetOrderMatters(true) // handler on paho's router goroutine: blocking it is our backpressure
	o.SetResumeSubs(false)  // we subscribe in OnConnect, every time
	// Messages of a resumed session can arrive right after CONNACK, before OnConnect has
	// subscribed (and so before any route exists): the default handler takes them all.
	o.SetDefaultPublishHandler(l.onMessage)
	o.SetOnConnectHandler(l.onConnect)
	o.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		l.subscribed.Store(false)
		l.m.connected.Set(0)
		l.log.Warn("connection to broker lost; reconnecting", "error", err)
	})
	o.SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
		l.log.Debug("reconnecting to broker")
	})
	brokerConnFor(o, l.cfg.MQTT.URL) // buffered reads, coalesced PUBACK writes (conn.go)
	if l.mqttOpts != nil {
		l.mqttOpts(o)
	}
}

// onConnect (re)subscribes. It runs on its own goroutine after every (re)connection.
func (l *Listener) onConnect(c mqtt.Client) {
	l.m.connected.Set(1)
	backoff := minBackoff
	for {
		select {
		case <-l.stopping:
			return
		default:
		}
		if !c.IsConnectionOpen() {
			return // lost again: the next OnConnect subscribes
		}
		// A resumed session already has the subscription; subscribing again is harmless and
		// covers a new session. The SUBACK can be late: a resumed session redelivers at once,
		// and while our handler blocks on a full pending queue paho reads nothing more.
		tok := c.Subscribe(l.filter, 1, nil) // nil: messages go to the default handler
		err := mqttclient.Wait(tok, 30*time.Second, "subscribe "+l.filter)
		if err == nil {
			if q, ok := tok.(*mqtt.SubscribeToken).Result()[l.filter]; ok && q > 2 {
				err = fmt.Errorf("subscribe %s: refused by the broker (return code %#x)", l.filter, q)
			}
		}
		if err == nil {
			l.subscribed.Store(true)
			l.log.Info("connected and subscribed", "subscription", l.filter)
			return
		}
		l.log.Error("subscription failed; retrying", "error", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-l.stopping:
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// onMessage runs on paho's router goroutine, one message at a time in receive order.
func (l *Listener) onMessage(c mqtt.Client, msg mqtt.Message) {
	l.m.received.Inc()
	size := int64(len(msg.Payload()))
	if !l.budget.acquire(size, l.stopping, c.IsConnectionOpen) {
		l.released.Add(1)
		return // stopping, or the connection is gone: unacknowledged, so redelivered
	}
	if !l.p.admit(l.stopping, c.IsConnectionOpen) {
		l.budget.release(size)
		l.released.Add(1)
		return
	}
	e := l.decode(budgeted{Message: msg, b: l.budget}, time.Now())
	if !l.p.submit(e) {
		l.budget.release(size)
		l.released.Add(1)
	}
}

// decode turns a message into the document to store: a session, or a rejection.
func (l *Listener) decode(msg mqtt.Message, now time.Time) *entry {
	e := &entry{msg: msg}
	topic, payload := msg.Topic(), msg.Payload()
	var err error
	if len(payload) > l.cfg.MaxPayloadBytes {
		err = &session.RejectError{Reason: session.ReasonOversized,
			Detail: fmt.Sprintf("payload of %d bytes exceeds --max-payload-bytes=%d", len(payload), l.cfg.MaxPayloadBytes)}
	} else {
		var s session.Session
		if s, err = session.Decode(topic, payload); err == nil {
			d := store.NewSessionDoc(s, topic, now)
			d.Encode() // here, while the previous write runs, not between two writes
			e.session = &d
			return e
		}
	}
	reason, detail := session.ReasonOf(err), err.Error()
	var re *session.RejectError
	if errors.As(err, &re) {
		detail = re.Detail
	}
	if reason == "" { // Decode promises a RejectError; keep the message anyway
		reason = session.ReasonBadJSON
	}
	l.m.rejected.WithLabelValues(string(reason)).Inc()
	if ok, suppressed := l.lim.allow(string(reason)); ok {
		l.log.Warn("message rejected; kept in the rejected collection", "reason", reason, "detail", detail,
			"topic", truncate(topic, 256), "size", len(payload), "suppressed", suppressed)
	}
	d := store.NewRejectedDoc(topic, payload, reason, detail, now)
	e.rejected = &d
	return e
}

// redactURL hides a password given in the broker URL (paho accepts user:pass@host).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func truncate(s string, n int) string { return session.TruncateUTF8(s, n) }

// write is the pipeline's sink: sessions and rejections of one batch, each an idempotent
// unordered insert, each done once even when the other has to be retried.
func (l *Listener) write(ctx context.Context, b *batch) error {
	st := l.store.Load()
	if !b.built {
		for _, e := range b.entries {
			if e.session != nil {
				b.sessions = append(b.sessions, *e.session)
			} else {
				b.rejected = append(b.rejected, *e.rejected)
			}
		}
		b.built = true
	}
	if !b.sessionsDone && len(b.sessions) > 0 {
		start := time.Now()
		r, err := st.InsertSessions(ctx, b.sessions)
		l.m.writeDuration.Observe(time.Since(start).Seconds())
		if err == nil && b.sessionsTried && len(r.Duplicates) > 0 {
			err = l.ownDuplicates(ctx, st, b.sessions, &r)
		}
		if err != nil {
			b.sessionsTried = true
			return err
		}
		b.sessionsDone = true
		if r.DeltaFailures > 0 {
			// The sessions are stored (and are acknowledged): only the API's provisional
			// totals miss them until their partition closes and is scanned.
			l.m.deltaFailures.Add(float64(r.DeltaFailures))
			l.log.Warn("stored sessions without their delta: the API undercounts them until their partition closes",
				"sessions", len(b.sessions), "error", r.DeltaErr)
		}
		stored := time.Now()
		l.m.stored.Add(float64(r.Inserted))
		l.m.duplicates.Add(float64(len(r.Duplicates)))
		settled := r.Duplicates
		for _, f := range r.Refused {
			settled = append(settled, f.Index)
		}
		for i := range b.sessions {
			if !slices.Contains(settled, i) {
				lag := max(0, stored.Sub(b.sessions[i].EndedAt).Seconds())
				l.m.lag.Observe(lag)
				l.behind.observeLag(lag)
			}
		}
		for _, f := range r.Refused {
			b.rejected = append(b.rejected, l.refused(b, f))
		}
	}
	if !b.rejectedDone && len(b.rejected) > 0 {
		start := time.Now()
		_, err := st.InsertRejected(ctx, b.rejected)
		l.m.writeDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			return err
		}
		b.rejectedDone = true
	}
	return nil
}

// ownDuplicates moves out of r.Duplicates the documents an earlier attempt of this batch stored:
// that attempt failed (a timeout, a dropped connection) after the server had applied it, so
// they are this delivery's inserts, not duplicates. A document is ours when its stored
// received_at is the one we wrote (received_at is per delivery, to the millisecond).
func (l *Listener) ownDuplicates(ctx context.Context, st *store.Store, docs []store.SessionDoc, r *store.WriteResult) error {
	written := make([]store.SessionDoc, len(r.Duplicates))
	for k, i := range r.Duplicates {
		written[k] = docs[i]
	}
	got, err := st.ReceivedAt(ctx, written)
	if err != nil {
		return err
	}
	// Only the first document of a key in the batch can have been stored by this batch; a
	// second delivery of it in the same batch is a duplicate even if received the same ms.
	first := make(map[string]int, len(written))
	for i := range docs {
		if _, ok := first[docs[i].ID]; !ok {
			first[docs[i].ID] = i
		}
	}
	dups := r.Duplicates[:0]
	for _, i := range r.Duplicates {
		if at, ok := got[docs[i].ID]; ok && first[docs[i].ID] == i && at.Equal(docs[i].ReceivedAt) {
			r.Inserted++
			continue
		}
		dups = append(dups, i)
	}
	r.Duplicates = dups
	return nil
}

// refused turns a session the store refused for good into a rejected document, so the batch
// (and every message acknowledged after it) goes on instead of failing forever.
func (l *Listener) refused(b *batch, f store.Refusal) store.RejectedDoc {
	d := b.sessions[f.Index]
	payload := []byte(nil)
	for _, e := range b.entries {
		if e.session != nil && e.session.ID == d.ID {
			if m, ok := e.msg.(interface{ Payload() []byte }); ok {
				payload = m.Payload()
			}
			break
		}
	}
	if payload == nil {
		payload = d.AppendJSON(nil) // the decoded form: the original is gone
	}
	reason := session.ReasonStoreRefused
	detail := fmt.Sprintf("store refused the document (code %d): %s", f.Code, f.Message)
	l.m.rejected.WithLabelValues(string(reason)).Inc()
	if ok, suppressed := l.lim.allow(string(reason)); ok {
		l.log.Warn("store refused a session; kept in the rejected collection", "reason", reason, "detail", detail,
			"topic", truncate(d.Topic, 256), "suppressed", suppressed)
	}
	return store.NewRejectedDoc(d.Topic, payload, reason, detail, d.ReceivedAt)
}

// Ready reports whether the listener can do its work: connected and subscribed to the broker,
// and the store answering ping. While it is falling behind it is still ready, and says so
// with a *cli.Degraded error (/readyz: 200 with the detail).
func (l *Listener) Ready(ctx context.Context) error {
	c, _ := l.client.Load().(mqtt.Client)
	if err := mqttclient.Ready(c); err != nil {
		return err
	}
	if !l.subscribed.Load() {
		return errors.New("not subscribed yet")
	}
	st := l.store.Load()
	if st == nil {
		return errors.New("store not connected yet")
	}
	if err := st.Ping(ctx); err != nil {
		return err
	}
	if s := l.behind.Status(); s != "" {
		return &cli.Degraded{Detail: "listener falling behind: " + s}
	}
	return nil
}
