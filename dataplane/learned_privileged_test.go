package dataplane

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newRoutedNS is a namespace of the test's own with two uplinks (veth pairs
// with both ends in it: routes only, no traffic): up0 10.210.0.1/30 and fd10:210::1/64,
// up1 10.211.0.1/30 and fd10:211::1/64, default routes through up0's
// neighbours, and a blackhole route to 10.98.0.0/16.
func newRoutedNS(t *testing.T) *testNS {
	n := newTestNS(t, Backend{})
	for _, c := range [][]string{
		{"ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0peer"},
		{"ip", "link", "add", "up1", "type", "veth", "peer", "name", "up1peer"},
		{"ip", "link", "set", "up0peer", "up"},
		{"ip", "link", "set", "up1peer", "up"},
		{"ip", "addr", "add", "10.210.0.1/30", "dev", "up0"},
		{"ip", "addr", "add", "10.211.0.1/30", "dev", "up1"},
		{"ip", "addr", "add", "fd10:210::1/64", "dev", "up0", "nodad"},
		{"ip", "addr", "add", "fd10:211::1/64", "dev", "up1", "nodad"},
		{"ip", "link", "set", "up0", "up"},
		{"ip", "link", "set", "up1", "up"},
		{"ip", "route", "add", "default", "via", "10.210.0.2", "proto", "static"},
		{"ip", "-6", "route", "add", "default", "via", "fd10:210::2", "proto", "static"},
		{"ip", "route", "add", "blackhole", "10.98.0.0/16", "proto", "static"},
	} {
		n.sh(c...)
	}
	return n
}

func (n *testNS) syncLearned(desired []LearnedRoute, sweep bool) (st SyncStats, err error) {
	n.t.Helper()
	if e := n.ns.Do(func(ns.NetNS) error { st, err = SyncLearned(desired, sweep); return nil }); e != nil {
		n.t.Fatal(e)
	}
	return st, err
}

// learnedRoutes is `ip route show proto 96` of both families, without the
// blackholes: the routes SyncLearned owns.
func (n *testNS) learnedRoutes() string {
	n.t.Helper()
	var keep []string
	for _, fam := range []string{"-4", "-6"} {
		// One line a route (-o), its multipath next hops after "\".
		for _, l := range strings.Split(strings.TrimSpace(n.sh("ip", "-o", fam, "route", "show", "proto", "96")), "\n") {
			if l != "" && !strings.HasPrefix(l, "blackhole") {
				keep = append(keep, strings.Join(strings.Fields(strings.ReplaceAll(l, "\\", " ")), " "))
			}
		}
	}
	return strings.Join(keep, "\n")
}

// SyncLearned in a namespace: adds, leaves alone what is already right,
// replaces, refuses, and deletes only with sweep and only its own routes.
func TestSyncLearnedPrivileged(t *testing.T) {
	n := newRoutedNS(t)
	// Not tern's learned routes: another owner's, and tern's blackhole.
	n.sh("ip", "route", "add", "10.244.10.0/24", "via", "10.211.0.2", "proto", "static", "metric", "500")
	n.sh("ip", "route", "add", "blackhole", "10.244.5.0/24", "proto", "96")

	desired := []LearnedRoute{
		want("10.244.6.0/24", "10.211.0.2"),               // direct
		want("10.244.7.0/24", "10.99.0.7"),                // through the default route
		want("10.244.8.0/24", "10.211.0.2", "10.210.0.2"), // ECMP
		want("10.244.9.0/24", "10.98.0.1"),                // into a blackhole: refused
		want("10.244.10.0/24", "10.211.0.2"),              // another owner's route: refused
		want("fd10:244:6::/64", "fd10:211::2"),
		want("fd10:244:8::/64", "fd10:211::2", "fd10:210::2"),
		want("fd10:244:9::/64", "fe80::2"), // link-local: refused
	}
	st, err := n.syncLearned(desired, false)
	if st != (SyncStats{Added: 5, Refused: 3}) {
		t.Errorf("first sync: %+v, %v", st, err)
	}
	if !errors.Is(err, ErrNoNextHop) || !errors.Is(err, ErrRouteInTheWay) {
		t.Errorf("first sync's error does not report both refusals: %v", err)
	}
	wantRoutes := strings.Join([]string{
		"10.244.6.0/24 via 10.211.0.2 dev up1",
		"10.244.7.0/24 via 10.210.0.2 dev up0",
		"10.244.8.0/24 nexthop via 10.210.0.2 dev up0 weight 1 nexthop via 10.211.0.2 dev up1 weight 1",
		"fd10:244:6::/64 via fd10:211::2 dev up1 metric 1024 pref medium",
		"fd10:244:8::/64 metric 1024 pref medium nexthop via fd10:210::2 dev up0 weight 1 nexthop via fd10:211::2 dev up1 weight 1",
	}, "\n")
	if got := n.learnedRoutes(); got != wantRoutes {
		t.Errorf("routes:\n%s\nwant:\n%s", got, wantRoutes)
	}
	if out := n.sh("ip", "route", "show", "10.244.10.0/24"); !strings.Contains(out, "via 10.211.0.2 dev up1 proto static metric 500") {
		t.Errorf("the other owner's route changed: %q", out)
	}

	// Read back, the kernel's routes are what was planned: nothing to do.
	if st, _ := n.syncLearned(desired, true); st != (SyncStats{Refused: 3}) {
		t.Errorf("second sync: %+v", st)
	}

	// Other next hops: replaced, in place.
	desired[0] = want("10.244.6.0/24", "10.210.0.2", "10.211.0.2")
	desired[6] = want("fd10:244:8::/64", "fd10:211::2")
	if st, err := n.syncLearned(desired, false); st != (SyncStats{Replaced: 2, Refused: 3}) {
		t.Errorf("replacing sync: %+v, %v", st, err)
	}
	if out := n.sh("ip", "-6", "route", "show", "fd10:244:8::/64"); !strings.Contains(out, "via fd10:211::2 dev up1") || strings.Contains(out, "nexthop") {
		t.Errorf("fd10:244:8::/64 not replaced: %q", out)
	}

	// Without sweep, routes no longer desired stay; with sweep they go, and
	// only they.
	if st, _ := n.syncLearned(desired[:1], false); st.Deleted != 0 {
		t.Errorf("sync without sweep deleted: %+v", st)
	}
	if st, _ := n.syncLearned(desired[:1], true); st != (SyncStats{Deleted: 4}) {
		t.Errorf("sweeping sync: %+v", st)
	}
	if got := n.learnedRoutes(); !strings.HasPrefix(got, "10.244.6.0/24") || strings.Count(got, "\n") != 0 {
		t.Errorf("after the sweep:\n%s", got)
	}
	if out := n.sh("ip", "route", "show", "10.244.5.0/24"); !strings.Contains(out, "blackhole") {
		t.Errorf("tern's blackhole went with the sweep: %q", out)
	}
	if out := n.sh("ip", "route", "show", "10.244.10.0/24"); !strings.Contains(out, "proto static") {
		t.Errorf("the other owner's route went with the sweep: %q", out)
	}
	if st, err := n.syncLearned(nil, true); st != (SyncStats{Deleted: 1}) || err != nil || n.learnedRoutes() != "" {
		t.Errorf("sweeping everything: %+v, %v, left %q", st, err, n.learnedRoutes())
	}
}

// The pure lookup agrees with the kernel's: for each next hop, RouteGet's
// answer and PlanLearned's resolution, on the namespace's own dump, give the
// same gateway and link, or both refuse. (Link-local IPv6 next hops are left
// out: the plan refuses them on purpose.)
func TestResolveAgreesWithKernelPrivileged(t *testing.T) {
	n := newRoutedNS(t)
	for _, c := range [][]string{
		{"ip", "route", "add", "10.99.0.0/16", "via", "10.211.0.2", "proto", "static"},
		{"ip", "route", "add", "10.99.1.0/24", "via", "10.210.0.2", "proto", "static"},
		{"ip", "route", "add", "10.99.2.0/24", "via", "10.210.0.2", "proto", "static", "metric", "200"},
		{"ip", "route", "add", "10.99.2.0/24", "via", "10.211.0.2", "proto", "static", "metric", "100"},
		{"ip", "route", "add", "unreachable", "10.97.0.0/16", "proto", "static"},
		{"ip", "route", "add", "prohibit", "10.96.0.0/16", "proto", "static"},
		{"ip", "-6", "route", "add", "fd10:99::/48", "via", "fd10:211::2", "proto", "static"},
		{"ip", "-6", "route", "add", "blackhole", "fd10:98::/48", "proto", "static"},
	} {
		n.sh(c...)
	}
	n.compareResolution()
	// A link down: the routes through it are dead (IPv4) or gone (IPv6).
	n.sh("ip", "link", "set", "up1", "down")
	n.compareResolution()
}

func (n *testNS) compareResolution() {
	t := n.t
	t.Helper()
	for _, s := range []string{
		"10.210.0.2", "10.211.0.2", "10.99.0.9", "10.99.1.9", "10.99.2.9", "10.1.2.3",
		"10.98.0.1", "10.97.0.1", "10.96.0.1", "10.210.0.1", "10.210.0.3", "127.0.0.1",
		"fd10:210::2", "fd10:211::9", "fd10:99::9", "fd10:98::9", "2001:db8::1", "fd10:210::1",
	} {
		gw := netip.MustParseAddr(s)
		dst := netip.MustParsePrefix("10.244.6.0/24")
		if gw.Is6() {
			dst = netip.MustParsePrefix("fd10:244:6::/64")
		}
		var kernel, planned string
		_ = n.ns.Do(func(ns.NetNS) error {
			kernel = "refused"
			if rs, err := netlink.RouteGet(gw.AsSlice()); err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_UNICAST {
				h := NextHop{Gw: gw, LinkIndex: rs[0].LinkIndex}
				if rs[0].Gw != nil {
					h.Gw = gatewayOf(rs[0].Gw, nil)
				}
				kernel = h.String()
			}
			table, err := readTables()
			if err != nil {
				t.Fatal(err)
			}
			p := PlanLearned([]LearnedRoute{{Dst: dst, Gateways: []netip.Addr{gw}}}, table, false)
			planned = "refused"
			if len(p.Add) == 1 {
				planned = p.Add[0].Hops[0].String()
			}
			return nil
		})
		t.Logf("next hop %s: kernel %s, plan %s", gw, kernel, planned)
		if kernel != planned {
			t.Errorf("next hop %s: kernel %s, plan %s", gw, kernel, planned)
		}
	}
}
