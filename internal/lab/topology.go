// Package lab runs tern-lab: a real multi-node tern cluster on one machine.
// Each node is a network namespace running the real tern-agent and a lab
// kubelet (this package) that attaches pods through the real tern CNI plugin
// with libcni; top-of-rack routers are real BIRD or FRR in namespaces of their
// own; the control plane is the real kube-apiserver, etcd and
// kube-controller-manager on the host's loopback. Nothing is added to the
// host's own network namespace.
//
// The topology (addresses, AS numbers, router configurations, the BGP objects
// the lab applies) is computed by pure functions in this file; the daemon
// (daemon.go, and a file for each of its jobs: controlplane.go, network.go,
// nodes.go, schedule.go, converge.go, control.go) makes it real and supervises
// it; the CLI (client.go) talks to the daemon over a unix socket.
package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Router kinds.
const (
	RouterBIRD  = "bird"
	RouterFRR   = "frr"
	RouterMixed = "mixed" // racks alternate BIRD and FRR
	RouterNone  = "none"
)

// AS numbers and addresses of the lab. Everything is inside 10.30.0.0/15
// (racks, spine), 10.32.0.0/16 (the clients behind the routers),
// 10.244.0.0/16 (pods) and 10.96.0.0/16 (Services): far from the machine's
// uplink (192.0.2.0/24).
const (
	ClusterAS   = 64512 // the mesh / route-reflector AS
	NodeASBase  = 64700 // + node number: a node's own AS when it peers eBGP with its ToR
	RackASBase  = 65000 // + rack number: a ToR's AS
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/16" // hack/kube-env.sh's SERVICE_CIDR
	// ReflectorClusterID is the route-reflector cluster ID of the reflector nodes.
	ReflectorClusterID = "244.0.0.1"
	// LabelRack is the node label that names a node's rack.
	LabelRack = "tern.io/rack"
	// LabelReflector marks the nodes that are route reflectors.
	LabelReflector = "tern.io/lab-route-reflector"
)

// Options are what `tern-lab up` takes.
type Options struct {
	Nodes           int    `json:"nodes"`
	Racks           int    `json:"racks"`
	Router          string `json:"router"`
	RouteReflectors int    `json:"routeReflectors"`
	// Real runs real nodes (kubelet, containerd, kube-proxy; tern by its
	// DaemonSet) instead of the light ones (tern's own kubelet, agents
	// started by the lab).
	Real bool `json:"real,omitempty"`
	// ProxyMode is kube-proxy's mode on real nodes: iptables (default) or
	// nftables.
	ProxyMode string `json:"proxyMode,omitempty"`
}

// Validate checks the options and says what is wrong.
func (o Options) Validate() error {
	switch o.Router {
	case RouterBIRD, RouterFRR, RouterMixed, RouterNone:
	default:
		return fmt.Errorf("--router %q: want bird, frr, mixed or none", o.Router)
	}
	switch o.ProxyMode {
	case "", "iptables", "nftables":
	default:
		return fmt.Errorf("--proxy-mode %q: want iptables or nftables", o.ProxyMode)
	}
	if o.ProxyMode != "" && !o.Real {
		return fmt.Errorf("--proxy-mode: light nodes run no kube-proxy")
	}
	if o.Nodes < 1 || o.Nodes > 200 {
		return fmt.Errorf("--nodes %d: want 1 to 200", o.Nodes)
	}
	if o.Racks < 1 || o.Racks > 50 {
		return fmt.Errorf("--racks %d: want 1 to 50", o.Racks)
	}
	if o.Router == RouterNone && o.Racks != 1 {
		return fmt.Errorf("--racks %d with --router none: racks need top-of-rack routers (nodes without routers share one segment)", o.Racks)
	}
	if o.RouteReflectors < 0 || o.RouteReflectors > o.Nodes {
		return fmt.Errorf("--route-reflectors %d: want 0 to the number of nodes (%d)", o.RouteReflectors, o.Nodes)
	}
	return nil
}

// Node is one lab node as planned.
type Node struct {
	Name      string     `json:"name"`
	Number    int        `json:"number"` // 1-based, never reused in a lab
	Rack      int        `json:"rack"`   // 1-based; 0 with no routers
	Address   netip.Addr `json:"address"`
	Gateway   netip.Addr `json:"gateway,omitzero"` // the ToR; zero with no routers
	AS        uint32     `json:"as"`
	Reflector bool       `json:"reflector"`
}

// Router is one top-of-rack router as planned.
type Router struct {
	Rack    int        `json:"rack"`
	Kind    string     `json:"kind"` // bird or frr
	AS      uint32     `json:"as"`
	Address netip.Addr `json:"address"` // on the rack's segment
	Spine   netip.Addr `json:"spine"`   // on the routers' shared segment
	// Client is the address of a host behind the router (outside the
	// cluster, as a user's machine on the rack's network), on its own
	// segment ClientPrefix(Rack), the router at .1 of it.
	Client netip.Addr `json:"client"`
}

// ClientPrefix is the segment between rack r's router and its client.
func ClientPrefix(r int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 32, byte(r), 0}), 24)
}

// ClientName is the name of rack r's client in `tern-lab exec`.
func ClientName(r int) string { return fmt.Sprintf("client%d", r) }

// RackPrefix is rack r's subnet (rack 0: the one segment of a lab without routers).
func RackPrefix(r int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30, byte(r), 0}), 24)
}

// SpinePrefix is the segment that connects the routers.
var SpinePrefix = netip.MustParsePrefix("10.31.0.0/24")

// Routers plans the top-of-rack routers.
func (o Options) Routers() []Router {
	if o.Router == RouterNone {
		return nil
	}
	var out []Router
	for r := 1; r <= o.Racks; r++ {
		kind := o.Router
		if kind == RouterMixed {
			kind = RouterBIRD
			if r%2 == 0 {
				kind = RouterFRR
			}
		}
		out = append(out, Router{Rack: r, Kind: kind, AS: uint32(RackASBase + r),
			Address: netip.AddrFrom4([4]byte{10, 30, byte(r), 254}),
			Spine:   netip.AddrFrom4([4]byte{10, 31, 0, byte(r)}),
			Client:  netip.AddrFrom4([4]byte{10, 32, byte(r), 2})})
	}
	return out
}

// PlanNode plans node number n in rack (0: round-robin over the racks).
// Reflector nodes are the first RouteReflectors nodes.
func (o Options) PlanNode(n, rack int) Node {
	if o.Router == RouterNone {
		rack = 0
	} else if rack == 0 {
		rack = (n-1)%o.Racks + 1
	}
	node := Node{Name: fmt.Sprintf("node-%d", n), Number: n, Rack: rack,
		Address: netip.AddrFrom4([4]byte{10, 30, byte(rack), byte(n)}), AS: ClusterAS,
		Reflector: n <= o.RouteReflectors}
	if o.Router != RouterNone {
		node.Gateway = netip.AddrFrom4([4]byte{10, 30, byte(rack), 254})
		if o.RouteReflectors == 0 {
			node.AS = uint32(NodeASBase + n)
		}
	}
	return node
}

// MaxNodeNumber: node numbers are host parts of a rack's /24 (254 is the ToR).
const MaxNodeNumber = 253

// PeersWithRouter reports whether a node has a BGP session with its ToR: every
// node, or with route reflectors only the reflectors.
func (o Options) PeersWithRouter(n Node) bool {
	return o.Router != RouterNone && (o.RouteReflectors == 0 || n.Reflector)
}

// BGPObjects is the YAML of the BGPConfiguration and BGPPeers the topology
// needs, as a user would write them.
func (o Options) BGPObjects() string {
	mesh := o.Router == RouterNone && o.RouteReflectors == 0
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: %d, nodeToNodeMesh: %t, advertise: {serviceClusterIPs: [%s]}}
`, ClusterAS, mesh, ServiceCIDR)
	for _, r := range o.Routers() {
		sel := fmt.Sprintf("%s: %q", LabelRack, fmt.Sprint(r.Rack))
		if o.RouteReflectors > 0 {
			sel += fmt.Sprintf(", %s: \"true\"", LabelReflector)
		}
		fmt.Fprintf(&b, `---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-%d}
spec: {peerIP: %s, asNumber: %d, nodeSelector: {matchLabels: {%s}}, holdTimeSeconds: 9, keepaliveSeconds: 3}
`, r.Rack, r.Address, r.AS, sel)
	}
	return b.String()
}

// BIRDConfig renders a BIRD 2 configuration for router r with sessions to the
// given nodes of its rack and to the other routers.
func BIRDConfig(r Router, all []Router, nodes []Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# tern-lab: top-of-rack router of rack %d
router id %s;
protocol device { scan time 1; }
protocol direct { ipv4; interface "br0", "client"; }
protocol kernel { merge paths on; ipv4 { export where source != RTS_DEVICE; }; }
template bgp lab { local as %d; connect retry time 1; error wait time 1, 5; graceful restart on; ipv4 { import all; export all; }; }
`, r.Rack, r.Address, r.AS)
	for _, n := range nodes {
		fmt.Fprintf(&b, "protocol bgp %s from lab { source address %s; neighbor %s as %d; }\n", birdName(n.Name), r.Address, n.Address, n.AS)
	}
	for _, o := range all {
		if o.Rack != r.Rack {
			fmt.Fprintf(&b, "protocol bgp tor%d from lab { source address %s; neighbor %s as %d; }\n", o.Rack, r.Spine, o.Spine, o.AS)
		}
	}
	return b.String()
}

func birdName(node string) string { return strings.ReplaceAll(node, "-", "_") }

// FRRConfig renders an integrated frr.conf for router r.
func FRRConfig(r Router, all []Router, nodes []Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, `! tern-lab: top-of-rack router of rack %d
frr defaults traditional
hostname tor%d
log stdout informational
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
`, r.Rack, r.Rack, r.AS, r.Address)
	for _, l := range frrNeighborLines(r, all, nodes) {
		fmt.Fprintf(&b, " %s\n", l)
	}
	b.WriteString(" address-family ipv4 unicast\n  redistribute connected\n  maximum-paths 8\n exit-address-family\n")
	return b.String()
}

func frrNeighborLines(r Router, all []Router, nodes []Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, fmt.Sprintf("neighbor %s remote-as %d", n.Address, n.AS), fmt.Sprintf("neighbor %s timers connect 1", n.Address))
	}
	for _, o := range all {
		if o.Rack != r.Rack {
			out = append(out, fmt.Sprintf("neighbor %s remote-as %d", o.Spine, o.AS), fmt.Sprintf("neighbor %s timers connect 1", o.Spine))
		}
	}
	return out
}

// RouterNodes are the nodes that peer with rack r's router.
func (o Options) RouterNodes(r Router, nodes []Node) []Node {
	var out []Node
	for _, n := range nodes {
		if n.Rack == r.Rack && o.PeersWithRouter(n) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b Node) int { return a.Number - b.Number })
	return out
}
