package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Prometheus is a Prometheus server started for one test.
type Prometheus struct {
	URL  string // http://127.0.0.1:<port>
	Addr string // 127.0.0.1:<port>
	Port int

	ConfigPath string
	DataDir    string // TSDB
	LogPath    string

	tb testing.TB
	p  *process
}

// PrometheusOptions configures StartPrometheusWith.
type PrometheusOptions struct {
	// Targets are host:port addresses scraped at /metrics, with job="chargesim".
	Targets []string
	// ScrapeInterval for scrapes and rule evaluation (0 = 1s).
	ScrapeInterval time.Duration
	// RuleFiles are loaded as rule_files (recording/alerting rules to test).
	RuleFiles []string
}

// StartPrometheus starts Prometheus scraping targets (host:port, path /metrics, job
// "chargesim") every second, with its TSDB in a temp dir, and waits until it is ready.
func StartPrometheus(tb testing.TB, scrapeTargets []string) *Prometheus {
	tb.Helper()
	return StartPrometheusWith(tb, PrometheusOptions{Targets: scrapeTargets})
}

// StartPrometheusWith starts Prometheus configured by opts.
func StartPrometheusWith(tb testing.TB, opts PrometheusOptions) *Prometheus {
	tb.Helper()
	bin := Bin(tb, "prometheus")
	dir := tb.TempDir()
	interval := opts.ScrapeInterval
	if interval <= 0 {
		interval = time.Second
	}
	p := &Prometheus{
		tb:         tb,
		ConfigPath: filepath.Join(dir, "prometheus.yml"),
		DataDir:    filepath.Join(dir, "data"),
		LogPath:    filepath.Join(dir, "prometheus.log"),
	}
	// JSON is YAML: quoting every value through encoding/json avoids escaping mistakes.
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: %s\n  evaluation_interval: %s\n  scrape_timeout: %s\n",
		interval, interval, interval)
	if len(opts.RuleFiles) > 0 {
		cfg.WriteString("rule_files:\n")
		for _, f := range opts.RuleFiles {
			abs, err := filepath.Abs(f)
			if err != nil {
				tb.Fatalf("testenv: %v", err)
			}
			fmt.Fprintf(&cfg, "  - %s\n", q(abs))
		}
	}
	cfg.WriteString("scrape_configs:\n  - job_name: chargesim\n    metrics_path: /metrics\n    static_configs:\n      - targets: [")
	for i, t := range opts.Targets {
		if i > 0 {
			cfg.WriteString(", ")
		}
		cfg.WriteString(q(t))
	}
	cfg.WriteString("]\n")
	writeFile(tb, p.ConfigPath, []byte(cfg.String()), 0o644)

	newProc := func(port int) *process {
		return newProcess("prometheus", bin, []string{
			"--config.file=" + p.ConfigPath,
			"--storage.tsdb.path=" + p.DataDir,
			"--web.listen-address=" + hostPort(port),
			"--web.enable-lifecycle",
			"--log.level=info",
		}, p.LogPath)
	}
	ready := func(proc *process, port int) error {
		return waitHTTPReady("http://"+hostPort(port)+"/-/ready", 30*time.Second, proc.exited())
	}
	proc, port := launch(tb, newProc, ready)
	p.p, p.Port, p.Addr = proc, port, hostPort(port)
	p.URL = "http://" + p.Addr
	return p
}

func waitHTTPReady(u string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(u)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %w", timeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before ready: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts Prometheus down (SIGTERM).
func (p *Prometheus) Stop() {
	p.tb.Helper()
	if err := p.p.stop(syscall.SIGTERM, 10*time.Second, false); err != nil {
		p.tb.Fatalf("testenv: %v", err)
	}
}

// Sample is one element of an instant-query result.
type Sample struct {
	Metric map[string]string
	Time   time.Time
	Value  float64
}

// Query runs an instant PromQL query (/api/v1/query) and returns its vector; a scalar result
// comes back as one Sample without labels.
func (p *Prometheus) Query(ctx context.Context, promql string) ([]Sample, error) {
	u := p.URL + "/api/v1/query?" + url.Values{"query": {promql}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", promql, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", promql, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %q: decode response (%s): %w", promql, resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s: %s", promql, resp.Status, body.ErrorType, body.Error)
	}
	switch body.Data.ResultType {
	case "vector":
		var raw []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(body.Data.Result, &raw); err != nil {
			return nil, fmt.Errorf("query %q: decode vector: %w", promql, err)
		}
		out := make([]Sample, 0, len(raw))
		for _, r := range raw {
			s, err := parseSample(r.Value)
			if err != nil {
				return nil, fmt.Errorf("query %q: %w", promql, err)
			}
			s.Metric = r.Metric
			out = append(out, s)
		}
		return out, nil
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(body.Data.Result, &v); err != nil {
			return nil, fmt.Errorf("query %q: decode scalar: %w", promql, err)
		}
		s, err := parseSample(v)
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", promql, err)
		}
		s.Metric = map[string]string{}
		return []Sample{s}, nil
	default:
		return nil, fmt.Errorf("query %q: result type %q, want vector or scalar", promql, body.Data.ResultType)
	}
}

// parseSample decodes a [<unix seconds>, "<value>"] pair.
func parseSample(v [2]any) (Sample, error) {
	ts, ok := v[0].(float64)
	str, ok2 := v[1].(string)
	if !ok || !ok2 {
		return Sample{}, fmt.Errorf("malformed sample %v", v)
	}
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return Sample{}, fmt.Errorf("sample value %q: %w", str, err)
	}
	sec := int64(ts)
	return Sample{Time: time.Unix(sec, int64((ts-float64(sec))*1e9)), Value: f}, nil
}

// WaitQuery runs Query every 200ms until ok accepts the result or ctx ends (then it returns
// the last result with the error). Scrapes happen once per interval, so give ctx a few.
func (p *Prometheus) WaitQuery(ctx context.Context, promql string, ok func([]Sample) bool) ([]Sample, error) {
	for {
		res, err := p.Query(ctx, promql)
		if err == nil && ok(res) {
			return res, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("query %q: condition not met, last result %v: %w", promql, res, ctx.Err())
			}
			return res, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
