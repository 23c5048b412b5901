package cniplugin

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Gateway addresses the pod routes through. IPv4: a link-local address answered
// by proxy ARP on the host veth. IPv6: the link-local address of the host veth,
// whose MAC is fixed to hostveth.MAC.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	GatewayV6 = netip.MustParseAddr("fe80::ecee:eeff:feee:eeee")
)

// Attached describes an attachment once the netlink work is done.
type Attached struct {
	HostIf, ContIf   string
	HostMAC, ContMAC string
	Sandbox          string
	IPs              []netip.Addr
	MTU              int
}

// BuildResult renders the CNI result of an attachment. It does no I/O.
func BuildResult(a Attached, dns types.DNS) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: a.HostIf, Mac: a.HostMAC},
			{Name: a.ContIf, Mac: a.ContMAC, Sandbox: a.Sandbox, Mtu: a.MTU},
		},
		DNS: dns,
	}
	contIdx := 1
	for _, ip := range a.IPs {
		gw := GatewayV4
		if ip.Is6() {
			gw = GatewayV6
		}
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: &contIdx,
			Address:   hostNet(ip),
			Gateway:   gw.AsSlice(),
		})
		def := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if ip.Is6() {
			def = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		res.Routes = append(res.Routes, &types.Route{Dst: *def, GW: gw.AsSlice()})
	}
	return res
}

// hostNet is ip as a single-address network (/32 or /128).
func hostNet(ip netip.Addr) net.IPNet {
	return net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}
