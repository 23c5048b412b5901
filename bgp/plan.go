package bgp

import (
	"fmt"
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
	Name      string
	Address   netip.Addr
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
	if !local.Address.Is4() {
		return Global{}, Desired{}, fmt.Errorf("node %s has no IPv4 address for its BGP router ID (InternalIP or tern.io/address)", local.Name)
	}
	asn := func(n NodeInfo) uint32 {
		if n.ASN != 0 {
			return n.ASN
		}
		return s.Config.ASN
	}
	g := Global{ASN: asn(local), RouterID: local.Address, ListenPort: s.Config.ListenPort, GracefulRestart: s.Config.GracefulRestart}
	var d Desired
	add := func(p Peer) {
		if p.Address == local.Address {
			return
		}
		p.GracefulRestart = s.Config.GracefulRestart
		if i := slices.IndexFunc(d.Peers, func(q Peer) bool { return q.Address == p.Address }); i >= 0 {
			return // the first reason to peer wins: mesh or reflector before BGPPeer
		}
		d.Peers = append(d.Peers, p)
	}
	nodes := slices.Clone(s.Nodes)
	slices.SortFunc(nodes, func(a, b NodeInfo) int { return a.Address.Compare(b.Address) })
	localRR := local.RRCluster.IsValid()
	for _, n := range nodes {
		if n.Name == local.Name || !n.Address.IsValid() || n.Address.Is4() != local.Address.Is4() {
			continue
		}
		nRR := n.RRCluster.IsValid()
		switch {
		case s.Config.NodeToNodeMesh:
			add(Peer{Address: n.Address, ASN: asn(n), Kind: "mesh", Passive: local.Address.Less(n.Address)})
		case localRR && !nRR:
			add(Peer{Address: n.Address, ASN: asn(n), Kind: "reflector-client", RRClient: true, ClusterID: local.RRCluster,
				Passive: local.Address.Less(n.Address)})
		case nRR:
			// To a reflector (from a client, or between reflectors). As in the
			// mesh, the lower address of a pair of tern nodes waits.
			add(Peer{Address: n.Address, ASN: asn(n), Kind: "reflector", Passive: local.Address.Less(n.Address)})
		}
	}
	for _, p := range s.Peers {
		if p.Node != "" && p.Node != local.Name {
			continue
		}
		if p.Selects != nil && !p.Selects(local.Labels) {
			continue
		}
		peer := Peer{Address: p.PeerIP, ASN: p.ASN, Kind: "peer", Password: p.Password, HoldTime: p.HoldTime,
			Keepalive: p.Keepalive, Multihop: p.Multihop}
		if p.RRClient {
			peer.RRClient, peer.ClusterID = true, local.Address
			if localRR {
				peer.ClusterID = local.RRCluster
			}
		}
		add(peer)
	}
	for _, c := range local.PodCIDRs {
		if c.Addr().Is4() == local.Address.Is4() {
			d.Announcements = append(d.Announcements, Announcement{Prefix: c.Masked(), NextHop: local.Address, Communities: s.Config.Communities, LargeCommunities: s.Config.LargeCommunities})
		} else {
			d.Unannounced = append(d.Unannounced, c.Masked())
		}
	}
	for _, c := range s.Config.ServiceClusterIPs {
		if c.Addr().Is4() == local.Address.Is4() {
			d.Announcements = append(d.Announcements, Announcement{Prefix: c.Masked(), NextHop: local.Address, Communities: s.Config.Communities, LargeCommunities: s.Config.LargeCommunities})
		}
	}
	for _, ip := range s.ServiceIPs {
		ranges := s.Config.ServiceExternalIPs
		if ip.LoadBalancer {
			ranges = s.Config.ServiceLoadBalancerIPs
		}
		if !slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(ip.Addr) }) ||
			ip.Addr.Is4() != local.Address.Is4() || (ip.Local && !ip.EndpointHere) {
			continue
		}
		pfx := netip.PrefixFrom(ip.Addr, ip.Addr.BitLen())
		if !slices.ContainsFunc(d.Announcements, func(a Announcement) bool { return a.Prefix == pfx }) {
			d.Announcements = append(d.Announcements, Announcement{Prefix: pfx, NextHop: local.Address, Communities: s.Config.Communities, LargeCommunities: s.Config.LargeCommunities})
		}
	}
	return g, d, nil
}
