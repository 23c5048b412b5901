// Package netpolgen generates random Kubernetes NetworkPolicies over a small
// world of namespaces and pods, in the manner of Cyclonus, and says which
// connections they allow by a reference model of the NetworkPolicy API
// written from the API's documentation: apimachinery's label selectors and
// the API's types, none of tern's policy compiler. The end-to-end tests apply
// a generated case on a lab, probe every pair of pods and compare.
package netpolgen

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Namespace is a namespace of the world.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Pod is a pod of the world: its labels, addresses (at most one per family:
// a dual-stack pod has an IPv4 and an IPv6 one) and declared ports (which
// named ports in policies resolve to).
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr
	Ports           []corev1.ContainerPort
}

// ID is "namespace/name".
func (p Pod) ID() string { return p.Namespace + "/" + p.Name }

// Addr is the pod's address of a family (IPv6 or IPv4); false when it has
// none.
func (p Pod) Addr(ipv6 bool) (netip.Addr, bool) {
	for _, a := range p.IPs {
		if a.Is6() == ipv6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// World is what policies are evaluated against.
type World struct {
	Namespaces []Namespace
	Pods       []Pod
}

func (w World) namespace(name string) (Namespace, bool) {
	for _, n := range w.Namespaces {
		if n.Name == name {
			return n, true
		}
	}
	return Namespace{}, false
}

// Target is a destination port and protocol, and the family of the
// connection: between the pods' IPv6 addresses, or their IPv4 ones.
type Target struct {
	Port     int32
	Protocol corev1.Protocol
	IPv6     bool
}

// Allowed says whether the policies allow a new connection from one pod of
// the world to another on t. A pod's connection to itself is not judged
// here (it never leaves the pod's network namespace), nor one of a family
// that either pod has no address of (there is no such connection: false).
//
// The semantics, from the API's documentation:
//   - A policy selects the pods of its own namespace that its podSelector
//     matches. Its policyTypes say which directions it isolates; left empty,
//     Ingress always and Egress when it has egress rules.
//   - A pod isolated in a direction allows exactly what some rule of some
//     policy that isolates it in that direction allows (the union); a pod
//     not isolated allows everything in that direction.
//   - A connection needs the source's egress and the destination's ingress.
//   - A rule allows a peer and a port when both match: no peers match every
//     source (or destination); no ports match every port.
//   - A peer: podSelector alone, the policy's namespace's pods; with a
//     namespaceSelector, the pods it matches in the namespaces that match;
//     namespaceSelector alone, every pod of the matching namespaces; ipBlock,
//     addresses in cidr and in none of except. A pod peer is the pod, in
//     either family; a block is of one family, and the address it is
//     matched against is the peer's of the connection's family (an IPv4
//     block never matches an IPv6 connection, nor an IPv6 block an IPv4 one).
//   - A port: protocol (TCP when unset), and a number (up to endPort when
//     given), a name (the destination pod's container port of that name and
//     protocol), or none (every port of the protocol).
func Allowed(w World, pols []*networkingv1.NetworkPolicy, from, to Pod, t Target) bool {
	if _, ok := from.Addr(t.IPv6); !ok {
		return false
	}
	if _, ok := to.Addr(t.IPv6); !ok {
		return false
	}
	return allowedDir(w, pols, from, to, t, networkingv1.PolicyTypeEgress) &&
		allowedDir(w, pols, from, to, t, networkingv1.PolicyTypeIngress)
}

func allowedDir(w World, pols []*networkingv1.NetworkPolicy, from, to Pod, t Target, dir networkingv1.PolicyType) bool {
	subject, peer := to, from
	if dir == networkingv1.PolicyTypeEgress {
		subject, peer = from, to
	}
	isolated := false
	for _, p := range pols {
		if p.Namespace != subject.Namespace || !policyTypes(p)[dir] || !selects(p.Spec.PodSelector, subject.Labels) {
			continue
		}
		isolated = true
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range p.Spec.Ingress {
				if peersMatch(w, p.Namespace, r.From, peer, t.IPv6) && portsMatch(r.Ports, to, t) {
					return true
				}
			}
		} else {
			for _, r := range p.Spec.Egress {
				if peersMatch(w, p.Namespace, r.To, peer, t.IPv6) && portsMatch(r.Ports, to, t) {
					return true
				}
			}
		}
	}
	return !isolated
}

// policyTypes are the directions p isolates, as the API server defaults
// them when the field is empty.
func policyTypes(p *networkingv1.NetworkPolicy) map[networkingv1.PolicyType]bool {
	m := map[networkingv1.PolicyType]bool{}
	if len(p.Spec.PolicyTypes) == 0 {
		m[networkingv1.PolicyTypeIngress] = true
		if len(p.Spec.Egress) > 0 {
			m[networkingv1.PolicyTypeEgress] = true
		}
		return m
	}
	for _, t := range p.Spec.PolicyTypes {
		m[t] = true
	}
	return m
}

// selects reports whether sel matches set; a selector that does not parse
// matches nothing (the API server would have refused the policy).
func selects(sel metav1.LabelSelector, set map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(&sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(set))
}

func peersMatch(w World, policyNS string, peers []networkingv1.NetworkPolicyPeer, p Pod, ipv6 bool) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peerMatches(w, policyNS, peer, p, ipv6) {
			return true
		}
	}
	return false
}

// peerMatches: p is the peer pod, ipv6 the connection's family.
func peerMatches(w World, policyNS string, peer networkingv1.NetworkPolicyPeer, p Pod, ipv6 bool) bool {
	if peer.IPBlock != nil {
		// netip's Contains is false across families.
		ip, _ := p.Addr(ipv6)
		cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		if err != nil || !cidr.Contains(ip) {
			return false
		}
		for _, e := range peer.IPBlock.Except {
			if ex, err := netip.ParsePrefix(e); err == nil && ex.Contains(ip) {
				return false
			}
		}
		return true
	}
	if peer.NamespaceSelector == nil {
		if p.Namespace != policyNS {
			return false
		}
	} else {
		ns, ok := w.namespace(p.Namespace)
		if !ok || !selects(*peer.NamespaceSelector, ns.Labels) {
			return false
		}
	}
	if peer.PodSelector == nil {
		return true
	}
	return selects(*peer.PodSelector, p.Labels)
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, to Pod, t Target) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		proto := corev1.ProtocolTCP
		if pp.Protocol != nil {
			proto = *pp.Protocol
		}
		if proto != t.Protocol {
			continue
		}
		switch {
		case pp.Port == nil:
			return true
		case pp.Port.StrVal != "":
			for _, cp := range to.Ports {
				cpProto := cp.Protocol
				if cpProto == "" {
					cpProto = corev1.ProtocolTCP
				}
				if cp.Name == pp.Port.StrVal && cpProto == proto && cp.ContainerPort == t.Port {
					return true
				}
			}
		default:
			lo, hi := pp.Port.IntVal, pp.Port.IntVal
			if pp.EndPort != nil {
				hi = *pp.EndPort
			}
			if t.Port >= lo && t.Port <= hi {
				return true
			}
		}
	}
	return false
}
