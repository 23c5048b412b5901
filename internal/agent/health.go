package agent

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tern-net/tern/internal/agentapi"
)

// metrics are the agent's Prometheus figures, in a registry of its own.
type metrics struct {
	reg             *prometheus.Registry
	reconcileTime   prometheus.Histogram
	reconcileErrors prometheus.Counter
	bgpErrors       prometheus.Counter
	policyErrors    prometheus.Counter
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
		bgpErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tern_bgp_errors_total", Help: "BGP passes with an error (planning, peers, announcements, route programming).",
		}),
		policyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tern_policy_errors_total", Help: "NetworkPolicy applies that failed (ipset or iptables).",
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
	m.reg.MustRegister(m.reconcileTime, m.reconcileErrors, m.bgpErrors, m.policyErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	peer, family := []string{"peer", "kind", "family"}, []string{"family"}
	m.reg.MustRegister(bgpCollector{a: a,
		up:          prometheus.NewDesc("tern_bgp_session_up", "1 when the BGP session with the peer is established.", peer, nil),
		received:    prometheus.NewDesc("tern_bgp_prefixes_received", "Prefixes received from the peer.", peer, nil),
		sent:        prometheus.NewDesc("tern_bgp_prefixes_sent", "Prefixes sent to the peer.", peer, nil),
		configured:  prometheus.NewDesc("tern_bgp_sessions", "BGP sessions the node is to have, per address family (one session per family and peer address).", family, nil),
		established: prometheus.NewDesc("tern_bgp_sessions_established", "Established BGP sessions, per address family.", family, nil),
		installed:   prometheus.NewDesc("tern_bgp_routes_installed", "Routes learned over BGP and installed, per address family.", family, nil),
		announced:   prometheus.NewDesc("tern_bgp_prefixes_announced", "Prefixes the node announces, per address family.", family, nil),
	})
	m.reg.MustRegister(ipamCollector{a: a,
		inUse:    prometheus.NewDesc("tern_ipam_addresses_in_use", "Addresses allocated from the node's pod CIDR of the family.", []string{"family", "cidr"}, nil),
		capacity: prometheus.NewDesc("tern_ipam_addresses_capacity", "Usable addresses of the node's pod CIDR of the family (at most 2^63).", []string{"family", "cidr"}, nil),
	})
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

// bgpCollector exports the BGP sessions and prefix counts of the last pass:
// per peer, and per address family.
type bgpCollector struct {
	a                  *Agent
	up, received, sent *prometheus.Desc
	configured         *prometheus.Desc
	established        *prometheus.Desc
	installed          *prometheus.Desc
	announced          *prometheus.Desc
}

func (c bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.received, c.sent, c.configured, c.established, c.installed, c.announced} {
		ch <- d
	}
}

func (c bgpCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.Lock()
	view := c.a.bgpView
	c.a.mu.Unlock()
	for _, p := range view.Peers {
		up := 0.0
		if p.State == "Established" {
			up = 1
		}
		labels := []string{p.Address.String(), p.Kind, p.Family}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, labels...)
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.GaugeValue, float64(p.Received), labels...)
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.GaugeValue, float64(p.Sent), labels...)
	}
	for _, f := range view.Families {
		ch <- prometheus.MustNewConstMetric(c.configured, prometheus.GaugeValue, float64(f.Configured), f.Family)
		ch <- prometheus.MustNewConstMetric(c.established, prometheus.GaugeValue, float64(f.Established), f.Family)
		ch <- prometheus.MustNewConstMetric(c.installed, prometheus.GaugeValue, float64(f.Routes), f.Family)
		ch <- prometheus.MustNewConstMetric(c.announced, prometheus.GaugeValue, float64(f.Announced), f.Family)
	}
}

// ipamCollector exports the use of the node's pod CIDRs, one per family.
type ipamCollector struct {
	a               *Agent
	inUse, capacity *prometheus.Desc
}

func (c ipamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inUse
	ch <- c.capacity
}

func (c ipamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.a.ipam.Usage() {
		labels := []string{agentapi.Family(u.Pool.Addr()), u.Pool.String()}
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(u.InUse), labels...)
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(u.Size), labels...)
	}
}
