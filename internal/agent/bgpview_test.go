package agent

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/agentapi"
)

var (
	mustAddr   = netip.MustParseAddr
	mustPrefix = netip.MustParsePrefix
)

// dualStackPass is a BGP pass of a dual-stack node with two mesh
// neighbours: both IPv4 sessions up, one of the two IPv6 sessions up, and a
// third IPv6 peer (a ToR) configured that the speaker does not have yet.
func dualStackPass() (bgp.Global, bgp.NodeInfo, bgp.Desired, []bgp.PeerStatus, []dataplane.LearnedRoute) {
	g := bgp.Global{ASN: 64512, RouterID: mustAddr("10.40.0.1")}
	local := bgp.NodeInfo{Name: "n1", IPv4: mustAddr("10.40.0.1"), IPv6: mustAddr("fd40::1")}
	d := bgp.Desired{
		Peers: []bgp.Peer{
			{Address: mustAddr("10.40.0.2"), Kind: "mesh"}, {Address: mustAddr("10.40.0.3"), Kind: "mesh"},
			{Address: mustAddr("fd40::2"), Kind: "mesh"}, {Address: mustAddr("fd40::3"), Kind: "mesh"}, {Address: mustAddr("fd40::fe"), Kind: "peer"},
		},
		Announcements: []bgp.Announcement{
			{Prefix: mustPrefix("10.244.1.0/24"), NextHop: mustAddr("10.40.0.1")},
			{Prefix: mustPrefix("10.96.0.0/16"), NextHop: mustAddr("10.40.0.1")},
			{Prefix: mustPrefix("fd10:244:1::/64"), NextHop: mustAddr("fd40::1")},
		},
	}
	peers := []bgp.PeerStatus{
		{Address: mustAddr("10.40.0.2"), ASN: 64512, Kind: "mesh", State: "Established", Received: 1, Sent: 2},
		{Address: mustAddr("10.40.0.3"), ASN: 64512, Kind: "mesh", State: "Established", Received: 2, Sent: 2},
		{Address: mustAddr("fd40::2"), ASN: 64512, Kind: "mesh", State: "Established", Received: 4, Sent: 1},
		{Address: mustAddr("fd40::3"), ASN: 64512, Kind: "mesh", State: "Active"},
	}
	installed := []dataplane.LearnedRoute{
		{Dst: mustPrefix("10.244.2.0/24"), Gateways: []netip.Addr{mustAddr("10.40.0.2")}},
		{Dst: mustPrefix("10.244.3.0/24"), Gateways: []netip.Addr{mustAddr("10.40.0.2"), mustAddr("10.40.0.3")}},
		{Dst: mustPrefix("fd10:244:2::/64"), Gateways: []netip.Addr{mustAddr("fd40::2")}},
	}
	return g, local, d, peers, installed
}

// TestBGPViewPerFamily: each session, route and announcement counts in the
// family of its address, and nowhere else.
func TestBGPViewPerFamily(t *testing.T) {
	v := bgpView(dualStackPass())
	if !v.Enabled || v.ASN != 64512 || v.RouterID != mustAddr("10.40.0.1") || v.IPv4 != mustAddr("10.40.0.1") || v.IPv6 != mustAddr("fd40::1") {
		t.Errorf("identity = %+v", v)
	}
	want := []agentapi.BGPFamily{
		{Family: "ipv4", Configured: 2, Established: 2, Received: 3, Sent: 4, Routes: 2, Announced: 2},
		{Family: "ipv6", Configured: 3, Established: 1, Received: 4, Sent: 1, Routes: 1, Announced: 1},
	}
	if !slices.Equal(v.Families, want) {
		t.Errorf("families =\n%+v\nwant\n%+v", v.Families, want)
	}
	for _, p := range v.Peers {
		if want := agentapi.Family(p.Address); p.Family != want {
			t.Errorf("peer %s: family %q, want %q", p.Address, p.Family, want)
		}
	}
	if len(v.Peers) != 4 || v.Peers[3].State != "Active" || v.Peers[0].Received != 1 {
		t.Errorf("peers = %+v", v.Peers)
	}
	var fams []string
	for _, r := range v.Routes {
		fams = append(fams, r.Dst.String()+" "+r.Family)
	}
	if w := []string{"10.244.2.0/24 ipv4", "10.244.3.0/24 ipv4", "fd10:244:2::/64 ipv6"}; !slices.Equal(fams, w) {
		t.Errorf("routes = %v, want %v", fams, w)
	}
	if len(v.Routes[1].Gateways) != 2 {
		t.Errorf("ECMP route lost a next hop: %+v", v.Routes[1])
	}
	if w := []netip.Prefix{mustPrefix("10.244.1.0/24"), mustPrefix("10.96.0.0/16"), mustPrefix("fd10:244:1::/64")}; !slices.Equal(v.Announced, w) {
		t.Errorf("announced = %v, want %v", v.Announced, w)
	}
	// The JSON keeps the fields of before, and adds the families.
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"routerID":"10.40.0.1"`, `"ipv6":"fd40::1"`, `"peers":[{"address":"10.40.0.2","family":"ipv4","asn":64512`,
		`{"dst":"fd10:244:2::/64","family":"ipv6","gateways":["fd40::2"]}`, `"families":[{"family":"ipv4","configured":2,"established":2`} {
		if !strings.Contains(string(data), s) {
			t.Errorf("JSON lacks %s:\n%s", s, data)
		}
	}
}

// TestBGPViewSingleFamily: an IPv6-only node sums up IPv6 alone; an IPv4
// node without sessions yet still has its family, with zeros.
func TestBGPViewSingleFamily(t *testing.T) {
	v6 := bgpView(bgp.Global{ASN: 64512, RouterID: mustAddr("172.31.9.9")}, bgp.NodeInfo{IPv6: mustAddr("fd40::1")},
		bgp.Desired{Peers: []bgp.Peer{{Address: mustAddr("fd40::2")}}},
		[]bgp.PeerStatus{{Address: mustAddr("fd40::2"), State: "Established", Received: 1}}, nil)
	if want := []agentapi.BGPFamily{{Family: "ipv6", Configured: 1, Established: 1, Received: 1}}; !slices.Equal(v6.Families, want) {
		t.Errorf("IPv6-only: families = %+v, want %+v", v6.Families, want)
	}
	if v6.IPv4.IsValid() {
		t.Errorf("IPv6-only: IPv4 = %s", v6.IPv4)
	}
	v4 := bgpView(bgp.Global{ASN: 64512}, bgp.NodeInfo{IPv4: mustAddr("10.40.0.1")}, bgp.Desired{}, nil, nil)
	if want := []agentapi.BGPFamily{{Family: "ipv4"}}; !slices.Equal(v4.Families, want) {
		t.Errorf("IPv4, alone: families = %+v, want %+v", v4.Families, want)
	}
	if v4.Peers == nil || v4.Routes == nil {
		t.Errorf("peers %#v, routes %#v: want empty lists, not null", v4.Peers, v4.Routes)
	}
}
