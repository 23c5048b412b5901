package bench

// The per-packet part of BenchmarkPolicy: TCP between two local pods routed
// through a node, with the 500-policy ruleset and with none.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/policy"
	"github.com/tern-net/tern/policy/policytest"
)

// pktKinds are the per-packet measurements: what one slice counts, and
// the unit of its rate.
var pktKinds = []struct{ name, target string }{
	{"TCP request/response, 1 byte, one connection, transactions/s", "at least 0.95x"},
	{"TCP throughput, one stream, Gbit/s", "at least 0.95x"},
	{"new TCP connections/s (connect, 1 byte each way, reset)", ""},
	{"the same to the server whose dispatch rule is early", ""},
}

// pktTotal pools the slices of one measurement on one node.
type pktTotal struct {
	amount float64 // transactions, Gbit or connections
	took   time.Duration
}

func (t pktTotal) rate() float64 { return t.amount / t.took.Seconds() }

type pktResult struct {
	// total by kind, then with the policies (0) and without (1).
	total [4][2]pktTotal
	// ratios by kind: with/without, one per pair of slices.
	ratios [4][]float64
	// client, server and early (a second server): pod key, HostIf, address.
	client, server, early string
	port, earlyPort       int
	// dispatchPos, earlyPos: the dispatch rules (of TERN-POLICY and the
	// ingress dispatch tree) a packet to each server walks; dispatchRules:
	// all the rules of TERN-POLICY and the dispatch chains.
	dispatchPos, earlyPos, dispatchRules int
	chainRules                           int // rules of the server's ingress chain
	// synCount, earlySynCount: packets the servers' dispatch rules counted.
	synCount, earlySynCount uint64
}

// ratio is the median of the pairs' ratios of kind k.
func (r pktResult) ratio(k int) float64 {
	v := slices.Sorted(slices.Values(r.ratios[k]))
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// benchTarget is a server pod and a port a client may reach, and the
// number of dispatch rules a packet to the server walks (TERN-POLICY's and
// the ingress dispatch tree's).
type benchTarget struct {
	pod  policy.Pod
	port int32
	pos  int
}

// ingressDispatch walks the IPv4 dispatch from TERN-POLICY: for each
// local pod's veth with an ingress chain, the rules a packet to it is
// matched against on the way (in TERN-POLICY and the dispatch chains), in
// the order the tree lists the veths; and all the rules of TERN-POLICY and
// the dispatch chains.
func ingressDispatch(rs policy.Ruleset) (order []string, cost map[string]int, rules int) {
	chains := map[string][]policy.Rule{}
	for _, c := range rs.Chains {
		if !c.IPv6 {
			chains[c.Name] = c.Rules
			if c.Kind == policy.EntryChain || c.Kind == policy.DispatchChain {
				rules += len(c.Rules)
			}
		}
	}
	cost = map[string]int{}
	var walk func(chain string, base int)
	walk = func(chain string, base int) {
		for i, r := range chains[chain] {
			if r.Out == "" {
				continue
			}
			if strings.HasSuffix(r.Out, "+") {
				walk(r.Target, base+i+1)
			} else if _, ok := cost[r.Out]; !ok {
				order = append(order, r.Out)
				cost[r.Out] = base + i + 1
			}
		}
	}
	walk(policy.ChainPolicy, 0)
	return order, cost, rules
}

// benchPods picks local pods of rs: a client with an egress chain and two
// servers with ingress chains that the policies let it reach over TCP, one
// that a packet reaches through as many dispatch rules as can be and one
// through as few (to show whether that matters). rules counts the rules of
// TERN-POLICY and the dispatch chains.
func benchPods(b *testing.B, in policy.Input, rs policy.Ruleset) (client policy.Pod, late, early benchTarget, rules int) {
	order, cost, rules := ingressDispatch(rs)
	local := map[string]policy.Pod{}
	var clients []policy.Pod
	for _, p := range in.Pods {
		if p.Node != policytest.Node {
			continue
		}
		local[p.HostIf] = p
		if rs.Pods[p.Namespace+"/"+p.Name].EgressChain != "" {
			clients = append(clients, p)
		}
	}
	var servers []benchTarget // every pod with an ingress dispatch rule, by cost
	for _, hostIf := range order {
		servers = append(servers, benchTarget{pod: local[hostIf], pos: cost[hostIf]})
	}
	slices.SortStableFunc(servers, func(a, b benchTarget) int { return a.pos - b.pos })
	ev := rs.Evaluator()
	// reach finds the first server of the order that cl may reach.
	reach := func(cl policy.Pod, order func(int) int) (benchTarget, bool) {
		for k := range servers {
			t := servers[order(k)]
			if t.pod.HostIf == cl.HostIf {
				continue
			}
			for _, port := range []int32{443, 8080, 8081, 8082, 9100, 8000} {
				if ok, _ := ev.Allowed(policy.Flow{Src: cl.IPs[0], Dst: t.pod.IPs[0], Protocol: corev1.ProtocolTCP, DstPort: port}); ok {
					t.port = port
					return t, true
				}
			}
		}
		return benchTarget{}, false
	}
	found := false
	for _, cl := range clients {
		l, ok := reach(cl, func(k int) int { return len(servers) - 1 - k })
		if !ok {
			continue
		}
		e, _ := reach(cl, func(k int) int { return k })
		if !found || l.pos-e.pos > late.pos-early.pos {
			client, late, early, found = cl, l, e, true
		}
		if late.pos == servers[len(servers)-1].pos && early.pos-servers[0].pos < 10 {
			break
		}
	}
	if !found {
		b.Fatal("no pair of local pods with TCP allowed between them")
	}
	return client, late, early, rules
}

// podNS attaches a pod namespace to node the way tern's CNI plugin does:
// the host veth with tern's fixed MAC and proxy ARP, eth0 with the pod's
// /32, 169.254.1.1 as the gateway with a permanent neighbour entry (and the
// pod's on the host side), and the host side's /32 route.
func podNS(b *testing.B, node ns.NetNS, p policy.Pod) ns.NetNS {
	pod := clustertest.NewNS(b)
	ip := p.IPs[0].String()
	a4 := p.IPs[0].As4()
	podMAC := fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", a4[0], a4[1], a4[2], a4[3])
	clustertest.Run(b, node, "ip", "link", "add", p.HostIf, "address", hostveth.MAC.String(),
		"type", "veth", "peer", "name", "eth0", "address", podMAC, "netns", filepath.Base(pod.Path()))
	clustertest.Run(b, node, "sysctl", "-qw", "net.ipv4.conf."+p.HostIf+".proxy_arp=1")
	clustertest.Run(b, node, "ip", "link", "set", p.HostIf, "up")
	clustertest.Run(b, node, "ip", "route", "add", ip+"/32", "dev", p.HostIf, "scope", "link")
	clustertest.Run(b, node, "ip", "neigh", "replace", ip, "lladdr", podMAC, "dev", p.HostIf, "nud", "permanent")
	clustertest.Run(b, pod, "ip", "addr", "add", ip+"/32", "dev", "eth0")
	clustertest.Run(b, pod, "ip", "link", "set", "eth0", "up")
	clustertest.Run(b, pod, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
	clustertest.Run(b, pod, "ip", "neigh", "replace", "169.254.1.1", "lladdr", hostveth.MAC.String(), "dev", "eth0", "nud", "permanent")
	clustertest.Run(b, pod, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	return pod
}

// measurePerPacket builds two nodes, each with the same two local pods and
// the node's TERN-FORWARD (jumping to TERN-POLICY), one with the 500-policy
// ruleset and one with the ruleset of no policy, and measures TCP between
// the pods on each in alternating rounds (no rules change while measuring).
func measurePerPacket(b *testing.B, backend dataplane.Backend, bins polBins) pktResult {
	in := policytest.Cluster(policytest.Options{ResourceVersions: true})
	full := policy.Compile(in)
	empty := in
	empty.Policies = nil
	none := policy.Compile(empty)
	client, lateT, earlyT, rules := benchPods(b, in, full)
	server, port, pos := lateT.pod, lateT.port, lateT.pos
	early, earlyPort, earlyPos := earlyT.pod, earlyT.port, earlyT.pos
	podName := func(p policy.Pod) string {
		return fmt.Sprintf("%s/%s (%s, %s)", p.Namespace, p.Name, p.HostIf, p.IPs[0])
	}
	r := pktResult{
		client: podName(client), server: podName(server), early: podName(early),
		port: int(port), earlyPort: int(earlyPort), dispatchPos: pos, earlyPos: earlyPos, dispatchRules: rules,
	}
	srvChain := full.Pods[server.Namespace+"/"+server.Name].IngressChain
	for _, c := range full.Chains {
		if c.Name == srvChain {
			r.chainRules = len(c.Rules)
		}
	}
	addr := net.JoinHostPort(server.IPs[0].String(), strconv.Itoa(int(port)))
	// A port the policies deny, with a listener: closed to the client with
	// the policies, open without.
	deniedAddr := net.JoinHostPort(server.IPs[0].String(), "7")
	earlyAddr := net.JoinHostPort(early.IPs[0].String(), strconv.Itoa(int(earlyPort)))
	if ok, _ := full.Allowed(policy.Flow{Src: client.IPs[0], Dst: server.IPs[0], Protocol: corev1.ProtocolTCP, DstPort: 7}); ok {
		b.Fatal("port 7 is allowed: pick another denied port")
	}
	setup := func(rs policy.Ruleset) *pktNode {
		node := clustertest.NewNS(b)
		pol := newPolicyDriver(backend)
		nodeDP := dataplane.NewNode(polQuietLog)
		nodeDP.UseBackend(backend)
		polInNS(b, node, func() error {
			if _, err := pol.Apply(rs, nil); err != nil {
				return err
			}
			_, err := nodeDP.Apply(dataplane.PlanNode(dataplane.NodeConfig{PodCIDRs: []netip.Prefix{netip.MustParsePrefix(pktPodPrefix)}, Policy: true}))
			return err
		})
		cns, sns := podNS(b, node, client), podNS(b, node, server)
		serveTCPBench(b, sns, addr)
		serveTCPBench(b, sns, deniedAddr)
		serveTCPBench(b, podNS(b, node, early), earlyAddr)
		if err := dialOnce(cns, earlyAddr, 3*time.Second); err != nil {
			b.Fatalf("%s to %s, which the policies allow: %v", r.client, earlyAddr, err)
		}
		if err := dialOnce(cns, addr, 3*time.Second); err != nil {
			b.Fatalf("%s to %s, which the policies allow: %v", r.client, addr, err)
		}
		return &pktNode{node: node, client: cns, rr: dialMode(b, cns, addr, 'r'), bulk: dialMode(b, cns, addr, 's')}
	}
	nodes := [2]*pktNode{setup(full), setup(none)}
	if err := dialOnce(nodes[0].client, deniedAddr, 300*time.Millisecond); err == nil {
		b.Fatalf("%s reached %s, which the policies deny", r.client, deniedAddr)
	}
	if err := dialOnce(nodes[1].client, deniedAddr, 3*time.Second); err != nil {
		b.Fatalf("with no policy, %s cannot reach %s: %v", r.client, deniedAddr, err)
	}

	// Short slices, the two nodes taking turns (in alternating order): both
	// see the same machine, whatever else runs on it meanwhile.
	before := dispatchPackets(b, nodes[0].node, bins, server.HostIf)
	beforeEarly := dispatchPackets(b, nodes[0].node, bins, early.HostIf)
	for kind := range pktKinds {
		for pair := range pktPairs {
			var rate [2]float64
			for k := range 2 {
				i := (k + pair) % 2
				target := addr
				if kind == 3 && i == 0 {
					target = earlyAddr
				}
				amount, took := nodes[i].slice(b, kind, target)
				r.total[kind][i].amount += amount
				r.total[kind][i].took += took
				rate[i] = amount / took.Seconds()
			}
			r.ratios[kind] = append(r.ratios[kind], rate[0]/rate[1])
		}
	}
	r.synCount = dispatchPackets(b, nodes[0].node, bins, server.HostIf) - before
	r.earlySynCount = dispatchPackets(b, nodes[0].node, bins, early.HostIf) - beforeEarly
	return r
}

// pktNode is a node with the client pod's namespace and its two standing
// connections to the server.
type pktNode struct {
	node, client ns.NetNS
	rr, bulk     net.Conn
}

// dialMode connects from netns to addr and sends the server's mode byte.
func dialMode(b *testing.B, netns ns.NetNS, addr string, mode byte) net.Conn {
	var c net.Conn
	polInNS(b, netns, func() error {
		var err error
		if c, err = net.DialTimeout("tcp", addr, 3*time.Second); err != nil {
			return err
		}
		_, err = c.Write([]byte{mode})
		return err
	})
	b.Cleanup(func() { c.Close() })
	return c
}

// slice runs measurement kind for pktSlice and returns what it did
// (transactions, Gbit or connections) and in what time.
func (n *pktNode) slice(b *testing.B, kind int, addr string) (float64, time.Duration) {
	one := []byte{'x'}
	t0 := time.Now()
	switch kind {
	case 0:
		k := 0
		for ; k%64 != 0 || time.Since(t0) < pktSlice; k++ {
			if _, err := n.rr.Write(one); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(n.rr, one); err != nil {
				b.Fatal(err)
			}
		}
		return float64(k), time.Since(t0)
	case 1:
		buf := make([]byte, 128<<10)
		var sent int64
		for time.Since(t0) < pktSlice {
			k, err := n.bulk.Write(buf)
			if err != nil {
				b.Fatal(err)
			}
			sent += int64(k)
		}
		return float64(sent) * 8 / 1e9, time.Since(t0)
	}
	conns := 0
	polInNS(b, n.client, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		for time.Since(t0) < pktSlice {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			if _, err := c.Write([]byte{'c'}); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, one); err != nil {
				return err
			}
			_ = c.(*net.TCPConn).SetLinger(0) // a reset: no TIME_WAIT piles up
			c.Close()
			conns++
		}
		return nil
	})
	return float64(conns), time.Since(t0)
}

// dispatchPackets reads the packet counter of hostIf's ingress dispatch
// rule (0 when there is none).
func dispatchPackets(b *testing.B, node ns.NetNS, bins polBins, hostIf string) uint64 {
	out := clustertest.Run(b, node, bins.save, "-c", "-t", "filter")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "-A "+policy.ChainPrefix) && strings.Contains(l, "-o "+hostIf+" ") {
			if c, _, ok := strings.Cut(strings.TrimPrefix(l, "["), ":"); ok {
				n, _ := strconv.ParseUint(c, 10, 64)
				return n
			}
		}
	}
	return 0
}

// serveTCPBench serves the per-packet measurements on addr in netns: after
// a first byte naming the mode, 'r' echoes, 's' discards, 'c' answers one
// byte and waits for the client to go.
func serveTCPBench(b *testing.B, netns ns.NetNS, addr string) {
	nodetest.ServeConn(b, netns, addr, func(c net.Conn) {
		mode := make([]byte, 1)
		if _, err := io.ReadFull(c, mode); err != nil {
			return
		}
		switch mode[0] {
		case 'r':
			buf := make([]byte, 64)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		case 's':
			buf := make([]byte, 256<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		case 'c':
			if _, err := c.Write(mode); err != nil {
				return
			}
			_, _ = c.Read(mode)
		}
	})
}

// dialOnce makes one 'c' exchange with addr from netns.
func dialOnce(netns ns.NetNS, addr string, timeout time.Duration) error {
	return netns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("c")); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	})
}

func (r pktResult) write(w *strings.Builder) {
	fmt.Fprintf(w, "\n## Per-packet cost\n\n"+
		"Local pods in namespaces of their own, attached to a node namespace as tern's CNI plugin attaches them (veth, pod /32, "+
		"gateway 169.254.1.1 with permanent neighbour entries, host /32 route), so their packets cross the node's FORWARD chain, "+
		"TERN-FORWARD and %s. Client %s, server %s port %d; the policies allow it through the client's egress chain and the "+
		"server's ingress chain (%d rules). A packet to the server is matched against %d dispatch rules (of %d in %s and the dispatch "+
		"chains) to reach its ingress chain; a second server, %s port %d, is reached early, after %d. \"0 policies\" is a second node alike whose ruleset has no policy (%s holds its two conntrack "+
		"rules only); nothing changes in the rules while measuring. Go client and servers in this process; each measurement runs "+
		"in %d pairs of %s slices, one on each node, in alternating order.\n\n",
		policy.ChainPolicy, r.client, r.server, r.port, r.chainRules, r.dispatchPos, r.dispatchRules, policy.ChainPolicy,
		r.early, r.earlyPort, r.earlyPos, policy.ChainPolicy, pktPairs, pktSlice)
	w.WriteString("| | 500 policies | 0 policies | ratio, median of pairs | pairs' ratios, min to max | target |\n|---|---|---|---|---|---|\n")
	for k, kind := range pktKinds {
		f := "%.0f"
		if k == 1 {
			f = "%.2f"
		}
		lo, hi := slices.Min(r.ratios[k]), slices.Max(r.ratios[k])
		fmt.Fprintf(w, "| %s | "+f+" | "+f+" | %.3fx | %.2f to %.2f | %s |\n", kind.name,
			r.total[k][0].rate(), r.total[k][1].rate(), r.ratio(k), lo, hi, kind.target)
	}
	fmt.Fprintf(w, "\nRates are pooled over each node's slices. Packets of established connections leave %s at its second "+
		"rule (RELATED,ESTABLISHED), so request/response and throughput pay two rules per packet; only a connection's first "+
		"packet goes past it, into the dispatch rules and the pod chains, which the connection rates measure (on the 500-policy "+
		"node the servers' dispatch rules counted %d and %d packets for %.0f and %.0f connections made). That packet is matched "+
		"against %s's rules and, per direction, a path through a dispatch tree keyed on the veth's name (at most 16 rules per "+
		"level, its pod chain reached by goto, so that the chain's RETURN resumes %s): the cost grows with the logarithm of the "+
		"number of policed local pods.\n",
		policy.ChainPolicy, r.synCount, r.earlySynCount, r.total[2][0].amount, r.total[3][0].amount, policy.ChainPolicy, policy.ChainPolicy)
}
