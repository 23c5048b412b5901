package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

const testNode = "n1"

// world is the cluster every case compiles against: local pods of two
// namespaces on n1, remote pods on n2, a host-network pod, a pod without
// an address, and a namespace (ghost) missing from the namespace list.
func world() ([]Pod, []Namespace) {
	pods := []Pod{
		pod("app", "web1", testNode, "10.244.1.10", "app=web,tier=front",
			withPorts(NamedPort{"http", tcp, 8080}, NamedPort{"metrics", tcp, 9100})),
		pod("app", "web2", testNode, "10.244.1.11", "app=web",
			withPorts(NamedPort{"http", "", 9090})), // protocol unset: TCP
		pod("app", "db", testNode, "10.244.1.12", "app=db,tier=back",
			withPorts(NamedPort{"pg", tcp, 5432})),
		pod("app", "client", "n2", "10.244.2.10", "app=client"),
		pod("app", "pending", testNode, "", "app=web"),
		pod("app", "host", testNode, "10.244.0.5", "app=client", hostNetwork(),
			withPorts(NamedPort{"http", tcp, 8080})),
		pod("other", "client", "n2", "10.244.2.20", "app=client"),
		pod("other", "api", testNode, "10.244.1.20", "app=api",
			withPorts(NamedPort{"http", tcp, 8443}, NamedPort{"dns", udp, 53}, NamedPort{"http", udp, 8444})),
		pod("ops", "mon", "n2", "10.244.2.30", "app=mon"),
		pod("ghost", "x", "n2", "10.244.2.40", "app=x"),
	}
	nss := []Namespace{
		{Name: "app", Labels: labels("team=a,env=prod")},
		{Name: "other", Labels: labels("team=b")},
		{Name: "ops"},
	}
	return pods, nss
}

// flow is a flow and the expected verdict; src and dst are "ns/pod" (the
// pod's first address of the flow's family) or an address.
type flow struct {
	src, dst string
	proto    corev1.Protocol
	port     int32
	want     bool
}

func ok(src, dst string, proto corev1.Protocol, port int32) flow {
	return flow{src, dst, proto, port, true}
}

func no(src, dst string, proto corev1.Protocol, port int32) flow {
	return flow{src, dst, proto, port, false}
}

// resolve finds the address of "ns/pod" (of family v6) or parses an address.
func resolve(t *testing.T, pods []Pod, s string, v6 bool) netip.Addr {
	t.Helper()
	if a, err := netip.ParseAddr(s); err == nil {
		return a
	}
	for _, p := range pods {
		if p.Namespace+"/"+p.Name != s {
			continue
		}
		for _, a := range p.IPs {
			if a.Is6() == v6 {
				return a
			}
		}
	}
	t.Fatalf("no address for %s (ipv6 %t)", s, v6)
	return netip.Addr{}
}

type compileCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	cluster  []*cnpv1.ClusterNetworkPolicy
	// edit changes the world's input (LogDrops, more pods, ...).
	edit  func(*Input)
	v6    bool // flows are IPv6 (pods resolve to their IPv6 address)
	flows []flow
	// flows6 are judged over IPv6 besides flows (a dual-stack case).
	flows6 []flow
}

func compileCases() []compileCase {
	return append(netpolCases(), tierCases()...)
}

func netpolCases() []compileCase {
	const (
		web1, web2, db, pending = "app/web1", "app/web2", "app/db", "app/pending"
		appClient, host         = "app/client", "app/host"
		otherClient, api        = "other/client", "other/api"
		mon, ghost              = "ops/mon", "ghost/x"
	)
	return []compileCase{
		{
			name:     "default_deny_ingress",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "deny", nil, types(tIn))},
			flows: []flow{
				no(appClient, web1, tcp, 8080), no(otherClient, db, udp, 53), no(web2, web1, tcp, 80),
				ok(web1, api, tcp, 8443), ok(otherClient, api, tcp, 1), ok(web1, "10.244.200.1", tcp, 443),
			},
		},
		{
			name:     "deny_ingress_and_egress",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "deny", sel(""), types(tIn, tOut))},
			flows: []flow{
				no(web1, api, tcp, 8443), no(db, "10.244.200.1", udp, 53), no(otherClient, web1, tcp, 8080),
				ok(otherClient, api, tcp, 8443), ok(api, otherClient, tcp, 22),
			},
		},
		{
			name: "allow_from_pod_label",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(podPeer(sel("app=client"))))))},
			flows: []flow{
				ok(appClient, web1, tcp, 80), ok(appClient, web2, udp, 53), ok(appClient, web1, sctp, 9),
				no(otherClient, web1, tcp, 80), no(db, web1, tcp, 80), no(host, web1, tcp, 80),
				ok(otherClient, db, tcp, 5432), ok(web1, db, tcp, 5432),
			},
		},
		{
			name: "allow_from_namespace",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(nsPeer(sel("team=b"))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80), ok(api, web2, tcp, 80),
				no(appClient, web1, tcp, 80), no(mon, web1, tcp, 80), no(ghost, web1, tcp, 80),
			},
		},
		{
			name: "pod_and_namespace_in_one_peer",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(podNSPeer(sel("app=client"), sel("team=b"))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80),
				no(api, web1, tcp, 80), no(appClient, web1, tcp, 80), no(mon, web1, tcp, 80),
			},
		},
		{
			name: "pod_or_namespace_in_two_peers",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(podPeer(sel("app=client")), nsPeer(sel("team=b"))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80), ok(api, web1, tcp, 80), ok(appClient, web1, tcp, 80),
				no(mon, web1, tcp, 80), no(db, web1, tcp, 80),
			},
		},
		{
			name: "match_expressions_in",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "front", expr("tier", metav1.LabelSelectorOpIn, "front", "edge"),
				ingressRules(allow(peers(nsPeer(expr("team", metav1.LabelSelectorOpIn, "b", "c"))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80), no(appClient, web1, tcp, 80), no(mon, web1, tcp, 80),
				ok(appClient, web2, tcp, 80), ok(appClient, db, tcp, 80), // tier missing or back: open
			},
		},
		{
			name: "match_expressions_notin",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "notback", expr("tier", metav1.LabelSelectorOpNotIn, "back"),
				ingressRules(allow(peers(nsPeer(expr("team", metav1.LabelSelectorOpNotIn, "a"))))))},
			flows: []flow{
				// A missing label is "not in": web2 (no tier) is selected,
				// ops and ghost (no team) are peers.
				ok(otherClient, web1, tcp, 80), ok(mon, web2, tcp, 80), ok(ghost, web1, tcp, 80),
				no(appClient, web1, tcp, 80), no(appClient, web2, tcp, 80),
				ok(appClient, db, tcp, 80),
			},
		},
		{
			name: "match_expressions_exists",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "tiered", expr("tier", metav1.LabelSelectorOpExists),
				ingressRules(allow(peers(nsPeer(expr("team", metav1.LabelSelectorOpExists))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80), ok(appClient, db, tcp, 80),
				no(mon, web1, tcp, 80), no(ghost, db, tcp, 80),
				ok(mon, web2, tcp, 80),
			},
		},
		{
			name: "match_expressions_doesnotexist",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "untiered", expr("tier", metav1.LabelSelectorOpDoesNotExist),
				ingressRules(allow(peers(nsPeer(expr("team", metav1.LabelSelectorOpDoesNotExist))))))},
			flows: []flow{
				ok(mon, web2, tcp, 80), ok(ghost, web2, tcp, 80),
				no(otherClient, web2, tcp, 80), no(appClient, web2, tcp, 80),
				ok(appClient, web1, tcp, 80),
			},
		},
		{
			name: "numeric_port",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "http", sel(""),
				ingressRules(allow(nil, port("", 80), port(tcp, 443))))},
			flows: []flow{
				ok(appClient, web1, tcp, 80), ok(mon, db, tcp, 443),
				no(appClient, web1, tcp, 81), no(appClient, web1, udp, 80), no(appClient, web1, sctp, 443),
			},
		},
		{
			name: "named_port_ingress",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "http", sel(""), ingressRules(allow(peers(nsPeer(sel(""))), namedPort("", "http")))),
				// UDP "http" is declared by no app pod: matches nothing.
				netpol("app", "http-udp", sel(""), ingressRules(allow(nil, namedPort(udp, "http")))),
			},
			flows: []flow{
				ok(appClient, web1, tcp, 8080), no(appClient, web1, tcp, 9090), no(appClient, web1, udp, 8080),
				ok(otherClient, web2, tcp, 9090), no(otherClient, web2, tcp, 8080),
				no(appClient, db, tcp, 8080), no(appClient, db, tcp, 5432), no(appClient, db, tcp, 9090),
			},
		},
		{
			name: "named_port_egress",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "db-to-web", sel("app=db"), types(tOut),
					egressRules(allow(peers(podPeer(sel("app=web"))), namedPort(tcp, "http")))),
			},
			flows: []flow{
				ok(db, web1, tcp, 8080), ok(db, web2, tcp, 9090),
				no(db, web1, tcp, 9090), no(db, web2, tcp, 8080), no(db, web1, udp, 8080),
				no(db, api, tcp, 8443), no(db, host, tcp, 8080), no(db, web1, tcp, 9100),
			},
		},
		{
			name: "named_port_egress_any_peer",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "db-http", sel("app=db"), types(tOut),
					egressRules(
						allow(nil, namedPort(tcp, "http"), namedPort(udp, "dns")),
						// An ipBlock's named port: that of the pods in the
						// block declaring it (db's pg, 5432).
						allow(peers(blockPeer("10.244.0.0/16")), namedPort(tcp, "pg")),
					)),
			},
			flows: []flow{
				ok(db, web1, tcp, 8080), ok(db, web2, tcp, 9090), ok(db, api, tcp, 8443), ok(db, api, udp, 53),
				no(db, api, tcp, 53), no(db, api, udp, 8443), no(db, host, tcp, 8080),
				ok(db, db, tcp, 5432), no(db, db, tcp, 5433), no(db, api, tcp, 5432), no(db, otherClient, tcp, 8080),
			},
		},
		{
			name: "end_port",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "range", sel("app=web"),
				ingressRules(allow(peers(podPeer(sel(""))), portRange(tcp, 8000, 8100), portRange(udp, 53, 53))))},
			flows: []flow{
				ok(appClient, web1, tcp, 8000), ok(appClient, web1, tcp, 8050), ok(appClient, web1, tcp, 8100),
				no(appClient, web1, tcp, 7999), no(appClient, web1, tcp, 8101), no(appClient, web1, udp, 8050),
				ok(appClient, web1, udp, 53), no(appClient, web1, udp, 54),
			},
		},
		{
			name: "protocols_udp_sctp",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "proto", sel(""),
				ingressRules(allow(nil, port(udp, 53), port(sctp, 3868), protoOnly(udp))),
				egressRules(allow(nil, protoOnly(sctp))))},
			flows: []flow{
				ok(appClient, web1, udp, 53), ok(appClient, web1, udp, 5353), ok(appClient, web1, sctp, 3868),
				no(appClient, web1, tcp, 53), no(appClient, web1, sctp, 3869),
				ok(web1, api, sctp, 1), no(web1, api, tcp, 8443), no(web1, api, udp, 53),
			},
		},
		{
			name: "egress_ipblock_except",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "db-out", sel("app=db"), types(tOut), egressRules(
					allow(peers(blockPeer("10.244.128.0/17", "10.244.200.0/24", "10.244.201.7/32", "10.244.0.0/24")), port(tcp, 443)))),
				netpol("app", "web-out", sel("app=web"), types(tOut), egressRules(
					allow(peers(blockPeer("0.0.0.0/0", "10.244.1.0/24"))))),
			},
			flows: []flow{
				ok(db, "10.244.150.1", tcp, 443), no(db, "10.244.200.5", tcp, 443), no(db, "10.244.201.7", tcp, 443),
				ok(db, "10.244.201.8", tcp, 443), no(db, "10.244.150.1", tcp, 80), no(db, web1, tcp, 443),
				ok(web1, otherClient, udp, 53), ok(web2, "10.244.250.1", tcp, 1), no(web1, db, tcp, 5432), no(web1, api, tcp, 8443),
			},
		},
		{
			name: "stacked_policies_or",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "a-client-80", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=client"))), port(tcp, 80)))),
				netpol("app", "b-other-443", sel("app=web"), ingressRules(allow(peers(nsPeer(sel("team=b"))), port(tcp, 443)))),
				netpol("app", "c-same-as-a", sel("tier=front"), ingressRules(allow(peers(podPeer(sel("app=client"))), port(tcp, 80)))),
			},
			flows: []flow{
				ok(appClient, web1, tcp, 80), no(appClient, web1, tcp, 443),
				ok(otherClient, web2, tcp, 443), no(otherClient, web2, tcp, 80),
			},
		},
		{
			name: "empty_from",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "web-80", sel("app=web"), ingressRules(allow(nil, port(tcp, 80)))),
				netpol("app", "db-all", sel("app=db"), ingressRules(allow(nil))),
			},
			flows: []flow{
				ok(mon, web1, tcp, 80), ok(ghost, web2, tcp, 80), ok("10.244.99.1", web1, tcp, 80), no(mon, web1, tcp, 81),
				ok(mon, db, udp, 1), ok(ghost, db, tcp, 5432),
			},
		},
		{
			name: "policy_types_inferred",
			policies: []*networkingv1.NetworkPolicy{
				// Egress rules and no policyTypes: Ingress and Egress.
				netpol("app", "db-egress", sel("app=db"), egressRules(allow(peers(podPeer(sel("app=web")))))),
				// Only ingress rules: Ingress only.
				netpol("app", "web-ingress", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=db")))))),
				// policyTypes Egress: the ingress rules are ignored.
				netpol("other", "api-egress", sel(""), types(tOut), ingressRules(allow(nil))),
			},
			flows: []flow{
				ok(db, web1, tcp, 80), no(db, api, tcp, 8443), no(web1, db, tcp, 5432),
				no(appClient, web1, tcp, 80), ok(web1, otherClient, tcp, 80),
				no(api, otherClient, tcp, 80), ok(otherClient, api, tcp, 8443),
			},
		},
		{
			name: "pod_with_no_policy_is_open",
			policies: []*networkingv1.NetworkPolicy{
				netpol("other", "elsewhere", sel("app=nothing"), types(tIn, tOut)),
			},
			flows: []flow{
				ok(web1, api, tcp, 80), ok(appClient, db, udp, 53), ok(api, mon, tcp, 9090),
			},
		},
		{
			name: "host_network_not_policed",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "all", sel(""), types(tIn, tOut),
					ingressRules(allow(peers(podPeer(sel("app=client"))))),
					egressRules(allow(peers(podPeer(sel("app=client")))))),
			},
			flows: []flow{
				ok(appClient, web1, tcp, 80), no(host, web1, tcp, 80), no(web1, host, tcp, 80),
				ok(host, otherClient, tcp, 80), ok(otherClient, host, tcp, 80), ok(web1, appClient, tcp, 80),
			},
		},
		{
			name: "pod_without_address",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "web", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=web")))))),
			},
			flows: []flow{ok(web2, web1, tcp, 80), no(db, web1, tcp, 80)},
		},
		{
			name:     "log_drops",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "deny", sel("app=db"), types(tIn, tOut))},
			edit:     func(in *Input) { in.LogDrops = true },
			flows:    []flow{no(web1, db, tcp, 5432), no(db, web1, tcp, 80), ok(web1, web2, tcp, 80)},
		},
		{
			name: "ipv6",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "web", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=client")), blockPeer("fd10:0:0:2::/64")), port(tcp, 80)))),
				netpol("app", "db-out", sel("app=db"), types(tOut), egressRules(
					allow(peers(blockPeer("10.244.0.0/16"))),
					allow(peers(blockPeer("::/0", "fd10::/64")), port(udp, 53)))),
			},
			edit: func(in *Input) {
				in.Pods = append(in.Pods,
					pod("app", "client6", "n2", "10.244.2.11 fd10::2:11", "app=client"),
					pod("app", "web6", testNode, "fd10::1:13 10.244.1.13", "app=web"))
				for i := range in.Pods {
					if in.Pods[i].Name == "db" {
						in.Pods[i].IPs = append(in.Pods[i].IPs, netip.MustParseAddr("fd10::1:12"))
					}
				}
			},
			v6: true,
			flows: []flow{
				ok("app/client6", "app/web6", tcp, 80), no("app/client6", "app/web6", tcp, 81),
				ok("fd10:0:0:2::99", "app/web6", tcp, 80), no("fd10:0:0:3::1", "app/web6", tcp, 80),
				ok(db, "fd10:1::53", udp, 53), no(db, "fd10::53", udp, 53), no(db, "fd10:1::53", tcp, 53),
				ok("app/web6", "app/client6", tcp, 22),
			},
		},
		{
			// Every pod but pending, ghost/x and the host-network one is
			// dual-stack: a policy polices both families of a pod, its pod
			// peers are both addresses of theirs, and an ipBlock is of one
			// family only.
			name: "dual_stack",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "web", sel("app=web"), ingressRules(
					allow(peers(podPeer(sel("app=client"))), port(tcp, 80)),
					allow(peers(blockPeer("10.244.2.0/24")), port(tcp, 8080)),
					allow(peers(blockPeer("fd10::2:0/112", "fd10::2:20/128", "10.244.2.0/24")), namedPort(tcp, "http")))),
				netpol("app", "db-out", sel("app=db"), types(tOut), egressRules(
					allow(peers(blockPeer("fd10::/64", "fd10::1:0/112")), portRange(tcp, 8000, 8100)),
					allow(peers(podNSPeer(sel("app=api"), sel("team=b"))), namedPort(tcp, "http")),
					allow(peers(blockPeer("10.244.0.0/16")), port(udp, 53)))),
			},
			edit: dualStack,
			flows: []flow{
				ok(appClient, web1, tcp, 80), ok(otherClient, web1, tcp, 8080), no(otherClient, web1, tcp, 80),
				ok(otherClient, web2, tcp, 8080), no(otherClient, web2, tcp, 9090), no(mon, web2, tcp, 9090),
				ok(db, "10.244.9.9", udp, 53), no(db, "10.244.9.9", tcp, 8050), ok(db, api, tcp, 8443),
				no(db, api, tcp, 8444), no(db, api, udp, 8444), no(db, web1, tcp, 8080),
				ok(web1, api, tcp, 8443), ok(otherClient, api, udp, 53),
			},
			flows6: []flow{
				ok(appClient, web1, tcp, 80), ok(appClient, web2, tcp, 80), no(otherClient, web1, tcp, 80),
				no(otherClient, web1, tcp, 8080), no(otherClient, web2, tcp, 9090), // excepted
				ok(mon, web2, tcp, 9090), no(mon, web2, tcp, 8080), ok(mon, web1, tcp, 8080), no(mon, web1, tcp, 9100),
				ok("fd10::2:99", web1, tcp, 8080), no("fd10::3:99", web1, tcp, 8080),
				ok(db, "fd10::9", tcp, 8050), ok(db, "fd10::9", tcp, 8100), no(db, "fd10::9", tcp, 8101),
				no(db, "fd10::1:99", tcp, 8050), no(db, "fd10:1::1", tcp, 8050), no(db, "fd10::9", udp, 53),
				ok(db, api, tcp, 8443), no(db, api, tcp, 8444), no(db, api, udp, 8444), no(db, web1, tcp, 8080),
				ok(web1, api, tcp, 8443), ok(otherClient, api, udp, 53),
			},
		},
		{
			// Blocks in IPv4-mapped form (which strict API validation
			// refuses): no address is in one, and no set holds one.
			name: "ipv6_ipblock_mapped",
			policies: []*networkingv1.NetworkPolicy{
				netpol("app", "web", sel("app=web"), ingressRules(
					allow(peers(blockPeer("::ffff:10.244.0.0/112"))),
					allow(peers(blockPeer("::/0", "::ffff:0:0/96", "fd10::2:20/128")), port(tcp, 80)))),
			},
			edit: dualStack,
			flows: []flow{
				no(appClient, web1, tcp, 8080), no(otherClient, web2, tcp, 80),
			},
			flows6: []flow{
				ok(appClient, web1, tcp, 80), no(otherClient, web1, tcp, 80), no(appClient, web1, tcp, 8080),
			},
		},
		{
			name:     "ipv6_requested_without_pods",
			policies: []*networkingv1.NetworkPolicy{netpol("app", "deny", sel("app=db"), types(tIn))},
			edit:     func(in *Input) { in.IPv6 = true },
			// The IPv6 chains police app/db by its HostIf; no pod has an
			// IPv6 address yet, so no flow names it.
			v6:    true,
			flows: []flow{ok("fd10::2:1", "fd10::1:12", tcp, 80)},
		},
	}
}

// dualStack gives the world's IPv4-only pods an IPv6 address each, but
// app/pending (none yet), app/host (host network) and ghost/x.
func dualStack(in *Input) {
	for i := range in.Pods {
		p := &in.Pods[i]
		if p.HostNetwork || len(p.IPs) != 1 || !p.IPs[0].Is4() || p.Namespace == "ghost" {
			continue
		}
		// 10.244.N.M becomes fd10::N:M (in hex digits as written).
		b := p.IPs[0].As4()
		p.IPs = append(p.IPs, netip.MustParseAddr(fmt.Sprintf("fd10::%d:%d", b[2], b[3])))
	}
}

func caseInput(tc compileCase) Input {
	pods, nss := world()
	in := Input{Node: testNode, Pods: pods, Namespaces: nss, Policies: tc.policies, ClusterPolicies: tc.cluster}
	if tc.edit != nil {
		tc.edit(&in)
	}
	return in
}

func TestCompile(t *testing.T) {
	for _, tc := range compileCases() {
		t.Run(tc.name, func(t *testing.T) {
			in := caseInput(tc)
			rs := Compile(in)
			checkGolden(t, tc.name, rs.String())
			checkValues(t, rs)
			for _, fam := range []struct {
				v6    bool
				flows []flow
			}{{tc.v6, tc.flows}, {true, tc.flows6}} {
				for _, f := range fam.flows {
					fl := Flow{Src: resolve(t, in.Pods, f.src, fam.v6), Dst: resolve(t, in.Pods, f.dst, fam.v6), Protocol: f.proto, DstPort: f.port}
					if fl.Src == fl.Dst {
						// A pod talking to itself goes through lo, not FORWARD.
						continue
					}
					if fl.Src.Is6() != fam.v6 || fl.Dst.Is6() != fam.v6 {
						t.Fatalf("%s -> %s: not an %s flow", fl.Src, fl.Dst, ipFamily(fam.v6))
					}
					got, why := rs.Allowed(fl)
					if got != f.want {
						t.Errorf("%s -> %s (%s) %s/%d: allowed %t (%s), want %t", f.src, f.dst, ipFamily(fam.v6), f.proto, f.port, got, why, f.want)
					}
					if want := referenceAllowed(in, fl); want != f.want {
						t.Errorf("%s -> %s (%s) %s/%d: the reference says %t, the table %t", f.src, f.dst, ipFamily(fam.v6), f.proto, f.port, want, f.want)
					}
				}
			}
		})
	}
}

// checkValues checks what consumers read instead of the rules' arguments:
// each rule's arguments are those its values render, each chain's kind fits
// its place, and each pod's Sets are the sets its chains match.
func checkValues(t *testing.T, rs Ruleset) {
	t.Helper()
	podChains, tailChains := map[string]bool{}, map[string]bool{}
	for _, pp := range rs.Pods {
		podChains[pp.IngressChain], podChains[pp.EgressChain] = true, true
		tailChains[pp.IngressTailChain], tailChains[pp.EgressTailChain] = true, true
	}
	for _, s := range rs.Sets {
		for _, m := range s.Members {
			if err := memberOfFamily(s.Type, s.IPv6, m); err != nil {
				t.Errorf("set %s (%s, %s): member %q: %v", s.Name, s.Type, familyName(s.IPv6), m, err)
			}
		}
	}
	used := map[string][]string{}
	for _, c := range rs.Chains {
		want := DispatchChain
		switch {
		case c.Name == ChainPolicy:
			want = EntryChain
		case podChains[c.Name]:
			want = PodChain
		case tailChains[c.Name]:
			want = TailChain
		case !strings.HasPrefix(c.Name, dispatchFromPrefix) && !strings.HasPrefix(c.Name, dispatchToPrefix):
			t.Errorf("chain %s: neither ChainPolicy, nor a pod's, nor dispatch", c.Name)
		}
		if c.Kind != want {
			t.Errorf("chain %s: kind %d, want %d", c.Name, c.Kind, want)
		}
		for _, r := range c.Rules {
			if got := r.Render().Args; !slices.Equal(got, r.Args) {
				t.Errorf("chain %s: rule %q renders as %q", c.Name, r.Args, got)
			}
			for _, m := range r.Sets {
				used[c.Name] = append(used[c.Name], m.Name)
			}
		}
	}
	for key, pp := range rs.Pods {
		var want []string
		for _, c := range []string{pp.IngressChain, pp.EgressChain, pp.IngressTailChain, pp.EgressTailChain} {
			if c != "" {
				want = append(want, used[c]...)
			}
		}
		slices.Sort(want)
		if want = slices.Compact(want); !slices.Equal(pp.Sets, want) {
			t.Errorf("pod %s: sets %q, its chains match %q", key, pp.Sets, want)
		}
	}
}

// memberOfFamily checks that a set member is an address or prefix of the
// set's family, as an ipset of that family holds it: not IPv4-mapped, no
// zone, no /0.
func memberOfFamily(typ string, v6 bool, m string) error {
	text, _, _ := strings.Cut(m, " ")
	if typ == "hash:ip,port" {
		text, _, _ = strings.Cut(text, ",")
	}
	var a netip.Addr
	if p, err := netip.ParsePrefix(text); err == nil && typ == "hash:net" {
		if p.Bits() == 0 {
			return fmt.Errorf("a /0")
		}
		a = p.Addr()
	} else if a, err = netip.ParseAddr(text); err != nil {
		return err
	}
	if a.Is6() != v6 || a.Is4In6() || a.Zone() != "" {
		return fmt.Errorf("not an address of family %s", familyName(v6))
	}
	return nil
}

func TestDeterministic(t *testing.T) {
	for _, tc := range compileCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := Compile(caseInput(tc))
			r := rand.New(rand.NewPCG(1, 2))
			for range 5 {
				in := caseInput(tc)
				r.Shuffle(len(in.Pods), func(i, j int) { in.Pods[i], in.Pods[j] = in.Pods[j], in.Pods[i] })
				r.Shuffle(len(in.Namespaces), func(i, j int) { in.Namespaces[i], in.Namespaces[j] = in.Namespaces[j], in.Namespaces[i] })
				r.Shuffle(len(in.Policies), func(i, j int) { in.Policies[i], in.Policies[j] = in.Policies[j], in.Policies[i] })
				for i := range in.Pods {
					ips := in.Pods[i].IPs
					r.Shuffle(len(ips), func(a, b int) { ips[a], ips[b] = ips[b], ips[a] })
				}
				got := Compile(in)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("compiling shuffled input differs:\n--- first\n%s\n--- shuffled\n%s", want.String(), got.String())
				}
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, tc := range compileCases() {
		rs := Compile(caseInput(tc))
		for _, c := range rs.Chains {
			if len(c.Name) > maxChainName || !strings.HasPrefix(c.Name, ChainPrefix) {
				t.Errorf("%s: chain name %q: longer than %d or without %s", tc.name, c.Name, maxChainName, ChainPrefix)
			}
		}
		for _, s := range rs.Sets {
			if len(s.Name) > maxSetName || !strings.HasPrefix(s.Name, SetPrefix) {
				t.Errorf("%s: set name %q: longer than %d or without %s", tc.name, s.Name, maxSetName, SetPrefix)
			}
		}
	}
	// Long names change nothing, and chain names are stable.
	long := strings.Repeat("n", 63)
	in, egr := podChainNames(long + "/" + strings.Repeat("p", 253))
	if len(in) > maxChainName || len(egr) > maxChainName || in == egr {
		t.Errorf("pod chains %q, %q", in, egr)
	}
	if in, _ := podChainNames("app/web1"); in != "TERN-PI-"+nameHash("app/web1") || len(in) != 24 {
		t.Errorf("ingress chain of app/web1 is %q", in)
	}
	if p := logPrefix(true, long+"/"+strings.Repeat("p", 253)); len(p) > maxLogPrefix || strings.ContainsAny(p, " \"") {
		t.Errorf("log prefix %q", p)
	}
	if a, b := setName(false, "k"), setName(true, "k"); a == b {
		t.Errorf("IPv4 and IPv6 sets of the same meaning share the name %s", a)
	}
}

// TestRulesetShape checks the entry chain's fixed rules, the dispatch, and
// that sets are shared and sorted.
func TestRulesetShape(t *testing.T) {
	in := caseInput(compileCases()[0])
	in.Policies = []*networkingv1.NetworkPolicy{
		netpol("app", "a", sel("app=web"), types(tIn, tOut),
			ingressRules(allow(peers(podPeer(sel("app=client"))), port(tcp, 80))),
			egressRules(allow(peers(podPeer(sel("app=client")))))),
		// The same peer in another policy and spelled differently: one set.
		netpol("app", "b", sel("app=db"), ingressRules(allow(peers(podPeer(expr("app", metav1.LabelSelectorOpIn, "client")))))),
	}
	rs := Compile(in)
	rules := func(name string) []string {
		var out []string
		for _, c := range rs.Chains {
			if c.Name == name && !c.IPv6 {
				for _, r := range c.Rules {
					out = append(out, r.String())
				}
				return out
			}
		}
		t.Fatalf("no IPv4 chain %s", name)
		return nil
	}
	// The test world's veths are not of tern's shape: exact rules at the
	// dispatch roots.
	for name, want := range map[string][]string{
		ChainPolicy: {
			"-m connmark --mark 0x1000000/0x1000000 -j DROP",
			"-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
			"-i tern+ -j TERN-PDF",
			"-o tern+ -j TERN-PDT",
		},
		"TERN-PDF": {
			"-i ternpending -g " + rs.Pods["app/pending"].EgressChain,
			"-i ternweb1 -g " + rs.Pods["app/web1"].EgressChain,
			"-i ternweb2 -g " + rs.Pods["app/web2"].EgressChain,
		},
		"TERN-PDT": {
			"-o terndb -g " + rs.Pods["app/db"].IngressChain,
			"-o ternpending -g " + rs.Pods["app/pending"].IngressChain,
			"-o ternweb1 -g " + rs.Pods["app/web1"].IngressChain,
			"-o ternweb2 -g " + rs.Pods["app/web2"].IngressChain,
		},
	} {
		if got := rules(name); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if len(rs.Sets) != 1 {
		t.Errorf("want one shared set, got %d:\n%s", len(rs.Sets), rs.String())
	}
	for i := 1; i < len(rs.Chains); i++ {
		a, b := rs.Chains[i-1], rs.Chains[i]
		if a.IPv6 == b.IPv6 && a.Name >= b.Name {
			t.Errorf("chains not sorted: %s before %s", a.Name, b.Name)
		}
	}
}

func TestOddInput(t *testing.T) {
	pods, nss := world()
	bad := netpol("app", "bad", sel(""), types(tIn, tOut),
		ingressRules(
			allow(peers(networkingv1.NetworkPolicyPeer{})), // no selector at all
			allow(peers(podPeer(expr("app", "Matches", "x")))),
			allow(peers(podPeer(expr("app", metav1.LabelSelectorOpIn)))),
			allow(peers(blockPeer("not-a-cidr"))),
			allow(peers(blockPeer("10.244.0.0/16", "junk"))),
			allow(peers(blockPeer("10.244.1.0/24", "10.244.0.0/16"))), // except covers all
			allow(nil, port("ICMP", 1), port(tcp, 0), port(tcp, 70000), portRange(tcp, 90, 80), namedPort(tcp, "")),
		),
		egressRules(allow(peers(blockPeer("10.244.0.0/16", "fd10::/64", "10.245.0.0/16")), portRange(tcp, 80, 80))))
	in := Input{Node: testNode, Pods: pods, Namespaces: nss,
		Policies: []*networkingv1.NetworkPolicy{nil, bad, bad}}
	in.Pods = append(in.Pods, Pod{Namespace: "app", Name: "odd", Node: testNode, HostIf: "ternodd",
		IPs: []netip.Addr{{}, netip.MustParseAddr("::ffff:10.244.1.99")}, Ports: []NamedPort{{"x", "ICMP", 1}, {"y", tcp, 0}}})
	rs := Compile(in)
	checkGolden(t, "odd_input", rs.String())
	for _, src := range []string{"10.244.2.10", "10.244.1.20", "10.244.200.1"} {
		if got, why := rs.Allowed(Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.244.1.10"), Protocol: tcp, DstPort: 80}); got {
			t.Errorf("%s -> web1 allowed by invalid rules: %s", src, why)
		}
	}
	if got, why := rs.Allowed(Flow{Src: netip.MustParseAddr("10.244.1.99"), Dst: netip.MustParseAddr("10.244.9.9"), Protocol: tcp, DstPort: 80}); !got {
		t.Errorf("app/odd (4in6 address) -> 10.244.9.9:80 denied: %s", why)
	}
	if empty := Compile(Input{}); empty.String() == "" {
		t.Error("empty input renders nothing")
	}
}

// ExampleRuleset_Allowed shows the reason strings.
func ExampleRuleset_Allowed() {
	pods, nss := world()
	rs := Compile(Input{Node: testNode, Pods: pods, Namespaces: nss, Policies: []*networkingv1.NetworkPolicy{
		netpol("app", "web", sel("app=web"), ingressRules(allow(peers(podPeer(sel("app=client"))), port(tcp, 80)))),
	}})
	for _, f := range []Flow{
		{Src: netip.MustParseAddr("10.244.2.10"), Dst: netip.MustParseAddr("10.244.1.10"), Protocol: tcp, DstPort: 80},
		{Src: netip.MustParseAddr("10.244.2.20"), Dst: netip.MustParseAddr("10.244.1.10"), Protocol: tcp, DstPort: 80},
		{Src: netip.MustParseAddr("10.244.2.20"), Dst: netip.MustParseAddr("10.244.1.12"), Protocol: tcp, DstPort: 80},
	} {
		ok, why := rs.Allowed(f)
		fmt.Println(ok, strings.ReplaceAll(why, rs.Sets[0].Name, "tern-<set>"))
	}
	// Output:
	// true allowed: ingress of app/web1 by `-m set --match-set tern-<set> src -p tcp -m tcp --dport 80 -j RETURN`
	// false ingress of app/web1: denied, no rule of app/web allows it
	// true allowed: not isolated
}
