package session

import (
	"errors"
	"strings"
	"testing"
)

func TestTopicBuilder(t *testing.T) {
	cases := []struct{ prefix, want string }{
		{"", "charger/42/connector/2/session/1700000000000001"},
		{"fleet", "fleet/charger/42/connector/2/session/1700000000000001"},
		{"/fleet/", "fleet/charger/42/connector/2/session/1700000000000001"},
		{"a/b", "a/b/charger/42/connector/2/session/1700000000000001"},
	}
	for _, c := range cases {
		tb := NewTopicBuilder(c.prefix)
		if got := tb.Topic("42", 2, 1_700_000_000_000_001); got != c.want {
			t.Errorf("prefix %q: Topic = %q, want %q", c.prefix, got, c.want)
		}
		if got := string(tb.Append([]byte("x:"), "42", 2, 1_700_000_000_000_001)); got != "x:"+c.want {
			t.Errorf("prefix %q: Append = %q", c.prefix, got)
		}
	}
}

func TestParseTopic(t *testing.T) {
	want := TopicIDs{ChargerID: "7", ConnectorID: 3, SessionID: 99}
	for _, topic := range []string{
		"charger/7/connector/3/session/99",
		"fleet/charger/7/connector/3/session/99",
		"a/b/c/charger/7/connector/3/session/99",
		"/charger/7/connector/3/session/99",
		"charger/7/connector/003/session/099",
	} {
		got, err := ParseTopic(topic)
		if err != nil {
			t.Errorf("ParseTopic(%q): %v", topic, err)
			continue
		}
		if got != want {
			t.Errorf("ParseTopic(%q) = %+v, want %+v", topic, got, want)
		}
	}
	ids, err := ParseTopic("charger/CP-01_a.b/connector/0/session/0")
	if err != nil || ids.ChargerID != "CP-01_a.b" || ids.ConnectorID != 0 || ids.SessionID != 0 {
		t.Errorf("ParseTopic(named charger) = %+v, %v", ids, err)
	}
	for _, topic := range []string{
		"", "charger", "charger/7/connector/3/session", "charger/7/connector/3/session/",
		"charger/7/connector/3/sessions/1", "chargers/7/connector/3/session/1", "x/7/connector/3/session/1",
		"charger/7/connector/65537/session/1", "charger/7/connector/-1/session/1",
		"charger/7/connector/3/session/1.5", "charger/7/connector/3/session/99999999999999999999",
		"charger/" + strings.Repeat("a", MaxChargerIDLen+1) + "/connector/3/session/1",
		"charger/a b/connector/3/session/1", "charger/+/connector/+/session/+",
		"charger/7/connector/3/session/1/extra",
	} {
		if ids, err := ParseTopic(topic); err == nil {
			t.Errorf("ParseTopic(%q) accepted: %+v", topic, ids)
		} else if !errors.Is(err, ErrTopic) {
			t.Errorf("ParseTopic(%q) error %v does not wrap ErrTopic", topic, err)
		}
	}
}

func TestTopicRoundTrip(t *testing.T) {
	for _, prefix := range []string{"", "p", "p/q"} {
		tb := NewTopicBuilder(prefix)
		for _, c := range []TopicIDs{{"1", 1, 1}, {"1000000", 65536, 1<<53 - 1}, {"x-y", 0, 0}} {
			got, err := ParseTopic(tb.Topic(c.ChargerID, c.ConnectorID, c.SessionID))
			if err != nil || got != c {
				t.Errorf("prefix %q ids %+v: parsed %+v, %v", prefix, c, got, err)
			}
		}
	}
}

func TestSubscriptionFilters(t *testing.T) {
	if got := SubscriptionFilter(""); got != "charger/+/connector/+/session/+" {
		t.Errorf("SubscriptionFilter(\"\") = %q", got)
	}
	if got := SubscriptionFilter("/site/"); got != "site/charger/+/connector/+/session/+" {
		t.Errorf("SubscriptionFilter(site) = %q", got)
	}
	if got := SharedSubscription("g", "a/+"); got != "$share/g/a/+" {
		t.Errorf("SharedSubscription = %q", got)
	}
	if got := SharedSubscription("", "a/+"); got != "a/+" {
		t.Errorf("SharedSubscription without group = %q", got)
	}
}

func TestValidChargerID(t *testing.T) {
	for _, id := range []string{"1", "CP_01.a-b", strings.Repeat("z", MaxChargerIDLen)} {
		if !ValidChargerID(id) {
			t.Errorf("ValidChargerID(%q) = false", id)
		}
	}
	for _, id := range []string{"", "a/b", "a+b", "#", "ü", strings.Repeat("z", MaxChargerIDLen+1), "a\x00"} {
		if ValidChargerID(id) {
			t.Errorf("ValidChargerID(%q) = true", id)
		}
	}
}
