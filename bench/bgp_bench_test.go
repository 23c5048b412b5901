package bench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// waitRoute polls netns every 10 ms until `ip route show what` prints
// something, and returns when.
func waitRoute(b *testing.B, netns ns.NetNS, what string, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _ := clustertest.Cmd(netns, "ip", "route", "show", what).Output()
		if strings.TrimSpace(string(out)) != "" {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("no route %s after %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routeWithin reports whether `ip route show what` in netns prints
// something within timeout.
func routeWithin(netns ns.NetNS, what string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if out, _ := clustertest.Cmd(netns, "ip", "route", "show", what).Output(); strings.TrimSpace(string(out)) != "" {
			return true
		}
	}
	return false
}

// countRoutes counts the IPv4 routes with a gateway of a protocol in netns
// (not tern's blackhole, also protocol 96).
func countRoutes(netns ns.NetNS, proto string) int {
	out, _ := clustertest.Cmd(netns, "ip", "-4", "route", "show", "proto", proto).Output()
	return strings.Count(string(out), " via ")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkBGPConvergence: from a node's BGP speaker starting to its pod CIDR
// in the kernel of the router it peers with (a BIRD with a kernel protocol),
// for tern-agent (started against the API, caches and all) and for BIRD in the
// same node role, with the same tuned timers, three times each, same run.
func BenchmarkBGPConvergence(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	c := clustertest.NewCluster(b)
	c.Apply(`apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false, gracefulRestartSeconds: 0}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: observer}
spec: {peerIP: 10.37.0.254, asNumber: 65001}
`)
	fab := clustertest.NewFabric(b)
	obs := clustertest.NewRouter(b)
	fab.JoinNS(obs, "obs", "10.37.0.254/24")
	obsBird := routertest.StartBIRD(b, obs, `router id 10.37.0.254;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; }; }
protocol bgp nodetern { local 10.37.0.254 as 65001; neighbor 10.37.0.1 as 64512; connect retry time 1; error wait time 1, 5; graceful restart off; ipv4 { import all; export none; }; }
protocol bgp nodebird { local 10.37.0.254 as 65001; neighbor 10.37.0.2 as 64513; connect retry time 1; error wait time 1, 5; graceful restart off; ipv4 { import all; export none; }; }
`)
	n := nodetest.NewNodeNS(b)
	fab.Join(n, "tern", "10.37.0.1/24")
	c.Start(n, "10.37.0.1", nil, nil)
	n.WaitReady(30 * time.Second)
	st, err := n.Client().Status(context.Background())
	if err != nil || len(st.PodCIDRs) == 0 {
		b.Fatalf("%+v %v", st, err)
	}
	cidr := st.PodCIDRs[0].String()
	if !routeWithin(obs, cidr, 20*time.Second) {
		b.Fatalf("observer never got %s:\n%s\n%s\nagent:\n%s", cidr, obsBird.Birdc("show", "protocols", "all", "nodetern")+obsBird.Log(),
			obsBird.Birdc("show", "route"), nodetest.Tail(n.AgentLog(), 2000))
	}

	birdNode := clustertest.NewNS(b)
	fab.JoinNS(birdNode, "bird", "10.37.0.2/24")
	const birdCIDR = "10.244.250.0/24"
	var ternT, birdT []time.Duration
	for range 3 {
		// tern: the agent stops (its routes go at the observer: no graceful
		// restart here), then starts; the clock runs from its start.
		n.KillAgent()
		gone := time.Now().Add(10 * time.Second)
		for {
			out, _ := clustertest.Cmd(obs, "ip", "route", "show", cidr).Output()
			if strings.TrimSpace(string(out)) == "" {
				break
			}
			if time.Now().After(gone) {
				b.Fatalf("observer kept %s after the agent died", cidr)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t0 := time.Now()
		n.StartAgentNoWait()
		ternT = append(ternT, waitRoute(b, obs, cidr, 30*time.Second).Sub(t0))

		// BIRD in the node's place, announcing its own pod CIDR.
		t0 = time.Now()
		stop := startBIRDNode(b, birdNode, birdCIDR)
		birdT = append(birdT, waitRoute(b, obs, birdCIDR, 30*time.Second).Sub(t0))
		stop()
	}
	tm, bm := median(ternT), median(birdT)
	b.ReportMetric(tm.Seconds(), "tern-s")
	b.ReportMetric(bm.Seconds(), "bird-s")
	b.ReportMetric(tm.Seconds()/bm.Seconds(), "tern/bird-x")
	appendOut(b, fmt.Sprintf("\nBGP convergence (node speaker start to its pod CIDR in the peer's kernel), median of 3: tern %.2f s %v, BIRD %.2f s %v, ratio %.2fx\n",
		tm.Seconds(), ternT, bm.Seconds(), birdT, tm.Seconds()/bm.Seconds()))
}

// startBIRDNode runs BIRD as a node announcing cidr to the observer, and
// returns a function that stops it and waits for the observer to forget cidr.
func startBIRDNode(b *testing.B, netns ns.NetNS, cidr string) func() {
	sub := &subTB{TB: b}
	routertest.StartBIRD(sub, netns, fmt.Sprintf(`router id 10.37.0.2;
protocol device { scan time 1; }
protocol static { ipv4; route %s blackhole; }
protocol bgp observer { local 10.37.0.2 as 64513; neighbor 10.37.0.254 as 65001; connect delay time 0; connect retry time 1; error wait time 1, 5; graceful restart off; ipv4 { import none; export all; }; }
`, cidr))
	return sub.cleanup
}

// subTB runs cleanups when asked, not at the end of the benchmark.
type subTB struct {
	testing.TB
	fns []func()
}

func (s *subTB) Cleanup(f func()) { s.fns = append(s.fns, f) }

func (s *subTB) cleanup() {
	for i := len(s.fns) - 1; i >= 0; i-- {
		s.fns[i]()
	}
	s.fns = nil
}

// BenchmarkBGPScale: a top-of-rack router (BIRD) announces 10,000 prefixes;
// time from the node's speaker starting until all are in the node's kernel,
// and the agent's RSS then, against BIRD in the same node role, same run.
func BenchmarkBGPScale(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	const prefixes = 10000
	var routes strings.Builder
	base := netip.MustParseAddr("10.244.192.0")
	a := base
	for range prefixes {
		fmt.Fprintf(&routes, "route %s/32 blackhole;\n", a)
		a = a.Next()
	}
	torConf := func(id, peer string, peerAS int) string {
		return fmt.Sprintf(`router id %s;
protocol device { scan time 1; }
protocol static { ipv4; %s }
protocol bgp node { local %s as 65001; neighbor %s as %d; connect retry time 1; error wait time 1, 5; graceful restart off; ipv4 { import none; export all; }; }
`, id, routes.String(), id, peer, peerAS)
	}

	c := clustertest.NewCluster(b)
	c.Apply(`apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false, gracefulRestartSeconds: 0}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.38.0.254, asNumber: 65001}
`)
	// tern's rack.
	fab := clustertest.NewFabric(b)
	tor := clustertest.NewRouter(b)
	fab.JoinNS(tor, "tor", "10.38.0.254/24")
	routertest.StartBIRD(b, tor, torConf("10.38.0.254", "10.38.0.1", 64512))
	n := nodetest.NewNodeNS(b)
	fab.Join(n, "tern", "10.38.0.1/24")
	t0 := time.Now()
	c.Start(n, "10.38.0.1", nil, nil)
	for countRoutes(n.NS, "96") < prefixes {
		if time.Since(t0) > 3*time.Minute {
			b.Fatalf("tern installed %d of %d routes in 3 minutes", countRoutes(n.NS, "96"), prefixes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ternTime := time.Since(t0)
	rss := rssMB(b, n.AgentPID())

	// BIRD's rack: the same router, BIRD as the node with a kernel protocol.
	fab2 := clustertest.NewFabric(b)
	tor2 := clustertest.NewRouter(b)
	fab2.JoinNS(tor2, "tor", "10.39.0.254/24")
	routertest.StartBIRD(b, tor2, strings.ReplaceAll(torConf("10.39.0.254", "10.39.0.1", 64513), "10.38.", "10.39."))
	birdNode := clustertest.NewNS(b)
	fab2.JoinNS(birdNode, "bird", "10.39.0.1/24")
	t0 = time.Now()
	routertest.StartBIRD(b, birdNode, `router id 10.39.0.1;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; }; }
protocol bgp tor { local 10.39.0.1 as 64513; neighbor 10.39.0.254 as 65001; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
`)
	for countRoutes(birdNode, "bird") < prefixes {
		if time.Since(t0) > 3*time.Minute {
			b.Fatalf("BIRD installed %d of %d routes in 3 minutes", countRoutes(birdNode, "bird"), prefixes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	birdTime := time.Since(t0)
	b.ReportMetric(ternTime.Seconds(), "tern-s")
	b.ReportMetric(birdTime.Seconds(), "bird-s")
	b.ReportMetric(ternTime.Seconds()/birdTime.Seconds(), "tern/bird-x")
	b.ReportMetric(rss, "agent-rss-MB")
	appendOut(b, fmt.Sprintf("\nBGP scale (%d prefixes from a ToR into the node's kernel): tern %.2f s (from agent start), BIRD %.2f s, ratio %.2fx; agent RSS %.1f MB (target < 100 MB)\n",
		prefixes, ternTime.Seconds(), birdTime.Seconds(), ternTime.Seconds()/birdTime.Seconds(), rss))
}
