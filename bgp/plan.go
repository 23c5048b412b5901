package bgp

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"
)

// Defaults of BGPConfiguration.
const (
	DefaultASN             = 64512
	DefaultListenPort      = 179
	DefaultGracefulRestart = 120 * time.Second
)

// NodeInfo is what planning needs of a node.
type NodeInfo struct {
	Name string
	// IPv4 and IPv6 are the node's addresses; either may be unset. BGP runs
	// one session per family, between addresses of that family, and a
	// prefix is announced with the node's address of its family as next hop.
	IPv4, IPv6 netip.Addr
	// RouterID is the tern.io/router-id annotation; unset: the IPv4 address,
	// or, on a node with only IPv6, an ID derived from the node's name.
	RouterID  netip.Addr
	PodCIDRs  []netip.Prefix
	Labels    map[string]string
	ASN       uint32     // the node's tern.io/as-number annotation; 0: the cluster's
	RRCluster netip.Addr // tern.io/route-reflector-cluster-id: a route reflector
}

// Config is the cluster's BGPConfiguration, defaults applied.
type Config struct {
	ASN             uint32
	NodeToNodeMesh  bool
	ListenPort      int32
	GracefulRestart time.Duration
	Communities     []uint32
	// LargeCommunities go on every announcement with Communities.
	LargeCommunities []LargeCommunity
	// ServiceClusterIPs are announced as they are, from every node.
	ServiceClusterIPs []netip.Prefix
	// Services' external IPs and load-balancer IPs inside these ranges are
	// announced as /32 (/128) routes: from every node, or, for a Service
	// with externalTrafficPolicy Local, from the nodes with a ready endpoint.
	ServiceExternalIPs     []netip.Prefix
	ServiceLoadBalancerIPs []netip.Prefix
}

// ServiceIP is a Service's external or load-balancer IP, as the local node
// sees it.
type ServiceIP struct {
	Addr         netip.Addr
	LoadBalancer bool // from status.loadBalancer, else spec.externalIPs
	Local        bool // externalTrafficPolicy: Local
	EndpointHere bool // a ready endpoint on this node
}

// Addr is the node's address of the family of v6.
func (n NodeInfo) Addr(v6 bool) netip.Addr {
	if v6 {
		return n.IPv6
	}
	return n.IPv4
}

// ID is the node's BGP router ID: RouterID, else its IPv4 address, else
// one derived from its name (FNV-1a, never 0), so that an IPv6-only node
// has the same one on every start and every node computes it alike.
func (n NodeInfo) ID() netip.Addr {
	switch {
	case n.RouterID.IsValid():
		return n.RouterID
	case n.IPv4.IsValid():
		return n.IPv4
	case !n.IPv6.IsValid():
		return netip.Addr{}
	}
	h := fnv.New32a()
	h.Write([]byte(n.Name))
	v := h.Sum32()
	if v == 0 {
		v = 1
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// DefaultConfig is the configuration without a BGPConfiguration object.
func DefaultConfig() Config {
	return Config{ASN: DefaultASN, NodeToNodeMesh: true, ListenPort: DefaultListenPort, GracefulRestart: DefaultGracefulRestart}
}

// PeerSpec is one BGPPeer object.
type PeerSpec struct {
	Name      string
	PeerIP    netip.Addr
	ASN       uint32
	Node      string                              // only this node
	Selects   func(labels map[string]string) bool // nodeSelector; nil: every node
	Password  string
	HoldTime  time.Duration
	Keepalive time.Duration
	Multihop  uint8
	RRClient  bool
}

// Snapshot is everything the plan of one node depends on.
type Snapshot struct {
	Local  NodeInfo
	Nodes  []NodeInfo // every node, the local one included
	Config Config
	Peers  []PeerSpec
	// ServiceIPs are every Service's external and load-balancer IPs.
	ServiceIPs []ServiceIP
}

// Plan computes the local node's speaker settings, peers and announcements.
// It does no I/O.
//
// Topology: with the node-to-node mesh on, every node peers iBGP (or eBGP when
// their AS numbers differ) with every other node; of each pair, the node with
// the lower address waits for the other to connect, so the two never collide.
// With the mesh off, nodes annotated as route reflectors peer with every other
// node, as route reflectors for those that are not reflectors themselves, and
// the others peer only with the reflectors. BGPPeer objects add peers to the
// nodes they select.
func Plan(s Snapshot) (Global, Desired, error) {
	local := s.Local
	if !local.IPv4.IsValid() && !local.IPv6.IsValid() {
		return Global{}, Desired{}, fmt.Errorf("node %s has no address for BGP (an InternalIP, or the tern.io/address annotation)", local.Name)
	}
	id := local.ID()
	if !id.Is4() {
		return Global{}, Desired{}, fmt.Errorf("node %s: router ID %s is not an IPv4-formatted ID (tern.io/router-id)", local.Name, id)
	}
	asn := func(n NodeInfo) uint32 {
		if n.ASN != 0 {
			return n.ASN
		}
		return s.Config.ASN
	}
	g := Global{ASN: asn(local), RouterID: id, ListenPort: s.Config.ListenPort, GracefulRestart: s.Config.GracefulRestart}
	var d Desired
	add := func(p Peer) {
		if p.Address == local.IPv4 || p.Address == local.IPv6 {
			return
		}
		p.GracefulRestart = s.Config.GracefulRestart
		if i := slices.IndexFunc(d.Peers, func(q Peer) bool { return q.Address == p.Address }); i >= 0 {
			return // the first reason to peer wins: mesh or reflector before BGPPeer
		}
		d.Peers = append(d.Peers, p)
	}
	localRR := local.RRCluster.IsValid()
	// A session per family: IPv4 sessions carry IPv4 routes, IPv6 sessions
	// IPv6 routes (DESIGN.md, "BGP and address families").
	for _, v6 := range []bool{false, true} {
		la := local.Addr(v6)
		if !la.IsValid() {
			continue
		}
		nodes := slices.Clone(s.Nodes)
		slices.SortFunc(nodes, func(a, b NodeInfo) int { return a.Addr(v6).Compare(b.Addr(v6)) })
		for _, n := range nodes {
			na := n.Addr(v6)
			if n.Name == local.Name || !na.IsValid() {
				continue
			}
			nRR := n.RRCluster.IsValid()
			switch {
			case s.Config.NodeToNodeMesh:
				add(Peer{Address: na, ASN: asn(n), Kind: "mesh", Passive: la.Less(na), LocalAddress: la})
			case localRR && !nRR:
				add(Peer{Address: na, ASN: asn(n), Kind: "reflector-client", RRClient: true, ClusterID: local.RRCluster,
					Passive: la.Less(na), LocalAddress: la})
			case nRR:
				// To a reflector (from a client, or between reflectors). As in the
				// mesh, the lower address of a pair of tern nodes waits.
				add(Peer{Address: na, ASN: asn(n), Kind: "reflector", Passive: la.Less(na), LocalAddress: la})
			}
		}
	}
	for _, n := range s.Nodes {
		if n.Name != local.Name && n.ID() == id && (n.IPv4.IsValid() || n.IPv6.IsValid()) {
			d.Warnings = append(d.Warnings, fmt.Sprintf("node %s has this node's router ID %s: iBGP sessions between them are refused; give one of them another with the tern.io/router-id annotation", n.Name, id))
		}
	}
	for _, p := range s.Peers {
		if p.Node != "" && p.Node != local.Name {
			continue
		}
		if p.Selects != nil && !p.Selects(local.Labels) {
			continue
		}
		if !local.Addr(p.PeerIP.Is6()).IsValid() {
			d.Warnings = append(d.Warnings, fmt.Sprintf("BGPPeer %s (%s) not configured: this node has no address of its family", p.Name, p.PeerIP))
			continue
		}
		peer := Peer{Address: p.PeerIP, ASN: p.ASN, Kind: "peer", Password: p.Password, HoldTime: p.HoldTime,
			Keepalive: p.Keepalive, Multihop: p.Multihop}
		if p.RRClient {
			peer.RRClient, peer.ClusterID = true, id
			if localRR {
				peer.ClusterID = local.RRCluster
			}
		}
		add(peer)
	}
	announce := func(pfx netip.Prefix) bool {
		nh := local.Addr(pfx.Addr().Is6())
		if !nh.IsValid() {
			return false
		}
		if !slices.ContainsFunc(d.Announcements, func(a Announcement) bool { return a.Prefix == pfx }) {
			d.Announcements = append(d.Announcements, Announcement{Prefix: pfx, NextHop: nh, Communities: s.Config.Communities, LargeCommunities: s.Config.LargeCommunities})
		}
		return true
	}
	for _, c := range local.PodCIDRs {
		if !announce(c.Masked()) {
			d.Unannounced = append(d.Unannounced, c.Masked())
		}
	}
	for _, c := range s.Config.ServiceClusterIPs {
		announce(c.Masked())
	}
	for _, ip := range s.ServiceIPs {
		ranges := s.Config.ServiceExternalIPs
		if ip.LoadBalancer {
			ranges = s.Config.ServiceLoadBalancerIPs
		}
		if !slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(ip.Addr) }) || (ip.Local && !ip.EndpointHere) {
			continue
		}
		announce(netip.PrefixFrom(ip.Addr, ip.Addr.BitLen()))
	}
	return g, d, nil
}
