//go:build cluster

package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// components are the values of app.kubernetes.io/component of every pod that serves metrics:
// the chart's operator and the simulations' pods the operator renders.
var components = []string{"publisher", "listener", "broker", "api", "operator"}

// checkMonitoring proves, against the real Prometheus of installMonitoring, that the chart's
// own monitors scrape every pod of every component exactly once, that every query of every
// panel of every dashboard the chart ships returns data, and that the two operator replicas
// do not double any number. broker and api are port-forwards to the minimal simulation.
func (e *env) checkMonitoring(broker, api string) {
	e.t.Helper()
	start := time.Now()
	stop := e.dashboardTraffic(broker, api)
	defer stop()

	// ---- (a) every pod an up target of the chart's monitors, each scraped once ------------
	pools := e.chartScrapePools()
	var want []string
	for _, c := range components {
		for _, p := range e.podsWith("app.kubernetes.io/component=" + c) {
			want = append(want, p.Metadata.Name)
		}
	}
	sort.Strings(want)
	e.waitFor(fmt.Sprintf("%d pods are up targets of the chart's monitors", len(want)), func() (bool, string) {
		got, err := e.upTargets(pools)
		if err != nil {
			return false, err.Error()
		}
		var missing []string
		for _, p := range want {
			if got[p] != 1 {
				missing = append(missing, fmt.Sprintf("%s (%d up targets)", p, got[p]))
			}
		}
		return len(missing) == 0, "not scraped exactly once: " + strings.Join(missing, ", ")
	})
	// The same through PromQL, as a user would check it: up == 1 for each pod, one series each.
	up, err := e.promQuery(fmt.Sprintf(`up{namespace=%q}`, namespace))
	if err != nil {
		e.t.Fatal(err)
	}
	perPod := map[string]int{}
	for _, s := range up {
		if s.Value != 1 {
			e.t.Errorf("up{pod=%q, job=%q} = %v", s.Metric["pod"], s.Metric["job"], s.Value)
		}
		perPod[s.Metric["pod"]]++
	}
	for _, p := range want {
		if perPod[p] != 1 {
			e.t.Errorf("pod %s: %d up series, want 1", p, perPod[p])
		}
	}
	e.t.Logf("monitoring: %d pods (%s) are up targets of %s", len(want), strings.Join(components, ", "), strings.Join(pools, ", "))

	// ---- (b) every panel of every shipped dashboard has data --------------------------------
	dashboards := e.chartDashboards()
	var failed []string
	e.waitForLong("every dashboard query returns data", 3*time.Minute, func() (bool, string) {
		failed = failed[:0]
		n := 0
		for _, file := range slices.Sorted(maps.Keys(dashboards)) {
			d := dashboards[file]
			for _, q := range d.queries() {
				n++
				expr := expandDashboardVars(q.expr, d.varNames())
				res, err := e.promQuery(expr)
				switch {
				case err != nil:
					failed = append(failed, fmt.Sprintf("%s %q: %v", file, q.where, err))
				case !slices.ContainsFunc(res, func(s promSample) bool { return !math.IsNaN(s.Value) && !math.IsInf(s.Value, 0) }):
					failed = append(failed, fmt.Sprintf("%s %q: no finite sample (%d series): %s", file, q.where, len(res), expr))
				}
			}
		}
		return len(failed) == 0, fmt.Sprintf("%d of %d queries without data:\n  %s", len(failed), n, strings.Join(failed, "\n  "))
	})
	nq := 0
	for _, d := range dashboards {
		nq += len(d.queries())
	}
	e.t.Logf("monitoring: all %d queries of %d dashboards return data", nq, len(dashboards))

	// ---- (c) two operator replicas, no number doubled ---------------------------------------
	e.checkNotDoubled()
	e.t.Logf("monitoring checks done in %s", time.Since(start).Round(time.Second))
}

// chartScrapePools are the scrape pools Prometheus made of the chart's monitors
// (podMonitor/<ns>/<name>/ and serviceMonitor/<ns>/<name>/ prefixes), read from the cluster.
func (e *env) chartScrapePools() []string {
	e.t.Helper()
	var list struct {
		Items []struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		} `json:"items"`
	}
	out := e.must(e.kubectl("-n", namespace, "get", "podmonitors.monitoring.coreos.com,servicemonitors.monitoring.coreos.com",
		"-l", "app.kubernetes.io/instance="+release, "-o", "json"))
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		e.t.Fatal(err)
	}
	var pools []string
	kinds := map[string]bool{}
	for _, it := range list.Items {
		kind := map[string]string{"PodMonitor": "podMonitor", "ServiceMonitor": "serviceMonitor"}[it.Kind]
		kinds[it.Kind] = true
		pools = append(pools, fmt.Sprintf("%s/%s/%s/", kind, it.Metadata.Namespace, it.Metadata.Name))
	}
	if !kinds["PodMonitor"] || !kinds["ServiceMonitor"] {
		e.t.Fatalf("the chart rendered %v, want a PodMonitor and a ServiceMonitor", kinds)
	}
	return pools
}

// upTargets counts, per pod, the healthy active targets of the given scrape pools.
func (e *env) upTargets(pools []string) (map[string]int, error) {
	var data struct {
		ActiveTargets []struct {
			ScrapePool string            `json:"scrapePool"`
			Labels     map[string]string `json:"labels"`
			Health     string            `json:"health"`
			LastError  string            `json:"lastError"`
		} `json:"activeTargets"`
	}
	if err := e.promAPI("targets", map[string][]string{"state": {"active"}}, &data); err != nil {
		return nil, err
	}
	got := map[string]int{}
	for _, t := range data.ActiveTargets {
		if !slices.ContainsFunc(pools, func(p string) bool { return strings.HasPrefix(t.ScrapePool, p) }) {
			continue
		}
		if t.Health == "up" {
			got[t.Labels["pod"]]++
		}
	}
	return got, nil
}

// checkNotDoubled compares what the dashboards sum with the cluster's own numbers while two
// operator replicas (leader and hot standby) are scraped.
func (e *env) checkNotDoubled() {
	e.t.Helper()
	leaders, err := e.promQuery(fmt.Sprintf(`chargesim_operator_leader{namespace=%q}`, namespace))
	if err != nil {
		e.t.Fatal(err)
	}
	var sum float64
	for _, s := range leaders {
		sum += s.Value
	}
	if len(leaders) != 2 || sum != 1 {
		e.t.Errorf("chargesim_operator_leader: %d series summing to %v, want 2 replicas, one leader: %v", len(leaders), sum, leaders)
	}

	var sims struct {
		Items []struct {
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Spec struct {
				Chargers int `json:"chargers"`
			} `json:"spec"`
			Status struct {
				SessionsPerSecond string `json:"sessionsPerSecond"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(e.must(e.kubectl("get", "chargersimulations", "-A", "-o", "json"))), &sims); err != nil {
		e.t.Fatal(err)
	}
	n := float64(len(sims.Items))
	// The operator dashboard's "Simulations by Ready condition" panel, summed over statuses.
	e.expectValue(`sum(chargesim_operator_simulations{condition="Ready"})`, nil, n)
	e.expectValue(`count(chargesim_simulation_ready)`, nil, n)
	for _, s := range sims.Items {
		lbl := map[string]string{"namespace": s.Metadata.Namespace, "simulation": s.Metadata.Name}
		rate, err := strconv.ParseFloat(s.Status.SessionsPerSecond, 64)
		if err != nil {
			e.t.Errorf("simulation %s: status.sessionsPerSecond %q: %v", s.Metadata.Name, s.Status.SessionsPerSecond, err)
			continue
		}
		sel := fmt.Sprintf(`{namespace=%q, simulation=%q}`, s.Metadata.Namespace, s.Metadata.Name)
		e.expectValue(`sum by (namespace, simulation) (chargesim_simulation_configured_sessions_per_second`+sel+`)`, lbl, rate)
		// The overview's Chargers stat: every publisher shard counted once.
		e.expectValue(`sum by (namespace, simulation) (chargesim_publisher_chargers`+sel+`)`, lbl, float64(s.Spec.Chargers))
		// What the publishers are configured with is what the operator reports.
		e.expectValue(`sum by (namespace, simulation) (chargesim_publisher_configured_session_rate`+sel+`)`, lbl, rate)
	}
}

// expectValue waits (a scrape or two) until q returns exactly one sample with the labels lbl
// and the value want (relative tolerance 1e-6).
func (e *env) expectValue(q string, lbl map[string]string, want float64) {
	e.t.Helper()
	var last string
	deadline := time.Now().Add(4 * promInterval)
	for {
		res, err := e.promQuery(q)
		if err == nil && len(res) == 1 && math.Abs(res[0].Value-want) <= 1e-6*math.Max(1, math.Abs(want)) {
			ok := true
			for k, v := range lbl {
				ok = ok && res[0].Metric[k] == v
			}
			if ok {
				return
			}
		}
		last = fmt.Sprintf("%v %v", res, err)
		if time.Now().After(deadline) {
			e.t.Errorf("%s = %s, want one sample %v with %v", q, last, want, lbl)
			return
		}
		time.Sleep(time.Second)
	}
}

// dashboardTraffic keeps every panel's cause alive: malformed payloads (rejects), a redelivered
// session (duplicates), good and bad API requests (4xx). stop ends it.
func (e *env) dashboardTraffic(broker, api string) (stop func()) {
	user, pass := e.brokerCredentials("minimal") // the managed broker wants the simulation's credentials
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + broker).SetClientID(fmt.Sprintf("e2e-dashboards-%d", time.Now().UnixNano()%1e9)).
		SetUsername(user).SetPassword(pass).SetConnectTimeout(10 * time.Second).SetAutoReconnect(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		e.t.Fatalf("MQTT connect %s: %v", broker, tok.Error())
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			for topic, payload := range map[string]string{
				"charger/e2e-dash/connector/1/session/1": `{"session_id": 1, "energy_delivered_in_kWh": `, // bad JSON
				"charger/e2e-dash/connector/1/session/2": `{"session_id": 2}`,                             // missing fields
				"charger/e2e-dash/connector/1/session/3": `{"session_id": 3, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`,
			} {
				c.Publish(topic, 1, false, payload).WaitTimeout(5 * time.Second)
			}
			// The operator reconciles only on change (its own status writes do not count), so an
			// idle operator's latency and error-ratio panels would be empty: an annotation change
			// is a reconcile, every tick.
			_, _ = e.kubectl("-n", namespace, "annotate", "--overwrite", "chargersimulation/minimal",
				"chargesim.io/e2e-dashboards="+strconv.FormatInt(time.Now().UnixNano(), 10))
			for _, q := range []string{"/api/v1/stats", "/api/v1/sessions?limit=5", "/api/v1/stats?bogus=1"} {
				if resp, err := http.Get("http://" + api + q); err == nil {
					resp.Body.Close()
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		c.Disconnect(100)
	}
}

// ---- dashboards as the chart ships them --------------------------------------------------------

type dashboardModel struct {
	Title      string           `json:"title"`
	Panels     []dashboardPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
}

type dashboardPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}

type dashboardQuery struct{ where, expr string }

func (d dashboardModel) queries() []dashboardQuery {
	var out []dashboardQuery
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				out = append(out, dashboardQuery{where: p.Title + " " + t.RefID, expr: t.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

func (d dashboardModel) varNames() []string {
	var out []string
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			out = append(out, v.Name)
		}
	}
	return out
}

// chartDashboards returns the dashboards of the release's ConfigMaps by file name, after
// checking that they are exactly the files the chart ships.
func (e *env) chartDashboards() map[string]dashboardModel {
	e.t.Helper()
	files, err := filepath.Glob(filepath.Join(e.root, "charts", "chargesim", "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		e.t.Fatalf("no dashboards in the chart: %v", err)
	}
	var cms struct {
		Items []struct {
			Data map[string]string `json:"data"`
		} `json:"items"`
	}
	out := e.must(e.kubectl("-n", namespace, "get", "configmaps", "-l", "app.kubernetes.io/instance="+release+",grafana_dashboard=1", "-o", "json"))
	if err := json.Unmarshal([]byte(out), &cms); err != nil {
		e.t.Fatal(err)
	}
	inCluster := map[string]string{}
	for _, cm := range cms.Items {
		for k, v := range cm.Data {
			inCluster[k] = v
		}
	}
	ds := map[string]dashboardModel{}
	for _, f := range files {
		name := filepath.Base(f)
		b, err := os.ReadFile(f)
		if err != nil {
			e.t.Fatal(err)
		}
		if strings.TrimSpace(inCluster["chargesim-"+name]) != strings.TrimSpace(string(b)) {
			e.t.Errorf("dashboard %s: the release's ConfigMap does not hold the shipped file (key chargesim-%s: %d bytes)", name, name, len(inCluster["chargesim-"+name]))
		}
		var d dashboardModel
		if err := json.Unmarshal(b, &d); err != nil {
			e.t.Fatalf("%s: %v", name, err)
		}
		if len(d.queries()) == 0 {
			e.t.Fatalf("%s: no queries", name)
		}
		ds[name] = d
	}
	return ds
}

// expandDashboardVars gives Grafana's built-in variables the values Grafana would for a
// promInterval scrape interval ($__rate_interval = 4 scrape intervals) over its default
// 15-minute time range, and selects "All" (.*) for every query variable.
func expandDashboardVars(expr string, vars []string) string {
	expr = strings.NewReplacer(
		"$__rate_interval", (4 * promInterval).String(),
		"$__interval", promInterval.String(),
		"$__range", "15m",
	).Replace(expr)
	for _, v := range vars {
		expr = strings.ReplaceAll(expr, "${"+v+"}", ".*")
		expr = strings.ReplaceAll(expr, "$"+v, ".*")
	}
	return expr
}

// waitForLong is waitFor with its own timeout.
func (e *env) waitForLong(what string, d time.Duration, ok func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		var done bool
		if done, last = ok(); done {
			return
		}
		time.Sleep(2 * time.Second)
	}
	e.t.Fatalf("%s: timed out (last: %s)", what, last)
}
