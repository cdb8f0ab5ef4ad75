package listener

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/cli"
)

func TestDefaultsMatchConfigurationDoc(t *testing.T) {
	c := DefaultConfig()
	if c.ShareGroup != "chargesim" || c.BatchSize != 500 || c.FlushInterval != 200*time.Millisecond ||
		c.MaxPending != 20000 || c.MaxPendingBytes != 64<<20 || c.WriteConcurrency != 4 || c.MaxPayloadBytes != 65536 ||
		c.MQTT.URL != "tcp://127.0.0.1:1883" || c.Store.URI != "mongodb://127.0.0.1:27017" || c.Store.Database != "chargesim" {
		t.Errorf("defaults %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	cases := []struct {
		flag string
		set  func(c *Config)
	}{
		{"share-group", func(c *Config) { c.ShareGroup = "a/b" }},
		{"share-group", func(c *Config) { c.ShareGroup = "a+" }},
		{"batch-size", func(c *Config) { c.BatchSize = 0 }},
		{"batch-size", func(c *Config) { c.BatchSize = 100_001; c.MaxPending = 200_000 }},
		{"flush-interval", func(c *Config) { c.FlushInterval = 0 }},
		{"max-pending", func(c *Config) { c.MaxPending = 499 }},
		{"max-pending-bytes", func(c *Config) { c.MaxPendingBytes = int64(c.MaxPayloadBytes) - 1 }},
		{"max-pending-bytes", func(c *Config) { c.MaxPendingBytes = 1<<40 + 1 }},
		{"mongo-uri", func(c *Config) { c.Store.URI = "mongodb://127.0.0.1/?w=0" }},
		{"write-concurrency", func(c *Config) { c.WriteConcurrency = 0 }},
		{"write-concurrency", func(c *Config) { c.WriteConcurrency = 65 }},
		{"max-payload-bytes", func(c *Config) { c.MaxPayloadBytes = 0 }},
		{"shutdown-timeout", func(c *Config) { c.ShutdownTimeout = 0 }},
		{"mqtt-url", func(c *Config) { c.MQTT.URL = "http://x:1" }},
		{"mongo-uri", func(c *Config) { c.Store.URI = "postgres://x" }},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.set(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "--"+tc.flag+"=") {
			t.Errorf("%s: Validate() = %v, want an error naming --%s", tc.flag, err, tc.flag)
		}
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("CHARGESIM_BATCH_SIZE", "50")
	t.Setenv("CHARGESIM_SHARE_GROUP", "")
	fs := cli.NewFlagSet("listener", "")
	var c Config
	c.Register(fs)
	if err := cli.Parse(fs, []string{"--flush-interval=1s"}); err != nil {
		t.Fatal(err)
	}
	if c.BatchSize != 50 || c.ShareGroup != "" || c.FlushInterval != time.Second {
		t.Errorf("parsed %+v", c)
	}
	for _, name := range []string{"mqtt-url", "mongo-uri", "share-group", "batch-size", "flush-interval", "max-pending",
		"write-concurrency", "max-payload-bytes", "topic-prefix", "mqtt-client-id"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s not registered", name)
		}
	}
	if fs.Lookup("shutdown-timeout") != nil {
		t.Error("--shutdown-timeout belongs to cli.Common, registered by Command")
	}
}

func TestSubscriptionFilter(t *testing.T) {
	for _, tc := range []struct{ group, prefix, want string }{
		{"chargesim", "", "$share/chargesim/charger/+/connector/+/session/+"},
		{"g", "site/a", "$share/g/site/a/charger/+/connector/+/session/+"},
		{"", "", "charger/+/connector/+/session/+"},
	} {
		c := DefaultConfig()
		c.ShareGroup, c.MQTT.TopicPrefix = tc.group, tc.prefix
		l, err := New(c, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Subscription(); got != tc.want {
			t.Errorf("group %q prefix %q: %q, want %q", tc.group, tc.prefix, got, tc.want)
		}
	}
}

func TestCommandRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--batch-size=0"}, "batch-size"},
		{[]string{"--log-level=loud"}, "log-level"},
		{[]string{"--max-pending=10"}, "max-pending"},
	} {
		err := Command(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), "--"+tc.flag) {
			t.Errorf("Command(%v) = %v, want an error naming --%s", tc.args, err, tc.flag)
		}
	}
}
