package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// node is a node with the addresses and pod CIDRs in ips and cidrs
// (comma-separated, any family).
func node(name, ips, cidrs string) NodeInfo {
	n := NodeInfo{Name: name, Labels: map[string]string{"name": name}}
	for _, s := range strings.Split(ips, ",") {
		if ip := netip.MustParseAddr(s); ip.Is4() {
			n.IPv4 = ip
		} else {
			n.IPv6 = ip
		}
	}
	for _, c := range strings.Split(cidrs, ",") {
		if c != "" {
			n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
		}
	}
	return n
}

// render is a stable text form of a plan, for table comparison.
func render(g Global, d Desired) string {
	var b strings.Builder
	fmt.Fprintf(&b, "as %d id %s\n", g.ASN, g.RouterID)
	for _, p := range d.Peers {
		fmt.Fprintf(&b, "peer %s as %d %s", p.Address, p.ASN, p.Kind)
		if p.Passive {
			b.WriteString(" passive")
		}
		if p.RRClient {
			fmt.Fprintf(&b, " rr-client cluster %s", p.ClusterID)
		}
		b.WriteString("\n")
	}
	for _, a := range d.Announcements {
		fmt.Fprintf(&b, "announce %s via %s\n", a.Prefix, a.NextHop)
	}
	for _, p := range d.Unannounced {
		fmt.Fprintf(&b, "unannounced %s\n", p)
	}
	for _, w := range d.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

type planCase struct {
	name string
	snap Snapshot
	want string // render's text
}

func checkPlans(t *testing.T, cases []planCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, d, err := Plan(c.snap)
			if err != nil {
				t.Fatal(err)
			}
			if got := render(g, d); got != c.want {
				t.Fatalf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	n1, n2, n3 := node("n1", "10.30.0.1", "10.244.1.0/24"), node("n2", "10.30.0.2", "10.244.2.0/24"), node("n3", "10.30.0.3", "10.244.3.0/24")
	rr := node("rr", "10.30.0.9", "10.244.9.0/24")
	rr.RRCluster = netip.MustParseAddr("10.30.0.9")
	meshOff := DefaultConfig()
	meshOff.NodeToNodeMesh = false
	n3as := n3
	n3as.ASN = 65003
	cases := []planCase{
		{"mesh: the lower address waits", Snapshot{Local: n2, Nodes: []NodeInfo{n1, n2, n3}, Config: DefaultConfig()},
			"as 64512 id 10.30.0.2\npeer 10.30.0.1 as 64512 mesh\npeer 10.30.0.3 as 64512 mesh passive\nannounce 10.244.2.0/24 via 10.30.0.2\n"},
		{"mesh with a node of its own AS: eBGP to it", Snapshot{Local: n1, Nodes: []NodeInfo{n1, n2, n3as}, Config: DefaultConfig()},
			"as 64512 id 10.30.0.1\npeer 10.30.0.2 as 64512 mesh passive\npeer 10.30.0.3 as 65003 mesh passive\nannounce 10.244.1.0/24 via 10.30.0.1\n"},
		{"mesh off, reflector: clients", Snapshot{Local: rr, Nodes: []NodeInfo{n1, n2, rr}, Config: meshOff},
			"as 64512 id 10.30.0.9\npeer 10.30.0.1 as 64512 reflector-client rr-client cluster 10.30.0.9\npeer 10.30.0.2 as 64512 reflector-client rr-client cluster 10.30.0.9\nannounce 10.244.9.0/24 via 10.30.0.9\n"},
		{"mesh off, client: only the reflector", Snapshot{Local: n1, Nodes: []NodeInfo{n1, n2, rr}, Config: meshOff},
			"as 64512 id 10.30.0.1\npeer 10.30.0.9 as 64512 reflector passive\nannounce 10.244.1.0/24 via 10.30.0.1\n"},
		{"mesh off, no reflector, BGPPeers: top-of-rack by selector and by node", Snapshot{Local: n1, Nodes: []NodeInfo{n1, n2}, Config: meshOff,
			Peers: []PeerSpec{
				{Name: "tor", PeerIP: netip.MustParseAddr("10.30.0.254"), ASN: 65001, Selects: func(l map[string]string) bool { return l["name"] == "n1" }},
				{Name: "other-rack", PeerIP: netip.MustParseAddr("10.31.0.254"), ASN: 65002, Selects: func(l map[string]string) bool { return l["name"] == "n2" }},
				{Name: "only-n1", PeerIP: netip.MustParseAddr("10.30.0.253"), ASN: 65001, Node: "n1"},
				{Name: "only-n2", PeerIP: netip.MustParseAddr("10.30.0.252"), ASN: 65001, Node: "n2"},
			}},
			"as 64512 id 10.30.0.1\npeer 10.30.0.254 as 65001 peer\npeer 10.30.0.253 as 65001 peer\nannounce 10.244.1.0/24 via 10.30.0.1\n"},
		{"no podCIDR yet: peers, nothing to announce", Snapshot{Local: node("n1", "10.30.0.1", ""), Nodes: []NodeInfo{n1, n2}, Config: DefaultConfig()},
			"as 64512 id 10.30.0.1\npeer 10.30.0.2 as 64512 mesh passive\n"},
	}
	checkPlans(t, cases)
	if _, _, err := Plan(Snapshot{Local: NodeInfo{Name: "x"}, Config: DefaultConfig()}); err == nil || !strings.Contains(err.Error(), "no address for BGP") {
		t.Fatalf("node without address: %v", err)
	}
}

// Of every pair of tern nodes exactly one side waits, whatever their roles:
// two active GoBGP speakers collide and take minutes to reconnect.
func TestPlanOnePassiveSidePerPair(t *testing.T) {
	n1, n2 := node("n1", "10.30.0.1,fd74:6572:6e30::1", ""), node("n2", "10.30.0.2,fd74:6572:6e30::2", "")
	rr := node("rr", "10.30.0.9,fd74:6572:6e30::9", "")
	rr.RRCluster = netip.MustParseAddr("10.30.0.9")
	rr2 := node("rr2", "10.30.0.8,fd74:6572:6e30::8", "")
	rr2.RRCluster = netip.MustParseAddr("10.30.0.8")
	all := []NodeInfo{n1, n2, rr, rr2}
	for _, mesh := range []bool{true, false} {
		cfg := DefaultConfig()
		cfg.NodeToNodeMesh = mesh
		passive := map[[2]string]bool{}
		for _, local := range all {
			_, d, err := Plan(Snapshot{Local: local, Nodes: all, Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range d.Peers {
				passive[[2]string{local.Addr(p.Address.Is6()).String(), p.Address.String()}] = p.Passive
			}
		}
		for k, p := range passive {
			other, ok := passive[[2]string{k[1], k[0]}]
			if !ok {
				t.Errorf("mesh %v: %s peers with %s, not the other way", mesh, k[0], k[1])
				continue
			}
			if p == other {
				t.Errorf("mesh %v: %s and %s are both passive=%v", mesh, k[0], k[1], p)
			}
		}
	}
}

func TestPlanServiceIPs(t *testing.T) {
	n1 := node("n1", "10.30.0.1", "")
	cfg := DefaultConfig()
	cfg.NodeToNodeMesh = false
	cfg.ServiceExternalIPs = []netip.Prefix{netip.MustParsePrefix("10.250.1.0/24")}
	cfg.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("10.250.2.0/24")}
	ips := []ServiceIP{
		{Addr: netip.MustParseAddr("10.250.1.5")},                                                      // external, Cluster: announced
		{Addr: netip.MustParseAddr("10.250.2.7"), LoadBalancer: true, Local: true},                     // LB, Local, no endpoint here: not
		{Addr: netip.MustParseAddr("10.250.2.8"), LoadBalancer: true, Local: true, EndpointHere: true}, // announced
		{Addr: netip.MustParseAddr("10.250.9.9")},                                                      // outside the ranges: not
		{Addr: netip.MustParseAddr("10.250.1.9"), LoadBalancer: true},                                  // LB IP in the external range only: not
	}
	_, d, err := Plan(Snapshot{Local: n1, Nodes: []NodeInfo{n1}, Config: cfg, ServiceIPs: ips})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(Global{}, d); got != "as 0 id invalid IP\nannounce 10.250.1.5/32 via 10.30.0.1\nannounce 10.250.2.8/32 via 10.30.0.1\n" {
		t.Fatalf("got\n%s", got)
	}
}

// A session per family: IPv4 sessions between IPv4 addresses, IPv6 sessions
// between IPv6 addresses, and each prefix announced with the node's address
// of its own family as next hop.
func TestPlanFamilies(t *testing.T) {
	d1 := node("d1", "10.30.0.1,fd74:6572:6e30::1", "10.244.1.0/24,fd74:6572:6e44:1::/64")
	d2 := node("d2", "10.30.0.2,fd74:6572:6e30::2", "10.244.2.0/24,fd74:6572:6e44:2::/64")
	v4 := node("v4", "10.30.0.3", "10.244.3.0/24")
	v6 := node("v6", "fd74:6572:6e30::4", "fd74:6572:6e44:4::/64")
	v6b := node("v6b", "fd74:6572:6e30::5", "fd74:6572:6e44:5::/64")
	// A dual-stack pod CIDR on a node with an IPv4 address only: the IPv6
	// one has no next hop.
	half := node("half", "10.30.0.6", "10.244.6.0/24,fd74:6572:6e44:6::/64")
	meshOff := DefaultConfig()
	meshOff.NodeToNodeMesh = false
	rr := node("rr", "10.30.0.9,fd74:6572:6e30::9", "")
	rr.RRCluster = netip.MustParseAddr("10.30.0.9")
	svc := DefaultConfig()
	svc.ServiceClusterIPs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd74:6572:6e96::/112")}
	svc.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("fd74:6572:6e50::/64")}
	tor6 := PeerSpec{Name: "tor6", PeerIP: netip.MustParseAddr("fd74:6572:6e30::fe"), ASN: 65001}
	tor4 := PeerSpec{Name: "tor4", PeerIP: netip.MustParseAddr("10.30.0.254"), ASN: 65001}
	cases := []planCase{
		{"dual-stack mesh: a session per family, each family's next hop", Snapshot{Local: d1, Nodes: []NodeInfo{d1, d2, v4, v6}, Config: DefaultConfig()},
			"as 64512 id 10.30.0.1\npeer 10.30.0.2 as 64512 mesh passive\npeer 10.30.0.3 as 64512 mesh passive\n" +
				"peer fd74:6572:6e30::2 as 64512 mesh passive\npeer fd74:6572:6e30::4 as 64512 mesh passive\n" +
				"announce 10.244.1.0/24 via 10.30.0.1\nannounce fd74:6572:6e44:1::/64 via fd74:6572:6e30::1\n"},
		{"IPv6-only node: IPv6 sessions only, a router ID from its name", Snapshot{Local: v6, Nodes: []NodeInfo{d1, d2, v4, v6, v6b}, Config: DefaultConfig()},
			"as 64512 id 155.74.81.109\npeer fd74:6572:6e30::1 as 64512 mesh\npeer fd74:6572:6e30::2 as 64512 mesh\npeer fd74:6572:6e30::5 as 64512 mesh passive\n" +
				"announce fd74:6572:6e44:4::/64 via fd74:6572:6e30::4\n"},
		{"a pod CIDR of a family the node has no address of: unannounced", Snapshot{Local: half, Nodes: []NodeInfo{half, d1}, Config: DefaultConfig()},
			"as 64512 id 10.30.0.6\npeer 10.30.0.1 as 64512 mesh\nannounce 10.244.6.0/24 via 10.30.0.6\nunannounced fd74:6572:6e44:6::/64\n"},
		{"route reflector, dual-stack: a client session per family", Snapshot{Local: rr, Nodes: []NodeInfo{d1, rr, v6}, Config: meshOff},
			"as 64512 id 10.30.0.9\npeer 10.30.0.1 as 64512 reflector-client rr-client cluster 10.30.0.9\n" +
				"peer fd74:6572:6e30::1 as 64512 reflector-client rr-client cluster 10.30.0.9\npeer fd74:6572:6e30::4 as 64512 reflector-client rr-client cluster 10.30.0.9\n"},
		{"client of a dual-stack reflector", Snapshot{Local: v6, Nodes: []NodeInfo{d1, rr, v6}, Config: meshOff},
			"as 64512 id 155.74.81.109\npeer fd74:6572:6e30::9 as 64512 reflector passive\nannounce fd74:6572:6e44:4::/64 via fd74:6572:6e30::4\n"},
		{"ToRs of each family; an IPv6 ToR on an IPv4-only node is left out", Snapshot{Local: v4, Nodes: []NodeInfo{v4}, Config: meshOff, Peers: []PeerSpec{tor4, tor6}},
			"as 64512 id 10.30.0.3\npeer 10.30.0.254 as 65001 peer\nannounce 10.244.3.0/24 via 10.30.0.3\n" +
				"warning: BGPPeer tor6 (fd74:6572:6e30::fe) not configured: this node has no address of its family\n"},
		{"Service ranges of both families", Snapshot{Local: d1, Nodes: []NodeInfo{d1}, Config: svc, ServiceIPs: []ServiceIP{
			{Addr: netip.MustParseAddr("fd74:6572:6e50::7"), LoadBalancer: true},
			{Addr: netip.MustParseAddr("fd74:6572:6e51::7"), LoadBalancer: true}, // outside the range
		}},
			"as 64512 id 10.30.0.1\nannounce 10.244.1.0/24 via 10.30.0.1\nannounce fd74:6572:6e44:1::/64 via fd74:6572:6e30::1\n" +
				"announce 10.96.0.0/16 via 10.30.0.1\nannounce fd74:6572:6e96::/112 via fd74:6572:6e30::1\nannounce fd74:6572:6e50::7/128 via fd74:6572:6e30::1\n"},
		{"IPv6-only Services on an IPv4-only node: nothing to announce them with", Snapshot{Local: v4, Nodes: []NodeInfo{v4}, Config: svc},
			"as 64512 id 10.30.0.3\nannounce 10.244.3.0/24 via 10.30.0.3\nannounce 10.96.0.0/16 via 10.30.0.3\n"},
	}
	checkPlans(t, cases)
}

func TestRouterID(t *testing.T) {
	v6 := node("v6", "fd74:6572:6e30::4", "")
	if id := v6.ID(); !id.Is4() || id.IsUnspecified() || id != node("v6", "fd74:6572:6e30::99", "").ID() {
		t.Fatalf("derived router ID %v: want a stable non-zero IPv4-formatted ID from the name alone", id)
	}
	if v6.ID() == node("v7", "fd74:6572:6e30::4", "").ID() {
		t.Fatalf("two names, one derived router ID %v", v6.ID())
	}
	v6.RouterID = netip.MustParseAddr("10.1.2.3")
	if v6.ID() != v6.RouterID {
		t.Fatalf("the annotation's router ID is not used: %v", v6.ID())
	}
	if (NodeInfo{Name: "none"}).ID().IsValid() {
		t.Fatal("a node without an address has a router ID")
	}
	// Two IPv6-only nodes whose router IDs collide (one set by annotation
	// to the other's): the plan says so.
	a, b := node("a", "fd74:6572:6e30::1", ""), node("b", "fd74:6572:6e30::2", "")
	b.RouterID = a.ID()
	_, d, err := Plan(Snapshot{Local: a, Nodes: []NodeInfo{a, b}, Config: DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "node b has this node's router ID") {
		t.Fatalf("warnings %q", d.Warnings)
	}
}

// Sessions between tern nodes leave from the node's own address of their
// family (the one the other side peers with); sessions to BGPPeers leave
// from whatever address the route to the peer gives.
func TestPlanLocalAddress(t *testing.T) {
	d1 := node("d1", "10.30.0.1,fd74:6572:6e30::1", "")
	d2 := node("d2", "10.30.0.2,fd74:6572:6e30::2", "")
	tor := PeerSpec{Name: "tor", PeerIP: netip.MustParseAddr("fd74:6572:6e30::fe"), ASN: 65001}
	_, d, err := Plan(Snapshot{Local: d1, Nodes: []NodeInfo{d1, d2}, Config: DefaultConfig(), Peers: []PeerSpec{tor}})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Peers) != 3 {
		t.Fatalf("peers %+v", d.Peers)
	}
	for _, p := range d.Peers {
		want := d1.Addr(p.Address.Is6())
		if p.Kind == "peer" {
			want = netip.Addr{}
		}
		if p.LocalAddress != want {
			t.Errorf("peer %s (%s): local address %v, want %v", p.Address, p.Kind, p.LocalAddress, want)
		}
	}
}
