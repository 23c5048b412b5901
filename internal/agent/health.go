package agent

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus figures, in a registry of its own.
type metrics struct {
	reg             *prometheus.Registry
	reconcileTime   prometheus.Histogram
	reconcileErrors prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		reg: prometheus.NewRegistry(),
		reconcileTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tern_reconcile_duration_seconds", Help: "Duration of a reconcile pass of the node dataplane.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tern_reconcile_errors_total", Help: "Reconcile passes that failed (not counting waits for the Kubernetes caches).",
		}),
	}
}

func (m *metrics) observe(d time.Duration, err error) {
	if err != nil && err != errNotSynced {
		m.reconcileErrors.Inc()
	}
	if err != errNotSynced {
		m.reconcileTime.Observe(d.Seconds())
	}
}

// register adds the figures read from a at scrape time.
func (m *metrics) register(a *Agent) {
	m.reg.MustRegister(m.reconcileTime, m.reconcileErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tern_ipam_allocations", Help: "Attachments holding addresses on this node.",
	}, func() float64 { return float64(len(a.ipam.List())) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tern_dataplane_writes_total", Help: "Kernel writes (routes, chains, jumps) made by the agent.",
	}, func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(a.writes)
	}))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tern_ipam_released_gone_pods_total", Help: "Addresses released because their pod was gone from the API.",
	}, func() float64 { return float64(a.releasedGone.Load()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tern_ready", Help: "1 when the node dataplane is programmed and the agent serves the CNI plugin.",
	}, func() float64 {
		if ok, _ := a.readiness(); ok {
			return 1
		}
		return 0
	}))
}

// healthHandler serves /healthz (the reconcile loop is alive), /readyz (caches
// synced and dataplane programmed) and /metrics.
func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	start := time.Now()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// The loop passes at least once per resync; allow for a slow pass.
		last := time.Unix(0, a.heartbeat.Load())
		if a.heartbeat.Load() == 0 {
			last = start
		}
		if stale := time.Since(last); stale > 3*a.cfg.Resync+time.Minute {
			http.Error(w, fmt.Sprintf("reconcile loop stuck: last pass %s ago", stale.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := a.readiness(); !ok {
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}
