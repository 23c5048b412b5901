package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LearnedRoute is a route to another node's prefix through one or more next
// hops (several: ECMP), as BGP learned it.
type LearnedRoute struct {
	Dst      netip.Prefix
	Gateways []netip.Addr
}

// FilterImport keeps the learned routes that lie inside the allowed ranges
// (the cluster's pod and service ranges) and do not cover one of the node's
// own pod CIDRs, and returns the others as dropped. Pure.
func FilterImport(routes []LearnedRoute, allowed, local []netip.Prefix) (keep []LearnedRoute, dropped []netip.Prefix) {
	for _, r := range routes {
		ok := false
		for _, a := range allowed {
			ok = ok || (a.Bits() <= r.Dst.Bits() && a.Contains(r.Dst.Addr()))
		}
		for _, l := range local {
			ok = ok && !r.Dst.Overlaps(l)
		}
		if ok && len(r.Gateways) > 0 {
			keep = append(keep, r)
		} else {
			dropped = append(dropped, r.Dst)
		}
	}
	return keep, dropped
}

// SyncStats says what a SyncLearned changed.
type SyncStats struct{ Added, Replaced, Deleted, Refused int }

// SyncLearned makes tern's gateway routes in the main table desired: it reads
// back the routes of protocol 96 that have a gateway (not the pods' /32
// routes, not the blackholes), adds, replaces and, when sweep is set, deletes
// only those. (Without sweep, routes kept from before a restart stay until
// the peers have sent theirs again: graceful restart.) A route of another
// protocol to the same destination is never replaced: that destination is
// refused and reported.
func SyncLearned(desired []LearnedRoute, sweep bool) (SyncStats, error) {
	var st SyncStats
	installed, err := installedGatewayRoutes()
	if err != nil {
		return st, err
	}
	var errs []error
	want := map[netip.Prefix]bool{}
	for _, r := range desired {
		nr, err := kernelRoute(r)
		if err != nil {
			// No next hop reachable: the prefix is not routed (an old route
			// to it goes below).
			errs = append(errs, err)
			st.Refused++
			continue
		}
		want[r.Dst] = true
		have, ok := installed[r.Dst]
		switch {
		case ok && slices.Equal(have, nextHopsOf(nr)):
			continue
		case ok:
			if err := netlink.RouteReplace(nr); err != nil {
				errs = append(errs, fmt.Errorf("replace route %s: %w", r.Dst, err))
				continue
			}
			st.Replaced++
		default:
			if err := netlink.RouteAdd(nr); err != nil {
				if errors.Is(err, unix.EEXIST) {
					err = fmt.Errorf("a route to %s that is not tern's is in the way; left alone", r.Dst)
					st.Refused++
				}
				errs = append(errs, fmt.Errorf("add route %s: %w", r.Dst, err))
				continue
			}
			st.Added++
		}
	}
	for dst := range installed {
		if want[dst] || !sweep {
			continue
		}
		del := &netlink.Route{Dst: IPNet(dst), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if err := netlink.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", dst, err))
			continue
		}
		st.Deleted++
	}
	return st, errors.Join(errs...)
}

// kernelRoute builds the route for r, each next hop resolved to a gateway on
// a link: a next hop that is not directly connected is reached through the
// route to it.
func kernelRoute(r LearnedRoute) (*netlink.Route, error) {
	nr := &netlink.Route{Dst: IPNet(r.Dst), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	var hops []*netlink.NexthopInfo
	var unreachable []string
	for _, gw := range r.Gateways {
		via, err := netlink.RouteGet(gw.AsSlice())
		if err != nil || len(via) == 0 || via[0].Type != unix.RTN_UNICAST {
			unreachable = append(unreachable, gw.String())
			continue // the other next hops still carry it
		}
		hop := &netlink.NexthopInfo{LinkIndex: via[0].LinkIndex, Gw: gw.AsSlice()}
		if via[0].Gw != nil {
			hop.Gw = via[0].Gw // one level of recursion: the gateway to the next hop
		}
		if !slices.ContainsFunc(hops, func(h *netlink.NexthopInfo) bool { return h.Gw.Equal(hop.Gw) && h.LinkIndex == hop.LinkIndex }) {
			hops = append(hops, hop)
		}
	}
	if len(hops) == 0 {
		return nil, fmt.Errorf("route %s: no next hop is reachable (%s)", r.Dst, strings.Join(unreachable, ", "))
	}
	if len(hops) == 1 {
		nr.LinkIndex, nr.Gw = hops[0].LinkIndex, hops[0].Gw
	} else {
		nr.MultiPath = hops
	}
	return nr, nil
}

// installedGatewayRoutes returns tern's routes with a gateway, by destination,
// with their sorted next hops.
func installedGatewayRoutes() (map[netip.Prefix][]string, error) {
	out := map[netip.Prefix][]string{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst == nil || r.Type != unix.RTN_UNICAST || (r.Gw == nil && len(r.MultiPath) == 0) {
				continue
			}
			p, ok := PrefixOf(r.Dst)
			if !ok {
				continue
			}
			out[p] = nextHopsOf(&r)
		}
	}
	return out, nil
}

func nextHopsOf(r *netlink.Route) []string {
	var out []string
	if r.Gw != nil {
		out = append(out, fmt.Sprintf("%s@%d", r.Gw, r.LinkIndex))
	}
	for _, h := range r.MultiPath {
		out = append(out, fmt.Sprintf("%s@%d", h.Gw, h.LinkIndex))
	}
	slices.Sort(out)
	return out
}

// IPNet is p as netlink takes it.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
