// Package bgp is tern's BGP speaker: GoBGP v3 embedded in the agent. It takes
// the whole desired state (global settings, peers, announcements) and reports
// the best paths it learned. Only speaker.go imports GoBGP, so a move to
// GoBGP v4 touches that one file.
package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Global is the speaker's own identity.
type Global struct {
	ASN         uint32
	RouterID    netip.Addr // IPv4-formatted: the node's IPv4 address, or NodeInfo.ID
	ListenPort  int32      // 179; -1: do not listen
	ListenAddrs []netip.Addr
	// GracefulRestart is announced to peers (0: off).
	GracefulRestart time.Duration
}

// Peer is one BGP neighbour as tern wants it.
type Peer struct {
	Address   netip.Addr
	ASN       uint32
	Kind      string        // "mesh", "peer" or "reflector" (a route-reflector client of ours)
	Passive   bool          // wait for the peer to connect (one side of each mesh pair)
	Password  string        // TCP MD5
	HoldTime  time.Duration // 0: the default (90 s); NoHoldTime: none, no keepalives
	Keepalive time.Duration
	Multihop  uint8
	// LocalAddress, when set, is the session's source address: the node's
	// own address of the peer's family for a session between tern nodes,
	// which each side knows the other by (a host with several IPv6
	// addresses would otherwise connect from whichever the kernel picks).
	LocalAddress netip.Addr
	// RRClient makes this speaker a route reflector for the peer, with ClusterID.
	RRClient  bool
	ClusterID netip.Addr
	// GracefulRestart is announced to the peer (0: off). A change resets
	// this one session, not the speaker.
	GracefulRestart time.Duration
}

// NoHoldTime as a Peer's HoldTime negotiates no hold timer and no keepalives
// (BGPPeer holdTimeSeconds: 0).
const NoHoldTime time.Duration = -1

// Validate checks what GoBGP would refuse less clearly.
func (p Peer) Validate() error {
	if !p.Address.IsValid() {
		return fmt.Errorf("peer without an address")
	}
	if p.ASN == 0 {
		return fmt.Errorf("peer %s: AS number 0", p.Address)
	}
	if p.HoldTime > 0 && p.HoldTime < 3*time.Second {
		return fmt.Errorf("peer %s: hold time %s is below 3 s", p.Address, p.HoldTime)
	}
	if p.RRClient && !p.ClusterID.Is4() {
		return fmt.Errorf("peer %s: a route-reflector client needs an IPv4 cluster ID", p.Address)
	}
	return nil
}

// Announcement is a prefix this speaker originates.
type Announcement struct {
	Prefix      netip.Prefix
	NextHop     netip.Addr
	Communities []uint32 // standard communities, AS<<16 | value
	// LargeCommunities (RFC 8092) as "global:local1:local2" values.
	LargeCommunities []LargeCommunity
}

// LargeCommunity is one RFC 8092 community.
type LargeCommunity struct{ Global, Local1, Local2 uint32 }

// Desired is the whole state the speaker is to have.
type Desired struct {
	Peers         []Peer
	Announcements []Announcement
	// Unannounced are pod CIDRs the plan cannot announce: the node has no
	// address of their family to be their next hop.
	Unannounced []netip.Prefix
	// Warnings are what the plan left out or found wrong, for the log.
	Warnings []string
}

// Route is a learned best path: a prefix and its next hops (several when
// equally good paths come from several peers: ECMP).
type Route struct {
	Prefix   netip.Prefix
	NextHops []netip.Addr
}

// PeerStatus is what `ternctl node status` shows of a peer.
type PeerStatus struct {
	Address  netip.Addr `json:"address"`
	ASN      uint32     `json:"asn"`
	Kind     string     `json:"kind"`
	State    string     `json:"state"`
	Since    time.Time  `json:"since,omitzero"`
	Received uint64     `json:"received"`
	Sent     uint64     `json:"sent"`
	// GracefulRestart: both sides negotiated it; EndOfRIB: the peer has sent
	// its End-of-RIB marker for every family since the session came up.
	GracefulRestart bool `json:"gracefulRestart,omitempty"`
	EndOfRIB        bool `json:"endOfRib,omitempty"`
}

// diffPeers says which peers to add, delete, or replace (changed settings).
func diffPeers(have, want map[netip.Addr]Peer) (add, del, change []Peer) {
	for a, p := range want {
		old, ok := have[a]
		switch {
		case !ok:
			add = append(add, p)
		case !samePeer(old, p):
			change = append(change, p)
		}
	}
	for a, p := range have {
		if _, ok := want[a]; !ok {
			del = append(del, p)
		}
	}
	for _, l := range [][]Peer{add, del, change} {
		slices.SortFunc(l, func(x, y Peer) int { return x.Address.Compare(y.Address) })
	}
	return add, del, change
}

func samePeer(a, b Peer) bool {
	return a.Address == b.Address && a.ASN == b.ASN && a.Kind == b.Kind && a.Passive == b.Passive &&
		a.Password == b.Password && a.HoldTime == b.HoldTime && a.Keepalive == b.Keepalive &&
		a.Multihop == b.Multihop && a.LocalAddress == b.LocalAddress && a.RRClient == b.RRClient && a.ClusterID == b.ClusterID &&
		a.GracefulRestart == b.GracefulRestart
}

// diffAnnouncements says which announcements to withdraw and which to add; a
// changed one is only added again (the new path replaces the old).
func diffAnnouncements(have, want map[netip.Prefix]Announcement) (add, del []Announcement) {
	for p, a := range want {
		if old, ok := have[p]; !ok || old.NextHop != a.NextHop || !slices.Equal(old.Communities, a.Communities) || !slices.Equal(old.LargeCommunities, a.LargeCommunities) {
			add = append(add, a)
		}
	}
	for p, a := range have {
		if _, ok := want[p]; !ok {
			del = append(del, a)
		}
	}
	sortAnn := func(x, y Announcement) int { return x.Prefix.Addr().Compare(y.Prefix.Addr()) }
	slices.SortFunc(add, sortAnn)
	slices.SortFunc(del, sortAnn)
	return add, del
}
