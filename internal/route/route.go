// Package route owns what marks a route as tern's and the forms the kernel
// takes it in, for whoever writes one: the agent's dataplane (blackholes of
// the node's pod CIDRs, routes learned over BGP) and the CNI plugin (the
// host route to a pod, the routes inside the pod). It is a leaf, so that the
// CNI plugin can write its routes without linking the agent's dataplane.
package route

import (
	"net"
	"net/netip"
)

// Protocol is tern's route protocol (iproute2 name: "tern" in rt_protos).
// Only routes of this protocol are ever read back, changed or swept as
// tern's.
const Protocol = 96

// IPNet is p as netlink takes it.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix converts a netlink destination; a nil one (a default route, in some
// dumps) is not a prefix.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
