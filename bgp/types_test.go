package bgp

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestDiffPeers(t *testing.T) {
	a := Peer{Address: addr("10.0.0.1"), ASN: 65001, Kind: "peer"}
	b := Peer{Address: addr("10.0.0.2"), ASN: 64512, Kind: "mesh", Passive: true}
	b2 := b
	b2.HoldTime = 9 * time.Second
	c := Peer{Address: addr("10.0.0.3"), ASN: 64512, Kind: "mesh"}
	have := map[netip.Addr]Peer{a.Address: a, b.Address: b}
	want := map[netip.Addr]Peer{b.Address: b2, c.Address: c}
	add, del, change := diffPeers(have, want)
	if len(add) != 1 || add[0] != c || len(del) != 1 || del[0] != a || len(change) != 1 || change[0] != b2 {
		t.Fatalf("add %v del %v change %v", add, del, change)
	}
	add, del, change = diffPeers(want, want)
	if len(add)+len(del)+len(change) != 0 {
		t.Fatalf("no change expected: %v %v %v", add, del, change)
	}
}

func TestDiffAnnouncements(t *testing.T) {
	p1 := Announcement{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHop: addr("10.0.0.1")}
	p2 := Announcement{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: addr("10.0.0.1")}
	p1b := p1
	p1b.NextHop = addr("10.0.0.9")
	have := map[netip.Prefix]Announcement{p1.Prefix: p1, p2.Prefix: p2}
	add, del := diffAnnouncements(have, map[netip.Prefix]Announcement{p1.Prefix: p1b})
	// The changed one is announced again (replacing), never withdrawn after.
	if len(add) != 1 || add[0].NextHop != p1b.NextHop || len(del) != 1 || del[0].Prefix != p2.Prefix {
		t.Fatalf("add %v del %v", add, del)
	}
}

func TestPeerValidate(t *testing.T) {
	for _, c := range []struct {
		p  Peer
		ok bool
	}{
		{Peer{Address: addr("10.0.0.1"), ASN: 1}, true},
		{Peer{ASN: 1}, false},
		{Peer{Address: addr("10.0.0.1")}, false},
		{Peer{Address: addr("10.0.0.1"), ASN: 1, HoldTime: 2 * time.Second}, false},
		{Peer{Address: addr("10.0.0.1"), ASN: 1, RRClient: true}, false},
		{Peer{Address: addr("10.0.0.1"), ASN: 1, RRClient: true, ClusterID: addr("10.0.0.9")}, true},
	} {
		if err := c.p.Validate(); (err == nil) != c.ok {
			t.Errorf("%+v: %v", c.p, err)
		}
	}
}

func path(neighbor, nh string, best bool, asPath ...uint32) *api.Path {
	nhA, _ := anypb.New(&api.NextHopAttribute{NextHop: nh})
	asA, _ := anypb.New(&api.AsPathAttribute{Segments: []*api.AsSegment{{Type: 2, Numbers: asPath}}})
	return &api.Path{NeighborIp: neighbor, Best: best, Pattrs: []*anypb.Any{nhA, asA}}
}

func TestBestPaths(t *testing.T) {
	cases := []struct {
		name  string
		paths []*api.Path
		want  []string
		ok    bool
	}{
		{"one path", []*api.Path{path("10.0.0.2", "10.0.0.2", true, 65001)}, []string{"10.0.0.2"}, true},
		{"equal paths: ECMP", []*api.Path{path("10.0.0.2", "10.0.0.2", true, 65001), path("10.1.0.2", "10.1.0.2", false, 65002)},
			[]string{"10.0.0.2", "10.1.0.2"}, true},
		{"longer AS path: not multipath", []*api.Path{path("10.0.0.2", "10.0.0.2", true, 65001), path("10.1.0.2", "10.1.0.2", false, 65002, 65003)},
			[]string{"10.0.0.2"}, true},
		{"our own announcement is best: nothing to install", []*api.Path{path("<nil>", "10.9.9.9", true), path("10.0.0.2", "10.0.0.2", false, 65001)}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, ok := bestPaths(&api.Destination{Prefix: "10.244.3.0/24", Paths: c.paths})
			var got []string
			for _, nh := range r.NextHops {
				got = append(got, nh.String())
			}
			if ok != c.ok || !slices.Equal(got, c.want) {
				t.Fatalf("got %v %v, want %v %v", got, ok, c.want, c.ok)
			}
		})
	}
}
