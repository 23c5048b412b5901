package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/agentapi"
)

// attach creates the pod's veth pair and configures both ends. It runs in the
// host network namespace; podNS is the pod's. It keeps one netlink socket per
// namespace for all its requests, and reaches into the pod's namespace through
// its socket rather than by switching the thread's namespace.
func attach(podNS ns.NetNS, hostIf, contIf string, ips []netip.Addr, mtu int) (Attached, error) {
	out := Attached{HostIf: hostIf, ContIf: contIf, Sandbox: podNS.Path(), IPs: ips, MTU: mtu, HostMAC: HostVethMAC.String()}
	hasV6 := false
	for _, ip := range ips {
		hasV6 = hasV6 || ip.Is6()
	}
	hostNL, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return out, fmt.Errorf("netlink socket: %w", err)
	}
	defer hostNL.Close()
	podNL, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return out, fmt.Errorf("netlink socket in the pod's namespace: %w", err)
	}
	defer podNL.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostIf, MTU: mtu, HardwareAddr: HostVethMAC},
		PeerName:      contIf,
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := hostNL.LinkAdd(veth); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return out, fmt.Errorf("create veth %s/%s: %w", hostIf, contIf, err)
		}
		// A host veth of this name is left from an earlier sandbox of the same
		// pod whose DEL never came: replace it. Otherwise the pod already has
		// an interface of that name.
		old, lerr := hostNL.LinkByName(hostIf)
		if lerr != nil {
			return out, fmt.Errorf("create veth %s/%s: an interface %s already exists in the pod's network namespace: %w", hostIf, contIf, contIf, err)
		}
		if err := hostNL.LinkDel(old); err != nil {
			return out, fmt.Errorf("delete stale host veth %s: %w", hostIf, err)
		}
		if err := hostNL.LinkAdd(veth); err != nil {
			return out, fmt.Errorf("create veth %s/%s: %w", hostIf, contIf, err)
		}
	}
	host, err := hostNL.LinkByName(hostIf)
	if err != nil {
		return out, fmt.Errorf("find host veth %s: %w", hostIf, err)
	}

	// Host side: no address, proxy ARP answers for the pod's gateway, forwarding on.
	sysctls := [][2]string{
		{"net/ipv4/conf/" + hostIf + "/proxy_arp", "1"},
		{"net/ipv4/neigh/" + hostIf + "/proxy_delay", "0"},
		{"net/ipv4/conf/" + hostIf + "/forwarding", "1"},
	}
	if hasV6 {
		sysctls = append(sysctls,
			[2]string{"net/ipv6/conf/" + hostIf + "/disable_ipv6", "0"},
			[2]string{"net/ipv6/conf/" + hostIf + "/accept_dad", "0"},
			[2]string{"net/ipv6/conf/" + hostIf + "/accept_ra", "0"},
			[2]string{"net/ipv6/conf/" + hostIf + "/forwarding", "1"},
		)
	}
	for _, s := range sysctls {
		if err := writeSysctl(s[0], s[1]); err != nil {
			return out, err
		}
	}
	if err := hostNL.LinkSetUp(host); err != nil {
		return out, fmt.Errorf("set %s up: %w", hostIf, err)
	}
	for _, ip := range ips {
		if err := addHostRoute(hostNL, host, ip); err != nil {
			return out, err
		}
	}

	// Pod side: the address as a host route, the gateway on the link, default via it.
	link, err := podNL.LinkByName(contIf)
	if err != nil {
		return out, fmt.Errorf("find %s in the pod: %w", contIf, err)
	}
	out.ContMAC = link.Attrs().HardwareAddr.String()
	if hasV6 {
		// The pod learns its gateway from the host veth's link-local address; no RA.
		err := podNS.Do(func(ns.NetNS) error { return writeSysctl("net/ipv6/conf/"+contIf+"/accept_ra", "0") })
		if err != nil {
			return out, err
		}
	}
	for _, ip := range ips {
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(ip, ip.BitLen()))}
		if ip.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := podNL.AddrAdd(link, addr); err != nil {
			return out, fmt.Errorf("add address %s to %s in the pod: %w", ip, contIf, err)
		}
	}
	if err := podNL.LinkSetUp(link); err != nil {
		return out, fmt.Errorf("set %s up in the pod: %w", contIf, err)
	}
	// The gateway's MAC is fixed: a permanent neighbour entry spares the first
	// packet an ARP/ND round trip and does not depend on proxy ARP (which
	// answers only when the node has a route to 169.254.1.1).
	for _, gw := range gateways(ips) {
		if err := podNL.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: HostVethMAC,
		}); err != nil {
			return out, fmt.Errorf("add neighbour %s in the pod: %w", gw, err)
		}
	}
	for _, r := range podRoutes(link.Attrs().Index, ips) {
		if err := podNL.RouteAdd(r); err != nil {
			return out, fmt.Errorf("add route %s in the pod: %w", routeString(r), err)
		}
	}
	// Likewise on the host: the pod's MAC is known now.
	for _, ip := range ips {
		if err := hostNL.NeighSet(&netlink.Neigh{
			LinkIndex: host.Attrs().Index, Family: family(ip), State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: link.Attrs().HardwareAddr,
		}); err != nil {
			return out, fmt.Errorf("add neighbour %s on %s: %w", ip, hostIf, err)
		}
	}
	return out, nil
}

// gateways are the pod's next hops, one per address family in use.
func gateways(ips []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		gw := GatewayV4
		if ip.Is6() {
			gw = GatewayV6
		}
		if !slices.Contains(out, gw) {
			out = append(out, gw)
		}
	}
	return out
}

// podRoutes are the routes inside the pod: the gateway on the link (IPv4) and
// the default route via the gateway, per family.
func podRoutes(linkIndex int, ips []netip.Addr) []*netlink.Route {
	var out []*netlink.Route
	v4, v6 := false, false
	for _, ip := range ips {
		v4 = v4 || ip.Is4()
		v6 = v6 || ip.Is6()
	}
	if v4 {
		out = append(out,
			&netlink.Route{LinkIndex: linkIndex, Dst: ipNet(netip.PrefixFrom(GatewayV4, 32)), Scope: netlink.SCOPE_LINK, Protocol: dataplane.RouteProtocol},
			&netlink.Route{LinkIndex: linkIndex, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: GatewayV4.AsSlice(), Protocol: dataplane.RouteProtocol},
		)
	}
	if v6 {
		out = append(out,
			&netlink.Route{LinkIndex: linkIndex, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: GatewayV6.AsSlice(), Protocol: dataplane.RouteProtocol},
		)
	}
	return out
}

// hostRoute is "<podIP>/32 dev <hostIf> scope link proto 96".
func hostRoute(linkIndex int, ip netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       ipNet(netip.PrefixFrom(ip, ip.BitLen())),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  dataplane.RouteProtocol,
	}
}

// addHostRoute adds the host route of ip. A route to the same address that is
// tern's (left by an earlier sandbox) is replaced; one of another owner is not.
func addHostRoute(nl *netlink.Handle, host netlink.Link, ip netip.Addr) error {
	r := hostRoute(host.Attrs().Index, ip)
	err := nl.RouteAdd(r)
	if err == nil || !errors.Is(err, unix.EEXIST) {
		if err != nil {
			return fmt.Errorf("add host route %s: %w", routeString(r), err)
		}
		return nil
	}
	existing, lerr := nl.RouteListFiltered(family(ip), &netlink.Route{Dst: r.Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if lerr != nil {
		return fmt.Errorf("add host route %s: %w (and listing the one in the way: %v)", routeString(r), err, lerr)
	}
	for _, e := range existing {
		if e.Protocol != dataplane.RouteProtocol {
			return fmt.Errorf("add host route %s: a route to %s of protocol %d (not tern's) is in the way", routeString(r), ip, e.Protocol)
		}
	}
	if err := nl.RouteReplace(r); err != nil {
		return fmt.Errorf("replace host route %s: %w", routeString(r), err)
	}
	return nil
}

// unrouteHostVeth finds the host veth paired with the pod's interface contIf
// in the namespace at netnsPath, and deletes the host routes to the pod's
// addresses through it. It returns a zero HostLink when there is no such veth:
// the namespace or the interface is gone, or its peer is not a tern veth.
func unrouteHostVeth(netnsPath, contIf string) (agentapi.HostLink, error) {
	var none agentapi.HostLink
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return none, nil // gone: its veth went with it
	}
	defer podNS.Close()
	podNL, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return none, fmt.Errorf("netlink socket in the pod's namespace: %w", err)
	}
	defer podNL.Close()
	cont, err := podNL.LinkByName(contIf)
	if err != nil || cont.Type() != "veth" || cont.Attrs().ParentIndex <= 0 {
		return none, nil
	}
	addrs, err := podNL.AddrList(cont, netlink.FAMILY_ALL)
	if err != nil {
		return none, fmt.Errorf("list addresses of %s in the pod: %w", contIf, err)
	}
	hostNL, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return none, fmt.Errorf("netlink socket: %w", err)
	}
	defer hostNL.Close()
	host, err := hostNL.LinkByIndex(cont.Attrs().ParentIndex)
	if err != nil || host.Type() != "veth" || !strings.HasPrefix(host.Attrs().Name, dataplane.HostIfPrefix) {
		return none, nil
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		err := hostNL.RouteDel(hostRoute(host.Attrs().Index, ip.Unmap()))
		if err != nil && !errors.Is(err, unix.ESRCH) {
			return none, fmt.Errorf("delete host route to %s: %w", ip, err)
		}
	}
	return agentapi.HostLink{Name: host.Attrs().Name, Index: host.Attrs().Index}, nil
}

// deleteHostVeth deletes a tern host veth (and with it its peer and routes). A
// veth that does not exist is not an error.
func deleteHostVeth(name string) error {
	if !strings.HasPrefix(name, dataplane.HostIfPrefix) {
		return fmt.Errorf("refusing to delete %q: not a tern host veth", name)
	}
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find host veth %s: %w", name, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("refusing to delete %s: it is a %s, not a veth", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete host veth %s: %w", name, err)
	}
	return nil
}

// hostVeths lists the tern veths of the host namespace.
func hostVeths() ([]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, dataplane.HostIfPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func routeString(r *netlink.Route) string {
	s := r.Dst.String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	return s
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b)), err
}
