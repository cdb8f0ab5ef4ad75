package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEnvName(t *testing.T) {
	for flagName, want := range map[string]string{
		"mqtt-url": "CHARGESIM_MQTT_URL", "chargers": "CHARGESIM_CHARGERS", "log-level": "CHARGESIM_LOG_LEVEL",
	} {
		if got := EnvName(flagName); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", flagName, got, want)
		}
	}
}

func newSet() (*flag.FlagSet, *int, *string) {
	fs := NewFlagSet("test", "summary")
	fs.SetOutput(io.Discard)
	n := fs.Int("chargers", 10, "fleet size")
	s := fs.String("mqtt-url", "tcp://default:1883", "broker")
	return fs, n, s
}

func TestParseEnvironmentAndPrecedence(t *testing.T) {
	t.Setenv("CHARGESIM_CHARGERS", "42")
	t.Setenv("CHARGESIM_MQTT_URL", "tcp://from-env:1883")
	fs, n, s := newSet()
	if err := Parse(fs, []string{"--mqtt-url", "tcp://from-flag:1883"}); err != nil {
		t.Fatal(err)
	}
	if *n != 42 {
		t.Errorf("chargers = %d, want 42 from the environment", *n)
	}
	if *s != "tcp://from-flag:1883" {
		t.Errorf("mqtt-url = %q, want the command line to win over the environment", *s)
	}
}

func TestParseErrorsNameTheSetting(t *testing.T) {
	t.Setenv("CHARGESIM_CHARGERS", "many")
	fs, _, _ := newSet()
	err := Parse(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "CHARGESIM_CHARGERS") {
		t.Fatalf("got %v, want an error naming CHARGESIM_CHARGERS", err)
	}
	fs, _, _ = newSet()
	if err := Parse(fs, []string{"stray"}); err == nil || !strings.Contains(err.Error(), `"stray"`) {
		t.Fatalf("stray argument: got %v", err)
	}
	fs, _, _ = newSet()
	if err := Parse(fs, []string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: got %v, want flag.ErrHelp", err)
	}
}

func TestUsageListsEnvironmentVariables(t *testing.T) {
	fs, _, _ := newSet()
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	for _, want := range []string{"--chargers", "$CHARGESIM_CHARGERS", "--mqtt-url", "$CHARGESIM_MQTT_URL", `default "10"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, b.String())
		}
	}
}

func TestReadSecret(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := ReadSecret("mqtt-password", "inline", ""); v != "inline" || err != nil {
		t.Errorf("no file: %q, %v", v, err)
	}
	if v, err := ReadSecret("mqtt-password", "inline", f); v != "s3cret" || err != nil {
		t.Errorf("file: %q, %v; want the trimmed file content to win", v, err)
	}
	if _, err := ReadSecret("mqtt-password", "", f+".missing"); err == nil || !strings.Contains(err.Error(), "--mqtt-password-file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestCommonValidate(t *testing.T) {
	ok := Common{LogLevel: "info", LogFormat: "json", ShutdownTimeout: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mutate func(*Common)
		want   string
	}{
		{func(c *Common) { c.LogLevel = "loud" }, "--log-level"},
		{func(c *Common) { c.LogFormat = "xml" }, "--log-format"},
		{func(c *Common) { c.ShutdownTimeout = 0 }, "--shutdown-timeout"},
	} {
		c := ok
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error naming %s", err, tc.want)
		}
	}
}

func TestOpsHandler(t *testing.T) {
	notReady := errors.New("broker down")
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "chargesim_test_total", Help: "test"})
	reg.MustRegister(c)
	h := OpsHandler(reg, func(context.Context) error { return notReady })
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "broker down") {
		t.Errorf("/readyz while not ready = %d %q", code, body)
	}
	notReady = nil
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready = %d", code)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "chargesim_test_total 0") {
		t.Errorf("/metrics = %d %q", code, body)
	}
}

type settings struct{ n int }

func (s *settings) Register(fs *flag.FlagSet) { fs.IntVar(&s.n, "chargers", 10, "fleet") }
func (s *settings) Validate() error {
	if s.n < 1 {
		return Invalid("chargers", s.n, "must be ≥ 1")
	}
	return nil
}

func TestSetup(t *testing.T) {
	var s settings
	common, log, err := Setup("test", "summary", []string{"--chargers", "3", "--http-addr", ":1234"}, ":9090", &s)
	if err != nil || log == nil || s.n != 3 || common.HTTPAddr != ":1234" {
		t.Fatalf("Setup = %+v, %v, %v; settings %+v", common, log, err, s)
	}
	_, _, err = Setup("test", "summary", []string{"--chargers", "0"}, ":9090", &settings{})
	if err == nil || err.Error() != "invalid --chargers=0: must be ≥ 1" {
		t.Fatalf("got %v, want the one-line error naming --chargers", err)
	}
}

// A degraded component is ready (200) and /readyz says why.
func TestOpsHandlerDegraded(t *testing.T) {
	h := OpsHandler(prometheus.NewRegistry(), func(context.Context) error {
		return errors.Join(errors.New("context"), &Degraded{Detail: "listener falling behind: p99 lag 2s"})
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "degraded") || !strings.Contains(rec.Body.String(), "falling behind") {
		t.Fatalf("/readyz = %d %q", rec.Code, rec.Body.String())
	}
	if IsReady(errors.New("down")) || !IsReady(nil) || !IsReady(&Degraded{}) {
		t.Fatal("IsReady")
	}
}
