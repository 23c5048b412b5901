package netpolgen

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// GenLabel is the label key a case adds to (and removes from) pods and
// namespaces, and its selectors ask about.
const GenLabel = "gen"

// LabelChange sets (or with Remove, deletes) a label of a pod (Pod:
// "ns/name") or of a namespace (Namespace) before the case's policies are
// probed.
type LabelChange struct {
	Pod, Namespace string
	Key, Value     string
	Remove         bool
}

func (c LabelChange) String() string {
	what := "namespace " + c.Namespace
	if c.Pod != "" {
		what = "pod " + c.Pod
	}
	if c.Remove {
		return fmt.Sprintf("%s: remove label %s", what, c.Key)
	}
	return fmt.Sprintf("%s: label %s=%s", what, c.Key, c.Value)
}

// Case is one generated case: label changes, then policies (and, from a
// generator WithClusterPolicies, ClusterNetworkPolicies).
type Case struct {
	Labels          []LabelChange
	Policies        []*networkingv1.NetworkPolicy
	ClusterPolicies []*cnpv1.ClusterNetworkPolicy
}

// Allowed is the model's verdict on a connection under the case (in the
// world after its label changes): AllowedAll.
func (c Case) Allowed(w World, from, to Pod, t Target) bool {
	return AllowedAll(w, c.Policies, c.ClusterPolicies, from, to, t)
}

// String is the case in full, for a failure message: the label changes and
// each policy as JSON (kubectl apply -f takes it).
func (c Case) String() string {
	var b strings.Builder
	for _, l := range c.Labels {
		fmt.Fprintf(&b, "%s\n", l)
	}
	var objs []any
	for _, p := range c.Policies {
		objs = append(objs, p)
	}
	for _, p := range c.ClusterPolicies {
		objs = append(objs, p)
	}
	for _, p := range objs {
		j, err := json.MarshalIndent(p, "", "  ")
		if err != nil {
			j = []byte(err.Error())
		}
		fmt.Fprintf(&b, "%s\n", j)
	}
	return b.String()
}

// Apply is the world after the case's label changes.
func (w World) Apply(changes []LabelChange) World {
	out := World{}
	for _, n := range w.Namespaces {
		n.Labels = copyLabels(n.Labels)
		for _, c := range changes {
			if c.Pod == "" && c.Namespace == n.Name {
				setLabel(n.Labels, c)
			}
		}
		out.Namespaces = append(out.Namespaces, n)
	}
	for _, p := range w.Pods {
		p.Labels = copyLabels(p.Labels)
		for _, c := range changes {
			if c.Pod == p.ID() {
				setLabel(p.Labels, c)
			}
		}
		out.Pods = append(out.Pods, p)
	}
	return out
}

func copyLabels(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return maps.Clone(m)
}

func setLabel(m map[string]string, c LabelChange) {
	if c.Remove {
		delete(m, c.Key)
	} else {
		m[c.Key] = c.Value
	}
}

// Generator makes cases over a world from a seed: the same seed and world
// give the same cases.
type Generator struct {
	r *rand.Rand
	w World
	// the label keys and values that the world's pods and namespaces
	// carry (and GenLabel), for selectors that sometimes match
	podLabels, nsLabels map[string][]string
	// cluster: cases have ClusterNetworkPolicies too; clusterNamed: with
	// destinationNamedPort (the experimental channel's).
	cluster, clusterNamed bool
}

// WithClusterPolicies makes the generator's cases have zero to two
// ClusterNetworkPolicies besides the NetworkPolicies (namedPorts: some use
// destinationNamedPort, which only the experimental channel's CRD keeps).
func (g *Generator) WithClusterPolicies(namedPorts bool) *Generator {
	g.cluster, g.clusterNamed = true, namedPorts
	return g
}

// NewGenerator returns a generator of cases over w.
func NewGenerator(seed uint64, w World) *Generator {
	g := &Generator{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), w: w,
		podLabels: map[string][]string{GenLabel: {"1", "2"}}, nsLabels: map[string][]string{GenLabel: {"1"}}}
	collect := func(into map[string][]string, set map[string]string) {
		for k, v := range set {
			if !slices.Contains(into[k], v) {
				into[k] = append(into[k], v)
			}
		}
	}
	for _, p := range w.Pods {
		collect(g.podLabels, p.Labels)
	}
	for _, n := range w.Namespaces {
		collect(g.nsLabels, n.Labels)
	}
	for _, m := range []map[string][]string{g.podLabels, g.nsLabels} {
		for k := range m {
			sort.Strings(m[k])
		}
	}
	return g
}

func (g *Generator) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *Generator) chance(p float64) bool { return g.r.Float64() < p }

// Next is the next case: up to two label changes, then one to three
// policies in the world's namespaces.
func (g *Generator) Next() Case {
	var c Case
	if g.chance(0.5) {
		p := g.w.Pods[g.r.IntN(len(g.w.Pods))]
		c.Labels = append(c.Labels, LabelChange{Pod: p.ID(), Key: GenLabel, Value: g.pick(g.podLabels[GenLabel])})
	}
	if g.chance(0.3) {
		n := g.w.Namespaces[g.r.IntN(len(g.w.Namespaces))]
		c.Labels = append(c.Labels, LabelChange{Namespace: n.Name, Key: GenLabel, Value: "1"})
	}
	if g.chance(0.2) {
		// A pod loses a label it has.
		p := g.w.Pods[g.r.IntN(len(g.w.Pods))]
		for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
			if k != "pod" { // the fixture's own key stays, for probes' sake
				c.Labels = append(c.Labels, LabelChange{Pod: p.ID(), Key: k, Remove: true})
				break
			}
		}
	}
	n := 1 + g.r.IntN(3)
	for i := range n {
		c.Policies = append(c.Policies, g.policy(fmt.Sprintf("gen-%d", i)))
	}
	if g.cluster {
		for i := range g.r.IntN(3) {
			c.ClusterPolicies = append(c.ClusterPolicies, g.clusterPolicy(clusterPolicyName(i)))
		}
	}
	return c
}

func (g *Generator) policy(name string) *networkingv1.NetworkPolicy {
	ns := g.w.Namespaces[g.r.IntN(len(g.w.Namespaces))].Name
	p := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: g.selector(g.podLabels, 0.3)},
	}
	var ingress, egress bool
	switch g.r.IntN(4) {
	case 0: // inferred from the rules
		ingress, egress = true, g.chance(0.5)
	case 1:
		ingress = true
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		egress = true
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	default:
		ingress, egress = true, true
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	if ingress {
		for range g.r.IntN(3) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
	}
	if egress {
		// Inferred types with no egress rule would not isolate egress.
		for range g.r.IntN(3) {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
		if p.Spec.PolicyTypes == nil && len(p.Spec.Egress) == 0 {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
	}
	return p
}

// selector is a random selector over the label keys and values of labelsOf:
// empty (all) with chance pEmpty, else matchLabels, matchExpressions with
// every operator, or both (ANDed).
func (g *Generator) selector(labelsOf map[string][]string, pEmpty float64) metav1.LabelSelector {
	var s metav1.LabelSelector
	if g.chance(pEmpty) {
		return s
	}
	ks := slices.Sorted(maps.Keys(labelsOf))
	form := g.r.IntN(3)
	if form != 1 {
		k := g.pick(ks)
		s.MatchLabels = map[string]string{k: g.pick(labelsOf[k])}
	}
	if form != 0 {
		for range 1 + g.r.IntN(2) {
			k := g.pick(ks)
			req := metav1.LabelSelectorRequirement{Key: k}
			switch g.r.IntN(4) {
			case 0:
				req.Operator = metav1.LabelSelectorOpIn
				req.Values = g.values(labelsOf[k])
			case 1:
				req.Operator = metav1.LabelSelectorOpNotIn
				req.Values = g.values(labelsOf[k])
			case 2:
				req.Operator = metav1.LabelSelectorOpExists
			default:
				req.Operator = metav1.LabelSelectorOpDoesNotExist
			}
			s.MatchExpressions = append(s.MatchExpressions, req)
		}
	}
	return s
}

// values is one or two distinct values from vs.
func (g *Generator) values(vs []string) []string {
	out := []string{g.pick(vs)}
	if len(vs) > 1 && g.chance(0.4) {
		if v := g.pick(vs); v != out[0] {
			out = append(out, v)
		}
	}
	return out
}

// peers is none (everyone) or one to three peers: pods, namespaces, both
// (ANDed within the peer; the peers ORed), or an ipBlock.
func (g *Generator) peers() []networkingv1.NetworkPolicyPeer {
	if g.chance(0.2) {
		return nil
	}
	var out []networkingv1.NetworkPolicyPeer
	for range 1 + g.r.IntN(3) {
		var peer networkingv1.NetworkPolicyPeer
		switch g.r.IntN(4) {
		case 0:
			s := g.selector(g.podLabels, 0.2)
			peer.PodSelector = &s
		case 1:
			s := g.selector(g.nsLabels, 0.2)
			peer.NamespaceSelector = &s
		case 2:
			ps, nss := g.selector(g.podLabels, 0.2), g.selector(g.nsLabels, 0.2)
			peer.PodSelector, peer.NamespaceSelector = &ps, &nss
		default:
			peer.IPBlock = g.ipBlock()
		}
		out = append(out, peer)
	}
	return out
}

// ipBlock is a block around the world's pods, of the family of one pod's
// address (IPv4 unless the pod has an IPv6 address too, and then half the
// time): the address alone, the /24 (IPv6: /64) of a node, a /16 (/48) or
// everything, and sometimes excepts inside it (a pod's address alone or
// its /24 or /64).
func (g *Generator) ipBlock() *networkingv1.IPBlock {
	p := g.w.Pods[g.r.IntN(len(g.w.Pods))]
	ip, v4 := p.Addr(false)
	if !v4 {
		ip = p.IPs[0]
	}
	if a, ok := p.Addr(true); ok && v4 && g.chance(0.5) {
		ip = a
	}
	widths := []int{32, 24, 16, 0}
	if ip.Is6() {
		widths = []int{128, 64, 48, 0}
	}
	bits := widths[g.r.IntN(4)]
	cidr := netip.PrefixFrom(ip, bits).Masked()
	b := &networkingv1.IPBlock{CIDR: cidr.String()}
	if bits < ip.BitLen() && g.chance(0.6) {
		for range 1 + g.r.IntN(2) {
			q, ok := g.w.Pods[g.r.IntN(len(g.w.Pods))].Addr(ip.Is6())
			eb := widths[g.r.IntN(2)]
			if !ok || eb <= bits || !cidr.Contains(q) {
				continue
			}
			e := netip.PrefixFrom(q, eb).Masked().String()
			if !slices.Contains(b.Except, e) {
				b.Except = append(b.Except, e)
			}
		}
	}
	return b
}

// ports is none (every port) or one or two: a number, a range, a name of
// the world's ports (sometimes with the other protocol, so it names
// nothing) or only a protocol; TCP, UDP, SCTP or unset (TCP).
func (g *Generator) ports() []networkingv1.NetworkPolicyPort {
	if g.chance(0.3) {
		return nil
	}
	var names []string
	seen := map[string]corev1.Protocol{}
	for _, p := range g.w.Pods {
		for _, cp := range p.Ports {
			if _, ok := seen[cp.Name]; !ok && cp.Name != "" {
				seen[cp.Name] = cp.Protocol
				names = append(names, cp.Name)
			}
		}
	}
	sort.Strings(names)
	var out []networkingv1.NetworkPolicyPort
	for range 1 + g.r.IntN(2) {
		var pp networkingv1.NetworkPolicyPort
		protos := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, ""}
		proto := protos[g.r.IntN(len(protos))]
		switch g.r.IntN(4) {
		case 0:
			v := intstr.FromInt32(int32(79 + g.r.IntN(4))) // 79..82
			pp.Port = &v
		case 1:
			lo := int32(78 + g.r.IntN(4)) // 78..81
			hi := lo + int32(g.r.IntN(3))
			v := intstr.FromInt32(lo)
			pp.Port, pp.EndPort = &v, &hi
		case 2:
			if len(names) == 0 {
				break
			}
			n := g.pick(names)
			v := intstr.FromString(n)
			pp.Port = &v
			if !g.chance(0.25) {
				proto = seen[n] // usually the port's own protocol
			}
		}
		if proto != "" {
			pp.Protocol = &proto
		}
		out = append(out, pp)
	}
	return out
}
