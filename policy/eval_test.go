package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tern-net/tern/hostveth"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// referenceAllowed is NetworkPolicy semantics written straight from the
// API documentation, with apimachinery's own selectors and no sets or
// chains: the oracle Compile + Allowed are checked against. A named egress
// port is the destination pod's, whatever the peer (an ipBlock that holds a
// pod's address too).
func referenceAllowed(in Input, f Flow) bool {
	src, dst := f.Src.Unmap(), f.Dst.Unmap()
	srcPod, dstPod := refPodByIP(in, src), refPodByIP(in, dst)
	proto := f.Protocol
	if proto == "" {
		proto = tcp
	}
	policed := func(p *Pod) bool { return p != nil && p.Node == in.Node && p.HostIf != "" }
	if policed(srcPod) && !refTiersAllow(in, srcPod, tOut, dst, dstPod, proto, f.DstPort) {
		return false
	}
	if policed(dstPod) && !refTiersAllow(in, dstPod, tIn, src, srcPod, proto, f.DstPort) {
		return false
	}
	return true
}

// refDirectionAllows: pod is the policed end, peer the other one.
func refDirectionAllows(in Input, pod *Pod, dir networkingv1.PolicyType, peer netip.Addr, peerPod *Pod, proto corev1.Protocol, dport int32) bool {
	isolated := false
	for _, np := range in.Policies {
		if !refIsolates(np, pod, dir) {
			continue
		}
		isolated = true
		type rule struct {
			peers []networkingv1.NetworkPolicyPeer
			ports []networkingv1.NetworkPolicyPort
		}
		var rules []rule
		if dir == tIn {
			for _, r := range np.Spec.Ingress {
				rules = append(rules, rule{r.From, r.Ports})
			}
		} else {
			for _, r := range np.Spec.Egress {
				rules = append(rules, rule{r.To, r.Ports})
			}
		}
		// The named ports are the destination's: the policed pod for
		// ingress, the peer for egress.
		dstPod := pod
		if dir == tOut {
			dstPod = peerPod
		}
		for _, r := range rules {
			peerOK := func(p *networkingv1.NetworkPolicyPeer) bool {
				return p == nil || refPeerMatches(in, np.Namespace, *p, peer, peerPod)
			}
			portOK := func(p *networkingv1.NetworkPolicyPort) bool {
				if p == nil {
					return true
				}
				return refPortMatches(*p, proto, dport, dstPod)
			}
			peers := []*networkingv1.NetworkPolicyPeer{nil}
			if len(r.peers) > 0 {
				peers = nil
				for i := range r.peers {
					peers = append(peers, &r.peers[i])
				}
			}
			ports := []*networkingv1.NetworkPolicyPort{nil}
			if len(r.ports) > 0 {
				ports = nil
				for i := range r.ports {
					ports = append(ports, &r.ports[i])
				}
			}
			for _, pe := range peers {
				for _, po := range ports {
					if peerOK(pe) && portOK(po) {
						return true
					}
				}
			}
		}
	}
	return !isolated
}

func refSelects(ls *metav1.LabelSelector, lbls map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return false
	}
	return s.Matches(k8slabels.Set(lbls))
}

func refPeerMatches(in Input, policyNS string, p networkingv1.NetworkPolicyPeer, addr netip.Addr, peerPod *Pod) bool {
	if p.IPBlock != nil {
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil || !cidr.Contains(addr) {
			return false
		}
		for _, e := range p.IPBlock.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil || ex.Contains(addr) {
				return false
			}
		}
		return true
	}
	if peerPod == nil || (p.PodSelector == nil && p.NamespaceSelector == nil) {
		return false
	}
	if p.NamespaceSelector == nil {
		if peerPod.Namespace != policyNS {
			return false
		}
	} else {
		var nsLabels map[string]string
		for _, ns := range in.Namespaces {
			if ns.Name == peerPod.Namespace {
				nsLabels = ns.Labels
			}
		}
		if !refSelects(p.NamespaceSelector, nsLabels) {
			return false
		}
	}
	return p.PodSelector == nil || refSelects(p.PodSelector, peerPod.Labels)
}

func refPortMatches(p networkingv1.NetworkPolicyPort, proto corev1.Protocol, dport int32, dstPod *Pod) bool {
	want := tcp
	if p.Protocol != nil {
		want = *p.Protocol
	}
	if want != proto {
		return false
	}
	if p.Port == nil {
		return true
	}
	if p.Port.Type == intstr.String {
		if dstPod == nil {
			return false
		}
		for _, np := range dstPod.Ports {
			npProto := np.Protocol
			if npProto == "" {
				npProto = tcp
			}
			if np.Name == p.Port.StrVal && npProto == proto && np.Port == dport {
				return true
			}
		}
		return false
	}
	end := p.Port.IntVal
	if p.EndPort != nil {
		end = *p.EndPort
	}
	return dport >= p.Port.IntVal && dport <= end
}

// refPodByIP finds the (non host-network) pod that owns an address.
func refPodByIP(in Input, a netip.Addr) *Pod {
	for i := range in.Pods {
		p := &in.Pods[i]
		if !p.HostNetwork && slices.ContainsFunc(p.IPs, func(b netip.Addr) bool { return b.Unmap() == a }) {
			return p
		}
	}
	return nil
}

// policyGen makes random policies over the test world's labels.
type policyGen struct{ r *rand.Rand }

var (
	genPodSels = []*metav1.LabelSelector{
		nil, sel(""), sel("app=web"), sel("app=client"), sel("tier=front"),
		expr("tier", metav1.LabelSelectorOpIn, "front", "back"), expr("tier", metav1.LabelSelectorOpNotIn, "back"),
		expr("tier", metav1.LabelSelectorOpExists), expr("tier", metav1.LabelSelectorOpDoesNotExist),
	}
	genNSSels = []*metav1.LabelSelector{
		sel(""), sel("team=b"), expr("team", metav1.LabelSelectorOpNotIn, "a"),
		expr("team", metav1.LabelSelectorOpDoesNotExist), expr("env", metav1.LabelSelectorOpExists),
	}
	genBlocks = []networkingv1.NetworkPolicyPeer{
		blockPeer("10.244.1.0/24"), blockPeer("10.244.0.0/16", "10.244.1.0/25"),
		blockPeer("0.0.0.0/0", "10.244.2.0/24", "10.244.1.12/32"), blockPeer("10.244.2.16/28"),
		blockPeer("fd10::/64"), blockPeer("::/0", "fd10::1:0/112"),
		blockPeer("fd10::/64", "fd10::1:10/128", "fd10::2:0/112"), blockPeer("fd10::2:0/112", "fd10::2:20/128"),
		// IPv4-mapped: no address is in them (as the reference has it).
		blockPeer("::ffff:10.244.0.0/112"), blockPeer("::/0", "::ffff:0:0/96", "fd10:1::/32"),
	}
	genPorts = []networkingv1.NetworkPolicyPort{
		port(tcp, 80), port("", 8080), port(udp, 53), portRange(tcp, 8000, 8100), namedPort(tcp, "http"),
		namedPort(udp, "dns"), namedPort("", "pg"), namedPort(udp, "http"), protoOnly(udp), protoOnly(sctp), port(sctp, 3868),
	}
	genTypes = [][]networkingv1.PolicyType{nil, {tIn}, {tOut}, {tIn, tOut}}
)

func (g policyGen) peer() networkingv1.NetworkPolicyPeer {
	r := g.r
	switch r.IntN(4) {
	case 0:
		return podPeer(genPodSels[1+r.IntN(len(genPodSels)-1)])
	case 1:
		return nsPeer(genNSSels[r.IntN(len(genNSSels))])
	case 2:
		return podNSPeer(genPodSels[1+r.IntN(len(genPodSels)-1)], genNSSels[r.IntN(len(genNSSels))])
	}
	return genBlocks[r.IntN(len(genBlocks))]
}

func (g policyGen) rules() []rule {
	r := g.r
	var rs []rule
	for range r.IntN(3) {
		var ru rule
		if r.IntN(3) > 0 {
			for range 1 + r.IntN(2) {
				ru.peers = append(ru.peers, g.peer())
			}
		}
		if r.IntN(3) > 0 {
			for range 1 + r.IntN(2) {
				ru.ports = append(ru.ports, genPorts[r.IntN(len(genPorts))])
			}
		}
		rs = append(rs, ru)
	}
	return rs
}

// policy is a random policy named name in ns.
func (g policyGen) policy(ns, name string) *networkingv1.NetworkPolicy {
	r := g.r
	opts := []npOpt{types(genTypes[r.IntN(len(genTypes))]...)}
	if r.IntN(4) > 0 {
		opts = append(opts, ingressRules(g.rules()...))
	}
	if r.IntN(2) > 0 {
		opts = append(opts, egressRules(g.rules()...))
	}
	return netpol(ns, name, genPodSels[r.IntN(len(genPodSels))], opts...)
}

// policies are one to four random policies.
func (g policyGen) policies() []*networkingv1.NetworkPolicy {
	var policies []*networkingv1.NetworkPolicy
	for i := range 1 + g.r.IntN(4) {
		policies = append(policies, g.policy([]string{"app", "other"}[g.r.IntN(2)], fmt.Sprintf("p%d", i)))
	}
	return policies
}

// referenceWorld is the test world with two more pods, with IPv6
// addresses.
func referenceWorld() ([]Pod, []Namespace) {
	pods, nss := world()
	return append(pods,
		pod("app", "client6", "n2", "10.244.2.11 fd10::2:11", "app=client"),
		pod("app", "web6", testNode, "fd10::1:13 10.244.1.13", "app=web,tier=front", withPorts(NamedPort{"http", tcp, 80}))), nss
}

// dualWorld is the reference world with an IPv6 address for every pod
// that has an IPv4 address only (but ghost/x): dual-stack pods on both
// ends, policed in both families.
func dualWorld() ([]Pod, []Namespace) {
	pods, nss := referenceWorld()
	in := Input{Pods: pods}
	dualStack(&in)
	return in.Pods, nss
}

// hexIf is a host veth name of tern's shape starting with prefix (hex).
func hexIf(prefix, seed string) string {
	h := sha256.Sum256([]byte(seed))
	return hostveth.Prefix + prefix + hex.EncodeToString(h[:])[:hostveth.HexLen-len(prefix)]
}

// treeWorld is the reference world with veths of tern's shape, crowded by
// local pods without addresses so that the dispatch splits twice around
// the pods that have addresses, and one veth of another shape that does
// not even start with hostveth.Prefix (so ChainPolicy enters the roots without
// matching the interface).
func treeWorld() ([]Pod, []Namespace) {
	pods, nss := referenceWorld()
	prefixes := map[string]string{"app/web1": "3a", "app/web2": "3a", "app/db": "3", "app/web6": "3a0", "app/pending": "3a"}
	for i := range pods {
		p := &pods[i]
		if p.HostIf == "" {
			continue
		}
		key := p.Namespace + "/" + p.Name
		p.HostIf = hexIf(prefixes[key], key)
		if key == "other/api" {
			p.HostIf = "eth-api"
		}
	}
	for k := range 60 {
		prefix := []string{"3a", "3", "", "3a0"}[k%4]
		name := fmt.Sprintf("filler%02d", k)
		p := pod("app", name, testNode, "", []string{"app=filler", "tier=front", "app=web"}[k%3])
		p.HostIf = hexIf(prefix, name)
		pods = append(pods, p)
	}
	return pods, nss
}

// TestAgainstReference compiles random policies over the test world and
// checks every flow between a set of addresses against the reference: with
// the world's veths (exact rules at the dispatch roots) and with veths of
// tern's shape (a dispatch tree three levels deep).
func TestAgainstReference(t *testing.T) {
	for name, mk := range map[string]func() ([]Pod, []Namespace){"flat": referenceWorld, "tree": treeWorld, "dual": dualWorld} {
		t.Run(name, func(t *testing.T) { testAgainstReference(t, mk) })
	}
}

func testAgainstReference(t *testing.T, mkWorld func() ([]Pod, []Namespace)) {
	g := policyGen{rand.New(rand.NewPCG(7, 11))}
	pods, nss := mkWorld()
	var addrs []netip.Addr
	for _, p := range pods {
		addrs = append(addrs, p.IPs...)
	}
	addrs = append(addrs, netip.MustParseAddr("10.244.1.200"), netip.MustParseAddr("10.244.2.17"),
		netip.MustParseAddr("10.244.99.1"), netip.MustParseAddr("fd10::1:99"), netip.MustParseAddr("fd10:1::1"),
		netip.MustParseAddr("fd10::2:99"))
	protos := []corev1.Protocol{tcp, udp, sctp}
	dports := []int32{80, 8080, 8443, 9090, 53, 5432, 8000, 8100, 8101, 3868, 1}

	checked, checkedFam := 0, map[bool]int{}
	var comp Compiler
	for iter := range 150 {
		in := Input{Node: testNode, Pods: pods, Namespaces: nss, Policies: g.policies()}
		if iter%3 != 0 {
			in.ClusterPolicies = g.clusterPolicies()
		}
		rs := Compile(in)
		checkValues(t, rs)
		if got := comp.Compile(in); !reflect.DeepEqual(got, rs) {
			t.Fatalf("iteration %d: a reused Compiler differs from Compile:\n%s\n--- Compile:\n%s", iter, got.String(), rs.String())
		}
		ev := rs.Evaluator()
		for _, s := range addrs {
			for _, d := range addrs {
				if s == d || s.Is4() != d.Is4() {
					continue
				}
				for _, proto := range protos {
					for _, dp := range dports {
						f := Flow{Src: s, Dst: d, Protocol: proto, DstPort: dp}
						got, why := rs.Allowed(f)
						want := referenceAllowed(in, f)
						checked++
						checkedFam[s.Is6()]++
						if evGot, evWhy := ev.Allowed(f); evGot != got || evWhy != why {
							t.Fatalf("%s -> %s %s/%d: Evaluator says %t (%s), Allowed %t (%s)", s, d, proto, dp, evGot, evWhy, got, why)
						}
						if got != want {
							t.Fatalf("iteration %d: %s -> %s %s/%d: allowed %t (%s), reference %t\nruleset:\n%s",
								iter, s, d, proto, dp, got, why, want, rs.String())
						}
					}
				}
			}
		}
	}
	t.Logf("%d flows checked, %d of them IPv6", checked, checkedFam[true])
	if checkedFam[true] == 0 || checkedFam[false] == 0 {
		t.Errorf("flows checked by family: %v, want both", checkedFam)
	}
}

func TestNetSetContains(t *testing.T) {
	members := []string{"10.244.0.0/16", "10.244.1.0/24 nomatch", "10.244.1.128/25", "10.244.1.130 nomatch"}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"10.244.2.1", true}, {"10.244.1.1", false}, {"10.244.1.129", true}, {"10.244.1.130", false}, {"10.245.0.1", false},
	} {
		got, err := netSetContains(members, netip.MustParseAddr(tc.addr))
		if err != nil || got != tc.want {
			t.Errorf("%s: got %t, %v; want %t", tc.addr, got, err, tc.want)
		}
	}
	if _, err := netSetContains([]string{"10.0.0.0/8 sometimes"}, netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Error("unknown flag accepted")
	}
}

func TestNetMembers(t *testing.T) {
	for _, tc := range []struct {
		cidr   string
		except []string
		want   []string
	}{
		{"0.0.0.0/0", nil, []string{"0.0.0.0/1", "128.0.0.0/1"}},
		{"0.0.0.0/0", []string{"128.0.0.0/1", "10.244.0.0/16"}, []string{"0.0.0.0/1", "10.244.0.0/16 nomatch"}},
		{"::/0", []string{"fd10::/64"}, []string{"8000::/1", "::/1", "fd10::/64 nomatch"}},
		{"10.244.1.7/16", []string{"10.244.9.0/24", "10.244.9.1/24", "10.0.0.0/24"}, []string{"10.244.0.0/16", "10.244.9.0/24 nomatch"}},
	} {
		ps, ok := compileIPBlock(&networkingv1.IPBlock{CIDR: tc.cidr, Except: tc.except})
		if !ok {
			t.Fatalf("%s: rejected", tc.cidr)
		}
		if got := netMembers(ps); !slices.Equal(got, tc.want) {
			t.Errorf("%s except %v: members %q, want %q", tc.cidr, tc.except, got, tc.want)
		}
	}
}

func TestAllowedOddRulesets(t *testing.T) {
	a := netip.MustParseAddr("10.244.1.10")
	b := netip.MustParseAddr("10.244.2.10")
	pods := map[string]PodPolicy{"app/a": {HostIf: "terna", IPs: []netip.Addr{a}, EgressChain: "TERN-PE-a", Egress: []string{"app/p"}}}
	entry := func(rules ...Rule) Chain {
		return Chain{Name: ChainPolicy, Kind: EntryChain, Rules: append([]Rule{cutRule, establishedRule}, rules...)}
	}
	// r renders rules.
	r := func(rules ...Rule) []Rule {
		for i := range rules {
			rules[i] = rules[i].Render()
		}
		return rules
	}
	e := func(rules ...Rule) Chain { return entry(r(rules...)...) }
	f := Flow{Src: a, Dst: b, Protocol: tcp, DstPort: 80}
	for _, tc := range []struct {
		name   string
		rs     *Ruleset
		want   bool
		reason string
	}{
		{"nil ruleset", nil, true, "no ruleset"},
		{"no chains", &Ruleset{}, true, "no IPv4 policy ruleset"},
		{"cut mark and established do not match a new flow", &Ruleset{Chains: []Chain{entry()}}, true, "not isolated"},
		{"log options of another target", &Ruleset{Chains: []Chain{e(Rule{Target: "DROP", LogGroup: 5})}}, false, "cannot interpret"},
		{"missing set", &Ruleset{Chains: []Chain{e(Rule{Sets: []SetMatch{{Name: "tern-x", Flags: "src"}}, Target: "DROP"})}}, false, "missing set"},
		{"missing chain", &Ruleset{Pods: pods, Chains: []Chain{e(Rule{In: "terna", Target: "TERN-PE-a"})}}, false, "missing chain"},
		{"dport without -p", &Ruleset{Chains: []Chain{e(Rule{DPort: 80, Target: "DROP"})}}, false, "without -p"},
		{"loop", &Ruleset{Pods: pods, Chains: []Chain{
			{Name: "TERN-PE-a", Rules: r(Rule{Target: "TERN-PE-a"})},
			e(Rule{In: "terna", Target: "TERN-PE-a"}),
		}}, false, "deeper"},
		{"a goto's RETURN resumes the chain that jumped", &Ruleset{Pods: pods, Chains: []Chain{
			{Name: "TERN-PDF", Kind: DispatchChain, Rules: r(Rule{In: "tern+", Target: "TERN-PE-a", Goto: true}, Rule{Target: "DROP"})},
			{Name: "TERN-PE-a", Comment: "egress of app/a", Rules: r(Rule{Target: "RETURN"})},
			e(Rule{In: "ter+", Target: "TERN-PDF"}, Rule{Target: "TERN-PX"}),
			{Name: "TERN-PX", Comment: "after", Rules: r(Rule{Target: "DROP"})},
		}}, false, "after: denied"},
		{"a wildcard that does not match", &Ruleset{Pods: pods, Chains: []Chain{
			e(Rule{In: "ternb+", Target: "TERN-PX"}, Rule{Out: "terna+", Target: "TERN-PX"}, Rule{In: "terna", Target: "TERN-PX"}),
			{Name: "TERN-PX", Rules: r(Rule{Target: "DROP"})},
		}}, false, "TERN-PX: denied"},
		{"goto a target", &Ruleset{Chains: []Chain{e(Rule{Target: "RETURN", Goto: true})}}, false, "not a chain"},
		{"negated set", &Ruleset{Sets: []Set{{Name: "tern-x", Type: "hash:ip", Members: []string{"10.244.1.10"}}}, Chains: []Chain{
			e(Rule{Sets: []SetMatch{{Name: "tern-x", Flags: "src", Negated: true}}, Target: "TERN-PX"}, Rule{Sets: []SetMatch{{Name: "tern-x", Flags: "dst", Negated: true}}, Target: "TERN-PY"}),
			{Name: "TERN-PX", Rules: r(Rule{Target: "DROP"})},
			{Name: "TERN-PY", Comment: "not in tern-x", Rules: r(Rule{Target: "DROP"})},
		}}, false, "not in tern-x: denied"},
		{"drop in the pod chain", &Ruleset{Pods: pods, Chains: []Chain{
			{Name: "TERN-PE-a", Comment: "egress of app/a", Rules: r(Rule{Proto: "udp", Target: "RETURN"}, Rule{Target: "DROP"})},
			e(Rule{In: "terna", Target: "TERN-PE-a"}),
		}}, false, "egress of app/a: denied, no rule of app/p allows it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := tc.rs.Allowed(f)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Errorf("got %t (%s), want %t (%s)", got, why, tc.want, tc.reason)
			}
			if evGot, evWhy := tc.rs.Evaluator().Allowed(f); evGot != got || evWhy != why {
				t.Errorf("Evaluator: %t (%s), Allowed: %t (%s)", evGot, evWhy, got, why)
			}
		})
	}
	rs := &Ruleset{}
	if got, why := rs.Allowed(Flow{Src: a, Dst: netip.MustParseAddr("fd10::1")}); got {
		t.Errorf("mixed families allowed: %s", why)
	}
	if got, why := rs.Allowed(Flow{}); got {
		t.Errorf("flow without addresses allowed: %s", why)
	}
}
