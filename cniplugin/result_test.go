package cniplugin

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tern-net/tern/hostveth"
)

func TestBuildResult(t *testing.T) {
	type wantIP struct {
		addr, gw string
	}
	type wantRoute struct {
		dst, gw string
	}
	tests := []struct {
		name   string
		ips    []netip.Addr
		mtu    int
		dns    types.DNS
		ipCfg  []wantIP
		routes []wantRoute
	}{
		{
			name:   "IPv4 only",
			ips:    []netip.Addr{netip.MustParseAddr("10.244.1.7")},
			mtu:    1450,
			ipCfg:  []wantIP{{"10.244.1.7/32", "169.254.1.1"}},
			routes: []wantRoute{{"0.0.0.0/0", "169.254.1.1"}},
		},
		{
			name: "dual-stack",
			ips:  []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")},
			mtu:  1500,
			dns:  types.DNS{Nameservers: []string{"10.96.0.10"}, Search: []string{"svc.cluster.local"}},
			ipCfg: []wantIP{
				{"10.244.1.7/32", "169.254.1.1"},
				{"fd00:10:244:1::7/128", "fe80::ecee:eeff:feee:eeee"},
			},
			routes: []wantRoute{
				{"0.0.0.0/0", "169.254.1.1"},
				{"::/0", "fe80::ecee:eeff:feee:eeee"},
			},
		},
		{
			name:   "IPv6 only",
			ips:    []netip.Addr{netip.MustParseAddr("fd74:6572:6e00::5")},
			mtu:    9000,
			ipCfg:  []wantIP{{"fd74:6572:6e00::5/128", "fe80::ecee:eeff:feee:eeee"}},
			routes: []wantRoute{{"::/0", "fe80::ecee:eeff:feee:eeee"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Attached{
				HostIf: "tern0123456789a", ContIf: "eth0",
				HostMAC: hostveth.MAC.String(), ContMAC: "0a:58:0a:f4:01:07",
				Sandbox: "/var/run/netns/cni-1234", IPs: tt.ips, MTU: tt.mtu,
			}
			res := BuildResult(a, tt.dns)

			if res.CNIVersion != current.ImplementedSpecVersion {
				t.Errorf("CNIVersion = %q, want %q", res.CNIVersion, current.ImplementedSpecVersion)
			}
			if len(res.Interfaces) != 2 {
				t.Fatalf("interfaces = %v, want host veth and container interface", res.Interfaces)
			}
			host, cont := res.Interfaces[0], res.Interfaces[1]
			if host.Name != "tern0123456789a" || host.Mac != "ee:ee:ee:ee:ee:ee" || host.Sandbox != "" {
				t.Errorf("interfaces[0] = %+v, want tern0123456789a, ee:ee:ee:ee:ee:ee, no sandbox", *host)
			}
			if host.Mtu != 0 {
				t.Errorf("interfaces[0].Mtu = %d, want 0 (the MTU is reported for the container side)", host.Mtu)
			}
			if cont.Name != "eth0" || cont.Mac != "0a:58:0a:f4:01:07" || cont.Sandbox != "/var/run/netns/cni-1234" || cont.Mtu != tt.mtu {
				t.Errorf("interfaces[1] = %+v, want eth0 in /var/run/netns/cni-1234 with MTU %d", *cont, tt.mtu)
			}

			if len(res.IPs) != len(tt.ipCfg) {
				t.Fatalf("IPs = %v, want %d", res.IPs, len(tt.ipCfg))
			}
			for i, w := range tt.ipCfg {
				ip := res.IPs[i]
				if ip.Interface == nil || *ip.Interface != 1 {
					t.Errorf("IPs[%d].Interface = %v, want index 1", i, ip.Interface)
				}
				if got := ip.Address.String(); got != w.addr {
					t.Errorf("IPs[%d].Address = %s, want %s", i, got, w.addr)
				}
				if !ip.Gateway.Equal(net.ParseIP(w.gw)) {
					t.Errorf("IPs[%d].Gateway = %s, want %s", i, ip.Gateway, w.gw)
				}
			}
			if len(res.Routes) != len(tt.routes) {
				t.Fatalf("routes = %v, want %d", res.Routes, len(tt.routes))
			}
			for i, w := range tt.routes {
				r := res.Routes[i]
				if got := r.Dst.String(); got != w.dst {
					t.Errorf("routes[%d].Dst = %s, want %s", i, got, w.dst)
				}
				if !r.GW.Equal(net.ParseIP(w.gw)) {
					t.Errorf("routes[%d].GW = %s, want %s", i, r.GW, w.gw)
				}
			}
			if len(res.DNS.Nameservers) != len(tt.dns.Nameservers) || len(res.DNS.Search) != len(tt.dns.Search) {
				t.Errorf("DNS = %+v, want %+v", res.DNS, tt.dns)
			}

			for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
				conv, err := res.GetAsVersion(v)
				if err != nil {
					t.Errorf("GetAsVersion(%s): %v", v, err)
					continue
				}
				if conv.Version() != v {
					t.Errorf("GetAsVersion(%s).Version() = %s", v, conv.Version())
				}
				b, err := json.Marshal(conv)
				if err != nil {
					t.Errorf("marshal %s result: %v", v, err)
					continue
				}
				// Round-trip back to the current version: nothing is lost.
				back, err := current.NewResultFromResult(conv)
				if err != nil {
					t.Errorf("convert %s result back: %v (%s)", v, err, b)
					continue
				}
				if len(back.IPs) != len(tt.ipCfg) || len(back.Routes) != len(tt.routes) || len(back.Interfaces) != 2 {
					t.Errorf("%s result lost data: %s", v, b)
				}
			}
		})
	}
}

func TestBuildResultGatewaysAreThePackageAddresses(t *testing.T) {
	if GatewayV4.String() != "169.254.1.1" {
		t.Errorf("GatewayV4 = %s, want 169.254.1.1", GatewayV4)
	}
	if GatewayV6.String() != "fe80::ecee:eeff:feee:eeee" {
		t.Errorf("GatewayV6 = %s, want fe80::ecee:eeff:feee:eeee", GatewayV6)
	}
	// The IPv6 gateway is the EUI-64 link-local address of hostveth.MAC.
	mac := hostveth.MAC
	eui := [16]byte{0xfe, 0x80, 8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]}
	if got := netip.AddrFrom16(eui); got != GatewayV6 {
		t.Errorf("EUI-64 link-local of %s = %s, want GatewayV6 %s", mac, got, GatewayV6)
	}
}

func TestBuildResultDoesNotAlias(t *testing.T) {
	// Every IPConfig shares the same interface index value; mutating one
	// result must not change a second one.
	a := Attached{HostIf: "h", ContIf: "eth0", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	r1 := BuildResult(a, types.DNS{})
	r2 := BuildResult(a, types.DNS{})
	*r1.IPs[0].Interface = 5
	if *r2.IPs[0].Interface != 1 {
		t.Errorf("second result's interface index = %d after mutating the first, want 1", *r2.IPs[0].Interface)
	}
}
