//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/chargesim/chargesim/api/v1alpha1"
	"github.com/chargesim/chargesim/test/testenv"
)

// cachedCost is what the operator would pay without its label-selected cache: the heap an
// informer needs for the Deployments of namespace ns (measured in this process, after GC).
func cachedCost(b *testing.B, ns string) float64 {
	b.Helper()
	// The informer logs through controller-runtime's root logger, which complains with a stack
	// trace when nobody set one.
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c, err := cache.New(adminCfg, cache.Options{
		Scheme:            k8s.Scheme(),
		DefaultTransform:  cache.TransformStripManagedFields(),
		DefaultNamespaces: map[string]cache.Config{ns: {}},
	})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.GetInformer(ctx, &appsv1.Deployment{}); err != nil {
		b.Fatal(err)
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		b.Fatal("cache did not sync")
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(c)
	return float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / (1 << 20)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// operatorMemory forces a garbage collection in the operator (pprof heap?gc=1) and then reads
// its heap in use and resident set size from its /metrics.
func operatorMemory(b *testing.B) (heapMiB, rssMiB float64) {
	b.Helper()
	if _, err := scrape(opPprof + "/heap?gc=1"); err != nil {
		b.Fatal(err)
	}
	text, err := scrape(opMetrics)
	if err != nil {
		b.Fatal(err)
	}
	return metricValue(text, "go_memstats_heap_inuse_bytes") / (1 << 20),
		metricValue(text, "process_resident_memory_bytes") / (1 << 20)
}

// BenchmarkOperator measures, on the kwok cluster, how long the operator takes to bring
// BENCH_SIMS (200) ChargerSimulations to Ready (every Deployment and StatefulSet really
// available), and its memory before and after BENCH_UNRELATED (2,000) Deployments it does not
// own appear in the cluster: its cache selects its own children by label, so memory must stay
// flat.
//
//	go test -tags e2e -run '^$' -bench BenchmarkOperator -benchtime 1x -timeout 60m ./test/e2e/
func BenchmarkOperator(b *testing.B) {
	sims := envInt("BENCH_SIMS", 200)
	unrelated := envInt("BENCH_UNRELATED", 2000)
	for range b.N {
		ns := newNamespace(b, "bench-")
		if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mongo"},
			StringData: map[string]string{"uri": "mongodb://mongo:27017"}}); err != nil {
			b.Fatal(err)
		}
		heapIdle, rssIdle := operatorMemory(b)

		start := time.Now()
		if err := parallel(sims, 16, func(i int) error {
			return k8s.Create(bg, &v1alpha1.ChargerSimulation{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("sim-%03d", i)},
				Spec: v1alpha1.ChargerSimulationSpec{
					Chargers: 100,
					Mongo:    v1alpha1.MongoSpec{URISecretRef: v1alpha1.URISecretRef{Name: "mongo"}},
				},
			})
		}); err != nil {
			b.Fatal(err)
		}
		created := time.Since(start)
		// The operator's share: every child applied (what follows is the cluster's controllers,
		// scheduler and kwok making pods and reporting them).
		testenv.Eventually(b, 30*time.Minute, "all children applied", func() error {
			deps, sts := &appsv1.DeploymentList{}, &appsv1.StatefulSetList{}
			if err := k8s.List(bg, deps, client.InNamespace(ns)); err != nil {
				return err
			}
			if err := k8s.List(bg, sts, client.InNamespace(ns)); err != nil {
				return err
			}
			// broker and API Deployments; listener and publisher StatefulSets.
			if len(deps.Items) < 2*sims || len(sts.Items) < 2*sims {
				return fmt.Errorf("%d Deployments, %d StatefulSets", len(deps.Items), len(sts.Items))
			}
			return nil
		})
		applied := time.Since(start)
		testenv.Eventually(b, 30*time.Minute, fmt.Sprintf("%d simulations Ready", sims), func() error {
			list := &v1alpha1.ChargerSimulationList{}
			if err := k8s.List(bg, list, client.InNamespace(ns)); err != nil {
				return err
			}
			ready := 0
			for i := range list.Items {
				if readyForGeneration(&list.Items[i]) == nil {
					ready++
				}
			}
			if ready < sims {
				return fmt.Errorf("%d/%d Ready after %s", ready, sims, time.Since(start).Round(time.Second))
			}
			return nil
		})
		allReady := time.Since(start)
		heapSims, rssSims := operatorMemory(b)

		// Deployments the operator has nothing to do with (no managed-by label): its informers
		// must never see them. Zero replicas keep the fake nodes out of it.
		other := newNamespace(b, "unrelated-")
		if err := parallel(unrelated, 16, func(i int) error {
			labels := map[string]string{"app": fmt.Sprintf("unrelated-%04d", i)}
			return k8s.Create(bg, &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: fmt.Sprintf("unrelated-%04d", i), Labels: labels},
				Spec: appsv1.DeploymentSpec{
					Replicas: ptr.To[int32](0),
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{Containers: []corev1.Container{{
							Name: "app", Image: "registry.example/app:1",
							Env: []corev1.EnvVar{{Name: "PADDING", Value: fmt.Sprintf("%0512d", i)}},
						}}},
					},
				},
			})
		}); err != nil {
			b.Fatal(err)
		}
		// Let the watch events (if any reached the operator) land before measuring.
		time.Sleep(10 * time.Second)
		heapUnrelated, rssUnrelated := operatorMemory(b)
		text, err := scrape(opMetrics)
		if err != nil {
			b.Fatal(err)
		}
		reconciles := metricValue(text, `controller_runtime_reconcile_total{controller="chargersimulation",result="success"}`) +
			metricValue(text, `controller_runtime_reconcile_total{controller="chargersimulation",result="requeue_after"}`) +
			metricValue(text, `controller_runtime_reconcile_total{controller="chargersimulation",result="error"}`)
		var sent, skipped float64
		for _, kind := range []string{"ConfigMap", "Deployment", "StatefulSet", "Service"} {
			sent += metricValue(text, `chargesim_operator_applies_total{kind="`+kind+`",result="applied"}`)
			skipped += metricValue(text, `chargesim_operator_applies_total{kind="`+kind+`",result="unchanged"}`)
		}
		cached := cachedCost(b, other)

		b.ReportMetric(created.Seconds(), "s-create")
		b.ReportMetric(applied.Seconds(), "s-children-applied")
		b.ReportMetric(allReady.Seconds(), "s-all-ready")
		b.ReportMetric(reconciles, "reconciles")
		b.ReportMetric(sent, "applies-sent")
		b.ReportMetric(skipped, "applies-skipped")
		b.ReportMetric(cached, "MiB-if-cached")
		b.ReportMetric(heapIdle, "MiB-heap-idle")
		b.ReportMetric(heapSims, "MiB-heap-sims")
		b.ReportMetric(heapUnrelated, "MiB-heap-unrelated")
		b.ReportMetric(rssIdle, "MiB-rss-idle")
		b.ReportMetric(rssSims, "MiB-rss-sims")
		b.ReportMetric(rssUnrelated, "MiB-rss-unrelated")
		b.Logf("children applied after %s; %.0f reconciles, %.0f applies sent, %.0f skipped (unchanged); an informer on the %d unrelated Deployments would hold %.1f MiB",
			applied.Round(time.Millisecond), reconciles, sent, skipped, unrelated, cached)
		b.Logf("%d simulations created in %s, all Ready after %s; operator heap in use idle %.1f MiB, with %d simulations %.1f MiB, plus %d unrelated Deployments %.1f MiB (RSS %.1f / %.1f / %.1f MiB)",
			sims, created.Round(time.Millisecond), allReady.Round(time.Millisecond), heapIdle, sims, heapSims, unrelated, heapUnrelated, rssIdle, rssSims, rssUnrelated)
		// Flat: the unrelated Deployments alone would be tens of MiB in a cache.
		if d := heapUnrelated - heapSims; d > 4 {
			b.Errorf("operator heap grew by %.1f MiB with %d unrelated Deployments: something caches them", d, unrelated)
		}

		for _, n := range []string{ns, other} {
			if err := k8s.Delete(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}); err != nil {
				b.Error(err)
			}
		}
	}
}
