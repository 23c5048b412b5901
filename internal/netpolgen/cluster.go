package netpolgen

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// AllowedAll is Allowed with ClusterNetworkPolicies too. The semantics,
// from the API's documentation (policy.networking.k8s.io):
//   - Each direction is judged at its end (egress at the source, ingress at
//     the destination), and a connection needs both.
//   - First the Admin tier: the Admin policies whose subject selects the pod
//     (namespaces: the pods of the namespaces it matches; pods: those its pod
//     selector matches in the namespaces its namespace selector matches), by
//     priority, lowest first, policies of equal priority by name (the API
//     leaves their order open), each one's rules in order. The first rule
//     whose peers and protocols match decides: Accept allows, Deny denies,
//     Pass leaves the tier.
//   - Then NetworkPolicy, for a pod it isolates in that direction: it decides.
//   - Then the Baseline tier the same way, where Accept and Pass allow.
//   - Then: allowed.
//   - A peer: namespaces, every pod of the matching namespaces; pods, the
//     matching pods of the matching namespaces; networks (egress), CIDRs,
//     matched against the peer's address of the connection's family.
//   - A protocol: tcp, udp or sctp with a destination port number or range,
//     or none (the whole protocol); a destination named port is the
//     destination pod's container port of that name, whatever its protocol.
//     No protocols: everything.
func AllowedAll(w World, pols []*networkingv1.NetworkPolicy, cnps []*cnpv1.ClusterNetworkPolicy, from, to Pod, t Target) bool {
	if _, ok := from.Addr(t.IPv6); !ok {
		return false
	}
	if _, ok := to.Addr(t.IPv6); !ok {
		return false
	}
	return allowedTiers(w, pols, cnps, from, to, t, networkingv1.PolicyTypeEgress) &&
		allowedTiers(w, pols, cnps, from, to, t, networkingv1.PolicyTypeIngress)
}

func allowedTiers(w World, pols []*networkingv1.NetworkPolicy, cnps []*cnpv1.ClusterNetworkPolicy, from, to Pod, t Target, dir networkingv1.PolicyType) bool {
	switch tierDecides(w, cnps, cnpv1.AdminTier, from, to, t, dir) {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept:
		return true
	case cnpv1.ClusterNetworkPolicyRuleActionDeny:
		return false
	}
	subject := to
	if dir == networkingv1.PolicyTypeEgress {
		subject = from
	}
	for _, p := range pols {
		if p.Namespace == subject.Namespace && policyTypes(p)[dir] && selects(p.Spec.PodSelector, subject.Labels) {
			return allowedDir(w, pols, from, to, t, dir)
		}
	}
	return tierDecides(w, cnps, cnpv1.BaselineTier, from, to, t, dir) != cnpv1.ClusterNetworkPolicyRuleActionDeny
}

// tierDecides is the action of the first matching rule of the tier for the
// direction, "" when none matches.
func tierDecides(w World, cnps []*cnpv1.ClusterNetworkPolicy, tier cnpv1.Tier, from, to Pod, t Target, dir networkingv1.PolicyType) cnpv1.ClusterNetworkPolicyRuleAction {
	subject, peer := to, from
	if dir == networkingv1.PolicyTypeEgress {
		subject, peer = from, to
	}
	var ps []*cnpv1.ClusterNetworkPolicy
	for _, p := range cnps {
		if p.Spec.Tier == tier && subjectSelects(w, p.Spec.Subject, subject) {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b *cnpv1.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), strings.Compare(a.Name, b.Name))
	})
	for _, p := range ps {
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range p.Spec.Ingress {
				if slices.ContainsFunc(r.From, func(pe cnpv1.ClusterNetworkPolicyIngressPeer) bool {
					return clusterPeerMatches(w, pe.Namespaces, pe.Pods, nil, peer, t.IPv6)
				}) && protocolsMatch(r.Protocols, to, t) {
					return r.Action
				}
			}
			continue
		}
		for _, r := range p.Spec.Egress {
			if slices.ContainsFunc(r.To, func(pe cnpv1.ClusterNetworkPolicyEgressPeer) bool {
				return clusterPeerMatches(w, pe.Namespaces, pe.Pods, pe.Networks, peer, t.IPv6)
			}) && protocolsMatch(r.Protocols, to, t) {
				return r.Action
			}
		}
	}
	return ""
}

func subjectSelects(w World, s cnpv1.ClusterNetworkPolicySubject, p Pod) bool {
	ns, ok := w.namespace(p.Namespace)
	if !ok {
		return false
	}
	switch {
	case s.Namespaces != nil:
		return selects(*s.Namespaces, ns.Labels)
	case s.Pods != nil:
		return selects(s.Pods.NamespaceSelector, ns.Labels) && selects(s.Pods.PodSelector, p.Labels)
	}
	return false
}

func clusterPeerMatches(w World, namespaces *metav1.LabelSelector, pods *cnpv1.NamespacedPod, networks []cnpv1.CIDR, p Pod, ipv6 bool) bool {
	ns, ok := w.namespace(p.Namespace)
	switch {
	case namespaces != nil:
		return ok && selects(*namespaces, ns.Labels)
	case pods != nil:
		return ok && selects(pods.NamespaceSelector, ns.Labels) && selects(pods.PodSelector, p.Labels)
	}
	ip, _ := p.Addr(ipv6)
	for _, c := range networks {
		if cidr, err := netip.ParsePrefix(string(c)); err == nil && cidr.Contains(ip) {
			return true
		}
	}
	return false
}

func protocolsMatch(protos []cnpv1.ClusterNetworkPolicyProtocol, to Pod, t Target) bool {
	if len(protos) == 0 {
		return true
	}
	for _, pr := range protos {
		if pr.DestinationNamedPort != "" {
			for _, cp := range to.Ports {
				if cp.Name == pr.DestinationNamedPort && cmp.Or(cp.Protocol, corev1.ProtocolTCP) == t.Protocol && cp.ContainerPort == t.Port {
					return true
				}
			}
			continue
		}
		var proto corev1.Protocol
		var port *cnpv1.Port
		switch {
		case pr.TCP != nil:
			proto, port = corev1.ProtocolTCP, pr.TCP.DestinationPort
		case pr.UDP != nil:
			proto, port = corev1.ProtocolUDP, pr.UDP.DestinationPort
		case pr.SCTP != nil:
			proto, port = corev1.ProtocolSCTP, pr.SCTP.DestinationPort
		}
		switch {
		case proto != t.Protocol:
		case port == nil:
			return true
		case port.Range != nil:
			if t.Port >= port.Range.Start && t.Port <= port.Range.End {
				return true
			}
		case t.Port == port.Number:
			return true
		}
	}
	return false
}

// clusterPolicy is a random ClusterNetworkPolicy: either tier, a priority
// among a few (so that some are equal), a subject of namespaces or pods,
// rules of every action.
func (g *Generator) clusterPolicy(name string) *cnpv1.ClusterNetworkPolicy {
	p := &cnpv1.ClusterNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy.networking.k8s.io/v1alpha2", Kind: "ClusterNetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}
	p.Spec.Tier = cnpv1.AdminTier
	if g.chance(0.5) {
		p.Spec.Tier = cnpv1.BaselineTier
	}
	p.Spec.Priority = int32(g.r.IntN(3) * 10)
	if g.chance(0.5) {
		s := g.selector(g.nsLabels, 0.3)
		p.Spec.Subject.Namespaces = &s
	} else {
		p.Spec.Subject.Pods = &cnpv1.NamespacedPod{NamespaceSelector: g.selector(g.nsLabels, 0.5), PodSelector: g.selector(g.podLabels, 0.3)}
	}
	dirs := g.r.IntN(3) // ingress, egress, both
	if dirs != 1 {
		for range 1 + g.r.IntN(3) {
			r := cnpv1.ClusterNetworkPolicyIngressRule{Action: g.action(), Protocols: g.protocols(false)}
			for range 1 + g.r.IntN(2) {
				pe := g.clusterPeer(false)
				r.From = append(r.From, cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
			}
			p.Spec.Ingress = append(p.Spec.Ingress, r)
		}
	}
	if dirs != 0 {
		for range 1 + g.r.IntN(3) {
			r := cnpv1.ClusterNetworkPolicyEgressRule{Action: g.action()}
			networks := false
			for range 1 + g.r.IntN(2) {
				pe := g.clusterPeer(true)
				networks = networks || pe.Networks != nil
				r.To = append(r.To, pe)
			}
			// The API refuses named ports with networks peers.
			r.Protocols = g.protocols(networks)
			p.Spec.Egress = append(p.Spec.Egress, r)
		}
	}
	return p
}

func (g *Generator) action() cnpv1.ClusterNetworkPolicyRuleAction {
	return []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
		cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}[g.r.IntN(3)]
}

func (g *Generator) clusterPeer(egress bool) cnpv1.ClusterNetworkPolicyEgressPeer {
	switch k := g.r.IntN(5); {
	case k < 2:
		s := g.selector(g.nsLabels, 0.4)
		return cnpv1.ClusterNetworkPolicyEgressPeer{Namespaces: &s}
	case k < 4 || !egress:
		return cnpv1.ClusterNetworkPolicyEgressPeer{Pods: &cnpv1.NamespacedPod{NamespaceSelector: g.selector(g.nsLabels, 0.5), PodSelector: g.selector(g.podLabels, 0.3)}}
	}
	var nets []cnpv1.CIDR
	for range 1 + g.r.IntN(2) {
		b := g.ipBlock() // a block of a pod's address or around it
		nets = append(nets, cnpv1.CIDR(b.CIDR))
	}
	slices.Sort(nets)
	return cnpv1.ClusterNetworkPolicyEgressPeer{Networks: slices.Compact(nets)}
}

// protocols: none (everything) half the time, else one or two entries,
// each with a destination port or range, or a named port.
func (g *Generator) protocols(noNamed bool) []cnpv1.ClusterNetworkPolicyProtocol {
	if g.chance(0.5) {
		return nil
	}
	var out []cnpv1.ClusterNetworkPolicyProtocol
	for range 1 + g.r.IntN(2) {
		// The API asks for a destination port (a protocol entry without
		// one is refused).
		port := &cnpv1.Port{Number: int32(80 + g.r.IntN(2))}
		if g.chance(0.5) {
			lo := int32(79 + g.r.IntN(2))
			port = &cnpv1.Port{Range: &cnpv1.PortRange{Start: lo, End: lo + 1 + int32(g.r.IntN(2))}} // the API wants Start < End
		}
		var pr cnpv1.ClusterNetworkPolicyProtocol
		switch k := g.r.IntN(5); {
		case k == 4 && !noNamed && g.clusterNamed:
			pr.DestinationNamedPort = g.pick([]string{"serve-80-tcp", "serve-81-udp", "serve-80-udp"})
		case k < 2:
			pr.TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case k < 4:
			pr.UDP = &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		default:
			pr.SCTP = &cnpv1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		}
		out = append(out, pr)
	}
	return out
}

// clusterPolicyName names a case's i-th ClusterNetworkPolicy.
func clusterPolicyName(i int) string { return fmt.Sprintf("gen-cnp-%d", i) }
