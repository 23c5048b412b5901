package dataplane

// The learned-route driver: one route dump per family, PlanLearned, and the
// netlink writes of the plan.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/internal/route"
)

// SyncStats says what a SyncLearned changed.
type SyncStats struct{ Added, Replaced, Deleted, Refused int }

// SyncLearned makes tern's gateway routes in the main table desired: it dumps
// the main and local tables once per family, plans with PlanLearned (next
// hops resolved on that dump; the routes of protocol 96 with a gateway read
// back as tern's learned routes, not the pods' /32 routes, not the
// blackholes), and adds, replaces and, when sweep is set, deletes only those.
// Refused destinations (no reachable next hop; a route that is not tern's in
// the way, never replaced) are counted and reported in the error.
func SyncLearned(desired []LearnedRoute, sweep bool) (SyncStats, error) {
	var st SyncStats
	table, err := readTables()
	if err != nil {
		return st, err
	}
	plan := PlanLearned(desired, table, sweep)
	return applyLearned(plan)
}

// applyLearned writes plan. A route added by someone else since the dump
// makes its add fail with EEXIST: refused, as the plan would have.
func applyLearned(plan LearnedPlan) (SyncStats, error) {
	var st SyncStats
	var errs []error
	for _, r := range plan.Refused {
		errs = append(errs, r.Err)
		st.Refused++
	}
	for _, r := range plan.Replace {
		if err := netlink.RouteReplace(learnedNetlinkRoute(r)); err != nil {
			errs = append(errs, fmt.Errorf("replace route %s: %w", r.Dst, err))
			continue
		}
		st.Replaced++
	}
	for _, r := range plan.Add {
		if err := netlink.RouteAdd(learnedNetlinkRoute(r)); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("%w: %w", ErrRouteInTheWay, err)
				st.Refused++
			}
			errs = append(errs, fmt.Errorf("add route %s: %w", r.Dst, err))
			continue
		}
		st.Added++
	}
	for _, dst := range plan.Delete {
		del := &netlink.Route{Dst: route.IPNet(dst), Protocol: route.Protocol, Table: unix.RT_TABLE_MAIN}
		if err := netlink.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", dst, err))
			continue
		}
		st.Deleted++
	}
	return st, errors.Join(errs...)
}

func learnedNetlinkRoute(r PlannedRoute) *netlink.Route {
	nr := &netlink.Route{Dst: route.IPNet(r.Dst), Protocol: route.Protocol, Table: unix.RT_TABLE_MAIN}
	if len(r.Hops) == 1 {
		nr.LinkIndex, nr.Gw = r.Hops[0].LinkIndex, r.Hops[0].Gw.AsSlice()
		return nr
	}
	for _, h := range r.Hops {
		nr.MultiPath = append(nr.MultiPath, &netlink.NexthopInfo{LinkIndex: h.LinkIndex, Gw: h.Gw.AsSlice()})
	}
	return nr
}

// readTables dumps the routes of every table, once per family, and keeps
// those of the main and local tables.
func readTables() ([]TableRoute, error) {
	var out []TableRoute
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		out = append(out, tableRoutes(fam, rs)...)
	}
	return out, nil
}

// tableRoutes converts a dump of family fam: routes of the main and local
// tables only; a route without a destination is the family's default route.
// Next hops the kernel marks dead are left out of other owners' multipath
// routes, and a route all of whose next hops are dead is marked Dead (a
// lookup skips them); tern's are kept as they are, to be compared.
func tableRoutes(fam int, rs []netlink.Route) []TableRoute {
	var out []TableRoute
	for _, r := range rs {
		if r.Table != unix.RT_TABLE_MAIN && r.Table != unix.RT_TABLE_LOCAL {
			continue
		}
		dst, ok := route.Prefix(r.Dst)
		if !ok {
			if r.Dst != nil {
				continue
			}
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if fam == netlink.FAMILY_V6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		}
		t := TableRoute{
			Table:     r.Table,
			Dst:       dst.Masked(),
			Type:      r.Type,
			Protocol:  int(r.Protocol),
			Scope:     int(r.Scope),
			Priority:  r.Priority,
			LinkIndex: r.LinkIndex,
			Gw:        gatewayOf(r.Gw, r.Via),
		}
		ours := t.Protocol == route.Protocol
		for _, h := range r.MultiPath {
			if h.Flags&unix.RTNH_F_DEAD != 0 && !ours {
				continue
			}
			t.MultiPath = append(t.MultiPath, NextHop{Gw: gatewayOf(h.Gw, h.Via), LinkIndex: h.LinkIndex})
		}
		t.Dead = !ours && ((len(r.MultiPath) == 0 && r.Flags&unix.RTNH_F_DEAD != 0) || (len(r.MultiPath) > 0 && len(t.MultiPath) == 0))
		out = append(out, t)
	}
	return out
}

// gatewayOf is a route's gateway: RTA_GATEWAY, or RTA_VIA (a gateway of the
// other family).
func gatewayOf(gw net.IP, via netlink.Destination) netip.Addr {
	if a, ok := netip.AddrFromSlice(gw); ok {
		return a.Unmap()
	}
	if v, ok := via.(*netlink.Via); ok && v != nil {
		if a, ok := netip.AddrFromSlice(v.Addr); ok {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}
