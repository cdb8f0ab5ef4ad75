package broker

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// routeHook closes two holes mochi leaves between a publisher's PUBACK and a subscriber's
// session, without patching mochi:
//
//   - mochi acknowledges a QoS 1/2 publish before it routes it to the subscribers' sessions
//     (and before a storage hook has written it), so a broker stopped or killed in between
//     loses a message the publisher already counts as delivered. Here OnPublish routes the
//     message itself, synchronously, through the inline client, and tells mochi to skip its own
//     routing: the PUBACK is written only once every subscriber's session holds the message
//     (and, with --data-dir, once it is on disk).
//   - A client taking over its persistent session (a listener restarted under the same client
//     ID) makes mochi clone the old session's in-flight messages and then clear the old session;
//     a message routed to the old session in between is dropped without a trace, and the
//     clearing subtracts messages still held by the new session from the in-flight count. Here
//     routing waits while a takeover is in progress: OnSessionEstablish (called just before
//     mochi's takeover) registers it, and routing resumes once the new client has replaced the
//     old one.
//
// Once the broker is stopping, QoS 1/2 publishes are refused (no PUBACK), so none is
// acknowledged that the closing store could no longer record; publishers resend them to the
// restarted broker.
type routeHook struct {
	mqtt.HookBase
	server *mqtt.Server

	// gate: routing holds it shared; registering a takeover and closing hold it exclusively,
	// so both wait until the messages being routed have reached their sessions.
	gate    sync.RWMutex
	closing bool
	mu      sync.Mutex
	// takeovers maps a client ID to the old client being taken over.
	takeovers map[string]*mqtt.Client
	// injected counts the publishes routed here: mochi counts each of them received twice.
	injected atomic.Int64
}

func newRouteHook(server *mqtt.Server) *routeHook {
	return &routeHook{server: server, takeovers: map[string]*mqtt.Client{}}
}

func (h *routeHook) ID() string { return "chargesim-route" }

func (h *routeHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnSessionEstablish}, []byte{b})
}

// OnSessionEstablish runs just before mochi moves an existing session to the connecting client.
func (h *routeHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.server.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	h.gate.Lock()
	h.mu.Lock()
	h.takeovers[cl.ID] = old
	h.mu.Unlock()
	h.gate.Unlock()
}

// OnPublish routes a client's QoS 1/2 publish before mochi acknowledges it.
func (h *routeHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Qos == 0 {
		return pk, nil // our own injection below, or no delivery guarantee asked for
	}
	h.gate.RLock()
	defer h.gate.RUnlock()
	if h.closing {
		return pk, packets.ErrRejectPacket // no PUBACK: the publisher resends after reconnecting
	}
	h.waitTakeovers()
	inline, ok := h.server.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return pk, packets.ErrRejectPacket
	}
	// The copy keeps the packet ID (validity checks want one); mochi does not track the inline
	// client's inbound IDs. Its origin becomes the inline client, which only matters to MQTT 5
	// no-local subscriptions of the publisher itself.
	out := pk.Copy(true)
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false // mochi resolved it into TopicName
	if err := h.server.InjectPacket(inline, out); err != nil {
		return pk, packets.ErrRejectPacket
	}
	h.injected.Add(1)
	// Routed (and retained, if asked): mochi only acknowledges it.
	return pk, packets.CodeSuccessIgnore
}

// waitTakeovers returns once no session takeover is between cloning and replacing the old
// client. A takeover takes microseconds to milliseconds (it copies the in-flight messages).
func (h *routeHook) waitTakeovers() {
	for {
		h.mu.Lock()
		for id, old := range h.takeovers {
			if cur, ok := h.server.Clients.Get(id); !ok || cur != old {
				delete(h.takeovers, id)
			}
		}
		n := len(h.takeovers)
		h.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// close refuses QoS 1/2 publishes from now on, after those being routed have been.
func (h *routeHook) close() {
	h.gate.Lock()
	h.closing = true
	h.gate.Unlock()
}
