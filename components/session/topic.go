package session

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Topic layout: [<prefix>/]charger/<charger>/connector/<connector>/session/<session>.
const (
	segCharger   = "charger"
	segConnector = "connector"
	segSession   = "session"
)

// MaxChargerIDLen bounds charger IDs taken from topics.
const MaxChargerIDLen = 64

// TopicBuilder builds publish topics without allocating more than the result.
type TopicBuilder struct{ prefix string }

// NewTopicBuilder returns a builder for the given prefix ("" for none).
func NewTopicBuilder(prefix string) TopicBuilder {
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return TopicBuilder{prefix: prefix}
}

// Append appends the topic for one session to dst.
func (t TopicBuilder) Append(dst []byte, chargerID string, connectorID int, sessionID int64) []byte {
	dst = append(dst, t.prefix...)
	dst = append(dst, "charger/"...)
	dst = append(dst, chargerID...)
	dst = append(dst, "/connector/"...)
	dst = strconv.AppendInt(dst, int64(connectorID), 10)
	dst = append(dst, "/session/"...)
	return strconv.AppendInt(dst, sessionID, 10)
}

// Topic returns the topic for one session.
func (t TopicBuilder) Topic(chargerID string, connectorID int, sessionID int64) string {
	return string(t.Append(make([]byte, 0, 64), chargerID, connectorID, sessionID))
}

// SubscriptionFilter is the wildcard filter matching every session topic under prefix.
func SubscriptionFilter(prefix string) string {
	return NewTopicBuilder(prefix).prefix + "charger/+/connector/+/session/+"
}

// SharedSubscription wraps filter in an MQTT v5-style shared subscription for group
// ($share/<group>/<filter>); an empty group returns filter unchanged.
func SharedSubscription(group, filter string) string {
	if group == "" {
		return filter
	}
	return "$share/" + group + "/" + filter
}

// TopicIDs are the identifiers carried by a session topic.
type TopicIDs struct {
	ChargerID   string
	ConnectorID int
	SessionID   int64
}

// ErrTopic is wrapped by every topic parsing error.
var ErrTopic = errors.New("bad topic")

// ParseTopic extracts the IDs from a session topic. The prefix (any number of segments) is
// ignored: only the last six segments are read, so listeners accept any configured prefix.
func ParseTopic(topic string) (TopicIDs, error) {
	var ids TopicIDs
	// Walk from the end: session/<id>, connector/<id>, charger/<id>.
	parts := [6]string{}
	rest := topic
	for i := 5; i >= 0; i-- {
		j := strings.LastIndexByte(rest, '/')
		if j < 0 {
			if i != 0 {
				return ids, fmt.Errorf("%w %q: want charger/<id>/connector/<id>/session/<id>", ErrTopic, topic)
			}
			parts[0] = rest
			break
		}
		parts[i], rest = rest[j+1:], rest[:j]
	}
	if parts[0] != segCharger || parts[2] != segConnector || parts[4] != segSession {
		return ids, fmt.Errorf("%w %q: want charger/<id>/connector/<id>/session/<id>", ErrTopic, topic)
	}
	if !ValidChargerID(parts[1]) {
		return ids, fmt.Errorf("%w %q: charger id must be 1-%d of [A-Za-z0-9_.-]", ErrTopic, topic, MaxChargerIDLen)
	}
	c, err := strconv.Atoi(parts[3])
	if err != nil || c < 0 || c > 1<<16 {
		return ids, fmt.Errorf("%w %q: connector id must be an integer 0-65536", ErrTopic, topic)
	}
	s, err := strconv.ParseInt(parts[5], 10, 64)
	if err != nil || s < 0 {
		return ids, fmt.Errorf("%w %q: session id must be a non-negative integer", ErrTopic, topic)
	}
	ids.ChargerID, ids.ConnectorID, ids.SessionID = parts[1], c, s
	return ids, nil
}

// ValidChargerID reports whether id is a usable charger ID (topic segment, document key part).
func ValidChargerID(id string) bool {
	if id == "" || len(id) > MaxChargerIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}
