//go:build cluster

package cluster

import (
	"fmt"
	"html"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// docsImages renders the main dashboard panels from the live Prometheus as PNGs into the
// directory CHARGESIM_DOCS_IMAGES names (docs/images for docs/observability.md), over the
// whole test run: what a user sees in Grafana after `helm install`. Each image is a small
// self-contained HTML page (SVG chart, no scripts) screenshotted by headless chromium.
// Without CHARGESIM_DOCS_IMAGES nothing is rendered.
func (e *env) docsImages(from time.Time) {
	e.t.Helper()
	dir := os.Getenv("CHARGESIM_DOCS_IMAGES")
	if dir == "" {
		return
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	to := time.Now()
	step := (to.Sub(from) / 120).Round(time.Second)
	step = max(step, promInterval)
	sel := fmt.Sprintf(`{namespace=%q}`, namespace)
	charts := []struct {
		file, title, unit string
		queries           []legendQuery
	}{
		{"overview-session-rate.png", "Session rate: configured, published, stored", "sessions/s", []legendQuery{
			{"{simulation} configured", `sum by (simulation) (chargesim_simulation_configured_sessions_per_second` + sel + `)`},
			{"{simulation} published", `sum by (simulation) (rate(chargesim_publisher_sessions_published_total` + sel + `[20s]))`},
			{"{simulation} stored", `sum by (simulation) (rate(chargesim_listener_sessions_stored_total` + sel + `[20s]))`},
		}},
		{"overview-lag.png", "End-to-end lag (session end → stored), p50 and p99", "s", []legendQuery{
			{"{simulation} p50", `histogram_quantile(0.5, sum by (simulation, le) (rate(chargesim_listener_lag_seconds_bucket` + sel + `[20s])))`},
			{"{simulation} p99", `histogram_quantile(0.99, sum by (simulation, le) (rate(chargesim_listener_lag_seconds_bucket` + sel + `[20s])))`},
		}},
		{"overview-rejects-duplicates.png", "Rejected messages by reason, duplicates", "messages/s", []legendQuery{
			{"{simulation} rejected {reason}", `sum by (simulation, reason) (rate(chargesim_listener_rejected_total` + sel + `[20s]))`},
			{"{simulation} duplicates", `sum by (simulation) (rate(chargesim_listener_duplicates_total` + sel + `[20s]))`},
		}},
		{"operator-simulations.png", "Operator: simulations by Ready condition (two replicas scraped)", "simulations", []legendQuery{
			{"Ready={status}", `sum by (status) (chargesim_operator_simulations{condition="Ready"})`},
			{"leader replicas", `sum(chargesim_operator_leader)`},
		}},
	}
	for _, c := range charts {
		var lines []chartLine
		for _, q := range c.queries {
			res, err := e.promRange(q.expr, from, to, step)
			if err != nil {
				e.t.Fatalf("docs image %s: %v", c.file, err)
			}
			for _, s := range res {
				lines = append(lines, chartLine{name: q.legend(s.Metric), points: s.Points})
			}
		}
		if len(lines) == 0 {
			e.t.Fatalf("docs image %s: no series", c.file)
		}
		page := chartPage(c.title, c.unit, from, to, lines)
		e.screenshot(filepath.Join(dir, c.file), page, 960, 420)
	}
	e.t.Logf("docs images written to %s", dir)
}

type legendQuery struct{ format, expr string }

// legend fills {label} placeholders from the series' labels.
func (q legendQuery) legend(m map[string]string) string {
	s := q.format
	for k, v := range m {
		s = strings.ReplaceAll(s, "{"+k+"}", v)
	}
	return s
}

type chartLine struct {
	name   string
	points [][2]float64
}

var palette = []string{"#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642", "#cca300"}

// chartPage is a Grafana-like time series panel as a static HTML page with an inline SVG.
func chartPage(title, unit string, from, to time.Time, lines []chartLine) string {
	sort.Slice(lines, func(i, j int) bool { return lines[i].name < lines[j].name })
	const w, h, left, right, top, bottom = 940.0, 300.0, 64.0, 36.0, 12.0, 28.0
	ymax := 0.0
	for _, l := range lines {
		for _, p := range l.points {
			if !math.IsNaN(p[1]) && !math.IsInf(p[1], 0) {
				ymax = math.Max(ymax, p[1])
			}
		}
	}
	ymax = niceCeil(ymax)
	x := func(t float64) float64 {
		return left + (t-float64(from.Unix()))/(float64(to.Unix())-float64(from.Unix()))*(w-left-right)
	}
	y := func(v float64) float64 { return top + (1-v/ymax)*(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<!doctype html><html><head><meta charset="utf-8"><style>
body{margin:0;background:#181b1f;color:#ccccdc;font:13px Inter,Helvetica,Arial,sans-serif}
.panel{margin:10px;border:1px solid #2c3235;border-radius:3px;background:#111217;padding:6px 8px}
h1{font-size:14px;font-weight:500;margin:2px 0 6px}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin-top:4px}
.legend span{white-space:nowrap}.legend i{display:inline-block;width:14px;height:4px;margin-right:6px;vertical-align:middle}
h1 small{color:#9fa1a6;font-weight:400;margin-left:8px}
</style></head><body><div class="panel"><h1>%s<small>%s</small></h1>`, html.EscapeString(title), html.EscapeString(unit))
	fmt.Fprintf(&b, `<svg width="%g" height="%g" xmlns="http://www.w3.org/2000/svg" font-size="11" fill="#9fa1a6">`, w, h)
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="#2c3235"/><text x="%g" y="%.1f" text-anchor="end">%s</text>`,
			left, w-right, y(v), y(v), left-6, y(v)+4, html.EscapeString(formatTick(v, unit)))
	}
	span := to.Sub(from)
	for i := 0; i <= 6; i++ {
		t := from.Add(span * time.Duration(i) / 6)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`, x(float64(t.Unix())), h-8, t.UTC().Format("15:04:05"))
	}
	for i, l := range lines {
		color := palette[i%len(palette)]
		var path strings.Builder
		pen := false
		for _, p := range l.points {
			if math.IsNaN(p[1]) || math.IsInf(p[1], 0) {
				pen = false
				continue
			}
			cmd := "L"
			if !pen {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%.1f %.1f ", cmd, x(p[0]), y(p[1]))
			pen = true
		}
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.6"/>`, path.String(), color)
	}
	b.WriteString(`</svg><div class="legend">`)
	for i, l := range lines {
		last := math.NaN()
		for _, p := range l.points {
			if !math.IsNaN(p[1]) {
				last = p[1]
			}
		}
		fmt.Fprintf(&b, `<span><i style="background:%s"></i>%s <b>%s</b></span>`, palette[i%len(palette)],
			html.EscapeString(l.name), html.EscapeString(formatTick(last, unit)))
	}
	fmt.Fprintf(&b, `</div></div></body></html>`)
	return b.String()
}

func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*p >= v*1.05 {
			return m * p
		}
	}
	return 10 * p
}

func formatTick(v float64, unit string) string {
	if math.IsNaN(v) {
		return "–"
	}
	s := fmt.Sprintf("%.3g", v)
	if v >= 1000 {
		s = fmt.Sprintf("%.0f", v)
	}
	if unit == "s" {
		return s + " s"
	}
	return s
}

// screenshot renders page with headless chromium (hack/deps.sh installs it; bin/chromium).
func (e *env) screenshot(out, page string, width, height int) {
	e.t.Helper()
	htmlFile := filepath.Join(e.t.TempDir(), strings.TrimSuffix(filepath.Base(out), ".png")+".html")
	if err := os.WriteFile(htmlFile, []byte(page), 0o600); err != nil {
		e.t.Fatal(err)
	}
	chromium := filepath.Join(e.root, "bin", "chromium")
	if _, err := os.Stat(chromium); err != nil {
		chromium = "chromium"
	}
	// --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
	cmd := exec.CommandContext(e.ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+e.t.TempDir(), fmt.Sprintf("--window-size=%d,%d", width, height),
		"--screenshot="+out, "file://"+htmlFile)
	if b, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("chromium --screenshot %s: %v: %s", out, err, b)
	}
	if st, err := os.Stat(out); err != nil || st.Size() < 1000 {
		e.t.Fatalf("chromium wrote no screenshot %s: %v", out, err)
	}
}
