package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func node(name, ip, cidr string) NodeInfo {
	n := NodeInfo{Name: name, Address: netip.MustParseAddr(ip), Labels: map[string]string{"name": name}}
	if cidr != "" {
		n.PodCIDRs = []netip.Prefix{netip.MustParsePrefix(cidr)}
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
	return b.String()
}

func TestPlan(t *testing.T) {
	n1, n2, n3 := node("n1", "10.30.0.1", "10.244.1.0/24"), node("n2", "10.30.0.2", "10.244.2.0/24"), node("n3", "10.30.0.3", "10.244.3.0/24")
	rr := node("rr", "10.30.0.9", "10.244.9.0/24")
	rr.RRCluster = netip.MustParseAddr("10.30.0.9")
	meshOff := DefaultConfig()
	meshOff.NodeToNodeMesh = false
	n3as := n3
	n3as.ASN = 65003
	cases := []struct {
		name string
		snap Snapshot
		want string
	}{
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
	if _, _, err := Plan(Snapshot{Local: NodeInfo{Name: "x"}, Config: DefaultConfig()}); err == nil || !strings.Contains(err.Error(), "no IPv4 address") {
		t.Fatalf("node without address: %v", err)
	}
}

// Of every pair of tern nodes exactly one side waits, whatever their roles:
// two active GoBGP speakers collide and take minutes to reconnect.
func TestPlanOnePassiveSidePerPair(t *testing.T) {
	n1, n2 := node("n1", "10.30.0.1", ""), node("n2", "10.30.0.2", "")
	rr := node("rr", "10.30.0.9", "")
	rr.RRCluster = netip.MustParseAddr("10.30.0.9")
	rr2 := node("rr2", "10.30.0.8", "")
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
				passive[[2]string{local.Address.String(), p.Address.String()}] = p.Passive
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
