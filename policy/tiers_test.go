package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Builders of ClusterNetworkPolicies for tests.

const (
	admin    = cnpv1.AdminTier
	baseline = cnpv1.BaselineTier
	accept   = cnpv1.ClusterNetworkPolicyRuleActionAccept
	deny     = cnpv1.ClusterNetworkPolicyRuleActionDeny
	pass     = cnpv1.ClusterNetworkPolicyRuleActionPass
)

type cnpOpt func(*cnpv1.ClusterNetworkPolicy)

// cnp builds a ClusterNetworkPolicy of tier and priority whose subject is
// the pods podSel selects in the namespaces nsSel selects (podSel nil: the
// namespaces subject).
func cnp(name string, t cnpv1.Tier, prio int32, nsSel, podSel *metav1.LabelSelector, opts ...cnpOpt) *cnpv1.ClusterNetworkPolicy {
	p := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Tier, p.Spec.Priority = t, prio
	if podSel == nil {
		p.Spec.Subject.Namespaces = nsSel
	} else {
		p.Spec.Subject.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *nsSel, PodSelector: *podSel}
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// cpeer is a peer of either direction: namespaces, pods or networks.
type cpeer struct {
	namespaces *metav1.LabelSelector
	pods       *cnpv1.NamespacedPod
	networks   []cnpv1.CIDR
	nodes      *metav1.LabelSelector
}

func cNS(s *metav1.LabelSelector) cpeer { return cpeer{namespaces: s} }
func cPods(ns, pods *metav1.LabelSelector) cpeer {
	return cpeer{pods: &cnpv1.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pods}}
}
func cNets(cidrs ...string) cpeer {
	p := cpeer{networks: []cnpv1.CIDR{}}
	for _, c := range cidrs {
		p.networks = append(p.networks, cnpv1.CIDR(c))
	}
	return p
}

// cUnknown is a peer that sets no field this version knows.
func cUnknown() cpeer { return cpeer{} }

func cTCP(n int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: n}}}
}
func cUDP(n int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1.Port{Number: n}}}
}
func cSCTP() cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{SCTP: &cnpv1.ClusterNetworkPolicyProtocolSCTP{}}
}
func cTCPRange(lo, hi int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Range: &cnpv1.PortRange{Start: lo, End: hi}}}}
}
func cNamed(name string) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{DestinationNamedPort: name}
}

type crule struct {
	action cnpv1.ClusterNetworkPolicyRuleAction
	peers  []cpeer
	protos []cnpv1.ClusterNetworkPolicyProtocol
}

func cr(a cnpv1.ClusterNetworkPolicyRuleAction, peers []cpeer, protos ...cnpv1.ClusterNetworkPolicyProtocol) crule {
	return crule{a, peers, protos}
}

func cpeers(ps ...cpeer) []cpeer { return ps }

func cIngress(rs ...crule) cnpOpt {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		for _, r := range rs {
			ir := cnpv1.ClusterNetworkPolicyIngressRule{Action: r.action, Protocols: r.protos}
			for _, pe := range r.peers {
				ir.From = append(ir.From, cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.namespaces, Pods: pe.pods})
			}
			p.Spec.Ingress = append(p.Spec.Ingress, ir)
		}
	}
}

func cEgress(rs ...crule) cnpOpt {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		for _, r := range rs {
			er := cnpv1.ClusterNetworkPolicyEgressRule{Action: r.action, Protocols: r.protos}
			for _, pe := range r.peers {
				er.To = append(er.To, cnpv1.ClusterNetworkPolicyEgressPeer{Namespaces: pe.namespaces, Pods: pe.pods, Networks: pe.networks, Nodes: pe.nodes})
			}
			p.Spec.Egress = append(p.Spec.Egress, er)
		}
	}
}

// The reference: ClusterNetworkPolicy's tiers written straight from the
// API's documentation, over the NetworkPolicy reference.

type refVerdict int

const (
	refNone refVerdict = iota // no rule of the tier matched
	refAccept
	refDeny
	refPass
)

// refTiersAllow judges the traffic of pod (the policed end) in direction
// dir with peer at the other end: the Admin tier, NetworkPolicy, the
// Baseline tier, the default.
func refTiersAllow(in Input, pod *Pod, dir networkingv1.PolicyType, peer netip.Addr, peerPod *Pod, proto corev1.Protocol, dport int32) bool {
	switch refTier(in, admin, pod, dir, peer, peerPod, proto, dport) {
	case refAccept:
		return true
	case refDeny:
		return false
	}
	if refIsolated(in, pod, dir) {
		return refDirectionAllows(in, pod, dir, peer, peerPod, proto, dport)
	}
	return refTier(in, baseline, pod, dir, peer, peerPod, proto, dport) != refDeny
}

// refIsolated: some NetworkPolicy selects pod for dir.
func refIsolated(in Input, pod *Pod, dir networkingv1.PolicyType) bool {
	return slices.ContainsFunc(in.Policies, func(np *networkingv1.NetworkPolicy) bool { return refIsolates(np, pod, dir) })
}

// refIsolates: np selects pod for dir (policyTypes as the API server
// defaults them when empty).
func refIsolates(np *networkingv1.NetworkPolicy, pod *Pod, dir networkingv1.PolicyType) bool {
	if np == nil || np.Namespace != pod.Namespace || !refSelects(&np.Spec.PodSelector, pod.Labels) {
		return false
	}
	types := np.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{tIn}
		if len(np.Spec.Egress) > 0 {
			types = append(types, tOut)
		}
	}
	return slices.Contains(types, dir)
}

func refNSLabels(in Input, ns string) map[string]string {
	for _, n := range in.Namespaces {
		if n.Name == ns {
			return n.Labels
		}
	}
	return nil
}

// refTier is the first decision of the tier's policies selecting pod, in
// priority order (then by name), each policy's rules in order.
func refTier(in Input, t cnpv1.Tier, pod *Pod, dir networkingv1.PolicyType, peer netip.Addr, peerPod *Pod, proto corev1.Protocol, dport int32) refVerdict {
	var ps []*cnpv1.ClusterNetworkPolicy
	for _, p := range in.ClusterPolicies {
		if p.Spec.Tier != t {
			continue
		}
		s := p.Spec.Subject
		switch {
		case s.Namespaces != nil && s.Pods == nil:
			if !refSelects(s.Namespaces, refNSLabels(in, pod.Namespace)) {
				continue
			}
		case s.Pods != nil && s.Namespaces == nil:
			if !refSelects(&s.Pods.NamespaceSelector, refNSLabels(in, pod.Namespace)) || !refSelects(&s.Pods.PodSelector, pod.Labels) {
				continue
			}
		default:
			continue
		}
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b *cnpv1.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), strings.Compare(a.Name, b.Name))
	})
	for _, p := range ps {
		type rule struct {
			action cnpv1.ClusterNetworkPolicyRuleAction
			peers  []cpeer
			protos []cnpv1.ClusterNetworkPolicyProtocol
		}
		var rules []rule
		if dir == tIn {
			for _, r := range p.Spec.Ingress {
				ru := rule{action: r.Action, protos: r.Protocols}
				for _, pe := range r.From {
					ru.peers = append(ru.peers, cpeer{namespaces: pe.Namespaces, pods: pe.Pods})
				}
				rules = append(rules, ru)
			}
		} else {
			for _, r := range p.Spec.Egress {
				ru := rule{action: r.Action, protos: r.Protocols}
				for _, pe := range r.To {
					ru.peers = append(ru.peers, cpeer{namespaces: pe.Namespaces, pods: pe.Pods, networks: pe.Networks, nodes: pe.Nodes})
				}
				rules = append(rules, ru)
			}
		}
		// A named port is the destination's.
		dstPod := pod
		if dir == tOut {
			dstPod = peerPod
		}
		for _, r := range rules {
			peerOK, unknown := false, false
			for _, pe := range r.peers {
				m, ok := refClusterPeer(in, pe, peer, peerPod)
				unknown = unknown || !ok
				peerOK = peerOK || m
			}
			protoOK := len(r.protos) == 0
			for _, pr := range r.protos {
				m, ok := refClusterProto(pr, proto, dport, dstPod)
				unknown = unknown || !ok
				protoOK = protoOK || m
			}
			if unknown && r.action != accept {
				// Fails closed: a Deny or Pass rule denies all.
				return refDeny
			}
			if !peerOK || !protoOK {
				continue
			}
			switch r.action {
			case accept:
				return refAccept
			case deny:
				return refDeny
			case pass:
				return refPass
			}
		}
	}
	return refNone
}

// refClusterPeer: whether the peer matches, and whether it is one the
// reference understands (exactly one known field).
func refClusterPeer(in Input, pe cpeer, addr netip.Addr, peerPod *Pod) (match, ok bool) {
	n := 0
	for _, set := range []bool{pe.namespaces != nil, pe.pods != nil, pe.networks != nil} {
		if set {
			n++
		}
	}
	if n != 1 || pe.nodes != nil {
		return false, false
	}
	switch {
	case pe.namespaces != nil:
		return peerPod != nil && refSelects(pe.namespaces, refNSLabels(in, peerPod.Namespace)), true
	case pe.pods != nil:
		return peerPod != nil && refSelects(&pe.pods.NamespaceSelector, refNSLabels(in, peerPod.Namespace)) &&
			refSelects(&pe.pods.PodSelector, peerPod.Labels), true
	}
	for _, c := range pe.networks {
		p, err := netip.ParsePrefix(string(c))
		if err != nil {
			return false, false
		}
		if p.Contains(addr) {
			match = true
		}
	}
	return match, true
}

func refClusterProto(pr cnpv1.ClusterNetworkPolicyProtocol, proto corev1.Protocol, dport int32, dstPod *Pod) (match, ok bool) {
	var want corev1.Protocol
	var port *cnpv1.Port
	n := 0
	if pr.TCP != nil {
		n, want, port = n+1, tcp, pr.TCP.DestinationPort
	}
	if pr.UDP != nil {
		n, want, port = n+1, udp, pr.UDP.DestinationPort
	}
	if pr.SCTP != nil {
		n, want, port = n+1, sctp, pr.SCTP.DestinationPort
	}
	if pr.DestinationNamedPort != "" {
		n++
	}
	if n != 1 {
		return false, false
	}
	if pr.DestinationNamedPort != "" {
		if dstPod == nil {
			return false, true
		}
		for _, np := range dstPod.Ports {
			if np.Name == pr.DestinationNamedPort && cmp.Or(np.Protocol, tcp) == proto && np.Port == dport {
				return true, true
			}
		}
		return false, true
	}
	if want != proto {
		return false, true
	}
	switch {
	case port == nil:
		return true, true
	case port.Range != nil:
		return dport >= port.Range.Start && dport <= port.Range.End, true
	}
	return dport == port.Number, true
}

// Random ClusterNetworkPolicies for TestAgainstReference.

var (
	genCPeers = []cpeer{
		cNS(sel("")), cNS(sel("team=b")), cNS(expr("team", metav1.LabelSelectorOpNotIn, "a")),
		cPods(sel(""), sel("app=web")), cPods(sel("team=a"), sel("app=client")),
		cPods(expr("env", metav1.LabelSelectorOpExists), expr("tier", metav1.LabelSelectorOpIn, "front", "back")),
		cNets("10.244.1.0/24"), cNets("10.244.0.0/16", "fd10::/64"), cNets("0.0.0.0/0"), cNets("fd10::2:0/112"),
		cNets("10.244.2.16/28", "10.244.1.12/32"),
	}
	genCProtos = []cnpv1.ClusterNetworkPolicyProtocol{
		cTCP(80), cTCP(8080), cUDP(53), cTCPRange(8000, 8100), cNamed("http"), cNamed("dns"), cNamed("pg"), cSCTP(),
	}
	genActions = []cnpv1.ClusterNetworkPolicyRuleAction{accept, deny, pass}
)

func (g policyGen) crules(egress bool) []crule {
	r := g.r
	var rs []crule
	for range 1 + r.IntN(3) {
		ru := crule{action: genActions[r.IntN(len(genActions))]}
		for range 1 + r.IntN(2) {
			pe := genCPeers[r.IntN(len(genCPeers))]
			if !egress && pe.networks != nil {
				pe = genCPeers[r.IntN(6)]
			}
			if r.IntN(40) == 0 {
				pe = cUnknown()
			}
			ru.peers = append(ru.peers, pe)
		}
		if r.IntN(2) > 0 {
			for range 1 + r.IntN(2) {
				ru.protos = append(ru.protos, genCProtos[r.IntN(len(genCProtos))])
			}
		}
		rs = append(rs, ru)
	}
	return rs
}

// clusterPolicies are zero to three random ClusterNetworkPolicies of
// either tier, over a few priorities.
func (g policyGen) clusterPolicies() []*cnpv1.ClusterNetworkPolicy {
	r := g.r
	var out []*cnpv1.ClusterNetworkPolicy
	for i := range r.IntN(4) {
		t := []cnpv1.Tier{admin, baseline}[r.IntN(2)]
		var opts []cnpOpt
		if r.IntN(3) > 0 {
			opts = append(opts, cIngress(g.crules(false)...))
		}
		if r.IntN(3) > 0 {
			opts = append(opts, cEgress(g.crules(true)...))
		}
		ns := genNSSels[r.IntN(len(genNSSels))]
		var pods *metav1.LabelSelector
		if r.IntN(2) > 0 {
			pods = genPodSels[1+r.IntN(len(genPodSels)-1)]
		}
		out = append(out, cnp(fmt.Sprintf("c%d", i), t, int32(r.IntN(3)*10), ns, pods, opts...))
	}
	return out
}

func TestClusterPolicyProblem(t *testing.T) {
	for _, tc := range []struct {
		p    *cnpv1.ClusterNetworkPolicy
		want string
	}{
		{cnp("ok", admin, 1, sel(""), nil, cIngress(cr(deny, cpeers(cNS(sel(""))), cTCP(80)))), ""},
		{cnp("tier", "Middle", 1, sel(""), nil), `tier "Middle" is neither Admin nor Baseline`},
		{cnp("prio", baseline, 1001, sel(""), nil), "priority 1001 is outside 0-1000"},
		{cnp("unknown-deny", admin, 1, sel(""), nil, cEgress(cr(deny, cpeers(cUnknown(), cNS(sel("")))))),
			"egress rule 1: peer 1 sets no field tern knows (a newer API version?): the Deny rule denies everything"},
		{cnp("unknown-accept", admin, 1, sel(""), nil, cIngress(cr(accept, cpeers(cNS(sel(""))), cnpv1.ClusterNetworkPolicyProtocol{}))),
			"ingress rule 1: protocol 1 sets no field tern knows (a newer API version?): left out of the Accept rule"},
		{cnp("nodes", baseline, 1, sel(""), nil, cEgress(cr(pass, cpeers(cpeer{nodes: sel("")})))),
			"egress rule 1: peer 1 selects nodes or domain names, which tern does not support yet: the Pass rule denies everything"},
		{cnp("range", admin, 1, sel(""), nil, cIngress(cr(accept, cpeers(cNS(sel(""))), cTCPRange(9, 8)))),
			"ingress rule 1: protocol 1 has port range 9-8, not within 1-65535 in order: left out of the Accept rule"},
		{cnp("net", admin, 1, sel(""), nil, cEgress(cr(accept, cpeers(cNets("10.0.0.0/33"))))),
			`egress rule 1: peer 1 has network "10.0.0.0/33", not a CIDR: left out of the Accept rule`},
		{&cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nosubject"}, Spec: cnpv1.ClusterNetworkPolicySpec{Tier: admin}},
			"the subject must set exactly one of namespaces and pods: the policy selects no pod"},
	} {
		got := ClusterPolicyProblem(tc.p)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("%s: problem %q, want %q", tc.p.Name, got, tc.want)
		}
	}
}

// tierCases are the compile cases of ClusterNetworkPolicies: every action
// in every tier, priorities, rule order, Pass to NetworkPolicy and to
// Baseline, named ports, ranges, networks peers, failing closed.
func tierCases() []compileCase {
	const (
		web1, web2, db        = "app/web1", "app/web2", "app/db"
		appClient, host       = "app/client", "app/host"
		otherClient, api, mon = "other/client", "other/api", "ops/mon"
		ghost                 = "ghost/x"
		outside               = "10.244.200.1"
	)
	allNS := cpeers(cNS(sel("")))
	return []compileCase{
		{
			name: "tier_admin_accept_then_deny",
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("team-a", admin, 10, sel("team=a"), nil, cIngress(
				cr(accept, cpeers(cPods(sel(""), sel("app=client"))), cTCP(80)),
				cr(deny, allNS),
			))},
			flows: []flow{
				ok(appClient, web1, tcp, 80), ok(otherClient, db, tcp, 80), no(otherClient, web1, tcp, 81),
				no(mon, db, tcp, 5432), no(appClient, web2, udp, 80), ok(mon, api, tcp, 8443),
				// Not a pod of a namespace: not a peer; the Deny is of namespaces' pods.
				ok(outside, web1, tcp, 22), ok(host, web1, tcp, 80),
			},
		},
		{
			name: "tier_admin_priorities",
			cluster: []*cnpv1.ClusterNetworkPolicy{
				cnp("z-allow-ops", admin, 5, sel(""), nil, cIngress(cr(accept, cpeers(cNS(sel("kubernetes.io/metadata.name=ops")), cNS(expr("team", metav1.LabelSelectorOpDoesNotExist)))))),
				cnp("deny-all", admin, 20, sel(""), nil, cIngress(cr(deny, allNS))),
				// Same priority as z-allow-ops: by name, a-deny-b comes first.
				cnp("a-deny-b", admin, 5, sel(""), nil, cIngress(cr(deny, cpeers(cNS(sel("team=b")))))),
			},
			flows: []flow{
				ok(mon, web1, tcp, 80), ok(mon, api, udp, 53), no(otherClient, web1, tcp, 80),
				no(appClient, db, tcp, 5432), no(otherClient, api, tcp, 8443),
			},
		},
		{
			name: "tier_admin_pass_to_networkpolicy",
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("pass-b", admin, 1, sel(""), nil, cIngress(
				cr(pass, cpeers(cNS(sel("team=b")))),
				cr(deny, cpeers(cNS(sel("")))),
			))},
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(nsPeer(sel("team=b")))), allow(peers(podPeer(sel("app=client"))))))},
			flows: []flow{
				ok(otherClient, web1, tcp, 80), ok(otherClient, db, tcp, 5432), ok(otherClient, api, tcp, 1),
				// Denied by the Admin tier before NetworkPolicy would allow it.
				no(appClient, web1, tcp, 80), no(mon, db, tcp, 5432),
			},
		},
		{
			name:    "tier_baseline_default_deny",
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("default-deny", baseline, 100, sel(""), nil, cIngress(cr(deny, allNS)))},
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web", sel("app=web"),
				ingressRules(allow(peers(podPeer(sel("app=client"))))))},
			flows: []flow{
				ok(appClient, web1, tcp, 80), no(otherClient, web1, tcp, 80), no(appClient, db, tcp, 5432),
				no(mon, api, tcp, 8443), ok(outside, db, tcp, 5432),
			},
		},
		{
			name: "tier_baseline_pass_and_order",
			cluster: []*cnpv1.ClusterNetworkPolicy{
				cnp("b2", baseline, 2, sel(""), nil, cIngress(cr(deny, allNS))),
				cnp("b1", baseline, 1, sel("team=a"), sel("tier=back"), cIngress(cr(pass, cpeers(cNS(sel("team=b")))), cr(accept, cpeers(cNS(sel("team=a")))))),
			},
			flows: []flow{
				ok(otherClient, db, tcp, 5432), ok(appClient, db, tcp, 5432), no(mon, db, tcp, 5432),
				no(appClient, web1, tcp, 80), no(otherClient, api, udp, 53),
			},
		},
		{
			name: "tier_egress_networks",
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("egress", admin, 1, sel("team=a"), sel("app=web"), cEgress(
				cr(accept, cpeers(cNets("10.244.2.0/24")), cUDP(53)),
				cr(deny, cpeers(cNets("10.244.2.0/24", "fd10::/64"))),
				cr(pass, cpeers(cNets("0.0.0.0/0"))),
			))},
			policies: []*networkingv1.NetworkPolicy{netpol("app", "web-egress", sel("app=web"), types(tOut),
				egressRules(allow(peers(podPeer(sel("app=db"))))))},
			flows: []flow{
				no(web1, appClient, tcp, 80), ok(web1, appClient, udp, 53), no(web2, mon, tcp, 80),
				ok(web1, db, tcp, 5432), no(web1, api, tcp, 8443), ok(db, appClient, tcp, 80),
			},
		},
		{
			name: "tier_ports",
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("ports", admin, 1, sel(""), nil,
				cIngress(
					cr(accept, allNS, cNamed("http"), cTCPRange(9000, 9100)),
					cr(deny, allNS, cSCTP(), cUDP(53)),
				),
				cEgress(cr(deny, cpeers(cPods(sel(""), sel("app=web"))), cNamed("metrics"))),
			)},
			policies: []*networkingv1.NetworkPolicy{netpol("other", "deny", nil, types(tIn))},
			flows: []flow{
				ok(mon, web1, tcp, 8080), ok(mon, web2, tcp, 9090), ok(mon, web1, tcp, 9100),
				ok(mon, api, tcp, 8443), ok(mon, api, udp, 8444), no(mon, api, udp, 53), no(mon, api, tcp, 80),
				no(mon, db, sctp, 5432), ok(mon, db, tcp, 5432),
				no(db, web1, tcp, 9100), ok(db, web1, tcp, 8080),
			},
		},
		{
			name: "tier_fail_closed",
			cluster: []*cnpv1.ClusterNetworkPolicy{
				cnp("accept-unknown", admin, 1, sel(""), nil, cIngress(cr(accept, cpeers(cUnknown())))),
				cnp("deny-unknown", admin, 2, sel("team=b"), nil, cIngress(cr(deny, cpeers(cUnknown(), cNS(sel("team=a"))), cTCP(1)))),
				cnp("pass-nodes", baseline, 1, sel("team=a"), sel("app=db"), cEgress(cr(pass, cpeers(cpeer{nodes: sel("")})))),
			},
			flows: []flow{
				ok(mon, web1, tcp, 80), no(mon, api, udp, 53), no(appClient, api, tcp, 80),
				no(db, appClient, tcp, 80), ok(web1, db, tcp, 5432), no(db, outside, tcp, 443),
			},
		},
		{
			name: "tier_dual_stack",
			edit: dualStack,
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("v6", admin, 1, sel(""), sel("app=web"), cEgress(
				cr(deny, cpeers(cNets("fd10::2:0/112"))),
				cr(accept, cpeers(cNS(sel("")))),
			))},
			flows: []flow{ok(web1, appClient, tcp, 80), ok(web1, otherClient, udp, 53), ok(web2, db, tcp, 5432)},
			flows6: []flow{
				no(web1, appClient, tcp, 80), no(web2, mon, udp, 53), ok(web1, db, tcp, 5432),
				ok(db, appClient, tcp, 80),
			},
		},
		{
			name: "tier_log_drops",
			edit: func(in *Input) { in.LogDrops = true },
			cluster: []*cnpv1.ClusterNetworkPolicy{cnp("deny-mon", admin, 1, sel("team=a"), sel("app=db"), cIngress(
				cr(deny, cpeers(cNS(sel("kubernetes.io/metadata.name=ops")), cNS(expr("team", metav1.LabelSelectorOpDoesNotExist)))),
			))},
			policies: []*networkingv1.NetworkPolicy{netpol("app", "db", sel("app=db"), ingressRules(allow(peers(nsPeer(sel(""))))))},
			flows:    []flow{no(mon, db, tcp, 5432), ok(appClient, db, tcp, 5432), no(outside, db, tcp, 5432), no(ghost, db, tcp, 1), ok(appClient, db, udp, 1)},
		},
	}
}

// TestCompilerKeepsClusterPolicyOnStatusChange: a ClusterNetworkPolicy
// whose status changed (a new object, a new resourceVersion, the same
// generation) compiles to nothing new; a new generation compiles afresh.
func TestCompilerKeepsClusterPolicyOnStatusChange(t *testing.T) {
	pods, nss := world()
	p := cnp("deny", admin, 1, sel(""), nil, cIngress(cr(deny, cpeers(cNS(sel("team=b"))))))
	p.UID, p.Generation, p.ResourceVersion = "u1", 1, "10"
	in := Input{Node: testNode, Pods: pods, Namespaces: nss, ClusterPolicies: []*cnpv1.ClusterNetworkPolicy{p}}
	var c Compiler
	first := c.Compile(in)
	q := p.DeepCopy()
	q.ResourceVersion = "11"
	q.Status.Conditions = []metav1.Condition{{Type: "tern.io/Accepted", Status: metav1.ConditionTrue}}
	in.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{q}
	if got := c.Compile(in); c.stats.fresh != 1 || c.stats.same != 1 || !slices.EqualFunc(got.Chains, first.Chains, func(a, b Chain) bool { return a.Name == b.Name }) {
		t.Fatalf("status change: %+v", c.stats)
	}
	r := q.DeepCopy()
	r.Generation, r.ResourceVersion = 2, "12"
	r.Spec.Ingress = nil
	in.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{r}
	if got := c.Compile(in); c.stats.fresh != 2 || len(got.Chains) != 1 || got.Chains[0].Name != ChainPolicy {
		t.Fatalf("new generation: %+v, chains %d", c.stats, len(got.Chains))
	}
}
