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

// AS numbers and addresses of the lab. IPv4: everything is inside
// 10.30.0.0/15 (racks, spine), 10.32.0.0/16 (the clients behind the
// routers), 10.244.0.0/16 (pods) and 10.96.0.0/16 (Services). IPv6: inside
// the unique-local fd74:6572:6e00::/40 ("tern"): fd74:6572:6e30::/48
// (racks), fd74:6572:6e31::/64 (spine), fd74:6572:6e32::/48 (clients),
// fd74:6572:6e44::/56 (pods), fd74:6572:6e96::/112 (Services). Far from the
// machine's uplink (192.0.2.0/24, fd00::/64).
const (
	ClusterAS    = 64512 // the mesh / route-reflector AS
	NodeASBase   = 64700 // + node number: a node's own AS when it peers eBGP with its ToR
	RackASBase   = 65000 // + rack number: a ToR's AS
	ClusterCIDR  = "10.244.0.0/16"
	ServiceCIDR  = "10.96.0.0/16" // hack/kube-env.sh's SERVICE_CIDR
	ClusterCIDR6 = "fd74:6572:6e44::/56"
	ServiceCIDR6 = "fd74:6572:6e96::/112" // given to hack/kube-env.sh as TERN_KUBE_SERVICE_CIDR's second range
	// ReflectorClusterID is the route-reflector cluster ID of the reflector nodes.
	ReflectorClusterID = "244.0.0.1"
	// LabelRack is the node label that names a node's rack.
	LabelRack = "tern.io/rack"
	// LabelReflector marks the nodes that are route reflectors.
	LabelReflector = "tern.io/lab-route-reflector"
)

// IP families of a lab.
const (
	IPv4 = "ipv4"
	IPv6 = "ipv6"
	Dual = "dual" // IPv4 first: the primary family of Services and nodes
)

// lab6 is the lab's unique-local IPv6 prefix, fd74:6572:6e00::/40.
var lab6 = [5]byte{0xfd, 0x74, 0x65, 0x72, 0x6e}

// addr6 is the lab address fd74:6572:6e<sub>:<net>::<host>.
func addr6(sub byte, net, host uint16) netip.Addr {
	var a [16]byte
	copy(a[:], lab6[:])
	a[5], a[6], a[7] = sub, byte(net>>8), byte(net)
	a[14], a[15] = byte(host>>8), byte(host)
	return netip.AddrFrom16(a)
}

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
	// IPFamily: ipv4 (default), ipv6 or dual, of the nodes, pods and
	// Services; the routers carry every family the lab has.
	IPFamily string `json:"ipFamily,omitempty"`
}

// V4 says whether the lab has IPv4 (nodes, pods, Services).
func (o Options) V4() bool { return o.IPFamily != IPv6 }

// V6 says whether the lab has IPv6.
func (o Options) V6() bool { return o.IPFamily == IPv6 || o.IPFamily == Dual }

// Families are the lab's families, the primary one first: false is IPv4.
func (o Options) Families() []bool {
	switch o.IPFamily {
	case IPv6:
		return []bool{true}
	case Dual:
		return []bool{false, true}
	}
	return []bool{false}
}

// ClusterCIDRs are the pod ranges, one per family, the primary first.
func (o Options) ClusterCIDRs() []string {
	return o.perFamily(ClusterCIDR, ClusterCIDR6)
}

// ServiceCIDRs are the Service ranges, one per family, the primary first.
func (o Options) ServiceCIDRs() []string {
	return o.perFamily(ServiceCIDR, ServiceCIDR6)
}

func (o Options) perFamily(v4, v6 string) []string {
	var out []string
	for _, f := range o.Families() {
		out = append(out, map[bool]string{false: v4, true: v6}[f])
	}
	return out
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
	switch o.IPFamily {
	case "", IPv4:
	case IPv6, Dual:
		if !o.Real {
			return fmt.Errorf("--ip-family %s: light nodes are IPv4 only (tern's own kubelet gives pods one address); use real nodes", o.IPFamily)
		}
	default:
		return fmt.Errorf("--ip-family %q: want ipv4, ipv6 or dual", o.IPFamily)
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
	Name   string `json:"name"`
	Number int    `json:"number"` // 1-based, never reused in a lab
	Rack   int    `json:"rack"`   // 1-based; 0 with no routers
	// IPv4 and IPv6 are the node's addresses of the lab's families;
	// Gateway4 and Gateway6 its ToR's (unset with no routers).
	IPv4      netip.Addr `json:"ipv4,omitzero"`
	IPv6      netip.Addr `json:"ipv6,omitzero"`
	Gateway4  netip.Addr `json:"gateway4,omitzero"`
	Gateway6  netip.Addr `json:"gateway6,omitzero"`
	AS        uint32     `json:"as"`
	Reflector bool       `json:"reflector"`
}

// Address is the node's primary address: IPv4, or IPv6 in an IPv6-only lab.
func (n Node) Address() netip.Addr {
	if n.IPv4.IsValid() {
		return n.IPv4
	}
	return n.IPv6
}

// Addresses are the node's addresses, the primary first.
func (n Node) Addresses() []netip.Addr { return validAddrs(n.IPv4, n.IPv6) }

// JoinAddrs writes addresses comma-separated.
func JoinAddrs(as []netip.Addr) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

func validAddrs(as ...netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// Router is one top-of-rack router as planned. Its IPv4 addresses are set
// in every lab (Address is its router ID); the IPv6 ones in a lab with IPv6.
type Router struct {
	Rack    int        `json:"rack"`
	Kind    string     `json:"kind"` // bird or frr
	AS      uint32     `json:"as"`
	Address netip.Addr `json:"address"` // on the rack's segment
	Spine   netip.Addr `json:"spine"`   // on the routers' shared segment
	// Client is the address of a host behind the router (outside the
	// cluster, as a user's machine on the rack's network), on its own
	// segment ClientPrefix(Rack), the router at .1 of it.
	Client   netip.Addr `json:"client"`
	Address6 netip.Addr `json:"address6,omitzero"`
	Spine6   netip.Addr `json:"spine6,omitzero"`
	Client6  netip.Addr `json:"client6,omitzero"` // on ClientPrefix6(Rack), the router at ::1
}

// ClientPrefix is the segment between rack r's router and its client.
func ClientPrefix(r int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 32, byte(r), 0}), 24)
}

// ClientPrefix6 is the IPv6 segment between rack r's router and its client.
func ClientPrefix6(r int) netip.Prefix { return netip.PrefixFrom(addr6(0x32, uint16(r), 0), 64) }

// RackPrefix6 is rack r's IPv6 subnet.
func RackPrefix6(r int) netip.Prefix { return netip.PrefixFrom(addr6(0x30, uint16(r), 0), 64) }

// SpinePrefix6 is the IPv6 segment that connects the routers.
var SpinePrefix6 = netip.PrefixFrom(addr6(0x31, 0, 0), 64)

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
		rt := Router{Rack: r, Kind: kind, AS: uint32(RackASBase + r),
			Address: netip.AddrFrom4([4]byte{10, 30, byte(r), 254}),
			Spine:   netip.AddrFrom4([4]byte{10, 31, 0, byte(r)}),
			Client:  netip.AddrFrom4([4]byte{10, 32, byte(r), 2})}
		if o.V6() {
			rt.Address6, rt.Spine6, rt.Client6 = addr6(0x30, uint16(r), 0xfe), addr6(0x31, 0, uint16(r)), addr6(0x32, uint16(r), 2)
		}
		out = append(out, rt)
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
	node := Node{Name: fmt.Sprintf("node-%d", n), Number: n, Rack: rack, AS: ClusterAS, Reflector: n <= o.RouteReflectors}
	if o.V4() {
		node.IPv4 = netip.AddrFrom4([4]byte{10, 30, byte(rack), byte(n)})
	}
	if o.V6() {
		node.IPv6 = addr6(0x30, uint16(rack), uint16(n))
	}
	if o.Router != RouterNone {
		if o.V4() {
			node.Gateway4 = netip.AddrFrom4([4]byte{10, 30, byte(rack), 254})
		}
		if o.V6() {
			node.Gateway6 = addr6(0x30, uint16(rack), 0xfe)
		}
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
`, ClusterAS, mesh, strings.Join(o.ServiceCIDRs(), ", "))
	for _, r := range o.Routers() {
		sel := fmt.Sprintf("%s: %q", LabelRack, fmt.Sprint(r.Rack))
		if o.RouteReflectors > 0 {
			sel += fmt.Sprintf(", %s: \"true\"", LabelReflector)
		}
		// A BGPPeer per family: tern runs a session per family.
		for _, v6 := range o.Families() {
			name, peer := fmt.Sprintf("tor-%d", r.Rack), r.Address
			if v6 {
				name, peer = name+"-ipv6", r.Address6
			}
			fmt.Fprintf(&b, `---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: %s}
spec: {peerIP: %s, asNumber: %d, nodeSelector: {matchLabels: {%s}}, holdTimeSeconds: 9, keepaliveSeconds: 3}
`, name, peer, r.AS, sel)
		}
	}
	return b.String()
}

// BIRDConfig renders a BIRD 2 configuration for router r with sessions to the
// given nodes of its rack and to the other routers: a session per family
// (protocols named _v6 for IPv6), as tern runs them.
func BIRDConfig(r Router, all []Router, nodes []Node) string {
	var b strings.Builder
	v6 := r.Address6.IsValid()
	channels := "ipv4;"
	if v6 {
		channels = "ipv4; ipv6;"
	}
	fmt.Fprintf(&b, `# tern-lab: top-of-rack router of rack %d
router id %s;
protocol device { scan time 1; }
protocol direct { %s interface "br0", "client"; }
protocol kernel { merge paths on; ipv4 { export where source != RTS_DEVICE; }; }
template bgp lab { local as %d; connect retry time 1; error wait time 1, 5; graceful restart on; ipv4 { import all; export all; }; }
`, r.Rack, r.Address, channels, r.AS)
	if v6 {
		// Metric 1024: the kernel's IPv6 connected routes have 256, and a
		// learned route to a connected prefix (the spine's, from the other
		// routers) must not win over them, or no gateway on it resolves.
		fmt.Fprintf(&b, `protocol kernel { merge paths on; metric 1024; ipv6 { export where source != RTS_DEVICE; }; }
template bgp lab6 { local as %d; connect retry time 1; error wait time 1, 5; graceful restart on; ipv6 { import all; export all; }; }
`, r.AS)
	}
	for _, n := range nodes {
		if n.IPv4.IsValid() {
			fmt.Fprintf(&b, "protocol bgp %s from lab { source address %s; neighbor %s as %d; }\n", birdName(n.Name), r.Address, n.IPv4, n.AS)
		}
		if n.IPv6.IsValid() && v6 {
			fmt.Fprintf(&b, "protocol bgp %s_v6 from lab6 { source address %s; neighbor %s as %d; }\n", birdName(n.Name), r.Address6, n.IPv6, n.AS)
		}
	}
	for _, o := range all {
		if o.Rack != r.Rack {
			fmt.Fprintf(&b, "protocol bgp tor%d from lab { source address %s; neighbor %s as %d; }\n", o.Rack, r.Spine, o.Spine, o.AS)
			if v6 && o.Spine6.IsValid() {
				fmt.Fprintf(&b, "protocol bgp tor%d_v6 from lab6 { source address %s; neighbor %s as %d; }\n", o.Rack, r.Spine6, o.Spine6, o.AS)
			}
		}
	}
	return b.String()
}

func birdName(node string) string { return strings.ReplaceAll(node, "-", "_") }

// FRRConfig renders an integrated frr.conf for router r, a session per
// family: IPv6 neighbours are activated in the IPv6 address family and
// deactivated in IPv4's (where FRR activates every neighbour by default).
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
	lines, v6 := frrNeighborLines(r, all, nodes)
	for _, l := range lines {
		fmt.Fprintf(&b, " %s\n", l)
	}
	b.WriteString(" address-family ipv4 unicast\n")
	for _, a := range v6 {
		fmt.Fprintf(&b, "  no neighbor %s activate\n", a)
	}
	b.WriteString("  redistribute connected\n  maximum-paths 8\n exit-address-family\n")
	if r.Address6.IsValid() {
		b.WriteString(" address-family ipv6 unicast\n")
		for _, a := range v6 {
			fmt.Fprintf(&b, "  neighbor %s activate\n", a)
		}
		b.WriteString("  redistribute connected\n  maximum-paths 8\n exit-address-family\n")
	}
	return b.String()
}

// frrNeighborLines are the neighbour lines of r's sessions (in `router
// bgp`), and the IPv6 neighbours to activate in the IPv6 address family.
func frrNeighborLines(r Router, all []Router, nodes []Node) (lines []string, v6 []netip.Addr) {
	add := func(a netip.Addr, as uint32) {
		if !a.IsValid() || (a.Is6() && !r.Address6.IsValid()) {
			return
		}
		lines = append(lines, fmt.Sprintf("neighbor %s remote-as %d", a, as), fmt.Sprintf("neighbor %s timers connect 1", a))
		if a.Is6() {
			v6 = append(v6, a)
		}
	}
	for _, n := range nodes {
		add(n.IPv4, n.AS)
		add(n.IPv6, n.AS)
	}
	for _, o := range all {
		if o.Rack != r.Rack {
			add(o.Spine, o.AS)
			add(o.Spine6, o.AS)
		}
	}
	return lines, v6
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
