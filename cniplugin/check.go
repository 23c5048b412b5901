package cniplugin

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/route"
)

// checkAttachment verifies, in the host namespace and in the pod's, everything
// attach set up. It returns every problem it finds.
func checkAttachment(podNS ns.NetNS, hostIf, contIf string, ips []netip.Addr) []string {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	host, err := netlinksafe.LinkByName(hostIf)
	if err != nil {
		bad("host veth %s is missing", hostIf)
	} else {
		if host.Type() != "veth" {
			bad("host interface %s is a %s, not a veth", hostIf, host.Type())
		}
		if host.Attrs().Flags&1 == 0 {
			bad("host veth %s is down", hostIf)
		}
		if v, _ := readSysctl("net/ipv4/conf/" + hostIf + "/proxy_arp"); v != "1" {
			bad("proxy_arp is %q on host veth %s, want 1", v, hostIf)
		}
		for _, ip := range ips {
			if !hasRoute(family(ip), hostRoute(host.Attrs().Index, ip), false) {
				bad("host route %s/%d dev %s is missing", ip, ip.BitLen(), hostIf)
			}
		}
	}

	err = podNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(contIf)
		if err != nil {
			bad("interface %s is missing in the pod", contIf)
			return nil
		}
		if link.Attrs().Flags&1 == 0 {
			bad("interface %s is down in the pod", contIf)
		}
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s in the pod: %w", contIf, err)
		}
		var have []netip.Addr
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
				have = append(have, ip.Unmap())
			}
		}
		for _, ip := range ips {
			if !slices.Contains(have, ip) {
				bad("address %s is missing on %s in the pod", ip, contIf)
			}
		}
		for _, gw := range gateways(ips) {
			neighs, err := netlink.NeighList(link.Attrs().Index, family(gw))
			if err != nil {
				return fmt.Errorf("list neighbours in the pod: %w", err)
			}
			found := false
			for _, nb := range neighs {
				found = found || (nb.IP.Equal(gw.AsSlice()) && nb.HardwareAddr.String() == hostveth.MAC.String())
			}
			if !found {
				bad("neighbour %s lladdr %s is missing in the pod", gw, hostveth.MAC)
			}
		}
		for _, r := range podRoutes(link.Attrs().Index, ips) {
			fam := netlink.FAMILY_V4
			if r.Dst.IP.To4() == nil {
				fam = netlink.FAMILY_V6
			}
			if !hasRoute(fam, r, true) {
				bad("route %s dev %s is missing in the pod", routeString(r), contIf)
			}
		}
		return nil
	})
	if err != nil {
		bad("%v", err)
	}
	return problems
}

// hasRoute reports whether the main table has a route to want.Dst on want's
// link (and via want.Gw when withGw). A default route may be listed with a nil
// destination.
func hasRoute(fam int, want *netlink.Route, withGw bool) bool {
	routes, err := netlinksafe.RouteListFiltered(fam, &netlink.Route{LinkIndex: want.LinkIndex, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return false
	}
	wantDst, _ := route.Prefix(want.Dst)
	for _, r := range routes {
		dst, ok := route.Prefix(r.Dst)
		if !ok {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			if fam == netlink.FAMILY_V4 {
				dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		}
		if dst != wantDst {
			continue
		}
		if withGw && !r.Gw.Equal(want.Gw) {
			continue
		}
		return true
	}
	return false
}
