package cniplugin

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/route"
)

// pair is a pod's veth pair under construction. Its methods run in the host
// network namespace; it keeps one netlink socket per namespace for all its
// requests, and reaches into the pod's namespace through its socket rather
// than by switching the thread's namespace.
type pair struct {
	podNS          ns.NetNS
	hostIf, contIf string
	hostNL, podNL  *netlink.Handle
	host, cont     netlink.Link
	created        bool // by this ADD
}

func newPair(podNS ns.NetNS, hostIf, contIf string) (*pair, error) {
	hostNL, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	podNL, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		hostNL.Close()
		return nil, fmt.Errorf("netlink socket in the pod's namespace: %w", err)
	}
	return &pair{podNS: podNS, hostIf: hostIf, contIf: contIf, hostNL: hostNL, podNL: podNL}, nil
}

func (p *pair) close() { p.hostNL.Close(); p.podNL.Close() }

// create makes the veth pair, the host end up, with no address: what does not
// depend on the pod's addresses, so that it runs while the agent allocates.
func (p *pair) create(mtu int) error {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.hostIf, MTU: mtu, HardwareAddr: hostveth.MAC},
		PeerName:      p.contIf,
		PeerNamespace: netlink.NsFd(int(p.podNS.Fd())),
	}
	if err := p.hostNL.LinkAdd(veth); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create veth %s/%s: %w", p.hostIf, p.contIf, err)
		}
		if err := p.clearStale(); err != nil {
			return err
		}
		if err := p.hostNL.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", p.hostIf, p.contIf, err)
		}
	}
	p.created = true
	var err error
	if p.host, err = p.hostNL.LinkByName(p.hostIf); err != nil {
		return fmt.Errorf("find host veth %s: %w", p.hostIf, err)
	}
	if p.cont, err = p.podNL.LinkByName(p.contIf); err != nil {
		return fmt.Errorf("find %s in the pod: %w", p.contIf, err)
	}
	// Host side: proxy ARP answers for the pod's gateway, forwarding on; for
	// IPv6, no DAD and no RA on a link tern alone configures.
	sysctls := [][2]string{
		{"net/ipv4/conf/" + p.hostIf + "/proxy_arp", "1"},
		{"net/ipv4/neigh/" + p.hostIf + "/proxy_delay", "0"},
		{"net/ipv4/conf/" + p.hostIf + "/forwarding", "1"},
	}
	for _, s := range sysctls {
		if err := writeSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	if _, err := os.Stat("/proc/sys/net/ipv6/conf/" + p.hostIf); err == nil {
		_ = writeSysctl("net/ipv6/conf/"+p.hostIf+"/accept_dad", "0")
		_ = writeSysctl("net/ipv6/conf/"+p.hostIf+"/accept_ra", "0")
	}
	if err := p.hostNL.LinkSetUp(p.host); err != nil {
		return fmt.Errorf("set %s up: %w", p.hostIf, err)
	}
	return nil
}

// clearStale handles a veth pair that exists already, by the host name or in
// the pod. It deletes what this pod may replace: a host veth waiting for the
// agent's disposal, or a pair left in this very pod by an earlier ADD. A host
// veth of the same name whose peer lives in another sandbox (an old sandbox of
// the same pod, still running) is never deleted: the ADD fails with "try
// again later" until that sandbox's DEL has removed it.
func (p *pair) clearStale() error {
	old, lerr := p.hostNL.LinkByName(p.hostIf)
	cont, cerr := p.podNL.LinkByName(p.contIf)
	var nf netlink.LinkNotFoundError
	switch {
	case lerr != nil && !errors.As(lerr, &nf):
		return fmt.Errorf("look up host veth %s: %w", p.hostIf, lerr)
	case lerr != nil: // no host veth of that name: the pod has the interface already
		return fmt.Errorf("the pod's network namespace already has an interface %s", p.contIf)
	case old.Type() != "veth":
		return fmt.Errorf("host interface %s exists and is a %s, not tern's veth", p.hostIf, old.Type())
	case old.Attrs().Group == hostveth.Group,
		cerr == nil && cont.Attrs().ParentIndex == old.Attrs().Index:
		if err := p.hostNL.LinkDel(old); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete stale host veth %s: %w", p.hostIf, err)
		}
		return nil
	case cerr == nil:
		return fmt.Errorf("the pod's network namespace already has an interface %s", p.contIf)
	default:
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("host veth %s exists and belongs to another running sandbox of this pod", p.hostIf),
			"the old sandbox's DEL removes it; retry then")
	}
}

// destroy deletes the veth pair if this ADD created it, by index so that a
// namesake is never touched.
func (p *pair) destroy() error {
	if !p.created {
		return nil
	}
	if p.host != nil {
		return hostveth.Delete(p.hostIf, p.host.Attrs().Index)
	}
	return deleteHostVeth(p.hostIf)
}

// configure gives the pair the pod's addresses and routes.
func (p *pair) configure(ips []netip.Addr, mtu int) (Attached, error) {
	out := Attached{HostIf: p.hostIf, ContIf: p.contIf, Sandbox: p.podNS.Path(), IPs: ips, MTU: mtu,
		HostMAC: hostveth.MAC.String(), ContMAC: p.cont.Attrs().HardwareAddr.String()}
	if p.host.Attrs().MTU != mtu {
		if err := p.hostNL.LinkSetMTU(p.host, mtu); err != nil {
			return out, fmt.Errorf("set MTU of %s: %w", p.hostIf, err)
		}
		if err := p.podNL.LinkSetMTU(p.cont, mtu); err != nil {
			return out, fmt.Errorf("set MTU of %s in the pod: %w", p.contIf, err)
		}
	}
	hasV6 := false
	for _, ip := range ips {
		hasV6 = hasV6 || ip.Is6()
	}
	if hasV6 {
		for _, s := range [][2]string{
			{"net/ipv6/conf/" + p.hostIf + "/disable_ipv6", "0"},
			{"net/ipv6/conf/" + p.hostIf + "/forwarding", "1"},
		} {
			if err := writeSysctl(s[0], s[1]); err != nil {
				return out, err
			}
		}
		// The pod learns its gateway from the host veth's link-local address; no RA.
		err := p.podNS.Do(func(ns.NetNS) error { return writeSysctl("net/ipv6/conf/"+p.contIf+"/accept_ra", "0") })
		if err != nil {
			return out, err
		}
	}
	for _, ip := range ips {
		if err := addHostRoute(p.hostNL, p.host, ip); err != nil {
			return out, err
		}
	}

	// Pod side: the address as a host route, the gateway on the link, default via it.
	for _, ip := range ips {
		addr := &netlink.Addr{IPNet: route.IPNet(netip.PrefixFrom(ip, ip.BitLen()))}
		if ip.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := p.podNL.AddrAdd(p.cont, addr); err != nil {
			return out, fmt.Errorf("add address %s to %s in the pod: %w", ip, p.contIf, err)
		}
	}
	if err := p.podNL.LinkSetUp(p.cont); err != nil {
		return out, fmt.Errorf("set %s up in the pod: %w", p.contIf, err)
	}
	// The gateway's MAC is fixed: a permanent neighbour entry spares the first
	// packet an ARP/ND round trip and does not depend on proxy ARP (which
	// answers only when the node has a route to 169.254.1.1).
	for _, gw := range gateways(ips) {
		if err := p.podNL.NeighSet(&netlink.Neigh{
			LinkIndex: p.cont.Attrs().Index, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: hostveth.MAC,
		}); err != nil {
			return out, fmt.Errorf("add neighbour %s in the pod: %w", gw, err)
		}
	}
	for _, r := range podRoutes(p.cont.Attrs().Index, ips) {
		if err := p.podNL.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return out, fmt.Errorf("add route %s in the pod: the pod has it on another interface already: tern gives a pod one interface (%w)", routeString(r), err)
			}
			return out, fmt.Errorf("add route %s in the pod: %w", routeString(r), err)
		}
	}
	// Likewise on the host: the pod's MAC is known.
	for _, ip := range ips {
		if err := p.hostNL.NeighSet(&netlink.Neigh{
			LinkIndex: p.host.Attrs().Index, Family: family(ip), State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: p.cont.Attrs().HardwareAddr,
		}); err != nil {
			return out, fmt.Errorf("add neighbour %s on %s: %w", ip, p.hostIf, err)
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
			&netlink.Route{LinkIndex: linkIndex, Dst: route.IPNet(netip.PrefixFrom(GatewayV4, 32)), Scope: netlink.SCOPE_LINK, Protocol: route.Protocol},
			&netlink.Route{LinkIndex: linkIndex, Dst: route.IPNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: GatewayV4.AsSlice(), Protocol: route.Protocol},
		)
	}
	if v6 {
		out = append(out,
			&netlink.Route{LinkIndex: linkIndex, Dst: route.IPNet(netip.MustParsePrefix("::/0")), Gw: GatewayV6.AsSlice(), Protocol: route.Protocol},
		)
	}
	return out
}

// hostRoute is "<podIP>/32 dev <hostIf> scope link proto 96".
func hostRoute(linkIndex int, ip netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       route.IPNet(netip.PrefixFrom(ip, ip.BitLen())),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  route.Protocol,
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
		if e.Protocol != route.Protocol {
			return fmt.Errorf("add host route %s: a route to %s of protocol %d (not tern's) is in the way", routeString(r), ip, e.Protocol)
		}
	}
	if err := nl.RouteReplace(r); err != nil {
		return fmt.Errorf("replace host route %s: %w", routeString(r), err)
	}
	return nil
}

// deleteHostVeth deletes a tern host veth (and with it its peer and routes). A
// veth that does not exist is not an error.
func deleteHostVeth(name string) error {
	if !strings.HasPrefix(name, hostveth.Prefix) {
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
