package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A policy is first compiled to specs: what it says, canonical and
// validated, independent of the pod it polices and of the family.

// policyInfo is a policy compiled as far as it does not depend on the pod
// it polices or on the family.
type policyInfo struct {
	key string // "ns/name"; a ClusterNetworkPolicy's "name"
	sel *selector
	// A ClusterNetworkPolicy's tier (tierNetworkPolicy for a
	// NetworkPolicy), priority, the selector of its subject's namespaces
	// (nil for a NetworkPolicy) and what in it is not enforced as written
	// (see ClusterPolicyProblem).
	tier     tier
	priority int32
	nsSel    *selector
	problems []string
	dirs     [2]bool
	rules    [2][]ruleSpec
	// podDependent says that a direction's rules use named ingress ports,
	// which resolve per pod; other directions are rendered once per family.
	podDependent [2]bool
	// rendered caches the rules of a direction and family when not
	// pod-dependent, refs the sets the rules of a direction and family
	// refer to; both depend on the policy alone, so a Compiler keeps them
	// with the policy.
	rendered   [2][2][]keyedRule // [direction][family]
	renderedOK [2][2]bool
	refs       [2][2][]*setDef
	refsOK     [2][2]bool
}

// ruleSpec is one ingress or egress rule of a policy.
type ruleSpec struct {
	// action: a NetworkPolicy rule's is actAllow.
	action action
	// peers nil means every peer (no from/to); a rule with from/to whose
	// peers are all invalid has allPeers false and no peers: it matches
	// nothing.
	allPeers bool
	peers    []*peerSpec
	// allPorts: no ports, every port and protocol.
	allPorts bool
	ports    []portSpec
}

// anyPeer and anyPort stand for a rule without peers or ports (read-only).
var (
	anyPeer = []*peerSpec{nil}
	anyPort = []portSpec{{}}
)

// expand returns the peers (nil: any) and ports (zero: any) a rule is the
// product of.
func (r *ruleSpec) expand() ([]*peerSpec, []portSpec) {
	peers, ports := r.peers, r.ports
	if r.allPeers {
		peers = anyPeer
	}
	if r.allPorts {
		ports = anyPort
	}
	return peers, ports
}

type peerKind int

const (
	peerPods peerKind = iota
	peerIPBlock
)

// peerSpec is one peer: pods or an ipBlock. key is its canonical meaning,
// the same for every policy that says the same thing; it names its set.
type peerSpec struct {
	kind peerKind
	key  string
	// pods: those of scopeNS (nsSel nil) or of the namespaces nsSel selects,
	// that podSel (nil: all) selects.
	scopeNS       string
	nsSel, podSel *selector
	// ipBlock
	cidr   netip.Prefix
	except []netip.Prefix
	// set is the peer's set per family, made on first use.
	set [2]*setDef
}

// portSpec is one port entry: proto "" means every protocol (a rule without
// ports, or a named port of any protocol); port 0 every port of proto;
// name a named port.
type portSpec struct {
	proto     string // "tcp", "udp" or "sctp"
	port, end int32
	name      string
}

// compilePolicy compiles what does not depend on the policed pod.
func compilePolicy(np *networkingv1.NetworkPolicy) *policyInfo {
	pi := &policyInfo{key: np.Namespace + "/" + np.Name}
	// An invalid podSelector (which the API server rejects) selects no pod.
	pi.sel = compileSelector(&np.Spec.PodSelector)
	if len(np.Spec.PolicyTypes) == 0 {
		pi.dirs[ingress] = true
		pi.dirs[egress] = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			pi.dirs[ingress] = true
		case networkingv1.PolicyTypeEgress:
			pi.dirs[egress] = true
		}
	}
	ns := np.Namespace
	if pi.dirs[ingress] {
		for _, r := range np.Spec.Ingress {
			rs := ruleSpec{allPeers: len(r.From) == 0, allPorts: len(r.Ports) == 0}
			rs.peers = compilePeers(ns, r.From)
			rs.ports = compilePorts(r.Ports)
			for _, p := range rs.ports {
				if p.name != "" {
					pi.podDependent[ingress] = true
				}
			}
			pi.rules[ingress] = append(pi.rules[ingress], rs)
		}
	}
	if pi.dirs[egress] {
		for _, r := range np.Spec.Egress {
			rs := ruleSpec{allPeers: len(r.To) == 0, allPorts: len(r.Ports) == 0}
			rs.peers = compilePeers(ns, r.To)
			rs.ports = compilePorts(r.Ports)
			pi.rules[egress] = append(pi.rules[egress], rs)
		}
	}
	return pi
}

// compilePeers compiles the peers of a rule; invalid ones are left out.
func compilePeers(ns string, peers []networkingv1.NetworkPolicyPeer) []*peerSpec {
	var out []*peerSpec
	for _, p := range peers {
		if p.IPBlock != nil {
			if ps, ok := compileIPBlock(p.IPBlock); ok {
				out = append(out, ps)
			}
			continue
		}
		if p.PodSelector == nil && p.NamespaceSelector == nil {
			continue // rejected by the API server; matches nothing
		}
		ps := &peerSpec{kind: peerPods, scopeNS: ns}
		pods := "all"
		if p.PodSelector != nil {
			ps.podSel = compileSelector(p.PodSelector)
			pods = ps.podSel.describe()
		}
		if p.NamespaceSelector == nil {
			ps.key = "ns " + ns + ": pods " + pods
		} else {
			ps.nsSel = compileSelector(p.NamespaceSelector)
			ps.key = "namespaces " + ps.nsSel.describe() + ": pods " + pods
		}
		if (ps.podSel != nil && ps.podSel.invalid) || (ps.nsSel != nil && ps.nsSel.invalid) {
			continue // selects nothing
		}
		out = append(out, ps)
	}
	return out
}

// compileIPBlock compiles an ipBlock. Excepts outside the CIDR are dropped;
// an except covering the whole CIDR leaves nothing. It fails (the peer
// matches nothing) on a CIDR or except that does not parse, and on an
// IPv4-mapped IPv6 CIDR (::ffff:10.0.0.0/104), which the API server's strict
// validation refuses: no packet carries such an address (pods' addresses,
// and the flows Allowed judges, are unmapped), and an inet6 ipset cannot
// hold one. An IPv4-mapped except is dropped for the same reason: there is
// nothing for it to take away.
func compileIPBlock(b *networkingv1.IPBlock) (*peerSpec, bool) {
	cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		return nil, false
	}
	cidr = cidr.Masked()
	if cidr.Addr().Is4In6() {
		return nil, false
	}
	ps := &peerSpec{kind: peerIPBlock, cidr: cidr}
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			return nil, false
		}
		ex = ex.Masked()
		switch {
		case ex.Addr().Is4In6():
		case ex.Addr().Is4() != cidr.Addr().Is4():
		case ex.Bits() <= cidr.Bits() && ex.Contains(cidr.Addr()):
			return nil, false // nothing left
		case cidr.Contains(ex.Addr()):
			ps.except = append(ps.except, ex)
		}
	}
	slices.SortFunc(ps.except, comparePrefix)
	ps.except = slices.Compact(ps.except)
	ps.key = "ipBlock " + cidr.String()
	if len(ps.except) > 0 {
		ex := make([]string, len(ps.except))
		for i, e := range ps.except {
			ex[i] = e.String()
		}
		ps.key += " except " + strings.Join(ex, ",")
	}
	return ps, true
}

// compilePorts compiles a rule's ports; invalid entries are left out (a
// rule whose entries are all invalid matches nothing).
func compilePorts(ports []networkingv1.NetworkPolicyPort) []portSpec {
	var out []portSpec
	for _, p := range ports {
		var proto corev1.Protocol
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		name, ok := protocolName(proto)
		if !ok {
			continue
		}
		ps := portSpec{proto: name}
		if p.Port != nil {
			switch p.Port.Type {
			case intstr.String:
				if p.Port.StrVal == "" {
					continue
				}
				ps.name = p.Port.StrVal
			default:
				ps.port = p.Port.IntVal
				if ps.port < 1 || ps.port > 65535 {
					continue
				}
				if p.EndPort != nil && *p.EndPort != ps.port {
					if *p.EndPort < ps.port || *p.EndPort > 65535 {
						continue
					}
					ps.end = *p.EndPort
				}
			}
		}
		if !slices.Contains(out, ps) {
			out = append(out, ps)
		}
	}
	return out
}

// protocolName is the iptables and ipset name of a Kubernetes protocol,
// TCP when unset.
func protocolName(p corev1.Protocol) (string, bool) {
	switch strings.ToUpper(string(p)) {
	case "", string(corev1.ProtocolTCP):
		return "tcp", true
	case string(corev1.ProtocolUDP):
		return "udp", true
	case string(corev1.ProtocolSCTP):
		return "sctp", true
	}
	return "", false
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
