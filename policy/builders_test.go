package policy

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tern-net/tern/hostveth"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// Builders of test inputs: compact enough that a table row reads like the
// policy it stands for.

// labels parses "a=1,b=2".
func labels(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// sel is a matchLabels selector; "" selects everything.
func sel(s string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels(s)}
}

// expr is a selector of one matchExpressions requirement.
func expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

type podOpt func(*Pod)

func withPorts(ps ...NamedPort) podOpt { return func(p *Pod) { p.Ports = append(p.Ports, ps...) } }
func hostNetwork() podOpt              { return func(p *Pod) { p.HostNetwork = true } }

// pod builds a pod; ips is space-separated ("" for none). Local pods (on
// testNode) get a HostIf derived from their name.
func pod(ns, name, node, ips, lbls string, opts ...podOpt) Pod {
	p := Pod{Namespace: ns, Name: name, Node: node, Labels: labels(lbls)}
	for _, a := range strings.Fields(ips) {
		p.IPs = append(p.IPs, netip.MustParseAddr(a))
	}
	if node == testNode {
		p.HostIf = hostveth.Prefix + name
	}
	for _, o := range opts {
		o(&p)
	}
	if p.HostNetwork {
		p.HostIf = ""
	}
	return p
}

type npOpt func(*networkingv1.NetworkPolicy)

// netpol builds a policy selecting podSel (nil: all) in ns.
func netpol(ns, name string, podSel *metav1.LabelSelector, opts ...npOpt) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if podSel != nil {
		np.Spec.PodSelector = *podSel
	}
	for _, o := range opts {
		o(np)
	}
	return np
}

func types(ts ...networkingv1.PolicyType) npOpt {
	return func(np *networkingv1.NetworkPolicy) { np.Spec.PolicyTypes = ts }
}

const (
	tIn  = networkingv1.PolicyTypeIngress
	tOut = networkingv1.PolicyTypeEgress
)

// rule is an ingress or egress rule: its peers (nil: any) and ports.
type rule struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

func allow(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) rule {
	return rule{peers: peers, ports: ports}
}

func ingressRules(rs ...rule) npOpt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		for _, r := range rs {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: r.peers, Ports: r.ports})
		}
	}
}

func egressRules(rs ...rule) npOpt {
	return func(np *networkingv1.NetworkPolicy) {
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
		for _, r := range rs {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: r.peers, Ports: r.ports})
		}
	}
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

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }

// port is a numeric port of proto ("" leaves the protocol unset: TCP).
func port(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Port: new(intstr.FromInt32(n))}
	if proto != "" {
		p.Protocol = protoPtr(proto)
	}
	return p
}

func portRange(proto corev1.Protocol, n, end int32) networkingv1.NetworkPolicyPort {
	p := port(proto, n)
	p.EndPort = &end
	return p
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Port: new(intstr.FromString(name))}
	if proto != "" {
		p.Protocol = protoPtr(proto)
	}
	return p
}

func protoOnly(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: protoPtr(proto)}
}

const (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

// checkGolden compares got with testdata/name.golden, or rewrites it with
// -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./policy/ -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the compiled ruleset (go test ./policy/ -update to accept):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}
