package audit

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	c.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c, c.Validate()
}

func TestConfigWindows(t *testing.T) {
	c, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	if w := c.Window(now); !w.To.Equal(now.Add(-time.Minute)) || !w.From.Equal(now.Add(-11*time.Minute)) {
		t.Fatalf("default window %v", w)
	}
	c, err = parse(t, "--from=2026-05-01T10:00:00Z", "--to=2026-05-01T11:00:00Z", "--charger=17")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Window(now); w.From.Hour() != 10 || w.To.Hour() != 11 || w.Charger != "17" {
		t.Fatalf("fixed window %v", w)
	}
	for _, bad := range [][]string{
		{"--from=2026-05-01T10:00:00Z"},
		{"--from=2026-05-01T10:00:00Z", "--to=2026-05-01T09:00:00Z"},
		{"--from=yesterday", "--to=2026-05-01T09:00:00Z"},
		{"--from=2026-05-01T10:00:00Z", "--to=2026-05-01T11:00:00Z", "--every=1m"},
		{"--charger=CH-1"}, {"--charger=017"}, {"--charger=0"},
		{"--last=0s"}, {"--settle=-1s"}, {"--every=-1s"}, {"--timeout=0s"},
		{"--mongo-uri=http://x"},
	} {
		if _, err := parse(t, bad...); err == nil || !strings.Contains(err.Error(), "invalid --") {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func TestParseCharger(t *testing.T) {
	for id, want := range map[string]uint32{"1": 1, "4294967295": 1<<32 - 1} {
		if c, err := ParseCharger(id); err != nil || c != want {
			t.Errorf("ParseCharger(%q) = %d, %v", id, c, err)
		}
	}
	for _, id := range []string{"", "0", "01", "-1", "+1", "4294967296", "CH-1", "1 "} {
		if _, err := ParseCharger(id); err == nil {
			t.Errorf("ParseCharger(%q) accepted", id)
		}
	}
}
