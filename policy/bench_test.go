package policy

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchInput is a synthetic cluster: 5,000 pods in 50 namespaces on 5
// nodes (1,000 on this one), and 500 policies of ten shapes, ten per
// namespace. dualStack gives every pod an IPv6 address as well.
func benchInput(dualStack bool) Input {
	const (
		nodes, perNode = 5, 1000
		namespaces     = 50
	)
	in := Input{Node: "node0"}
	for i := range namespaces {
		in.Namespaces = append(in.Namespaces, Namespace{
			Name:   fmt.Sprintf("ns%02d", i),
			Labels: map[string]string{"team": fmt.Sprintf("t%d", i%5), "env": []string{"prod", "dev"}[i%2]},
		})
	}
	tiers := []string{"front", "back", "db"}
	for n := range nodes {
		for j := range perNode {
			i := n*perNode + j
			p := Pod{
				Namespace: fmt.Sprintf("ns%02d", i%namespaces),
				Name:      fmt.Sprintf("pod%05d", i),
				Node:      fmt.Sprintf("node%d", n),
				Labels:    map[string]string{"app": fmt.Sprintf("app%d", (i/namespaces)%20), "tier": tiers[i%3], "version": fmt.Sprintf("v%d", i%4)},
				IPs:       []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(n*4 + j/250), byte(j%250 + 1)})},
				Ports:     []NamedPort{{"http", tcp, 8080 + int32(i%3)}, {"metrics", tcp, 9100}},
			}
			if i%5 == 0 {
				p.Ports = append(p.Ports, NamedPort{"dns", udp, 53})
			}
			if dualStack {
				p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0x10, 14: byte(i >> 8), 15: byte(i)}))
			}
			if n == 0 {
				p.HostIf = fmt.Sprintf("tern%011x", i)
			}
			in.Pods = append(in.Pods, p)
		}
	}
	for i := range namespaces {
		ns := fmt.Sprintf("ns%02d", i)
		app := func(k int) *metav1.LabelSelector { return sel(fmt.Sprintf("app=app%d", (i+k)%20)) }
		in.Policies = append(in.Policies,
			netpol(ns, "default-deny", sel(""), types(tIn)),
			netpol(ns, "app-to-app", app(0), ingressRules(allow(peers(podPeer(app(1))), port(tcp, 8080)))),
			netpol(ns, "team-to-front", sel("tier=front"), ingressRules(allow(peers(nsPeer(sel(fmt.Sprintf("team=t%d", i%5))))))),
			netpol(ns, "prod-app-to-back", sel("tier=back"), ingressRules(allow(peers(podNSPeer(app(2), sel("env=prod"))), portRange(tcp, 8000, 8100)))),
			netpol(ns, "egress-cluster", app(3), types(tOut), egressRules(allow(peers(blockPeer("10.244.0.0/16", fmt.Sprintf("10.244.%d.0/24", i))), port(tcp, 443)))),
			netpol(ns, "egress-named", app(4), egressRules(allow(peers(podNSPeer(app(5), sel(""))), namedPort(tcp, "http")))),
			netpol(ns, "ingress-named", sel("tier=db"), ingressRules(allow(nil, namedPort(tcp, "http"), namedPort(tcp, "metrics")))),
			netpol(ns, "expressions", expr("version", metav1.LabelSelectorOpIn, "v1", "v2"), ingressRules(allow(peers(
				podPeer(expr("tier", metav1.LabelSelectorOpNotIn, "db")),
				nsPeer(expr("env", metav1.LabelSelectorOpExists)))))),
			netpol(ns, "egress-dns", app(6), types(tOut), egressRules(allow(peers(nsPeer(sel("team=t0"))), port(udp, 53), namedPort(udp, "dns")))),
			netpol(ns, "from-block", app(7), ingressRules(allow(peers(blockPeer("10.244.16.0/20", "10.244.17.0/24")), port(tcp, 443)))),
		)
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	in := benchInput(false)
	var rs Ruleset
	for b.Loop() {
		rs = Compile(in)
	}
	b.ReportMetric(float64(len(rs.Chains)), "chains")
	b.ReportMetric(float64(len(rs.Sets)), "sets")
}

func BenchmarkCompileDualStack(b *testing.B) {
	in := benchInput(true)
	for b.Loop() {
		Compile(in)
	}
}

// benchCompiler is a Compiler warm with the benchmark's snapshot (its
// policies carrying a ResourceVersion, as from the API).
func benchCompiler(b *testing.B) (*Compiler, Input) {
	in := benchInput(false)
	for i, np := range in.Policies {
		np.ResourceVersion = fmt.Sprint(i + 1)
	}
	c := &Compiler{}
	c.Compile(in)
	return c, in
}

// BenchmarkCompilerRemotePod is the cost of a compile by a warm Compiler
// after one pod was added on another node: only set members change.
func BenchmarkCompilerRemotePod(b *testing.B) {
	benchCompilerNewPod(b, "node1")
}

// BenchmarkCompilerLocalPod is the same for a pod added on this node: its
// chains, a leaf of each dispatch tree and set members change.
func BenchmarkCompilerLocalPod(b *testing.B) {
	benchCompilerNewPod(b, "node0")
}

func benchCompilerNewPod(b *testing.B, node string) {
	c, in := benchCompiler(b)
	template := in.Pods
	k := 0
	for b.Loop() {
		b.StopTimer()
		p := template[(k*37)%len(template)]
		p.Name, p.Node, p.HostIf = fmt.Sprintf("new%05d", k), node, ""
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 245, byte(k >> 8), byte(k)})}
		if node == in.Node {
			p.HostIf = fmt.Sprintf("tern%011x", 100000+k)
		}
		in.Pods = append(in.Pods, p)
		k++
		b.StartTimer()
		c.Compile(in)
	}
	if c.stats.fresh != 1 {
		b.Fatalf("compiled afresh %d times", c.stats.fresh)
	}
}

// BenchmarkCompilerUnchanged is the cost of a compile by a warm Compiler of
// the same snapshot again (a periodic resync).
func BenchmarkCompilerUnchanged(b *testing.B) {
	c, in := benchCompiler(b)
	for b.Loop() {
		c.Compile(in)
	}
}

// benchFlows are flows between the benchmark's pods: local to local,
// remote to local, local to remote.
func benchFlows(in Input) []Flow {
	return []Flow{
		{Src: in.Pods[1].IPs[0], Dst: in.Pods[2].IPs[0], Protocol: tcp, DstPort: 8080},
		{Src: in.Pods[1500].IPs[0], Dst: in.Pods[7].IPs[0], Protocol: tcp, DstPort: 443},
		{Src: in.Pods[9].IPs[0], Dst: in.Pods[4000].IPs[0], Protocol: udp, DstPort: 53},
	}
}

// BenchmarkAllowed is the cost of judging one flow against a ruleset of
// the benchmark's size.
func BenchmarkAllowed(b *testing.B) {
	in := benchInput(false)
	rs := Compile(in)
	flows := benchFlows(in)
	i := 0
	for b.Loop() {
		rs.Allowed(flows[i%len(flows)])
		i++
	}
}

// BenchmarkEvaluator is the cost per flow of judging many flows (every
// conntrack entry after a policy change), the Evaluator built once.
func BenchmarkEvaluator(b *testing.B) {
	in := benchInput(false)
	rs := Compile(in)
	ev := rs.Evaluator()
	flows := benchFlows(in)
	i := 0
	for b.Loop() {
		ev.Allowed(flows[i%len(flows)])
		i++
	}
}
