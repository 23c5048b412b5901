// Package policytest is the synthetic cluster the benchmarks and tests
// share: 5,000 pods in 50 namespaces on 5 nodes, 1,000 of them on this
// node, and 500 NetworkPolicies of ten shapes, ten per namespace. The
// compiler's benchmarks (policy) and the dataplane's (bench) measure this
// one cluster, so that their numbers speak of the same input.
package policytest

import (
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/policy"
)

// The cluster's size.
const (
	Nodes      = 5
	PerNode    = 1000 // pods on each node
	Namespaces = 50
	Policies   = 10 * Namespaces
	// Node is the node the cluster is compiled for (node0); the others are
	// node1 to node4.
	Node = "node0"
)

// Options vary the cluster.
type Options struct {
	// DualStack gives every pod an IPv6 address after its IPv4 one.
	DualStack bool
	// ResourceVersions gives every policy a ResourceVersion, as from the
	// API (a reused policy.Compiler relies on them), and every
	// ClusterNetworkPolicy a UID and generation; without, none has one.
	ResourceVersions bool
	// ClusterPolicies adds ClusterPolicyCount ClusterNetworkPolicies, half
	// of each tier (ClusterPolicies).
	ClusterPolicies bool
}

// ClusterPolicyCount is how many ClusterNetworkPolicies
// Options.ClusterPolicies adds.
const ClusterPolicyCount = 50

// Cluster is the synthetic cluster as seen from Node. Pod j of node n is
// Pod(n*PerNode+j, n, 10.244.(n*4+j/250).(j%250+1)).
func Cluster(o Options) policy.Input {
	in := policy.Input{Node: Node}
	for i := range Namespaces {
		in.Namespaces = append(in.Namespaces, policy.Namespace{
			Name:   namespace(i),
			Labels: map[string]string{"team": fmt.Sprintf("t%d", i%5), "env": []string{"prod", "dev"}[i%2]},
		})
	}
	for n := range Nodes {
		for j := range PerNode {
			i := n*PerNode + j
			p := Pod(i, n, netip.AddrFrom4([4]byte{10, 244, byte(n*4 + j/250), byte(j%250 + 1)}))
			if o.DualStack {
				p.IPs = append(p.IPs, PodIPv6(i))
			}
			in.Pods = append(in.Pods, p)
		}
	}
	for i := range Namespaces {
		in.Policies = append(in.Policies, policies(i)...)
	}
	if o.ClusterPolicies {
		in.ClusterPolicies = ClusterPolicies()
	}
	if o.ResourceVersions {
		for k, np := range in.Policies {
			np.ResourceVersion = strconv.Itoa(1000 + k)
		}
		for k, p := range in.ClusterPolicies {
			p.ResourceVersion, p.UID, p.Generation = strconv.Itoa(5000+k), k8stypes.UID("cnp-"+p.Name), 1
		}
	}
	return in
}

// ClusterPolicies are ClusterPolicyCount ClusterNetworkPolicies of ten
// shapes, five per tier, the shapes an operator writes: a metadata and a
// node-range deny for every pod, tenant isolation by team with a Pass for
// the same team, monitoring let in, and, in the Baseline tier, default
// denies between namespaces that NetworkPolicy may open, and DNS let out.
func ClusterPolicies() []*cnpv1.ClusterNetworkPolicy {
	var out []*cnpv1.ClusterNetworkPolicy
	for i := range ClusterPolicyCount / 10 {
		team := fmt.Sprintf("t%d", i%5)
		teamNS := &metav1.LabelSelector{MatchLabels: map[string]string{"team": team}}
		all := &metav1.LabelSelector{}
		nsPeer := func(s *metav1.LabelSelector) cnpv1.ClusterNetworkPolicyIngressPeer {
			return cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: s}
		}
		tcpPort := func(n int32) []cnpv1.ClusterNetworkPolicyProtocol {
			return []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: n}}}}
		}
		mk := func(name string, tier cnpv1.Tier, prio int32, subject cnpv1.ClusterNetworkPolicySubject) *cnpv1.ClusterNetworkPolicy {
			p := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, i)}}
			p.Spec.Tier, p.Spec.Priority, p.Spec.Subject = tier, prio, subject
			out = append(out, p)
			return p
		}
		p := mk("no-metadata", cnpv1.AdminTier, int32(i), cnpv1.ClusterNetworkPolicySubject{Namespaces: all})
		p.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{cnpv1.CIDR(fmt.Sprintf("169.254.169.%d/32", 250+i))}}}}}
		p = mk("no-node-range", cnpv1.AdminTier, int32(10+i), cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{
			NamespaceSelector: *teamNS, PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "front"}}}})
		p.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"10.96.0.0/12", "172.16.0.0/12"}}}, Protocols: tcpPort(22)}}
		p = mk("tenant", cnpv1.AdminTier, int32(20+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: teamNS})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
			{Action: cnpv1.ClusterNetworkPolicyRuleActionPass, From: []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer(teamNS)}},
			{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer(all)}},
		}
		p = mk("monitoring", cnpv1.AdminTier, int32(5+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: all})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
			From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i)}}}}},
			Protocols: tcpPort(9100)}}
		p = mk("admin-range", cnpv1.AdminTier, int32(30+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			From:      []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer(&metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}})},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Range: &cnpv1.PortRange{Start: 30000, End: 32767}}}}}}}

		p = mk("baseline-deny", cnpv1.BaselineTier, int32(i), cnpv1.ClusterNetworkPolicySubject{Namespaces: teamNS})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer(all)}}}
		p = mk("baseline-dns", cnpv1.BaselineTier, int32(10+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: all})
		p.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
			To:        []cnpv1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "t0"}}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1.Port{Number: 53}}}}}}
		p = mk("baseline-same-team", cnpv1.BaselineTier, int32(20+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: teamNS})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionAccept, From: []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer(teamNS)}}}
		p = mk("baseline-egress", cnpv1.BaselineTier, int32(30+i), cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{
			NamespaceSelector: *all, PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", 10+i)}}}})
		p.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{
			{Action: cnpv1.ClusterNetworkPolicyRuleActionAccept, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"10.244.0.0/16"}}}},
			{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"0.0.0.0/0"}}}},
		}
		p = mk("baseline-pass", cnpv1.BaselineTier, int32(40+i), cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}})
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionPass,
			From:      []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{NamespaceSelector: *all, PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "front"}}}}},
			Protocols: tcpPort(8080)}}
	}
	return out
}

// PodIPv6 is pod i's IPv6 address in a dual-stack cluster: fd10::i.
func PodIPv6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0x10, 14: byte(i >> 8), 15: byte(i)})
}

// Pod is pod i of the cluster on node n (0 is Node, where it gets a host
// veth named as tern names them) with address ip, labelled so that the
// cluster's selectors match it whatever i is: benchmarks that add pods one
// at a time take i from Nodes*PerNode on.
func Pod(i, n int, ip netip.Addr) policy.Pod {
	p := policy.Pod{
		Namespace: namespace(i % Namespaces),
		Name:      fmt.Sprintf("pod%05d", i),
		Node:      fmt.Sprintf("node%d", n),
		Labels: map[string]string{"app": fmt.Sprintf("app%d", (i/Namespaces)%20),
			"tier": []string{"front", "back", "db"}[i%3], "version": fmt.Sprintf("v%d", i%4)},
		IPs:   []netip.Addr{ip},
		Ports: []policy.NamedPort{{Name: "http", Protocol: tcp, Port: 8080 + int32(i%3)}, {Name: "metrics", Protocol: tcp, Port: 9100}},
	}
	if i%5 == 0 {
		p.Ports = append(p.Ports, policy.NamedPort{Name: "dns", Protocol: udp, Port: 53})
	}
	if n == 0 {
		p.HostIf = fmt.Sprintf("%s%0*x", hostveth.Prefix, hostveth.HexLen, i)
	}
	return p
}

func namespace(i int) string { return fmt.Sprintf("ns%02d", i) }

// policies are the ten of namespace i.
func policies(i int) []*networkingv1.NetworkPolicy {
	ns := namespace(i)
	app := func(k int) *metav1.LabelSelector { return sel("app", fmt.Sprintf("app%d", (i+k)%20)) }
	return []*networkingv1.NetworkPolicy{
		netpol(ns, "default-deny", sel(), types(ingress), nil),
		netpol(ns, "app-to-app", app(0), nil, from(peers(podPeer(app(1))), port(tcp, 8080))),
		netpol(ns, "team-to-front", sel("tier", "front"), nil, from(peers(nsPeer(sel("team", fmt.Sprintf("t%d", i%5)))))),
		netpol(ns, "prod-app-to-back", sel("tier", "back"), nil, from(peers(podNSPeer(app(2), sel("env", "prod"))), portRange(tcp, 8000, 8100))),
		netpol(ns, "egress-cluster", app(3), types(egress), to(peers(blockPeer("10.244.0.0/16", fmt.Sprintf("10.244.%d.0/24", i))), port(tcp, 443))),
		netpol(ns, "egress-named", app(4), nil, to(peers(podNSPeer(app(5), sel())), namedPort(tcp, "http"))),
		netpol(ns, "ingress-named", sel("tier", "db"), nil, from(nil, namedPort(tcp, "http"), namedPort(tcp, "metrics"))),
		netpol(ns, "expressions", expr("version", metav1.LabelSelectorOpIn, "v1", "v2"), nil, from(peers(
			podPeer(expr("tier", metav1.LabelSelectorOpNotIn, "db")),
			nsPeer(expr("env", metav1.LabelSelectorOpExists))))),
		netpol(ns, "egress-dns", app(6), types(egress), to(peers(nsPeer(sel("team", "t0"))), port(udp, 53), namedPort(udp, "dns"))),
		netpol(ns, "from-block", app(7), nil, from(peers(blockPeer("10.244.16.0/20", "10.244.17.0/24")), port(tcp, 443))),
	}
}

// Builders of the policies, compact enough that each line above reads like
// the policy it stands for.

const (
	tcp     = corev1.ProtocolTCP
	udp     = corev1.ProtocolUDP
	ingress = networkingv1.PolicyTypeIngress
	egress  = networkingv1.PolicyTypeEgress
)

// sel is a matchLabels selector of key, value pairs; none selects everything.
func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// expr is a selector of one matchExpressions requirement.
func expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func types(ts ...networkingv1.PolicyType) []networkingv1.PolicyType { return ts }

// rule is one ingress or egress rule: its peers (nil: any) and ports.
type rule struct {
	egress bool
	peers  []networkingv1.NetworkPolicyPeer
	ports  []networkingv1.NetworkPolicyPort
}

func from(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *rule {
	return &rule{peers: peers, ports: ports}
}

func to(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *rule {
	return &rule{egress: true, peers: peers, ports: ports}
}

// netpol is a policy of ns selecting pods, of types (nil: as its rule
// implies), with one rule or (r nil) none.
func netpol(ns, name string, pods *metav1.LabelSelector, ts []networkingv1.PolicyType, r *rule) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *pods, PolicyTypes: ts},
	}
	switch {
	case r == nil:
	case r.egress:
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: r.peers, Ports: r.ports}}
	default:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: r.peers, Ports: r.ports}}
	}
	return np
}

func peers(ps ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return ps }

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func podNSPeer(pods, nss *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: pods, NamespaceSelector: nss}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: new(intstr.FromInt32(n))}
}

func portRange(proto corev1.Protocol, n, end int32) networkingv1.NetworkPolicyPort {
	p := port(proto, n)
	p.EndPort = &end
	return p
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: new(intstr.FromString(name))}
}
