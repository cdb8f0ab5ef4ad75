//go:build chart

package chart

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"sigs.k8s.io/yaml"

	"github.com/chargesim/chargesim/test/testenv"
)

// ---- alert rules -------------------------------------------------------------------------

// TestAlertRules runs promtool on files/alerts.yaml and its unit tests, and checks that every
// alert has a test where it fires and one where it must not.
func TestAlertRules(t *testing.T) {
	promtool := testenv.Bin(t, "promtool")
	rules := filepath.Join(chartDir, "files", "alerts.yaml")
	tests := filepath.Join(root, "test", "prometheus", "alerts_test.yaml")
	mustRun(t, nil, nil, promtool, "check", "rules", rules)
	mustRun(t, nil, nil, promtool, "test", "rules", tests)

	var file struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	var ut struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	for p, v := range map[string]any{rules: &file, tests: &ut} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var n int
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			n++
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: test where it fires %t, where it stays quiet %t; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
	if n < 5 {
		t.Errorf("only %d alerts", n)
	}
}

// ---- /metrics of every component ---------------------------------------------------------

// contract lists the metric families each component must expose (docs/observability.md).
var contract = map[string][]string{
	"publisher": {"chargesim_publisher_sessions_scheduled_total", "chargesim_publisher_sessions_published_total",
		"chargesim_publisher_sessions_failed_total", "chargesim_publisher_publish_retries_total", "chargesim_publisher_inflight",
		"chargesim_publisher_puback_latency_seconds", "chargesim_publisher_connected", "chargesim_publisher_chargers",
		"chargesim_publisher_configured_session_rate"},
	"listener": {"chargesim_listener_messages_received_total", "chargesim_listener_sessions_stored_total",
		"chargesim_listener_duplicates_total", "chargesim_listener_rejected_total", "chargesim_listener_batch_size",
		"chargesim_listener_write_duration_seconds", "chargesim_listener_write_errors_total", "chargesim_listener_lag_seconds",
		"chargesim_listener_pending", "chargesim_listener_inflight_batches", "chargesim_listener_connected",
		"chargesim_listener_lag_window_p99_seconds", "chargesim_listener_falling_behind",
		"chargesim_listener_backpressure_seconds_total", "chargesim_listener_write_concurrency_limit",
		"chargesim_listener_delta_failures_total"},
	"api": {"chargesim_api_requests_total", "chargesim_api_request_duration_seconds"},
	"broker": {"chargesim_broker_clients_connected", "chargesim_broker_messages_received_total", "chargesim_broker_messages_sent_total",
		"chargesim_broker_messages_dropped_total", "chargesim_broker_inflight_messages", "chargesim_broker_subscriptions"},
	"operator": {"controller_runtime_reconcile_total", "controller_runtime_reconcile_errors_total", "controller_runtime_reconcile_time_seconds",
		"workqueue_depth", "workqueue_adds_total", "workqueue_queue_duration_seconds"},
}

func scrape(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// lintMetrics pipes an exposition to `promtool check metrics` and checks the contract's families.
func lintMetrics(t testing.TB, component, url string) {
	t.Helper()
	body := scrape(t, url)
	r := run(context.Background(), nil, []byte(body), testenv.Bin(t, "promtool"), "check", "metrics")
	if r.err != nil {
		t.Errorf("%s: promtool check metrics: %s%s", component, r.stdout, r.stderr)
	}
	for _, m := range contract[component] {
		if !strings.Contains(body, "\n# TYPE "+m+" ") {
			t.Errorf("%s /metrics lacks %s", component, m)
		}
	}
}

// TestComponentMetrics starts broker, publisher, listener and API as separate processes
// against real mosquitto and FerretDB and lints each /metrics with promtool.
func TestComponentMetrics(t *testing.T) {
	mosq := testenv.StartMosquitto(t)
	ferret := testenv.StartFerretDB(t)
	env := []string{"CHARGESIM_LOG_FORMAT=text"}

	brokerHTTP, brokerMQTT := freeAddr(t), freeAddr(t)
	startProc(t, "broker", "http://"+brokerHTTP+"/readyz", env, "broker", "--http-addr="+brokerHTTP, "--mqtt-addr="+brokerMQTT)

	pubHTTP := freeAddr(t)
	startProc(t, "publisher", "http://"+pubHTTP+"/readyz", env, "publisher", "--http-addr="+pubHTTP, "--mqtt-url="+mosq.URL,
		"--chargers=5", "--time-scale=60")
	lisHTTP := freeAddr(t)
	startProc(t, "listener", "http://"+lisHTTP+"/readyz", append(env, "CHARGESIM_MONGO_URI="+ferret.URI),
		"listener", "--http-addr="+lisHTTP, "--mqtt-url="+mosq.URL)
	apiHTTP := freeAddr(t)
	startProc(t, "api", "http://"+apiHTTP+"/readyz", append(env, "CHARGESIM_MONGO_URI="+ferret.URI), "api", "--http-addr="+apiHTTP)

	// Some traffic, so histograms and labelled counters have series.
	testenv.Eventually(t, time.Minute, "sessions stored", func() error {
		if !regexp.MustCompile(`(?m)^chargesim_listener_sessions_stored_total [1-9]`).MatchString(scrape(t, "http://"+lisHTTP+"/metrics")) {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	for _, q := range []string{"/api/v1/stats", "/api/v1/sessions?limit=5", "/api/v1/stats?bogus=1"} {
		resp, err := http.Get("http://" + apiHTTP + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for c, u := range map[string]string{"broker": brokerHTTP, "publisher": pubHTTP, "listener": lisHTTP, "api": apiHTTP} {
		lintMetrics(t, c, "http://"+u+"/metrics")
	}
}

// ---- dashboards against a live Prometheus ------------------------------------------------

// Values Grafana would give the built-in variables with a 1s scrape interval; $__range is the
// time Prometheus has been scraping.
func expandVars(expr string, rangeDur time.Duration, all []string) string {
	r := strings.NewReplacer(
		"$__rate_interval", "20s",
		"$__interval", "5s",
		"$__range", fmt.Sprintf("%ds", int(rangeDur.Seconds())),
	)
	expr = r.Replace(expr)
	// Every query variable of these dashboards includes "All", whose value is .*.
	for _, v := range all {
		expr = strings.ReplaceAll(expr, "$"+v, ".*")
		expr = strings.ReplaceAll(expr, "${"+v+"}", ".*")
	}
	return expr
}

// operatorStatusSeries are the operator's per-simulation series (from ChargerSimulation
// status). The overview joins them with the components' series; the processes started here
// have no operator, so those queries are evaluated by test/cluster (TestChartOnRealCluster),
// where the chart's monitors scrape the operator and the simulations' pods together.
var operatorStatusSeries = regexp.MustCompile(`\bchargesim_simulation_[a-z_]+\b`)

// checkDashboard evaluates every target of every panel and every variable's metric against p:
// each must return at least one sample with a finite value. A query that returns nothing is a
// broken panel.
func checkDashboard(t *testing.T, p *testenv.Prometheus, file string, since time.Time) {
	d := loadDashboard(t, file)
	var vars []string
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		vars = append(vars, v.Name)
		if !v.IncludeAll || v.AllValue != ".*" {
			t.Errorf("%s variable %s: want includeAll with allValue .* (queries rely on it)", file, v.Name)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("%s variable %s: %v", file, v.Name, err)
		}
		// label_values(<selector>, <label>): the selector must match series.
		m := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`).FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("%s variable %s: unexpected query %q", file, v.Name, q.Query)
			continue
		}
		expr := expandVars(m[1], time.Since(since), vars)
		res, err := p.Query(t.Context(), expr)
		if err != nil || len(res) == 0 {
			t.Errorf("%s variable %s: %q returns nothing (%v)", file, v.Name, expr, err)
		}
	}
	var checked, skipped int
	// Every metric a query names must exist: a fallback such as `x or y * 0` would otherwise
	// hide a misspelt x.
	names := map[string]bool{}
	metricName := regexp.MustCompile(`\b(chargesim|controller_runtime|workqueue|rest_client|process|go)_[a-zA-Z0-9_:]+\b`)
	for _, pn := range d.panels() {
		for _, tg := range pn.Targets {
			if operatorStatusSeries.MatchString(tg.Expr) {
				continue
			}
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				names[n] = true
			}
		}
	}
	for n := range names {
		if res, err := p.Query(t.Context(), fmt.Sprintf(`count({__name__=%q})`, n)); err != nil || len(res) == 0 {
			t.Errorf("%s: metric %s is queried but not exported (%v)", file, n, err)
		}
	}
	for _, pn := range d.panels() {
		for _, tg := range pn.Targets {
			if operatorStatusSeries.MatchString(tg.Expr) {
				skipped++
				continue
			}
			expr := expandVars(tg.Expr, time.Since(since), vars)
			checked++
			res, err := p.Query(t.Context(), expr)
			switch {
			case err != nil:
				t.Errorf("panel %q %s: %v", pn.Title, tg.RefID, err)
			case len(res) == 0:
				t.Errorf("panel %q %s returns no data: %s", pn.Title, tg.RefID, expr)
			default:
				finite := slices.ContainsFunc(res, func(s testenv.Sample) bool { return !math.IsNaN(s.Value) && !math.IsInf(s.Value, 0) })
				if !finite {
					t.Errorf("panel %q %s returns only NaN/Inf %v: %s", pn.Title, tg.RefID, res, expr)
				}
			}
		}
	}
	t.Logf("%s: %d queries over %d metrics evaluated (%d on the operator's per-simulation series left to test/cluster)", file, checked, len(names), skipped)
	if checked < 10 {
		t.Errorf("%s: only %d queries", file, checked)
	}
}

// traffic keeps a live stack busy in every way a panel shows: malformed payloads and
// duplicates over MQTT, good and bad API requests.
func traffic(ctx context.Context, t *testing.T, mqttAddr, apiAddr string) {
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("chargesim-dashboard-test").
		SetConnectTimeout(5 * time.Second).SetAutoReconnect(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to %s: %v", mqttAddr, tok.Error())
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { wg.Wait(); c.Disconnect(100) })
	pub := func(topic string, payload string) {
		tok := c.Publish(topic, 1, false, payload)
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Errorf("publish %s: %v", topic, tok.Error())
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pub("charger/9001/connector/1/session/1", `{"session_id": 1, "energy_delivered_in_kWh": `) // bad_json
			pub("charger/9001/connector/1/session/2", `{"session_id": 2}`)                             // missing fields
			// The challenge's own sample, always the same session: stored once, then duplicates.
			pub("charger/9001/connector/1/session/3", `{"session_id": 3, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)
			for _, q := range []string{"/api/v1/stats", "/api/v1/sessions?limit=10", "/api/v1/chargers", "/api/v1/stats?bogus=1", "/readings/"} {
				if resp, err := http.Get("http://" + apiAddr + q); err == nil {
					resp.Body.Close()
				}
			}
		}
	}()
}

// TestDashboardOverviewQueries evaluates the overview dashboard against a Prometheus scraping a
// live `chargesim run` (broker, publisher, listener, API in one process) storing into FerretDB.
func TestDashboardOverviewQueries(t *testing.T) {
	ferret := testenv.StartFerretDB(t)
	apiAddr, mqttAddr := freeAddr(t), freeAddr(t)
	startProc(t, "run", "http://"+apiAddr+"/readyz", []string{"CHARGESIM_MONGO_URI=" + ferret.URI, "CHARGESIM_LOG_FORMAT=text"},
		"run", "--api-addr="+apiAddr, "--mqtt-addr="+mqttAddr, "--mqtt-url=tcp://"+mqttAddr, "--chargers=20", "--session-interval=60s", "--time-scale=120")
	prom := testenv.StartPrometheusWith(t, testenv.PrometheusOptions{Targets: []string{apiAddr}, ScrapeInterval: time.Second})
	since := time.Now()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	traffic(ctx, t, mqttAddr, apiAddr)

	// Wait for what the slowest panels need: rates over the 20s window and a rejected and a
	// duplicate message inside it.
	wctx, wcancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer wcancel()
	for _, q := range []string{
		`sum(rate(chargesim_listener_sessions_stored_total[20s])) > 0`,
		`sum(rate(chargesim_listener_duplicates_total[20s])) > 0`,
		`sum(rate(chargesim_listener_rejected_total[20s])) > 0`,
		`sum(rate(chargesim_api_requests_total{code=~"4.."}[20s])) > 0`,
		`sum(rate(chargesim_listener_lag_seconds_count[20s])) > 0`,
	} {
		if _, err := prom.WaitQuery(wctx, q, func(s []testenv.Sample) bool { return len(s) > 0 }); err != nil {
			t.Fatalf("the live stack never produced %s: %v", q, err)
		}
	}
	t.Logf("stack warmed up in %s", time.Since(since).Round(time.Second))
	checkDashboard(t, prom, "overview.json", since)

	// The stats endpoint sees the sessions the panels count.
	body := scrape(t, "http://"+apiAddr+"/api/v1/stats")
	var st struct {
		Sessions int64 `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Sessions == 0 {
		t.Errorf("GET /api/v1/stats: %s (%v)", body, err)
	}
}

// TestDashboardOperatorQueries evaluates the operator dashboard against a Prometheus scraping
// the operator reconciling two ChargerSimulations on a kwok cluster, and lints its /metrics.
func TestDashboardOperatorQueries(t *testing.T) {
	chargesimBin(t, "operator")
	kc := cluster(t, staticCluster)
	staticCRDs(t)
	const ns = "dashboards"
	kubectl(t, kc, nil, "create", "namespace", ns)
	kubectl(t, kc, []byte(`apiVersion: v1
kind: Secret
metadata: {name: mongo}
stringData: {uri: "mongodb://mongo.example:27017"}
`), "-n", ns, "apply", "-f", "-")
	for _, sim := range []string{"alpha", "beta"} {
		kubectl(t, kc, simulationYAML(sim, ns, "mongo"), "apply", "-f", "-")
	}
	// One that cannot become Ready (its Secret is missing): the error panels see errors.
	kubectl(t, kc, simulationYAML("broken", ns, "no-such-secret"), "apply", "-f", "-")

	// Plain HTTP (the documented development mode): this Prometheus scrapes without a token.
	_, metrics := runOperator(t, kc, "--resync-interval=2s", "--metrics-secure=false")
	prom := testenv.StartPrometheusWith(t, testenv.PrometheusOptions{Targets: []string{metrics}, ScrapeInterval: time.Second})
	since := time.Now()
	for _, sim := range []string{"alpha", "beta"} {
		waitReady(t, kc, ns, sim)
	}
	// Keep the controller busy: spec changes are reconciled (and queued) at once.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			patch := fmt.Sprintf(`{"spec":{"chargers":%d}}`, 4+i%3)
			_ = run(ctx, nil, nil, tool(t, "kubectl"), "--kubeconfig", kc, "-n", ns, "patch", "chargersimulation", "alpha", "--type=merge", "-p", patch)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	wctx, wcancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer wcancel()
	for _, q := range []string{
		`sum(rate(controller_runtime_reconcile_total{controller="chargersimulation"}[20s])) > 0`,
		`sum(rate(workqueue_queue_duration_seconds_count{name="chargersimulation"}[20s])) > 0`,
	} {
		if _, err := prom.WaitQuery(wctx, q, func(s []testenv.Sample) bool { return len(s) > 0 }); err != nil {
			t.Fatalf("operator never produced %s: %v", q, err)
		}
	}
	checkDashboard(t, prom, "operator.json", since)
	lintMetrics(t, "operator", "http://"+metrics+"/metrics")
}
