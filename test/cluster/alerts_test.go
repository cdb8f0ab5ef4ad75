//go:build cluster

package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/chargesim/chargesim/components/session"
)

// The chart is installed with prometheusRule.for=alertFor and prometheusRule.window=alertWindow
// (monitoringValues): the shipped expressions of files/alerts.yaml, with a `for` and rate windows a
// test can wait for. Everything else about the alerts is what users get.
const (
	alertFor    = 30 * time.Second
	alertWindow = time.Minute
	// noNode is a node label no node has: a component given it as nodeSelector has no pod
	// running (the operator keeps replicas where the spec puts them, so `kubectl scale` to 0
	// would be undone at once; an unschedulable pod is how a component really stays down).
	noNode = `{"chargesim.io/e2e-no-such-node":"true"}`
	// alertSlack covers a target's scrape landing late in its interval and the poll.
	alertSlack = 15 * time.Second
)

// alertTiming is what one fault measured: from the fault being in place to the alert firing,
// and from the fault being reverted to the alert being gone.
type alertTiming struct {
	alert, fault string
	fire, clear  time.Duration
}

// checkAlerts causes every shipped alert's real fault on the live simulations, waits for
// Prometheus to fire the alert (with labels naming the simulation), reverts the fault and waits
// for the alert to resolve. Faults that do not disturb each other run in parallel:
//
//   - ChargesimIngestStalled: a third simulation's listener has no pod (unschedulable: the
//     operator keeps listener replicas >= 1, so `kubectl scale` to 0 would be undone at once)
//     while its publisher goes on.
//   - ChargesimListenerRejectsRising: malformed payloads through minimal's port-forwarded broker.
//   - ChargesimListenerWriteErrors: then the store (the chart's FerretDB) scaled to 0 while valid
//     sessions reach minimal's listener; afterwards every one of them is stored.
//   - ChargesimPublisherDisconnected: large's broker has no pod (deleting it would only have the
//     operator recreate it within seconds); both its publishers alert.
//   - ChargesimSimulationNotReady: a simulation whose Secret does not exist, until it is created.
//   - ChargesimOperatorReconcileErrors: the operator's ClusterRole loses its apps rules while a
//     spec change needs applying. It runs while the other faults stand (their setup and their revert
//     need the operator), which the others wait for before reverting.
//
// Each alert must fire within what its expression needs to see the fault (one window for a
// rate that must drain, a scrape for a gauge), plus `for`, plus one evaluation interval, plus
// slack for the scrape.
func (e *env) checkAlerts(t *testing.T) {
	start := time.Now()
	// The rules Prometheus evaluates have the `for` the deadlines below assume.
	fors := strings.Fields(e.must(e.kubectl("-n", namespace, "get", "prometheusrule", release, "-o",
		"jsonpath={.spec.groups[*].rules[*].for}")))
	if len(fors) == 0 || strings.Count(" "+strings.Join(fors, " "), " "+alertFor.String()) != len(fors) {
		t.Fatalf("PrometheusRule %s: for %v, want every alert at %s (prometheusRule.for)", release, fors, alertFor)
	}
	// The third simulation (broker fault) and the one without its Secret.
	e.applySim("alerts", fmt.Sprintf("mongodb://%s-mongodb.%s.svc:27017/", release, namespace), "")
	e.applySimNoSecret("nosecret")
	noSecretSince := time.Now()
	// Port-forwards start here: they fail the test with t.Fatal, which goroutines must not call.
	minimalBroker := e.portForward("svc/minimal-broker", 1883)
	minimalAPI := e.portForward("svc/minimal-api", 8080)

	var (
		mu      sync.Mutex
		timings []alertTiming
		wg      sync.WaitGroup
		// setups counts the faults the operator fault waits for; opFixed is closed once the
		// operator can reconcile again, which the faults it reverts wait for.
		setups  sync.WaitGroup
		opFixed = make(chan struct{})
	)
	record := func(tm alertTiming) {
		mu.Lock()
		defer mu.Unlock()
		timings = append(timings, tm)
	}
	// Goroutines report with t.Errorf and return; t.Fatal must not be called off the test's goroutine.
	parallel := func(name string, setup bool, f func(ready func()) error) {
		wg.Add(1)
		if setup {
			setups.Add(1)
		}
		go func() {
			defer wg.Done()
			once := sync.Once{}
			ready := func() {
				if setup {
					once.Do(setups.Done)
				}
			}
			defer ready()
			if err := f(ready); err != nil {
				t.Errorf("alert check %s: %v", name, err)
			}
		}()
	}

	parallel("stalled", true, func(ready func()) error {
		return e.alertStalled(ready, opFixed, record)
	})
	parallel("disconnected", true, func(ready func()) error {
		return e.alertDisconnected(ready, opFixed, record)
	})
	parallel("notready", true, func(ready func()) error {
		return e.alertNotReady(noSecretSince, ready, opFixed, record)
	})
	parallel("rejects+writeerrors", false, func(func()) error {
		return e.alertRejectsThenWriteErrors(minimalBroker, minimalAPI, record)
	})
	parallel("operator", false, func(func()) error {
		defer close(opFixed)
		setups.Wait()
		return e.alertOperator(record)
	})
	wg.Wait()

	sort.Slice(timings, func(i, j int) bool { return timings[i].alert < timings[j].alert })
	for _, tm := range timings {
		t.Logf("alert %-34s fired %5.0fs after %s, resolved %5.0fs after the revert",
			tm.alert, tm.fire.Seconds(), tm.fault, tm.clear.Seconds())
	}
	// Put things back as the rest of the test expects them.
	e.must(e.kubectl("-n", namespace, "delete", "chargersimulation", "alerts", "nosecret", "--wait=false"))
	for _, sim := range []string{"minimal", "large"} {
		e.must(e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/"+sim, "--timeout=180s"))
	}
	t.Logf("alert checks done in %s", time.Since(start).Round(time.Second))
}

// ---- the faults ------------------------------------------------------------------------------

// alertStalled: the listener of "alerts" has no pod while its publisher keeps publishing. (A
// simulation with one listener: the StatefulSet replaces pods one at a time and waits for each,
// so of several listeners only one would go.)
func (e *env) alertStalled(ready func(), opFixed <-chan struct{}, record func(alertTiming)) error {
	const sim = "alerts"
	if _, err := e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/"+sim, "--timeout=180s"); err != nil {
		return err
	}
	revert := func() error { return e.patchSim(sim, `{"spec":{"listener":{"pod":null}}}`) }
	if err := e.patchSim(sim, `{"spec":{"listener":{"pod":{"nodeSelector":`+noNode+`}}}}`); err != nil {
		return err
	}
	reverted := false
	defer func() {
		if !reverted {
			_ = revert()
		}
	}()
	if err := e.waitNoRunningPod(sim, "listener"); err != nil {
		return err
	}
	since := time.Now()
	ready()
	labels := map[string]string{"simulation": sim}
	// The stored rate must drain out of the window before `unless` lets the published one through.
	fire, err := e.waitAlert("ChargesimIngestStalled", labels, since, alertWindow)
	if err != nil {
		return err
	}
	<-opFixed
	revertAt := time.Now()
	reverted = true
	if err := revert(); err != nil {
		return err
	}
	clear, err := e.waitResolved("ChargesimIngestStalled", labels, revertAt, 0)
	record(alertTiming{alert: "ChargesimIngestStalled", fault: "the listener of alerts went away", fire: fire, clear: clear})
	return err
}

// alertDisconnected: large's broker has no pod; its publishers cannot connect.
func (e *env) alertDisconnected(ready func(), opFixed <-chan struct{}, record func(alertTiming)) error {
	const sim = "large"
	revert := func() error { return e.patchSim(sim, `{"spec":{"broker":null}}`) }
	if err := e.patchSim(sim, `{"spec":{"broker":{"managed":{"pod":{"nodeSelector":`+noNode+`}}}}}`); err != nil {
		return err
	}
	reverted := false
	defer func() {
		if !reverted {
			_ = revert()
		}
	}()
	if err := e.waitNoRunningPod(sim, "broker"); err != nil {
		return err
	}
	since := time.Now()
	ready()
	// Each publisher is its own alert, named by its pod.
	var fire time.Duration
	for _, pod := range []string{sim + "-publisher-0", sim + "-publisher-1"} {
		f, err := e.waitAlert("ChargesimPublisherDisconnected", map[string]string{"simulation": sim, "pod": pod}, since, 0)
		if err != nil {
			return err
		}
		fire = max(fire, f)
	}
	<-opFixed
	revertAt := time.Now()
	reverted = true
	if err := revert(); err != nil {
		return err
	}
	clear, err := e.waitResolved("ChargesimPublisherDisconnected", map[string]string{"simulation": sim}, revertAt, 0)
	record(alertTiming{alert: "ChargesimPublisherDisconnected", fault: "large's broker went away", fire: fire, clear: clear})
	return err
}

// alertNotReady: "nosecret" names a Secret that does not exist, until it is created.
func (e *env) alertNotReady(since time.Time, ready func(), opFixed <-chan struct{}, record func(alertTiming)) error {
	const sim = "nosecret"
	// The operator has said why before the operator fault begins.
	err := e.poll(time.Minute, "nosecret Degraded with SecretNotFound", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "chargersimulation/"+sim, "-o",
			`jsonpath={.status.conditions[?(@.type=="Degraded")].reason}`)
		return out == "SecretNotFound", out
	})
	if err != nil {
		return err
	}
	labels := map[string]string{"simulation": sim}
	fire, err := e.waitAlert("ChargesimSimulationNotReady", labels, since, 0)
	if err != nil {
		return err
	}
	// Only now may the operator fault begin: this alert's series come from the operator's own
	// /metrics, and with its RBAC gone the scrape's TokenReview and SubjectAccessReview fail,
	// the series go stale and the pending alert starts over (seen once: still pending at 55 s).
	ready()
	<-opFixed
	revertAt := time.Now()
	if _, err := e.kubectl("-n", namespace, "create", "secret", "generic", sim+"-mongo",
		fmt.Sprintf("--from-literal=uri=mongodb://%s-mongodb.%s.svc:27017/", release, namespace)); err != nil {
		return err
	}
	// Secrets are not watched: a degraded simulation is re-checked with a backoff of up to a
	// minute. Touching it, as a user would after fixing it, reconciles at once.
	if _, err := e.kubectl("-n", namespace, "annotate", "--overwrite", "chargersimulation/"+sim,
		"chargesim.io/e2e-touched="+time.Now().Format("150405")); err != nil {
		return err
	}
	if _, err := e.kubectl("-n", namespace, "wait", "--for=condition=Ready", "chargersimulation/"+sim, "--timeout=180s"); err != nil {
		return err
	}
	clear, err := e.waitResolved("ChargesimSimulationNotReady", labels, revertAt, 0)
	record(alertTiming{alert: "ChargesimSimulationNotReady", fault: "nosecret's Secret was missing", fire: fire, clear: clear})
	return err
}

// alertRejectsThenWriteErrors floods minimal's listener with malformed payloads until
// ChargesimListenerRejectsRising fires, then scales the store to 0 while valid sessions arrive
// until ChargesimListenerWriteErrors fires. Sequential: a listener that cannot write stops
// reading (backpressure), which would end the flood's rejections.
func (e *env) alertRejectsThenWriteErrors(broker, api string, record func(alertTiming)) error {
	const sim = "minimal"
	user, pass := e.brokerCredentials(sim)
	c, err := mqttConnect("tcp://"+broker, "e2e-flood", user, pass)
	if err != nil {
		return err
	}
	defer c.Disconnect(250)
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		// 20 malformed payloads a second on session topics of a charger no one simulates.
		tb := session.NewTopicBuilder("")
		n := 0
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				flooded <- n
				return
			case <-tick.C:
				n++
				c.Publish(tb.Topic("e2e-garbage", 1, int64(n)), 1, false, []byte(`{"sessionId": "not a number"`))
			}
		}
	}()
	labels := map[string]string{"simulation": sim, "reason": string(session.ReasonBadJSON)}
	fire, err := e.waitAlert("ChargesimListenerRejectsRising", labels, time.Now(), 0)
	close(stop)
	n := <-flooded
	if err != nil {
		return err
	}
	clear, err := e.waitResolved("ChargesimListenerRejectsRising", labels, time.Now(), alertWindow)
	record(alertTiming{alert: "ChargesimListenerRejectsRising", fault: fmt.Sprintf("the flood (%d malformed messages)", n), fire: fire, clear: clear})
	if err != nil {
		return err
	}

	// The store: the chart's FerretDB scaled to 0 (its emptyDir data goes with it; nothing
	// after this step reads old sessions).
	store := release + "-mongodb"
	if _, err := e.kubectl("-n", namespace, "scale", "statefulset", store, "--replicas=0"); err != nil {
		return err
	}
	if err := e.poll(2*time.Minute, "store pod gone", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "pods", "-l", "app.kubernetes.io/component=mongodb", "-o", "name")
		return strings.TrimSpace(out) == "", out
	}); err != nil {
		return err
	}
	since := time.Now()
	charger := fmt.Sprintf("e2e-storedown-%d", time.Now().UnixNano()%1e9)
	pc, err := mqttConnect("tcp://"+broker, "e2e-client-"+charger, user, pass)
	if err != nil {
		return err
	}
	defer pc.Disconnect(250)
	pub := &clientPublisher{t: e.t, c: pc, charger: charger}
	published := make(chan struct{})
	go func() {
		defer close(published)
		pub.publish(1, 50, 20*time.Millisecond)
	}()
	labels = map[string]string{"simulation": sim}
	// A write fails once the driver gives up selecting a server (5s).
	fire, err = e.waitAlert("ChargesimListenerWriteErrors", labels, since, 10*time.Second)
	<-published
	revertAt := time.Now()
	if _, serr := e.kubectl("-n", namespace, "scale", "statefulset", store, "--replicas=1"); serr != nil {
		return serr
	}
	if err != nil {
		return err
	}
	if _, err := e.kubectl("-n", namespace, "rollout", "status", "statefulset/"+store, "--timeout=120s"); err != nil {
		return err
	}
	clear, err = e.waitResolved("ChargesimListenerWriteErrors", labels, revertAt, alertWindow)
	record(alertTiming{alert: "ChargesimListenerWriteErrors", fault: "the store went away", fire: fire, clear: clear})
	if err != nil {
		return err
	}
	// The listener retried: every session published while the store was down is stored, once.
	return e.poll(2*time.Minute, "sessions published while the store was down stored", func() (bool, string) {
		b, err := e.get("http://" + api + "/api/v1/chargers/" + pub.charger)
		var c struct {
			Sessions int64 `json:"sessions"`
		}
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		return err == nil && c.Sessions == int64(pub.distinct), fmt.Sprintf("%d of %d (%v)", c.Sessions, pub.distinct, err)
	})
}

// alertOperator takes the apps rules (Deployments, StatefulSets) out of the operator's
// ClusterRole and changes a spec so that the operator has something to apply and is refused;
// then puts the rules back. Only those rules: the operator's own /metrics, where this alert's
// series come from, authenticates Prometheus with TokenReviews and SubjectAccessReviews, and
// without them the scrape fails once its cached review expires (up to a minute later), so
// deleting the whole binding made the alert race its own observation.
func (e *env) alertOperator(record func(alertTiming)) error {
	role := release + "-operator"
	saved, err := e.kubectl("get", "clusterrole", role, "-o", "json")
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(saved), &obj); err != nil {
		return fmt.Errorf("clusterrole %s: %w", role, err)
	}
	meta := obj["metadata"].(map[string]any)
	for _, k := range []string{"resourceVersion", "uid", "creationTimestamp", "managedFields"} {
		delete(meta, k)
	}
	restore, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	var kept []any
	for _, r := range obj["rules"].([]any) {
		groups, _ := r.(map[string]any)["apiGroups"].([]any)
		if !slices.Contains(groups, any("apps")) {
			kept = append(kept, r)
		}
	}
	if len(kept) == len(obj["rules"].([]any)) {
		return fmt.Errorf("clusterrole %s has no apps rules to take away", role)
	}
	obj["rules"] = kept
	broken, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	dir := e.t.TempDir()
	f, fb := filepath.Join(dir, "role.json"), filepath.Join(dir, "role-without-apps.json")
	if err := os.WriteFile(f, restore, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(fb, broken, 0o600); err != nil {
		return err
	}
	if _, err := e.kubectl("replace", "-f", fb); err != nil {
		return err
	}
	since := time.Now()
	restored := false
	defer func() {
		if !restored {
			_, _ = e.kubectl("replace", "-f", f)
		}
	}()
	// A change the operator must apply to large's API Deployment, and cannot.
	if err := e.patchSim("large", `{"spec":{"api":{"pod":{"annotations":{"chargesim.io/e2e-touched":"`+time.Now().Format("150405")+`"}}}}}`); err != nil {
		return err
	}
	labels := map[string]string{"namespace": namespace}
	fire, err := e.waitAlert("ChargesimOperatorReconcileErrors", labels, since, 0)
	revertAt := time.Now()
	if _, cerr := e.kubectl("replace", "-f", f); cerr != nil {
		return cerr
	}
	restored = true
	if err != nil {
		return err
	}
	// The failed simulation is retried with a growing backoff; a touch reconciles it at once.
	if _, err := e.kubectl("-n", namespace, "annotate", "--overwrite", "chargersimulation/large",
		"chargesim.io/e2e-touched="+time.Now().Format("150405")); err != nil {
		return err
	}
	clear, err := e.waitResolved("ChargesimOperatorReconcileErrors", labels, revertAt, alertWindow)
	record(alertTiming{alert: "ChargesimOperatorReconcileErrors", fault: "the operator's apps RBAC went away", fire: fire, clear: clear})
	return err
}

// ---- helpers ---------------------------------------------------------------------------------

// waitAlert waits for alert to be firing with labels (and namespace) and returns how long
// after since (the fault in place) it fired. drain is how long the expression needs before it
// can see the fault at all (a window for a rate that must fall to nothing, the driver's timeout);
// the deadline is drain + for + one evaluation interval + a scrape + slack for the kubelet and
// the scrape's own timing.
func (e *env) waitAlert(alert string, labels map[string]string, since time.Time, drain time.Duration) (time.Duration, error) {
	want := maps.Clone(labels)
	if _, ok := want["namespace"]; !ok {
		want["namespace"] = namespace
	}
	limit := drain + alertFor + 2*promInterval + alertSlack
	var last string
	for time.Since(since) < limit {
		alerts, err := e.promAlerts()
		last = fmt.Sprint(alerts, err)
		for _, a := range alerts {
			if a.Labels["alertname"] == alert && a.State == "firing" && hasLabels(a.Labels, want) {
				return time.Since(since), nil
			}
		}
		time.Sleep(time.Second)
	}
	return 0, fmt.Errorf("%s%v not firing within %s (drain %s + for %s + evaluation %s + scrape %s + slack %s); alerts: %s",
		alert, want, limit, drain, alertFor, promInterval, promInterval, alertSlack, last)
}

// waitResolved waits until no alert (pending or firing) matches, and returns how long after
// revertAt (the revert began) that was. drain is what the expression needs to stop seeing the
// fault; a minute more covers the revert itself (a pod start, a store that replays its batches).
func (e *env) waitResolved(alert string, labels map[string]string, revertAt time.Time, drain time.Duration) (time.Duration, error) {
	// The extra 2 minutes: make test runs its other suites beside this test, and under that load
	// resolving took 26-65 s in one run and over 85 s in another (30 s alone). An alert that
	// never resolves still fails.
	limit := drain + 2*promInterval + alertSlack + 2*time.Minute
	var last string
	for time.Since(revertAt) < limit {
		alerts, err := e.promAlerts()
		last = fmt.Sprint(alerts, err)
		found := err != nil
		for _, a := range alerts {
			if a.Labels["alertname"] == alert && hasLabels(a.Labels, labels) {
				found = true
			}
		}
		if !found {
			return time.Since(revertAt), nil
		}
		time.Sleep(time.Second)
	}
	return 0, fmt.Errorf("%s%v still active %s after the fault was reverted: %s", alert, labels, limit, last)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// poll is waitFor for goroutines: it returns an error instead of failing the test.
func (e *env) poll(limit time.Duration, what string, ok func() (bool, string)) error {
	deadline := time.Now().Add(limit)
	last := ""
	for time.Now().Before(deadline) {
		var done bool
		if done, last = ok(); done {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("%s: timed out after %s (last: %s)", what, limit, last)
}

func (e *env) patchSim(sim, patch string) error {
	_, err := e.kubectl("-n", namespace, "patch", "chargersimulation/"+sim, "--type=merge", "-p", patch)
	return err
}

// waitNoRunningPod waits until no pod of a simulation's component runs (the fault is in place).
func (e *env) waitNoRunningPod(sim, component string) error {
	return e.poll(2*time.Minute, sim+" "+component+" has no running pod", func() (bool, string) {
		out, _ := e.kubectl("-n", namespace, "get", "pods", "-l",
			"chargesim.io/simulation="+sim+",app.kubernetes.io/component="+component,
			"--field-selector=status.phase=Running", "-o", "name")
		return strings.TrimSpace(out) == "", out
	})
}

// applySimNoSecret applies the sample simulation as name, naming a Secret that does not exist.
func (e *env) applySimNoSecret(name string) {
	e.t.Helper()
	e.must(e.kubectl("-n", namespace, "apply", "-f", e.sampleAs(name)))
}

func mqttConnect(url, id, user, pass string) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		return nil, fmt.Errorf("MQTT connect %s: no CONNACK within 30s", url)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("MQTT connect %s: %w", url, err)
	}
	return c, nil
}
