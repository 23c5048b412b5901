package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/internal/route"
)

// Routes of a table, as a dump shows them. Link 2 is the uplink, 3 a second
// uplink, 9 a pod's veth.
func connected(dst string, link int) TableRoute {
	return TableRoute{Table: unix.RT_TABLE_MAIN, Dst: netip.MustParsePrefix(dst), Type: unix.RTN_UNICAST,
		Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_LINK, LinkIndex: link}
}

func through(dst, gw string, link int) TableRoute {
	return TableRoute{Table: unix.RT_TABLE_MAIN, Dst: netip.MustParsePrefix(dst), Type: unix.RTN_UNICAST,
		Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_UNIVERSE, LinkIndex: link, Gw: netip.MustParseAddr(gw)}
}

func ofType(dst string, typ int) TableRoute {
	return TableRoute{Table: unix.RT_TABLE_MAIN, Dst: netip.MustParsePrefix(dst), Type: typ, Protocol: unix.RTPROT_BOOT}
}

func localAddr(a string) TableRoute {
	return TableRoute{Table: unix.RT_TABLE_LOCAL, Dst: netip.PrefixFrom(netip.MustParseAddr(a), netip.MustParseAddr(a).BitLen()),
		Type: unix.RTN_LOCAL, Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_HOST, LinkIndex: 2}
}

// tern marks r as tern's (protocol 96).
func tern(r TableRoute) TableRoute { r.Protocol = route.Protocol; return r }

// installed is a learned route of tern's, hops as "gw@link".
func installed(dst string, hops ...string) TableRoute {
	r := TableRoute{Table: unix.RT_TABLE_MAIN, Dst: netip.MustParsePrefix(dst), Type: unix.RTN_UNICAST, Protocol: route.Protocol}
	hs := parseHops(hops...)
	if len(hs) == 1 {
		r.Gw, r.LinkIndex = hs[0].Gw, hs[0].LinkIndex
	} else {
		r.MultiPath = hs
	}
	return r
}

func parseHops(ss ...string) []NextHop {
	var out []NextHop
	for _, s := range ss {
		gw, link, _ := strings.Cut(s, "@")
		var n int
		fmt.Sscan(link, &n)
		out = append(out, NextHop{Gw: netip.MustParseAddr(gw), LinkIndex: n})
	}
	return out
}

func want(dst string, gws ...string) LearnedRoute {
	r := LearnedRoute{Dst: netip.MustParsePrefix(dst)}
	for _, g := range gws {
		r.Gateways = append(r.Gateways, netip.MustParseAddr(g))
	}
	return r
}

// renderLearned writes a plan one line per change, refusals with their
// sentinel.
func renderLearned(p LearnedPlan) string {
	var lines []string
	hops := func(hs []NextHop) string {
		var s []string
		for _, h := range hs {
			s = append(s, h.String())
		}
		return strings.Join(s, " ")
	}
	for _, r := range p.Add {
		lines = append(lines, fmt.Sprintf("add %s %s", r.Dst, hops(r.Hops)))
	}
	for _, r := range p.Replace {
		lines = append(lines, fmt.Sprintf("replace %s %s", r.Dst, hops(r.Hops)))
	}
	for _, d := range p.Delete {
		lines = append(lines, fmt.Sprintf("delete %s", d))
	}
	for _, r := range p.Refused {
		why := "?"
		switch {
		case errors.Is(r.Err, ErrNoNextHop):
			why = "unreachable"
		case errors.Is(r.Err, ErrRouteInTheWay):
			why = "in the way"
		}
		lines = append(lines, fmt.Sprintf("refuse %s %s", r.Dst, why))
	}
	return strings.Join(lines, "\n")
}

// node is a node's table: two uplinks (10.210.0.1/30 on 2, 10.211.0.1/30 on
// 3), a default route through the first, its pod CIDR's blackhole, a pod.
var node = []TableRoute{
	localAddr("10.210.0.1"),
	localAddr("10.211.0.1"),
	{Table: unix.RT_TABLE_LOCAL, Dst: netip.MustParsePrefix("10.210.0.3/32"), Type: unix.RTN_BROADCAST, Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_LINK, LinkIndex: 2},
	connected("10.210.0.0/30", 2),
	connected("10.211.0.0/30", 3),
	through("0.0.0.0/0", "10.210.0.2", 2),
	tern(ofType("10.244.5.0/24", unix.RTN_BLACKHOLE)),
	tern(connected("10.244.5.7/32", 9)),
}

func table(extra ...TableRoute) []TableRoute {
	return append(append([]TableRoute{}, node...), extra...)
}

func TestPlanLearnedResolve(t *testing.T) {
	tests := []struct {
		name    string
		table   []TableRoute
		desired []LearnedRoute
		want    string
	}{
		{
			name:    "direct",
			table:   table(),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.211.0.2")},
			want:    "add 10.244.6.0/24 10.211.0.2@3",
		},
		{
			name:    "recursive one level: through the default route's gateway",
			table:   table(),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.0.6")},
			want:    "add 10.244.6.0/24 10.210.0.2@2",
		},
		{
			name:    "most specific wins over the default route",
			table:   table(through("10.99.0.0/16", "10.211.0.2", 3), through("10.99.0.0/24", "10.210.0.2", 2)),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.1.6"), want("10.244.7.0/24", "10.99.0.7")},
			want:    "add 10.244.6.0/24 10.211.0.2@3\nadd 10.244.7.0/24 10.210.0.2@2",
		},
		{
			name: "same prefix: lowest metric wins",
			table: table(
				func() TableRoute { r := through("10.99.0.0/16", "10.210.0.2", 2); r.Priority = 200; return r }(),
				func() TableRoute { r := through("10.99.0.0/16", "10.211.0.2", 3); r.Priority = 100; return r }()),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.1.6")},
			want:    "add 10.244.6.0/24 10.211.0.2@3",
		},
		{
			name:    "no route at all: refused",
			table:   []TableRoute{connected("10.211.0.0/30", 3)},
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.0.6")},
			want:    "refuse 10.244.6.0/24 unreachable",
		},
		{
			name:    "one next hop unreachable: the other carries it",
			table:   table(ofType("10.99.0.0/16", unix.RTN_UNREACHABLE)),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.0.6", "10.211.0.2")},
			want:    "add 10.244.6.0/24 10.211.0.2@3",
		},
		{
			name: "blackhole, unreachable, prohibit are no way there",
			table: table(ofType("10.97.0.0/16", unix.RTN_BLACKHOLE), ofType("10.98.0.0/16", unix.RTN_UNREACHABLE),
				ofType("10.99.0.0/16", unix.RTN_PROHIBIT)),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.97.0.1", "10.98.0.1", "10.99.0.1")},
			want:    "refuse 10.244.6.0/24 unreachable",
		},
		{
			name:    "a dead route is passed by",
			table:   table(func() TableRoute { r := through("10.99.0.0/16", "10.211.0.2", 3); r.Dead = true; return r }()),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.0.6")},
			want:    "add 10.244.6.0/24 10.210.0.2@2",
		},
		{
			name:    "a next hop in the node's own pod CIDR hits its blackhole",
			table:   table(),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.244.5.9")},
			want:    "refuse 10.244.6.0/24 unreachable",
		},
		{
			name:    "the node's own address or a broadcast address is no next hop",
			table:   table(),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.210.0.1", "10.210.0.3")},
			want:    "refuse 10.244.6.0/24 unreachable",
		},
		{
			name:    "ECMP, sorted",
			table:   table(),
			desired: []LearnedRoute{want("10.244.8.0/24", "10.211.0.2", "10.210.0.2")},
			want:    "add 10.244.8.0/24 10.210.0.2@2 10.211.0.2@3",
		},
		{
			name:    "ECMP: next hops that resolve to one gateway are one hop",
			table:   table(),
			desired: []LearnedRoute{want("10.244.8.0/24", "10.99.0.1", "10.210.0.2", "10.98.0.1", "10.210.0.2")},
			want:    "add 10.244.8.0/24 10.210.0.2@2",
		},
		{
			name:    "ECMP: a multipath route to the next hop gives each of its gateways",
			table:   table(TableRoute{Table: unix.RT_TABLE_MAIN, Dst: netip.MustParsePrefix("10.99.0.0/16"), Type: unix.RTN_UNICAST, MultiPath: parseHops("10.211.0.2@3", "10.210.0.2@2")}),
			desired: []LearnedRoute{want("10.244.8.0/24", "10.99.0.1")},
			want:    "add 10.244.8.0/24 10.210.0.2@2 10.211.0.2@3",
		},
		{
			name:    "two desired routes to one destination are merged",
			table:   table(),
			desired: []LearnedRoute{want("10.244.8.0/24", "10.211.0.2"), want("10.244.8.5/24", "10.210.0.2")},
			want:    "add 10.244.8.0/24 10.210.0.2@2 10.211.0.2@3",
		},
		{
			name: "tern's learned routes do not resolve next hops",
			// 10.244.6.9 is inside a learned prefix whose route goes through
			// the second uplink; it resolves through the default route.
			table:   table(installed("10.244.6.0/24", "10.211.0.2@3")),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.211.0.2"), want("10.244.7.0/24", "10.244.6.9")},
			want:    "add 10.244.7.0/24 10.210.0.2@2",
		},
		{
			name:    "IPv4 next hop of an IPv6 route: refused",
			table:   table(),
			desired: []LearnedRoute{want("fd10:244:6::/64", "10.211.0.2")},
			want:    "refuse fd10:244:6::/64 unreachable",
		},
		{
			name: "IPv6: direct, through a link-local default gateway, ECMP",
			table: []TableRoute{
				localAddr("fd10:210::1"),
				connected("fd10:210::/64", 2),
				connected("fe80::/64", 2),
				through("::/0", "fe80::1", 2),
			},
			desired: []LearnedRoute{want("fd10:244:6::/64", "fd10:210::2"), want("fd10:244:7::/64", "fd10:99::7", "fd10:210::2")},
			want:    "add fd10:244:6::/64 fd10:210::2@2\nadd fd10:244:7::/64 fd10:210::2@2 fe80::1@2",
		},
		{
			name:    "IPv6: a link-local next hop is on no known link: refused",
			table:   []TableRoute{connected("fe80::/64", 2), through("::/0", "fe80::1", 2)},
			desired: []LearnedRoute{want("fd10:244:6::/64", "fe80::2")},
			want:    "refuse fd10:244:6::/64 unreachable",
		},
		{
			name:    "IPv6: the node's own address is no next hop",
			table:   []TableRoute{localAddr("fd10:210::1"), connected("fd10:210::/64", 2)},
			desired: []LearnedRoute{want("fd10:244:6::/64", "fd10:210::1")},
			want:    "refuse fd10:244:6::/64 unreachable",
		},
		{
			name:    "IPv4-mapped next hop of an IPv4 route",
			table:   table(),
			desired: []LearnedRoute{want("10.244.6.0/24", "::ffff:10.211.0.2")},
			want:    "add 10.244.6.0/24 10.211.0.2@3",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanLearned(tc.desired, tc.table, false)
			if got := renderLearned(p); got != tc.want {
				t.Errorf("plan:\n%s\nwant:\n%s\nrefusals: %v", got, tc.want, p.Refused)
			}
		})
	}
}

func TestPlanLearnedDiff(t *testing.T) {
	tests := []struct {
		name    string
		table   []TableRoute
		desired []LearnedRoute
		sweep   bool
		want    string
	}{
		{
			name:    "unchanged: nothing to do",
			table:   table(installed("10.244.6.0/24", "10.211.0.2@3"), installed("10.244.8.0/24", "10.211.0.2@3", "10.210.0.2@2")),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.211.0.2"), want("10.244.8.0/24", "10.210.0.2", "10.211.0.2")},
			sweep:   true,
			want:    "",
		},
		{
			name:    "other next hops: replaced",
			table:   table(installed("10.244.6.0/24", "10.211.0.2@3"), installed("10.244.8.0/24", "10.211.0.2@3", "10.210.0.2@2")),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.210.0.2", "10.211.0.2"), want("10.244.8.0/24", "10.210.0.2")},
			want:    "replace 10.244.6.0/24 10.210.0.2@2 10.211.0.2@3\nreplace 10.244.8.0/24 10.210.0.2@2",
		},
		{
			name:    "without sweep, routes no longer desired stay",
			table:   table(installed("10.244.6.0/24", "10.211.0.2@3"), installed("10.244.9.0/24", "10.211.0.2@3")),
			desired: []LearnedRoute{want("10.244.7.0/24", "10.211.0.2")},
			want:    "add 10.244.7.0/24 10.211.0.2@3",
		},
		{
			name:    "with sweep, they go",
			table:   table(installed("10.244.9.0/24", "10.211.0.2@3"), installed("10.244.6.0/24", "10.211.0.2@3")),
			desired: []LearnedRoute{want("10.244.7.0/24", "10.211.0.2")},
			sweep:   true,
			want:    "add 10.244.7.0/24 10.211.0.2@3\ndelete 10.244.6.0/24\ndelete 10.244.9.0/24",
		},
		{
			name:    "a route that became unreachable goes with the sweep",
			table:   table(installed("10.244.6.0/24", "10.99.0.6@2"), ofType("10.99.0.0/16", unix.RTN_BLACKHOLE)),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.99.0.6")},
			sweep:   true,
			want:    "delete 10.244.6.0/24\nrefuse 10.244.6.0/24 unreachable",
		},
		{
			name:    "another owner's route in the way: refused, whatever its metric",
			table:   table(func() TableRoute { r := through("10.244.6.0/24", "10.210.0.2", 2); r.Priority = 1000; return r }()),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.211.0.2")},
			sweep:   true,
			want:    "refuse 10.244.6.0/24 in the way",
		},
		{
			name:    "tern's blackhole in the way: refused",
			table:   table(),
			desired: []LearnedRoute{want("10.244.5.0/24", "10.211.0.2")},
			want:    "refuse 10.244.5.0/24 in the way",
		},
		{
			name: "a foreign route beside tern's to the same destination: tern's goes with the sweep",
			table: table(installed("10.244.6.0/24", "10.211.0.2@3"),
				func() TableRoute { r := connected("10.244.6.0/24", 3); r.Priority = 50; return r }()),
			desired: []LearnedRoute{want("10.244.6.0/24", "10.211.0.2")},
			sweep:   true,
			want:    "delete 10.244.6.0/24\nrefuse 10.244.6.0/24 in the way",
		},
		{
			name:    "nothing desired, sweep: everything of tern's learned goes, nothing else",
			table:   table(installed("10.244.6.0/24", "10.211.0.2@3"), installed("fd10:244:6::/64", "fd10:210::2@2")),
			desired: nil,
			sweep:   true,
			want:    "delete 10.244.6.0/24\ndelete fd10:244:6::/64",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanLearned(tc.desired, tc.table, tc.sweep)
			if got := renderLearned(p); got != tc.want {
				t.Errorf("plan:\n%s\nwant:\n%s\nrefusals: %v", got, tc.want, p.Refused)
			}
		})
	}
}

// The refusal says why each next hop failed.
func TestPlanLearnedRefusalSaysWhy(t *testing.T) {
	p := PlanLearned([]LearnedRoute{want("fd10:244:6::/64", "fe80::2", "fd10:99::1")}, []TableRoute{connected("fe80::/64", 2)}, false)
	if len(p.Refused) != 1 {
		t.Fatalf("plan %+v", p)
	}
	msg := p.Refused[0].Err.Error()
	for _, s := range []string{"fd10:244:6::/64", "fe80::2: link-local", "fd10:99::1: no route"} {
		if !strings.Contains(msg, s) {
			t.Errorf("refusal %q does not say %q", msg, s)
		}
	}
}

func TestTableRoutes(t *testing.T) {
	ipnet := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	got := tableRoutes(netlink.FAMILY_V4, []netlink.Route{
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_DHCP, LinkIndex: 2, Gw: net.ParseIP("10.210.0.2")}, // default, Dst nil
		{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Dst: ipnet("10.210.0.1/32"), LinkIndex: 2, Scope: netlink.SCOPE_HOST},
		{Table: 100, Type: unix.RTN_UNICAST, Dst: ipnet("10.0.0.0/8"), LinkIndex: 2},
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Dst: ipnet("10.99.0.0/16"), MultiPath: []*netlink.NexthopInfo{
			{LinkIndex: 2, Gw: net.ParseIP("10.210.0.2"), Flags: unix.RTNH_F_DEAD}, {LinkIndex: 3, Gw: net.ParseIP("10.211.0.2")}}},
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Dst: ipnet("10.98.0.0/16"), LinkIndex: 2, Gw: net.ParseIP("10.210.0.2"), Flags: unix.RTNH_F_DEAD},
		{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Protocol: route.Protocol, Dst: ipnet("10.244.8.0/24"), MultiPath: []*netlink.NexthopInfo{
			{LinkIndex: 3, Gw: net.ParseIP("10.211.0.2"), Flags: unix.RTNH_F_DEAD}, {LinkIndex: 2, Gw: net.ParseIP("10.210.0.2")}}},
	})
	var lines []string
	for _, r := range got {
		lines = append(lines, fmt.Sprintf("t%d %s type %d proto %d gw %s link %d mp %v dead %t", r.Table, r.Dst, r.Type, r.Protocol, r.Gw, r.LinkIndex, r.MultiPath, r.Dead))
	}
	want := strings.Join([]string{
		"t254 0.0.0.0/0 type 1 proto 16 gw 10.210.0.2 link 2 mp [] dead false",
		"t255 10.210.0.1/32 type 2 proto 0 gw invalid IP link 2 mp [] dead false",
		"t254 10.99.0.0/16 type 1 proto 0 gw invalid IP link 0 mp [10.211.0.2@3] dead false",
		"t254 10.98.0.0/16 type 1 proto 0 gw 10.210.0.2 link 2 mp [] dead true",
		"t254 10.244.8.0/24 type 1 proto 96 gw invalid IP link 0 mp [10.211.0.2@3 10.210.0.2@2] dead false",
	}, "\n")
	if g := strings.Join(lines, "\n"); g != want {
		t.Errorf("got:\n%s\nwant:\n%s", g, want)
	}
}

// BenchmarkPlanLearned plans 1,000 learned routes of two next hops each, on
// a table of 50 routes, nothing installed yet: the resolution and the diff,
// as every SyncLearned pass does them. The next hops are 1,000 distinct
// addresses (no two routes share one, the resolver's worst case).
func BenchmarkPlanLearned(b *testing.B) {
	var tbl []TableRoute
	for i := range 48 {
		tbl = append(tbl, connected(fmt.Sprintf("10.%d.0.0/24", 100+i), 2+i%4))
	}
	tbl = append(tbl, through("0.0.0.0/0", "10.100.0.1", 2), tern(ofType("10.244.0.0/24", unix.RTN_BLACKHOLE)))
	var desired []LearnedRoute
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, byte(100 + i%48), 0, byte(2 + i/48)})
		c := netip.AddrFrom4([4]byte{10, byte(100 + (i+1)%48), 0, byte(100 + i/48)})
		desired = append(desired, LearnedRoute{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i/250), byte(i % 250)}), 32), Gateways: []netip.Addr{a, c}})
	}
	b.ReportAllocs()
	for b.Loop() {
		p := PlanLearned(desired, tbl, true)
		if len(p.Add) != 1000 {
			b.Fatalf("%d adds, %d refused: %v", len(p.Add), len(p.Refused), p.Refused)
		}
	}
}
