package dataplane

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// installedRoutes returns the blackhole routes carrying tern's protocol in the
// main table. Routes of other protocols are never read back as tern's.
func installedRoutes() ([]Route, error) {
	var out []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{Protocol: route.Protocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Type != unix.RTN_BLACKHOLE || r.Dst == nil {
				continue
			}
			p, ok := route.Prefix(r.Dst)
			if !ok {
				continue
			}
			out = append(out, Route{Dst: p, Blackhole: true})
		}
	}
	return out, nil
}

func netlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:      route.IPNet(r.Dst),
		Protocol: route.Protocol,
		Table:    unix.RT_TABLE_MAIN,
	}
	if r.Blackhole {
		nr.Type = unix.RTN_BLACKHOLE
	}
	return nr
}

// applyRoutes writes the difference between desired and installed.
func applyRoutes(desired []Route) (added, deleted int, err error) {
	installed, err := installedRoutes()
	if err != nil {
		return 0, 0, err
	}
	add, del := DiffRoutes(desired, installed)
	var errs []error
	for _, r := range add {
		// RouteAdd, never RouteReplace: a route of another owner for the same
		// destination is left alone and reported.
		if err := netlink.RouteAdd(netlinkRoute(r)); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("a route to %s that is not tern's is in the way: %w", r.Dst, err)
			}
			errs = append(errs, fmt.Errorf("add route %s: %w", r.Dst, err))
			continue
		}
		added++
	}
	for _, r := range del {
		if err := netlink.RouteDel(netlinkRoute(r)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
			continue
		}
		deleted++
	}
	return added, deleted, errors.Join(errs...)
}

// UplinkMTU is the MTU of the interface of the default route (IPv4, then IPv6);
// without a default route, the largest MTU of an up, non-loopback, non-tern
// interface; 1500 if there is none.
func UplinkMTU() int {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if (r.Dst == nil || isDefault(r.Dst)) && r.LinkIndex > 0 {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					return l.Attrs().MTU
				}
			}
		}
	}
	links, err := netlinksafe.LinkList()
	best := 0
	if err == nil {
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagUp == 0 || a.Flags&net.FlagLoopback != 0 || strings.HasPrefix(a.Name, hostveth.Prefix) {
				continue
			}
			best = max(best, a.MTU)
		}
	}
	if best == 0 {
		return 1500
	}
	return best
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
