package agent

import (
	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/agentapi"
)

// bgpView is what ternctl and the metrics see of a BGP pass: the speaker's
// identity, the node's addresses, its sessions and the routes it installed,
// and per address family a summary of them. A session is of the family of
// its peer's address (one session per family); configured counts the
// peers the plan wants, whether the speaker has them yet or not.
func bgpView(g bgp.Global, local bgp.NodeInfo, d bgp.Desired, peers []bgp.PeerStatus, installed []dataplane.LearnedRoute) agentapi.BGP {
	v := agentapi.BGP{Enabled: true, ASN: g.ASN, RouterID: g.RouterID, IPv4: local.IPv4, IPv6: local.IPv6,
		Peers: []agentapi.BGPPeer{}, Routes: []agentapi.BGPRoute{}}
	fams := map[string]*agentapi.BGPFamily{}
	fam := func(f string) *agentapi.BGPFamily {
		if fams[f] == nil {
			fams[f] = &agentapi.BGPFamily{Family: f}
		}
		return fams[f]
	}
	for _, a := range []string{agentapi.Family(local.IPv4), agentapi.Family(local.IPv6)} {
		if a != "" {
			fam(a)
		}
	}
	for _, p := range d.Peers {
		fam(agentapi.Family(p.Address)).Configured++
	}
	for _, p := range peers {
		f := fam(agentapi.Family(p.Address))
		if p.State == "Established" {
			f.Established++
		}
		f.Received += p.Received
		f.Sent += p.Sent
		v.Peers = append(v.Peers, agentapi.BGPPeer{Address: p.Address, Family: f.Family, ASN: p.ASN, Kind: p.Kind,
			State: p.State, Since: p.Since, Received: p.Received, Sent: p.Sent,
			GracefulRestart: p.GracefulRestart, EndOfRIB: p.EndOfRIB})
	}
	for _, rt := range installed {
		f := fam(agentapi.Family(rt.Dst.Addr()))
		f.Routes++
		v.Routes = append(v.Routes, agentapi.BGPRoute{Dst: rt.Dst, Family: f.Family, Gateways: rt.Gateways})
	}
	for _, a := range d.Announcements {
		fam(agentapi.Family(a.Prefix.Addr())).Announced++
		v.Announced = append(v.Announced, a.Prefix)
	}
	for _, f := range []string{agentapi.FamilyIPv4, agentapi.FamilyIPv6} {
		if fams[f] != nil {
			v.Families = append(v.Families, *fams[f])
		}
	}
	return v
}
