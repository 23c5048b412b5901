package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// ClusterNetworkPolicy (policy.networking.k8s.io) adds two tiers around
// NetworkPolicy: a pod's traffic in a direction meets the Admin tier's
// rules first (all Admin policies selecting the pod, by priority, each
// policy's rules in written order), then the NetworkPolicy tier, then the
// Baseline tier's rules, then the default: allowed. Accept ends the
// evaluation of the direction (the traffic is allowed there; the other
// end's ingress rules still apply), Deny drops, Pass skips the rest of its
// tier. NetworkPolicy decides for the pods it selects: the Baseline tier is
// reached only by pods that no NetworkPolicy isolates in that direction.
//
// In chains: a pod's chain (TERN-PI-/TERN-PE-<hash>) holds the Admin rules
// as RETURN (Accept), DROP (Deny) and goto (Pass) rules; the tiers after
// Admin are the pod's tail chain (TERN-PIT-/TERN-PET-<hash>), which the
// chain ends by going to and Pass goes to: the NetworkPolicy allow rules
// and the drop, or, for a pod no NetworkPolicy isolates, the Baseline
// rules (Accept and Pass as RETURN, Deny as DROP), falling off the end
// (allowed). A pod without Admin rules has no tail chain: its chain is the
// tail. Sets are shared with NetworkPolicy rules of the same meaning.

// tier is a policy's tier: NetworkPolicy's own or one of
// ClusterNetworkPolicy's.
type tier uint8

const (
	tierNetworkPolicy tier = iota
	tierAdmin
	tierBaseline
)

func (t tier) String() string {
	switch t {
	case tierAdmin:
		return string(cnpv1.AdminTier)
	case tierBaseline:
		return string(cnpv1.BaselineTier)
	}
	return "NetworkPolicy"
}

// action is what a rule does with the traffic it matches.
type action uint8

const (
	// actAllow is a NetworkPolicy rule's: allowed (RETURN).
	actAllow action = iota
	actAccept
	actDeny
	actPass
)

// passTarget stands for the target of an Admin Pass rule in rendered rules
// that a policy keeps: the pod's tail chain, or RETURN when it has none,
// which podChain puts in.
const passTarget = "\x00pass"

// Tail chains' prefixes: "TERN-PIT-" and "TERN-PET-" followed by
// nameHashLen characters (25 in all).
const (
	ingressTailPrefix = ChainPrefix + "IT-"
	egressTailPrefix  = ChainPrefix + "ET-"
)

// podTailChainNames are the tail chains of the pod "ns/name".
func podTailChainNames(podKey string) (ingress, egress string) {
	h := nameHash(podKey)
	return ingressTailPrefix + h, egressTailPrefix + h
}

// ClusterPolicyProblem says why a ClusterNetworkPolicy is not enforced as
// written ("" when it is): a field this version does not know or support,
// or a value the API server's validation would have refused. Such parts
// fail closed, as the API asks: a peer or protocol that cannot be
// understood makes an Accept rule match nothing and a Deny or Pass rule
// deny everything; a policy whose tier or subject cannot be understood
// selects no pod.
func ClusterPolicyProblem(cnp *cnpv1.ClusterNetworkPolicy) string {
	pi := compileClusterPolicy(cnp)
	return strings.Join(pi.problems, "; ")
}

// compileClusterPolicy compiles a ClusterNetworkPolicy as far as it does
// not depend on the pod it polices or on the family.
func compileClusterPolicy(cnp *cnpv1.ClusterNetworkPolicy) *policyInfo {
	pi := &policyInfo{key: cnp.Name, priority: cnp.Spec.Priority}
	problem := func(format string, args ...any) { pi.problems = append(pi.problems, fmt.Sprintf(format, args...)) }
	switch cnp.Spec.Tier {
	case cnpv1.AdminTier:
		pi.tier = tierAdmin
	case cnpv1.BaselineTier:
		pi.tier = tierBaseline
	default:
		problem("tier %q is neither Admin nor Baseline: the policy selects no pod", cnp.Spec.Tier)
	}
	if p := cnp.Spec.Priority; p < 0 || p > 1000 {
		problem("priority %d is outside 0-1000", p)
	}
	subj := cnp.Spec.Subject
	switch {
	case subj.Namespaces != nil && subj.Pods == nil:
		pi.nsSel, pi.sel = compileSelector(subj.Namespaces), &selector{}
	case subj.Pods != nil && subj.Namespaces == nil:
		pi.nsSel, pi.sel = compileSelector(&subj.Pods.NamespaceSelector), compileSelector(&subj.Pods.PodSelector)
	default:
		problem("the subject must set exactly one of namespaces and pods: the policy selects no pod")
	}
	if pi.tier == tierNetworkPolicy || pi.sel == nil || pi.sel.invalid || pi.nsSel.invalid {
		pi.tier, pi.sel, pi.nsSel = tierNetworkPolicy, &selector{invalid: true}, &selector{invalid: true}
		if len(pi.problems) == 0 {
			problem("the subject's selector is invalid: the policy selects no pod")
		}
		return pi
	}
	for i, r := range cnp.Spec.Ingress {
		peers := make([]peerIn, len(r.From))
		for j, p := range r.From {
			peers[j] = peerIn{namespaces: p.Namespaces, pods: p.Pods}
		}
		pi.addClusterRule(ingress, fmt.Sprintf("ingress rule %d", i+1), r.Action, peers, r.Protocols)
	}
	for i, r := range cnp.Spec.Egress {
		peers := make([]peerIn, len(r.To))
		for j, p := range r.To {
			peers[j] = peerIn{namespaces: p.Namespaces, pods: p.Pods, networks: p.Networks,
				unsupported: p.Nodes != nil || len(p.DomainNames) > 0}
		}
		pi.addClusterRule(egress, fmt.Sprintf("egress rule %d", i+1), r.Action, peers, r.Protocols)
	}
	for _, d := range []direction{ingress, egress} {
		pi.dirs[d] = len(pi.rules[d]) > 0
	}
	return pi
}

// peerIn is a ClusterNetworkPolicy peer of either direction.
type peerIn struct {
	namespaces  *metav1.LabelSelector
	pods        *cnpv1.NamespacedPod
	networks    []cnpv1.CIDR
	unsupported bool // nodes or domainNames (experimental)
}

// addClusterRule compiles one rule of a ClusterNetworkPolicy. A peer or
// protocol it cannot understand fails closed: left out of an Accept rule
// (a rule left with none matches nothing), and a Deny or Pass rule denies
// everything.
func (pi *policyInfo) addClusterRule(d direction, what string, act cnpv1.ClusterNetworkPolicyRuleAction, peers []peerIn, protocols []cnpv1.ClusterNetworkPolicyProtocol) {
	rs := ruleSpec{allPorts: len(protocols) == 0}
	switch act {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept:
		rs.action = actAccept
	case cnpv1.ClusterNetworkPolicyRuleActionDeny:
		rs.action = actDeny
	case cnpv1.ClusterNetworkPolicyRuleActionPass:
		rs.action = actPass
	default:
		pi.problems = append(pi.problems, fmt.Sprintf("%s: action %q is not Accept, Deny or Pass: it denies everything", what, act))
		pi.rules[d] = append(pi.rules[d], ruleSpec{action: actDeny, allPeers: true, allPorts: true})
		return
	}
	var bad []string
	for i, p := range peers {
		ps, why := compileClusterPeer(p)
		if why != "" {
			bad = append(bad, fmt.Sprintf("peer %d %s", i+1, why))
			continue
		}
		rs.peers = append(rs.peers, ps...)
	}
	if len(peers) == 0 {
		bad = append(bad, "no peer")
	}
	for i, p := range protocols {
		ports, why := compileClusterProtocol(p)
		if why != "" {
			bad = append(bad, fmt.Sprintf("protocol %d %s", i+1, why))
			continue
		}
		for _, port := range ports {
			if port.name != "" {
				pi.podDependent[d] = pi.podDependent[d] || d == ingress
			}
			rs.ports = appendNew(rs.ports, port)
		}
	}
	if len(bad) > 0 {
		if rs.action == actAccept {
			pi.problems = append(pi.problems, fmt.Sprintf("%s: %s: left out of the Accept rule", what, strings.Join(bad, ", ")))
		} else {
			pi.problems = append(pi.problems, fmt.Sprintf("%s: %s: the %s rule denies everything", what, strings.Join(bad, ", "), actionName(rs.action)))
			rs = ruleSpec{action: actDeny, allPeers: true, allPorts: true}
		}
	}
	pi.rules[d] = append(pi.rules[d], rs)
}

func actionName(a action) string {
	switch a {
	case actAccept:
		return "Accept"
	case actDeny:
		return "Deny"
	case actPass:
		return "Pass"
	}
	return "allow"
}

func appendNew[T comparable](s []T, v T) []T {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// compileClusterPeer compiles a peer: exactly one of its fields is set and
// understood, or it says why not.
func compileClusterPeer(p peerIn) ([]*peerSpec, string) {
	n := 0
	if p.namespaces != nil {
		n++
	}
	if p.pods != nil {
		n++
	}
	if p.networks != nil {
		n++
	}
	switch {
	case p.unsupported:
		return nil, "selects nodes or domain names, which tern does not support yet"
	case n == 0:
		return nil, "sets no field tern knows (a newer API version?)"
	case n > 1:
		return nil, "sets more than one field"
	}
	switch {
	case p.namespaces != nil:
		ps := &peerSpec{kind: peerPods, nsSel: compileSelector(p.namespaces)}
		if ps.nsSel.invalid {
			return nil, "has an invalid namespace selector"
		}
		ps.key = "namespaces " + ps.nsSel.describe() + ": pods all"
		return []*peerSpec{ps}, ""
	case p.pods != nil:
		ps := &peerSpec{kind: peerPods, nsSel: compileSelector(&p.pods.NamespaceSelector), podSel: compileSelector(&p.pods.PodSelector)}
		if ps.nsSel.invalid || ps.podSel.invalid {
			return nil, "has an invalid selector"
		}
		if ps.podSel.everything() {
			ps.podSel = nil
		}
		pods := "all"
		if ps.podSel != nil {
			pods = ps.podSel.describe()
		}
		ps.key = "namespaces " + ps.nsSel.describe() + ": pods " + pods
		return []*peerSpec{ps}, ""
	}
	if len(p.networks) == 0 {
		return nil, "has an empty networks list"
	}
	var out []*peerSpec
	for _, c := range p.networks {
		cidr, err := netip.ParsePrefix(strings.TrimSpace(string(c)))
		if err != nil || cidr.Addr().Zone() != "" {
			return nil, fmt.Sprintf("has network %q, not a CIDR", c)
		}
		cidr = cidr.Masked()
		if cidr.Addr().Is4In6() {
			// No packet carries an IPv4-mapped address (see
			// compileIPBlock): it matches nothing.
			continue
		}
		out = append(out, &peerSpec{kind: peerIPBlock, cidr: cidr, key: "ipBlock " + cidr.String()})
	}
	return out, ""
}

// compileClusterProtocol compiles one protocols entry: exactly one of its
// fields set and valid, or it says why not. A named port matches the
// container port of that name whatever its protocol.
func compileClusterProtocol(p cnpv1.ClusterNetworkPolicyProtocol) ([]portSpec, string) {
	n := 0
	var proto string
	var port *cnpv1.Port
	if p.TCP != nil {
		n, proto, port = n+1, "tcp", p.TCP.DestinationPort
	}
	if p.UDP != nil {
		n, proto, port = n+1, "udp", p.UDP.DestinationPort
	}
	if p.SCTP != nil {
		n, proto, port = n+1, "sctp", p.SCTP.DestinationPort
	}
	if p.DestinationNamedPort != "" {
		n++
	}
	switch {
	case n == 0:
		return nil, "sets no field tern knows (a newer API version?)"
	case n > 1:
		return nil, "sets more than one field"
	case p.DestinationNamedPort != "":
		return []portSpec{{name: p.DestinationNamedPort}}, ""
	case port == nil:
		return []portSpec{{proto: proto}}, ""
	case port.Range != nil && port.Number != 0:
		return nil, "sets both a port number and a range"
	case port.Range != nil:
		lo, hi := port.Range.Start, port.Range.End
		if lo < 1 || hi > 65535 || lo > hi {
			return nil, fmt.Sprintf("has port range %d-%d, not within 1-65535 in order", lo, hi)
		}
		ps := portSpec{proto: proto, port: lo}
		if hi != lo {
			ps.end = hi
		}
		return []portSpec{ps}, ""
	case port.Number < 1 || port.Number > 65535:
		return nil, fmt.Sprintf("has port %d, not within 1-65535", port.Number)
	}
	return []portSpec{{proto: proto, port: port.Number}}, ""
}

// compareClusterPolicies orders cluster policies as they are evaluated:
// Admin before Baseline, lower priority first; by name among equal
// priorities (the API leaves their order to the implementation: tern's is
// stable).
func compareClusterPolicies(a, b *policyInfo) int {
	return cmp.Or(cmp.Compare(a.tier, b.tier), cmp.Compare(a.priority, b.priority), strings.Compare(a.key, b.key))
}

// selectsPod reports whether a policy selects a pod in namespace ns with
// labels: a NetworkPolicy the pods of its namespace (the caller's to
// check), a ClusterNetworkPolicy those of the namespaces nsSel selects.
func (pi *policyInfo) selectsPod(nsLabels map[string]string, labels map[string]string) bool {
	if pi.nsSel != nil && !pi.nsSel.matches(nsLabels) {
		return false
	}
	return pi.sel.matches(labels)
}
