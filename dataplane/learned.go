package dataplane

// Learned routes, planned: which routes to other nodes' prefixes the main
// table should hold, each next hop resolved to a gateway on a link, and what
// to add, replace and delete to get there. Pure: the driver (learned_sync.go)
// reads the routing tables once and applies the plan.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/internal/route"
)

// LearnedRoute is a route to another node's prefix through one or more next
// hops (several: ECMP), as BGP learned it.
type LearnedRoute struct {
	Dst      netip.Prefix
	Gateways []netip.Addr
}

// FilterImport keeps the learned routes that lie inside the allowed ranges
// (the cluster's pod ranges: never a Service range, which every node serves
// itself) and do not cover one of the node's own pod CIDRs, and returns the
// others as dropped. Pure.
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

// TableRoute is a route of the node's main or local routing table, as one
// route dump shows it. Type, Scope and Table take the kernel's numbers
// (unix.RTN_*, unix.RT_SCOPE_*, unix.RT_TABLE_*).
type TableRoute struct {
	Table     int
	Dst       netip.Prefix // a default route is 0.0.0.0/0 or ::/0
	Type      int
	Protocol  int
	Scope     int
	Priority  int // the metric
	LinkIndex int
	Gw        netip.Addr // invalid when the route has none
	// MultiPath holds the next hops of a multipath route (then Gw and
	// LinkIndex are unset). Next hops the kernel marks dead are left out,
	// except in tern's own routes, which are compared as they are.
	MultiPath []NextHop
	// Dead: the kernel marks every next hop of the route dead (its link is
	// down); a lookup passes it by.
	Dead bool
}

// NextHop is a gateway on a link; for a next hop on a connected link the
// gateway is the next hop itself.
type NextHop struct {
	Gw        netip.Addr
	LinkIndex int
}

func (h NextHop) String() string { return fmt.Sprintf("%s@%d", h.Gw, h.LinkIndex) }

// hops is every next hop of r, sorted.
func (r TableRoute) hops() []NextHop {
	out := slices.Clone(r.MultiPath)
	if r.Gw.IsValid() {
		out = append(out, NextHop{Gw: r.Gw, LinkIndex: r.LinkIndex})
	}
	slices.SortFunc(out, compareHop)
	return out
}

// isLearned says whether r is one of SyncLearned's routes: protocol 96 in
// the main table, unicast, through a gateway. tern's other routes (the pod
// CIDR's blackhole, the pods' /32 routes) are not.
func (r TableRoute) isLearned() bool {
	return r.Table == unix.RT_TABLE_MAIN && r.Protocol == route.Protocol && r.Type == unix.RTN_UNICAST &&
		(r.Gw.IsValid() || len(r.MultiPath) > 0)
}

// PlannedRoute is a learned route as the kernel gets it: its next hops
// resolved, deduplicated and sorted.
type PlannedRoute struct {
	Dst  netip.Prefix
	Hops []NextHop
}

// Refusal is a learned destination that is not routed, and why.
type Refusal struct {
	Dst netip.Prefix
	Err error
}

// Sentinel errors of refusals.
var (
	// ErrNoNextHop: none of the route's next hops is reachable.
	ErrNoNextHop = errors.New("no next hop is reachable")
	// ErrRouteInTheWay: a route to the same destination that is not one of
	// tern's learned routes is in the main table; it is left alone.
	ErrRouteInTheWay = errors.New("a route that is not tern's is in the way; left alone")
)

// LearnedPlan is what SyncLearned writes: routes to add (no learned route of
// tern's to the destination yet), to replace (one with other next hops), to
// delete (tern's, no longer desired; only with sweep), and the destinations
// refused. Each list is sorted by destination.
type LearnedPlan struct {
	Add, Replace []PlannedRoute
	Delete       []netip.Prefix
	Refused      []Refusal
}

// PlanLearned computes the learned routes the main table should hold and the
// difference to what it holds. table is one dump of the main and local
// tables; the learned routes installed are read from it (isLearned), as are
// the routes that resolve next hops and the routes in the way.
//
// Each next hop is resolved the way the kernel would look it up, through
// the most specific route to it (see resolveHop); a route whose next hops
// all fail is refused, as is a destination to which the main table holds a
// route that is not a learned route of tern's (another owner's, or tern's
// blackhole or pod route): that one is never replaced. Refused and no longer
// desired destinations lose tern's route only when sweep is set (without
// sweep, routes kept from before a restart stay until the peers have sent
// theirs again: graceful restart). Several desired routes to one destination
// are merged. No I/O.
func PlanLearned(desired []LearnedRoute, table []TableRoute, sweep bool) LearnedPlan {
	var plan LearnedPlan
	installed := map[netip.Prefix][]NextHop{}
	inTheWay := map[netip.Prefix]TableRoute{}
	for _, r := range table {
		switch {
		case r.isLearned():
			if _, dup := installed[r.Dst]; !dup {
				installed[r.Dst] = r.hops()
			}
		case r.Table == unix.RT_TABLE_MAIN:
			if _, dup := inTheWay[r.Dst]; !dup {
				inTheWay[r.Dst] = r
			}
		}
	}

	// Merge routes to one destination, keeping the order of the gateways.
	gateways := map[netip.Prefix][]netip.Addr{}
	var dsts []netip.Prefix
	for _, r := range desired {
		dst := r.Dst.Masked()
		if _, ok := gateways[dst]; !ok {
			dsts = append(dsts, dst)
		}
		gateways[dst] = append(gateways[dst], r.Gateways...)
	}
	slices.SortFunc(dsts, comparePrefix)

	res := newResolver(table)
	want := map[netip.Prefix]bool{}
	for _, dst := range dsts {
		if other, ok := inTheWay[dst]; ok {
			plan.Refused = append(plan.Refused, Refusal{Dst: dst, Err: fmt.Errorf("route %s (type %d, protocol %d): %w", dst, other.Type, other.Protocol, ErrRouteInTheWay)})
			continue
		}
		var hops []NextHop
		var failed []string
		for _, gw := range gateways[dst] {
			hs, err := res.resolve(dst, gw)
			if err != nil {
				failed = append(failed, err.Error())
				continue // the other next hops still carry it
			}
			for _, h := range hs {
				if !slices.Contains(hops, h) {
					hops = append(hops, h)
				}
			}
		}
		if len(hops) == 0 {
			// Not routed: an old route to it goes with the sweep.
			plan.Refused = append(plan.Refused, Refusal{Dst: dst, Err: fmt.Errorf("route %s: %w (%s)", dst, ErrNoNextHop, strings.Join(failed, "; "))})
			continue
		}
		slices.SortFunc(hops, compareHop)
		want[dst] = true
		have, ok := installed[dst]
		switch {
		case ok && slices.Equal(have, hops):
		case ok:
			plan.Replace = append(plan.Replace, PlannedRoute{Dst: dst, Hops: hops})
		default:
			plan.Add = append(plan.Add, PlannedRoute{Dst: dst, Hops: hops})
		}
	}
	if sweep {
		for dst := range installed {
			if !want[dst] {
				plan.Delete = append(plan.Delete, dst)
			}
		}
		slices.SortFunc(plan.Delete, comparePrefix)
	}
	return plan
}

// resolver looks next hops up in one dump, remembering each answer: many
// routes share few next hops (one per node or router).
type resolver struct {
	main, local []TableRoute
	seen        map[netip.Addr]resolved
}

type resolved struct {
	hops []NextHop
	err  error
}

func newResolver(table []TableRoute) *resolver {
	r := &resolver{seen: make(map[netip.Addr]resolved, 64)}
	for _, t := range table {
		switch {
		case t.Table == unix.RT_TABLE_LOCAL:
			r.local = append(r.local, t)
		case t.Table == unix.RT_TABLE_MAIN && !t.isLearned() && !t.Dead:
			r.main = append(r.main, t)
		}
	}
	// Most specific first, then lowest metric, then dump order: the first
	// route that covers an address is the one the kernel would use.
	slices.SortStableFunc(r.main, func(a, b TableRoute) int {
		if a.Dst.Bits() != b.Dst.Bits() {
			return b.Dst.Bits() - a.Dst.Bits()
		}
		return a.Priority - b.Priority
	})
	return r
}

// resolve returns the gateways on links through which next hop gw of a route
// to dst is reached, as the kernel would look gw up in the local table, then
// the main table (policy routing rules aside):
//
//   - gw must be of dst's family (an IPv4-mapped IPv6 address counts as
//     IPv4), unicast and not an address of this node nor a broadcast address
//     (any route of the local table covering it);
//   - an IPv6 link-local gw is refused: it means something only on one link,
//     and a BGP next hop does not say which, so the kernel could not use it;
//   - the most specific route of the main table covering gw wins (ties: the
//     lowest metric, then dump order; dead routes are passed by). It must be
//     unicast and not of host scope: a blackhole, unreachable or prohibit
//     route is not a way there.
//     A connected route (no gateway) puts gw on its link; a route through a
//     gateway gives that gateway on its link (one level of recursion, as the
//     kernel's own lookup gives), a multipath route each of its gateways.
//   - tern's learned routes are not used: a next hop inside another node's
//     prefix resolves through the routes under it (as BGP speakers resolve
//     next hops through the IGP, not through BGP), so that what is planned
//     does not depend on what the previous pass installed. tern's other
//     routes are (a next hop in the node's own pod CIDR hits its blackhole).
func (r *resolver) resolve(dst netip.Prefix, gw netip.Addr) ([]NextHop, error) {
	gw = gw.Unmap().WithZone("")
	if s, ok := r.seen[gw]; ok && gw.Is4() == dst.Addr().Is4() {
		return s.hops, s.err
	}
	hops, err := r.lookup(dst, gw)
	if gw.Is4() == dst.Addr().Is4() {
		r.seen[gw] = resolved{hops, err}
	}
	return hops, err
}

func (r *resolver) lookup(dst netip.Prefix, gw netip.Addr) ([]NextHop, error) {
	switch {
	case !gw.IsValid():
		return nil, errors.New("no address")
	case gw.Is4() != dst.Addr().Is4():
		return nil, fmt.Errorf("%s: not of the route's family", gw)
	case gw.IsLinkLocalUnicast() && gw.Is6():
		return nil, fmt.Errorf("%s: link-local, on no known link", gw)
	case gw.IsUnspecified() || gw.IsMulticast() || gw.IsLoopback():
		return nil, fmt.Errorf("%s: not a unicast address", gw)
	}
	for _, l := range r.local {
		if l.Dst.Contains(gw) {
			return nil, fmt.Errorf("%s: an address of this node (local table, type %d)", gw, l.Type)
		}
	}
	i := slices.IndexFunc(r.main, func(t TableRoute) bool { return t.Dst.Contains(gw) })
	if i < 0 {
		return nil, fmt.Errorf("%s: no route", gw)
	}
	via := r.main[i]
	if via.Type != unix.RTN_UNICAST || via.Scope == unix.RT_SCOPE_HOST {
		return nil, fmt.Errorf("%s: through %s, a route of type %d", gw, via.Dst, via.Type)
	}
	var hops []NextHop
	add := func(g netip.Addr, link int) {
		h := NextHop{Gw: gw, LinkIndex: link}
		if g.IsValid() {
			h.Gw = g // one level of recursion: the gateway to the next hop
		}
		if h.Gw.Is4() == dst.Addr().Is4() && h.LinkIndex > 0 && !slices.Contains(hops, h) {
			hops = append(hops, h)
		}
	}
	if len(via.MultiPath) > 0 {
		for _, h := range via.MultiPath {
			add(h.Gw, h.LinkIndex)
		}
	} else {
		add(via.Gw, via.LinkIndex)
	}
	if len(hops) == 0 {
		return nil, fmt.Errorf("%s: through %s, with no usable gateway", gw, via.Dst)
	}
	return hops, nil
}

func compareHop(a, b NextHop) int {
	if c := a.Gw.Compare(b.Gw); c != 0 {
		return c
	}
	return a.LinkIndex - b.LinkIndex
}
