package publisher

import (
	"strconv"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// ackStore is paho's ordered in-memory store that also tells when a PUBACK removes a publish.
//
// Why: a publish token is not a PUBACK. When the connection drops, paho keeps unacknowledged
// QoS 1 publishes in its store and resends them after reconnecting; for each one it claims the
// packet ID again with a fresh internal token and completes the caller's token *without an
// error* (messageIds.claimID). Counting that as "published" would report sessions as
// delivered that are still on their way, and measure a latency that never happened. A PUBACK
// is the only thing that deletes an outbound publish from the store (paho deletes before it
// completes the token), so after a token completes the publisher checks whether its packet is
// still stored and, if so, waits for that deletion.
type ackStore struct {
	*mqtt.OrderedMemoryStore
	mu      sync.Mutex
	waiters map[string]chan struct{}
}

func newAckStore() *ackStore {
	return &ackStore{OrderedMemoryStore: mqtt.NewOrderedMemoryStore(), waiters: map[string]chan struct{}{}}
}

// Del removes a stored packet and wakes whoever waits for it.
func (s *ackStore) Del(key string) {
	s.OrderedMemoryStore.Del(key)
	s.mu.Lock()
	if ch, ok := s.waiters[key]; ok {
		close(ch)
		delete(s.waiters, key)
	}
	s.mu.Unlock()
}

// outboundKey is paho's store key of an outbound packet ID (store.go: outboundKeyFromMID).
func outboundKey(mid uint16) string { return "o." + strconv.FormatUint(uint64(mid), 10) }

// pending returns a channel closed once the publish with packet ID mid carrying payload leaves
// the store (its PUBACK arrived), or nil if it is not stored (already acknowledged). The
// payload's backing array identifies our packet: after a PUBACK paho may hand the same
// packet ID to the next publish, which carries another slot's buffer.
func (s *ackStore) pending(mid uint16, payload []byte) <-chan struct{} {
	if mid == 0 || len(payload) == 0 {
		return nil
	}
	key := outboundKey(mid)
	s.mu.Lock()
	defer s.mu.Unlock()
	pub, ok := s.Get(key).(*packets.PublishPacket)
	if !ok || len(pub.Payload) == 0 || &pub.Payload[0] != &payload[0] {
		return nil
	}
	ch, ok := s.waiters[key]
	if !ok {
		ch = make(chan struct{})
		s.waiters[key] = ch
	}
	return ch
}
