package stack

import (
	"strings"
	"testing"

	"github.com/chargesim/chargesim/components/cli"
)

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var cfg Config
	fs := cli.NewFlagSet("run", "")
	cfg.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		t.Fatal(err)
	}
	return cfg, cfg.Validate()
}

func TestBrokerURLFollowsTheEmbeddedBroker(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "tcp://127.0.0.1:18830"},
		{[]string{"--mqtt-addr", ":1999"}, "tcp://127.0.0.1:1999"},
		{[]string{"--mqtt-addr", "127.0.0.2:1999"}, "tcp://127.0.0.2:1999"},
		{[]string{"--mqtt-addr", ":1999", "--mqtt-url", "tcp://elsewhere:1883"}, "tcp://elsewhere:1883"},
		{[]string{"--mqtt-addr", "", "--mqtt-url", "ssl://broker:8883"}, "ssl://broker:8883"},
	} {
		cfg, err := parse(t, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.Publisher.MQTT.URL != tc.want {
			t.Errorf("%v: broker URL %q, want %q", tc.args, cfg.Publisher.MQTT.URL, tc.want)
		}
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mqtt-addr", ""}, "--mqtt-url"},
		{[]string{"--mqtt-addr", "nope"}, "--mqtt-addr"},
		{[]string{"--api-addr", "nope"}, "--api-addr"},
		{[]string{"--retention", "30s"}, "--retention"},
		{[]string{"--chargers", "0"}, "--chargers"},
		{[]string{"--mongo-uri", "postgres://x"}, "--mongo-uri"},
	} {
		if _, err := parse(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
