package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// DataFile is the broker's state file inside --data-dir.
const DataFile = "broker.db"

// persistHook is mochi's bbolt storage hook (clients, subscriptions, retained and queued
// messages, written as they change and loaded at start) with two corrections:
//
//   - A session takeover clears the old client's in-flight messages after copying them to
//     the new client; mochi reports that as dropped, and the plain hook would delete them from
//     disk while the new session still holds them (same client ID, same packet IDs, same keys).
//     Drops of a taken-over client are therefore not written.
//   - The plain hook does not record the packet ID of a queued message (only in its key), and
//     mochi refuses to resend a message without one: the ID is restored from the key.
//   - The acknowledgement a QoS 1 publish leaves in the publisher's in-flight set lives for
//     one PUBACK write; recording and deleting it would cost two disk transactions per message
//     for nothing a restart needs.
type persistHook struct {
	*bolt.Hook
	// acks holds the publisher acknowledgements not written (client ID and packet ID), so
	// their completion deletes nothing either; a subscriber's PUBACK of a stored message does.
	acks sync.Map
}

type ackKey struct {
	client string
	id     uint16
}

func newPersistHook() *persistHook { return &persistHook{Hook: new(bolt.Hook)} }

// persistConfig opens <dir>/broker.db. The file lock makes a second broker on the same
// directory fail at start instead of corrupting it.
func persistConfig(dir string, fsync bool) (*bolt.Options, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	return &bolt.Options{
		Path:    filepath.Join(dir, DataFile),
		Options: &bbolt.Options{Timeout: time.Second, NoSync: !fsync, NoFreelistSync: true},
	}, nil
}

func (h *persistHook) ID() string { return "chargesim-persist" }

func (h *persistHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Puback { // the broker's own PUBACK to a publisher
		h.acks.Store(ackKey{cl.ID, pk.PacketID}, struct{}{})
		return
	}
	h.Hook.OnQosPublish(cl, pk, sent, resends)
}

func (h *persistHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if _, ok := h.acks.LoadAndDelete(ackKey{cl.ID, pk.PacketID}); ok {
		return
	}
	h.Hook.OnQosComplete(cl, pk)
}

func (h *persistHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return // the new session holds it under the same key
	}
	if _, ok := h.acks.LoadAndDelete(ackKey{cl.ID, pk.PacketID}); ok {
		return
	}
	h.Hook.OnQosDropped(cl, pk)
}

// StoredInflightMessages restores each queued message's packet ID from its key
// ("ifl_<client>:<packet id>").
func (h *persistHook) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.Hook.StoredInflightMessages()
	if err != nil {
		return nil, fmt.Errorf("read queued messages: %w", err)
	}
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		k := strings.LastIndexByte(msgs[i].ID, ':')
		id, err := strconv.ParseUint(msgs[i].ID[k+1:], 10, 16)
		if k < 0 || err != nil || id == 0 {
			return nil, fmt.Errorf("queued message %q: no packet ID in its key", msgs[i].ID)
		}
		msgs[i].PacketID = uint16(id)
	}
	return msgs, nil
}
