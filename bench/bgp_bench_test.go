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

// ipRoute is `ip -4|-6 route show what` in netns, of the family of what (a
// prefix).
func ipRoute(netns ns.NetNS, what string) string {
	fam := "-4"
	if strings.Contains(what, ":") {
		fam = "-6"
	}
	out, _ := clustertest.Cmd(netns, "ip", fam, "route", "show", what).Output()
	return strings.TrimSpace(string(out))
}

// waitRoute polls netns every 10 ms until `ip route show what` prints
// something, and returns when.
func waitRoute(b *testing.B, netns ns.NetNS, what string, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if ipRoute(netns, what) != "" {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("no route %s after %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitNoRoute polls netns every 20 ms until `ip route show what` prints
// nothing, and fails b after timeout.
func waitNoRoute(b *testing.B, netns ns.NetNS, what string, timeout time.Duration) {
	b.Helper()
	for deadline := time.Now().Add(timeout); ipRoute(netns, what) != ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%s still routed after %s", what, timeout)
		}
	}
}

// routeWithin reports whether `ip route show what` in netns prints
// something within timeout.
func routeWithin(netns ns.NetNS, what string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ipRoute(netns, what) != "" {
			return true
		}
	}
	return false
}

// countRoutes counts the routes of family ("-4", "-6") with a gateway of a
// protocol in netns (not tern's blackhole, also protocol 96).
func countRoutes(netns ns.NetNS, family, proto string) int {
	out, _ := clustertest.Cmd(netns, "ip", family, "route", "show", "proto", proto).Output()
	return strings.Count(string(out), " via ")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// The BGP benchmarks' IPv6 addresses: fabrics of a /64 each, pod CIDRs
// and the ToR's prefixes inside ipv6ClusterCIDR.
const (
	convFabric6     = "fd74:6572:6e50::"
	scaleFabric6    = "fd74:6572:6e51::"
	scaleBIRDFab6   = "fd74:6572:6e52::"
	ipv6ClusterCIDR = "fd74:6572:6e40::/44"
	ipv6ScaleBase   = "fd74:6572:6e44::" // 10,000 /64s from here: fd74:6572:6e44::/64 to fd74:6572:6e44:270f::/64
)

// BenchmarkBGPConvergence: from a node's BGP speaker starting to its pod CIDR
// in the kernel of the router it peers with (a BIRD with a kernel protocol),
// against BIRD in the same node role, with the same tuned timers, three
// times each, same run, per family: IPv4 with tern-agent (started against
// the API, caches and all) and with the bgp package's speaker run as the
// agent runs it (speakerNode: an IPv4-only node), IPv6 with that speaker for
// an IPv6-only node (one IPv6 session, IPv6 unicast alone, the node's IPv6
// address as next hop), BIRD with an ipv6 channel.
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
	fab.JoinNS(obs, "obs", "10.37.0.254/24", convFabric6+"fe/64")
	const timers = "connect retry time 1; error wait time 1, 5; graceful restart off;"
	obsBird := routertest.StartBIRD(b, obs, fmt.Sprintf(`router id 10.37.0.254;
protocol device { scan time 1; }
protocol kernel kernel4 { ipv4 { export all; }; }
protocol kernel kernel6 { ipv6 { export all; }; }
protocol bgp nodetern { local 10.37.0.254 as 65001; neighbor 10.37.0.1 as 64512; %[2]s ipv4 { import all; export none; }; }
protocol bgp nodebird { local 10.37.0.254 as 65001; neighbor 10.37.0.2 as 64513; %[2]s ipv4 { import all; export none; }; }
protocol bgp nodespeaker { local 10.37.0.254 as 65001; neighbor 10.37.0.3 as 64512; %[2]s ipv4 { import all; export none; }; }
protocol bgp nodebird6 { local %[1]sfe as 65001; neighbor %[1]s2 as 64513; %[2]s ipv6 { import all; export none; }; }
protocol bgp nodespeaker6 { local %[1]sfe as 65001; neighbor %[1]s3 as 64512; %[2]s ipv6 { import all; export none; }; }
`, convFabric6, timers))
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
	fab.JoinNS(birdNode, "bird", "10.37.0.2/24", convFabric6+"2/64")
	spkNode := clustertest.NewNS(b)
	fab.JoinNS(spkNode, "spk", "10.37.0.3/24", convFabric6+"3/64")
	const birdCIDR, spkCIDR = "10.244.250.0/24", "10.244.251.0/24"
	const birdCIDR6, spkCIDR6 = "fd74:6572:6e41:fa::/64", "fd74:6572:6e41:1::/64"
	spk4 := speakerNode{Name: "speaker4", IPv4: netip.MustParseAddr("10.37.0.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(spkCIDR)},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, PeerIP: netip.MustParseAddr("10.37.0.254"), PeerASN: 65001}
	spk6 := speakerNode{Name: "speaker6", IPv6: netip.MustParseAddr(convFabric6 + "3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(spkCIDR6)},
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix(ipv6ClusterCIDR)}, PeerIP: netip.MustParseAddr(convFabric6 + "fe"), PeerASN: 65001}
	// timeSpeaker starts the speaker of node, times it to cidr at the
	// observer, stops it and waits for the observer to forget cidr.
	timeSpeaker := func(node speakerNode, cidr string) time.Duration {
		sub := &subTB{TB: b}
		t0 := time.Now()
		cmd := startSpeaker(sub, spkNode, node)
		if !routeWithin(obs, cidr, 30*time.Second) {
			b.Fatalf("observer never got %s from the speaker:\n%s\nspeaker:\n%s", cidr, obsBird.Birdc("show", "protocols", "all"), nodetest.Tail(speakerLog(cmd), 3000))
		}
		d := time.Since(t0)
		// The next hop is the node's address of the prefix's family.
		nh := node.IPv4
		if node.IPv6.IsValid() {
			nh = node.IPv6
		}
		if got := ipRoute(obs, cidr); !strings.Contains(got, " via "+nh.String()+" ") {
			b.Fatalf("the observer's route to %s is not via the node's address %s: %s", cidr, nh, got)
		}
		sub.cleanup()
		waitNoRoute(b, obs, cidr, 10*time.Second)
		return d
	}
	// timeBIRD does the same for BIRD as the node.
	timeBIRD := func(conf, cidr string) time.Duration {
		t0 := time.Now()
		stop := startBIRDNode(b, birdNode, conf)
		d := waitRoute(b, obs, cidr, 30*time.Second).Sub(t0)
		stop()
		waitNoRoute(b, obs, cidr, 10*time.Second)
		return d
	}
	birdConf4 := fmt.Sprintf(`router id 10.37.0.2;
protocol device { scan time 1; }
protocol static { ipv4; route %s blackhole; }
protocol bgp observer { local 10.37.0.2 as 64513; neighbor 10.37.0.254 as 65001; connect delay time 0; %s ipv4 { import none; export all; }; }
`, birdCIDR, timers)
	birdConf6 := fmt.Sprintf(`router id 10.37.0.2;
protocol device { scan time 1; }
protocol static { ipv6; route %[2]s blackhole; }
protocol bgp observer { local %[1]s2 as 64513; neighbor %[1]sfe as 65001; connect delay time 0; %[3]s ipv6 { import none; export all; }; }
`, convFabric6, birdCIDR6, timers)
	var ternT, birdT, spk4T, spk6T, bird6T []time.Duration
	for range 3 {
		// tern: the agent stops (its routes go at the observer: no graceful
		// restart here), then starts; the clock runs from its start.
		n.KillAgent()
		waitNoRoute(b, obs, cidr, 10*time.Second)
		t0 := time.Now()
		n.StartAgentNoWait()
		ternT = append(ternT, waitRoute(b, obs, cidr, 30*time.Second).Sub(t0))

		// BIRD in the node's place, announcing its own pod CIDR.
		birdT = append(birdT, timeBIRD(birdConf4, birdCIDR))
		spk4T = append(spk4T, timeSpeaker(spk4, spkCIDR))
		bird6T = append(bird6T, timeBIRD(birdConf6, birdCIDR6))
		spk6T = append(spk6T, timeSpeaker(spk6, spkCIDR6))
	}
	tm, bm := median(ternT), median(birdT)
	s4, s6, b6 := median(spk4T), median(spk6T), median(bird6T)
	b.ReportMetric(tm.Seconds(), "tern-s")
	b.ReportMetric(bm.Seconds(), "bird-s")
	b.ReportMetric(tm.Seconds()/bm.Seconds(), "tern/bird-x")
	b.ReportMetric(s4.Seconds()/bm.Seconds(), "speaker4/bird-x")
	b.ReportMetric(s6.Seconds(), "speaker6-s")
	b.ReportMetric(b6.Seconds(), "bird6-s")
	b.ReportMetric(s6.Seconds()/b6.Seconds(), "speaker6/bird6-x")
	var out strings.Builder
	out.WriteString("\n## BGP convergence\n\nNode speaker start to its pod CIDR in the peer's kernel (BIRD, kernel protocol), median of 3 (runs in brackets); " +
		"each row's BIRD is BIRD in the same node role, same family, same timers, same run.\n\n" +
		"| family | tern | tern s | BIRD s | tern/BIRD |\n|---|---|---|---|---|\n")
	row := func(family, what string, t, ref []time.Duration) {
		fmt.Fprintf(&out, "| %s | %s | %.2f (%s) | %.2f (%s) | **%.2fx** |\n", family, what,
			median(t).Seconds(), secList(t), median(ref).Seconds(), secList(ref), median(t).Seconds()/median(ref).Seconds())
	}
	row("IPv4", "tern-agent, from its start (caches synced, node programmed)", ternT, birdT)
	row("IPv4", "the bgp package's speaker as the agent runs it (IPv4-only node), from its process's start", spk4T, birdT)
	row("IPv6", "the same for an IPv6-only node: one IPv6 session, IPv6 next hop", spk6T, bird6T)
	appendOutTo(b, "bgp.md", out.String())
}

// secList is durations in seconds, comma-separated.
func secList(d []time.Duration) string {
	s := make([]string, len(d))
	for i, x := range d {
		s[i] = fmt.Sprintf("%.2f", x.Seconds())
	}
	return strings.Join(s, ", ")
}

// startBIRDNode runs BIRD as a node with conf, and returns a function that
// stops it.
func startBIRDNode(b *testing.B, netns ns.NetNS, conf string) func() {
	sub := &subTB{TB: b}
	routertest.StartBIRD(sub, netns, conf)
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

// scaleStatic is a BIRD static protocol of n blackhole routes: /32s from
// 10.244.192.0 (IPv4) or /64s from ipv6ScaleBase (IPv6).
func scaleStatic(v6 bool, n int) string {
	var routes strings.Builder
	if v6 {
		base := netip.MustParseAddr(ipv6ScaleBase).As16()
		routes.WriteString("protocol static { ipv6;\n")
		for k := range n {
			a := base
			a[6], a[7] = byte(k>>8), byte(k)
			fmt.Fprintf(&routes, "route %s/64 blackhole;\n", netip.AddrFrom16(a))
		}
	} else {
		routes.WriteString("protocol static { ipv4;\n")
		a := netip.MustParseAddr("10.244.192.0")
		for range n {
			fmt.Fprintf(&routes, "route %s/32 blackhole;\n", a)
			a = a.Next()
		}
	}
	routes.WriteString("}\n")
	return routes.String()
}

// scaleSession is one BGP session of a ToR or a node in BenchmarkBGPScale.
type scaleSession struct {
	name, local, neighbor string
	localAS, neighborAS   int
	export                bool // export all, import none; else the reverse
}

func (s scaleSession) conf(timers string) string {
	ch, imp, exp := "ipv4", "all", "none"
	if strings.Contains(s.local, ":") {
		ch = "ipv6"
	}
	if s.export {
		imp, exp = "none", "all"
	}
	return fmt.Sprintf("protocol bgp %s { local %s as %d; neighbor %s as %d; %s %s { import %s; export %s; }; }\n",
		s.name, s.local, s.localAS, s.neighbor, s.neighborAS, timers, ch, imp, exp)
}

// BenchmarkBGPScale: a top-of-rack router (BIRD) announces 10,000 prefixes;
// time from the node's speaker starting until all are in the node's kernel,
// and the agent's RSS then, against BIRD in the same node role, same run,
// per family: IPv4 (/32s) with tern-agent and with the bgp package's speaker
// as the agent runs it (an IPv4-only speakerNode), IPv6 (/64s) with that
// speaker for an IPv6-only node, BIRD with an ipv6 channel.
func BenchmarkBGPScale(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	const prefixes = 10000
	const timers = "connect retry time 1; error wait time 1, 5; graceful restart off;"
	static := scaleStatic(false, prefixes) + scaleStatic(true, prefixes)
	torConf := func(id string, sessions ...scaleSession) string {
		conf := fmt.Sprintf("router id %s;\nprotocol device { scan time 1; }\n%s", id, static)
		for _, s := range sessions {
			s.export = true
			conf += s.conf(timers)
		}
		return conf
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
	// tern's rack: the agent (10.38.0.1), the speaker of an IPv4-only node
	// (10.38.0.2) and of an IPv6-only one (::1), each in a namespace.
	fab := clustertest.NewFabric(b)
	tor := clustertest.NewRouter(b)
	fab.JoinNS(tor, "tor", "10.38.0.254/24", scaleFabric6+"fe/64")
	routertest.StartBIRD(b, tor, torConf("10.38.0.254",
		scaleSession{name: "node", local: "10.38.0.254", localAS: 65001, neighbor: "10.38.0.1", neighborAS: 64512},
		scaleSession{name: "speaker4", local: "10.38.0.254", localAS: 65001, neighbor: "10.38.0.2", neighborAS: 64512},
		scaleSession{name: "speaker6", local: scaleFabric6 + "fe", localAS: 65001, neighbor: scaleFabric6 + "1", neighborAS: 64512}))
	n := nodetest.NewNodeNS(b)
	fab.Join(n, "tern", "10.38.0.1/24")
	// waitCount waits up to 3 minutes for prefixes routes of family and
	// proto in netns, and returns how long since t0.
	waitCount := func(who string, netns ns.NetNS, family, proto string, t0 time.Time, log func() string) time.Duration {
		for countRoutes(netns, family, proto) < prefixes {
			if time.Since(t0) > 3*time.Minute {
				b.Fatalf("%s installed %d of %d routes in 3 minutes\n%s", who, countRoutes(netns, family, proto), prefixes, nodetest.Tail(log(), 3000))
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Since(t0)
	}
	t0 := time.Now()
	c.Start(n, "10.38.0.1", nil, nil)
	ternTime := waitCount("tern-agent", n.NS, "-4", "96", t0, n.AgentLog)
	rss := rssMB(b, n.AgentPID())

	spk := func(name, addr, peer string, v6 bool) time.Duration {
		netns := clustertest.NewNS(b)
		node := speakerNode{Name: name, PeerIP: netip.MustParseAddr(peer), PeerASN: 65001}
		family, cidr := "-4", "10.244.252.0/24"
		if v6 {
			fab.JoinNS(netns, name, addr+"/64") // an IPv6-only node
			family, cidr = "-6", "fd74:6572:6e41:2::/64"
			node.IPv6, node.ClusterCIDRs = netip.MustParseAddr(addr), []netip.Prefix{netip.MustParsePrefix(ipv6ClusterCIDR)}
		} else {
			fab.JoinNS(netns, name, addr+"/24")
			node.IPv4, node.ClusterCIDRs = netip.MustParseAddr(addr), []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
		}
		node.PodCIDRs = []netip.Prefix{netip.MustParsePrefix(cidr)}
		t0 := time.Now()
		cmd := startSpeaker(b, netns, node)
		return waitCount(name, netns, family, "96", t0, func() string { return speakerLog(cmd) })
	}
	spk4Time := spk("speaker4", "10.38.0.2", "10.38.0.254", false)
	spk6Time := spk("speaker6", scaleFabric6+"1", scaleFabric6+"fe", true)

	// BIRD's rack: the same router, BIRD as the node with a kernel
	// protocol, one namespace per family.
	fab2 := clustertest.NewFabric(b)
	tor2 := clustertest.NewRouter(b)
	fab2.JoinNS(tor2, "tor", "10.39.0.254/24", scaleBIRDFab6+"fe/64")
	routertest.StartBIRD(b, tor2, torConf("10.39.0.254",
		scaleSession{name: "node", local: "10.39.0.254", localAS: 65001, neighbor: "10.39.0.1", neighborAS: 64513},
		scaleSession{name: "node6", local: scaleBIRDFab6 + "fe", localAS: 65001, neighbor: scaleBIRDFab6 + "1", neighborAS: 64513}))
	birdNode := clustertest.NewNS(b)
	fab2.JoinNS(birdNode, "bird", "10.39.0.1/24")
	t0 = time.Now()
	bird4 := routertest.StartBIRD(b, birdNode, "router id 10.39.0.1;\nprotocol device { scan time 1; }\nprotocol kernel { ipv4 { export all; }; }\n"+
		scaleSession{name: "tor", local: "10.39.0.1", localAS: 64513, neighbor: "10.39.0.254", neighborAS: 65001}.conf("connect delay time 0; connect retry time 1; error wait time 1, 5;"))
	birdTime := waitCount("BIRD", birdNode, "-4", "bird", t0, bird4.Log)
	bird6Node := clustertest.NewNS(b)
	fab2.JoinNS(bird6Node, "bird6", scaleBIRDFab6+"1/64")
	t0 = time.Now()
	bird6 := routertest.StartBIRD(b, bird6Node, "router id 10.39.0.1;\nprotocol device { scan time 1; }\nprotocol kernel { ipv6 { export all; }; }\n"+
		scaleSession{name: "tor", local: scaleBIRDFab6 + "1", localAS: 64513, neighbor: scaleBIRDFab6 + "fe", neighborAS: 65001}.conf("connect delay time 0; connect retry time 1; error wait time 1, 5;"))
	bird6Time := waitCount("BIRD (IPv6)", bird6Node, "-6", "bird", t0, bird6.Log)

	b.ReportMetric(ternTime.Seconds(), "tern-s")
	b.ReportMetric(birdTime.Seconds(), "bird-s")
	b.ReportMetric(ternTime.Seconds()/birdTime.Seconds(), "tern/bird-x")
	b.ReportMetric(rss, "agent-rss-MB")
	b.ReportMetric(spk4Time.Seconds()/birdTime.Seconds(), "speaker4/bird-x")
	b.ReportMetric(spk6Time.Seconds(), "speaker6-s")
	b.ReportMetric(bird6Time.Seconds(), "bird6-s")
	b.ReportMetric(spk6Time.Seconds()/bird6Time.Seconds(), "speaker6/bird6-x")
	var out strings.Builder
	fmt.Fprintf(&out, "\n## BGP scale\n\n%d prefixes from a ToR (BIRD) into the node's kernel, from the node's speaker starting; "+
		"each row's BIRD is BIRD in the same node role with a kernel protocol, same family, same run.\n\n"+
		"| family | tern | tern s | BIRD s | tern/BIRD |\n|---|---|---|---|---|\n", prefixes)
	row := func(family, what string, t, ref time.Duration) {
		fmt.Fprintf(&out, "| %s | %s | %.2f | %.2f | **%.2fx** |\n", family, what, t.Seconds(), ref.Seconds(), t.Seconds()/ref.Seconds())
	}
	row("IPv4 (/32s)", "tern-agent, from its start", ternTime, birdTime)
	row("IPv4 (/32s)", "the bgp package's speaker as the agent runs it (IPv4-only node), from its process's start", spk4Time, birdTime)
	row("IPv6 (/64s)", "the same for an IPv6-only node: one IPv6 session", spk6Time, bird6Time)
	fmt.Fprintf(&out, "\ntern-agent's RSS with the %d IPv4 routes: %.1f MB (target < 100 MB).\n", prefixes, rss)
	appendOutTo(b, "bgp.md", out.String())
}
