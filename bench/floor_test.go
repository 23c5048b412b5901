package bench

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/route"
)

// floor is the kernel's share of a pod attach, as one process makes it with
// netlink and nothing else, for the CNI benchmark's floor: the veth pair
// with the pod's end in its namespace, the host end up, the pod's address,
// its interface up, the gateway's permanent neighbour entry, the gateway and
// default routes, the host route and the host's neighbour entry for the pod
// (what tern's ADD makes); DEL deletes the host end. No exec, no agent, no
// disk, no sysctl: what tern spends beyond this is its own.
type floor struct {
	node  ns.NetNS
	podNS []ns.NetNS
}

var floorGateway = netip.MustParseAddr("169.254.1.1")

func (f *floor) hostIf(i int) string { return fmt.Sprintf("flr%04d", i) }

// podIP is pod i's address, from 10.247.0.0/16.
func (f *floor) podIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 247, byte(i >> 8), byte(i)})
}

func (f *floor) add(i int) error {
	return f.node.Do(func(ns.NetNS) error {
		podNL, err := netlink.NewHandleAt(netns.NsHandle(f.podNS[i].Fd()), unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer podNL.Close()
		name := f.hostIf(i)
		if err := netlink.LinkAdd(&netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500, HardwareAddr: hostveth.MAC},
			PeerName:  "eth0", PeerNamespace: netlink.NsFd(int(f.podNS[i].Fd())),
		}); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		host, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(host); err != nil {
			return err
		}
		cont, err := podNL.LinkByName("eth0")
		if err != nil {
			return err
		}
		ip := f.podIP(i)
		if err := podNL.AddrAdd(cont, &netlink.Addr{IPNet: route.IPNet(netip.PrefixFrom(ip, 32))}); err != nil {
			return fmt.Errorf("address: %w", err)
		}
		if err := podNL.LinkSetUp(cont); err != nil {
			return err
		}
		if err := podNL.NeighSet(&netlink.Neigh{LinkIndex: cont.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: floorGateway.AsSlice(), HardwareAddr: hostveth.MAC}); err != nil {
			return fmt.Errorf("pod neighbour: %w", err)
		}
		gw := &netlink.Route{LinkIndex: cont.Attrs().Index, Dst: route.IPNet(netip.PrefixFrom(floorGateway, 32)), Scope: netlink.SCOPE_LINK}
		def := &netlink.Route{LinkIndex: cont.Attrs().Index, Gw: floorGateway.AsSlice(), Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
		for _, r := range []*netlink.Route{gw, def} {
			if err := podNL.RouteAdd(r); err != nil {
				return fmt.Errorf("pod route: %w", err)
			}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: route.IPNet(netip.PrefixFrom(ip, 32)),
			Scope: netlink.SCOPE_LINK, Protocol: route.Protocol}); err != nil {
			return fmt.Errorf("host route: %w", err)
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: cont.Attrs().HardwareAddr})
	})
}

func (f *floor) del(i int) error {
	return f.node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(f.hostIf(i))
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
}
