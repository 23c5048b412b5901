package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tern-net/tern/policy"
)

// The cut pass over rulesets policy.Compile gives, with their dispatch
// trees: which flows a change of pods or policies has judged.

const scopeNode = "n1"

// scopeLocal is local pod i: address 10.244.1.(10+i), a host veth of
// tern's shape whose first hex character is i%4 (so that 17 or more of them
// split the root of a dispatch tree).
func scopeLocal(i int, lbls map[string]string) policy.Pod {
	return policy.Pod{Namespace: "default", Name: fmt.Sprintf("l%d", i), Node: scopeNode, Labels: lbls,
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)})}, HostIf: fmt.Sprintf("tern%x%010x", i%4, i)}
}

// scopeRemote is client pod i on another node, at 10.244.2.(10+i).
func scopeRemote(i int) policy.Pod {
	return policy.Pod{Namespace: "default", Name: fmt.Sprintf("r%d", i), Node: "n2", Labels: map[string]string{"role": "client"},
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 2, byte(10 + i)})}}
}

// ingressFromClients is a policy selecting app=app that lets clients in on
// the TCP ports.
func ingressFromClients(name, app string, ports ...int) *networkingv1.NetworkPolicy {
	var ps []networkingv1.NetworkPolicyPort
	for _, p := range ports {
		tcp, port := corev1.ProtocolTCP, intstr.FromInt32(int32(p))
		ps = append(ps, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &port})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
				Ports: ps,
			}},
		},
	}
}

// evalDenied judges flows by rs, as an agent does.
func evalDenied(rs policy.Ruleset) func(Flow) bool {
	ev := rs.Evaluator()
	return func(f Flow) bool {
		ok, _ := ev.Allowed(policy.Flow{Src: f.Src, Dst: f.Dst, Protocol: corev1.Protocol(f.Protocol), DstPort: f.DstPort})
		return !ok
	}
}

// scopeHarness applies compiled snapshots to a fake driver and table.
type scopeHarness struct {
	t  *testing.T
	in policy.Input
	ct *fakeConntrack
	p  *Policy
	rs policy.Ruleset
}

func newScopeHarness(t *testing.T, pods []policy.Pod, pols ...*networkingv1.NetworkPolicy) *scopeHarness {
	h := &scopeHarness{t: t, in: policy.Input{Node: scopeNode, Pods: pods, Policies: pols,
		Namespaces: []policy.Namespace{{Name: "default"}}}, ct: &fakeConntrack{}}
	// Every local pod has a flow from client 0 on port 80: allowed.
	for _, p := range pods {
		if p.Node == scopeNode {
			h.addFlow(p, 80)
		}
	}
	h.p = newFakePolicy(h.ct)
	h.apply("first Apply")
	if h.ct.dumps != 1 || len(h.ct.cut()) != 0 {
		h.t.Fatalf("first Apply: %d dumps, cut %v", h.ct.dumps, h.ct.cut())
	}
	return h
}

// addFlow adds a flow from client 0 to pod p's port.
func (h *scopeHarness) addFlow(p policy.Pod, port uint16) {
	h.ct.entries = append(h.ct.entries, tcpEntry("10.244.2.10", p.IPs[0].String(), 40000+uint16(len(h.ct.entries)), port))
}

// apply compiles and applies h.in, and returns the flows judged.
func (h *scopeHarness) apply(what string) []string {
	h.t.Helper()
	h.ct.dumps = 0
	h.rs = policy.Compile(h.in)
	r := &recorder{denied: evalDenied(h.rs)}
	st, err := h.p.Apply(h.rs, r.judge)
	if err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
	if st.ConntrackDumps != h.ct.dumps || st.FlowsJudged != len(r.asked) {
		h.t.Errorf("%s: stats %+v, %d dumps, judged %v", what, st, h.ct.dumps, r.asked)
	}
	if got := h.ct.cut(); len(got) != 0 {
		h.t.Errorf("%s: cut %v", what, got)
	}
	return r.asked
}

// flowsTo are the flows of the table to pod p.
func (h *scopeHarness) flowsTo(p policy.Pod) []string {
	var out []string
	for _, e := range h.ct.entries {
		if f, _ := e.flow(); f.Dst == p.IPs[0] {
			out = append(out, flowString(f))
		}
	}
	return out
}

// chains lists the chains of h.rs whose name starts with prefix.
func (h *scopeHarness) chains(prefix string) []string {
	var out []string
	for _, c := range h.rs.Chains {
		if strings.HasPrefix(c.Name, prefix) {
			out = append(out, c.Name)
		}
	}
	return out
}

func db() map[string]string { return map[string]string{"app": "db"} }

// New pods in a compiled ruleset: a client on another node and a pod no
// policy isolates read nothing; a new isolated pod has its own flows
// judged, not those of the pods whose dispatch chains its rules rewrite.
func TestScopeNewPodsInTree(t *testing.T) {
	h := newScopeHarness(t, []policy.Pod{scopeLocal(0, db()), scopeLocal(1, db()), scopeRemote(0)},
		ingressFromClients("db", "db", 80))
	if got := h.chains("TERN-PDT"); len(got) == 0 {
		t.Fatalf("no dispatch tree: %v", h.rs.Chains)
	}
	if h.apply("the same snapshot"); h.ct.dumps != 0 {
		t.Errorf("the same snapshot: %d dumps", h.ct.dumps)
	}

	// (1) A client on another node: members added to an allow set.
	h.in.Pods = append(h.in.Pods, scopeRemote(1))
	if asked := h.apply("a remote client added"); h.ct.dumps != 0 || len(asked) != 0 {
		t.Errorf("a remote client added: %d dumps, judged %v", h.ct.dumps, asked)
	}

	// (2) A local pod no policy isolates.
	open := scopeLocal(2, map[string]string{"app": "web"})
	h.in.Pods = append(h.in.Pods, open)
	h.addFlow(open, 443)
	if asked := h.apply("a local pod no policy isolates"); h.ct.dumps != 0 || len(asked) != 0 {
		t.Errorf("a local pod no policy isolates: %d dumps, judged %v", h.ct.dumps, asked)
	}

	// (3) An isolated local pod: its leaf of TERN-PDT is rewritten, and
	// only its flows are judged (one it does not allow is cut).
	before := h.chains("TERN-P")
	iso := scopeLocal(3, db())
	h.in.Pods = append(h.in.Pods, iso)
	h.addFlow(iso, 80)
	h.addFlow(iso, 22)
	h.ct.dumps = 0
	h.rs = policy.Compile(h.in)
	r := &recorder{denied: evalDenied(h.rs)}
	st, err := h.p.Apply(h.rs, r.judge)
	if err != nil {
		t.Fatal(err)
	}
	if want := h.flowsTo(iso); !slices.Equal(r.asked, want) || st.ConntrackDumps != 1 || st.FlowsCut != 1 {
		t.Errorf("an isolated pod: judged %v (%+v), want %v", r.asked, st, want)
	}
	if got := h.ct.cut(); !slices.Equal(got, []string{"TCP 10.244.2.10 -> 10.244.1.13:22"}) {
		t.Errorf("cut %v", got)
	}
	if added := h.chains("TERN-P"); len(added) <= len(before) {
		t.Errorf("chains %v, then %v: no chain of the new pod", before, added)
	}
}

// (4) A new pod that splits a leaf of the dispatch tree rewrites the way of
// every pod of that leaf, not where their packets go: only its flows are
// judged.
func TestScopeLeafSplit(t *testing.T) {
	pods := []policy.Pod{scopeRemote(0)}
	for i := range 16 {
		pods = append(pods, scopeLocal(i, db()))
	}
	h := newScopeHarness(t, pods, ingressFromClients("db", "db", 80))
	if got := h.chains("TERN-PDT"); !slices.Equal(got, []string{"TERN-PDT"}) {
		t.Fatalf("16 pods: dispatch chains %v, want the root only", got)
	}
	p := scopeLocal(16, db())
	h.in.Pods = append(h.in.Pods, p)
	h.addFlow(p, 80)
	asked := h.apply("the 17th isolated pod")
	if got := h.chains("TERN-PDT"); len(got) < 2 {
		t.Fatalf("17 pods: dispatch chains %v, want the root split", got)
	}
	if want := h.flowsTo(p); !slices.Equal(asked, want) || h.ct.dumps != 1 {
		t.Errorf("judged %v (%d dumps), want %v", asked, h.ct.dumps, want)
	}
	// And merged again when it goes: no flow's policing narrowed.
	h.in.Pods = h.in.Pods[:len(h.in.Pods)-1]
	if asked := h.apply("the 17th pod gone"); len(asked) != 0 || h.ct.dumps != 0 {
		t.Errorf("the 17th pod gone: judged %v (%d dumps)", asked, h.ct.dumps)
	}
}

// (5) A policy change narrowing one pod's chain judges that pod's flows
// only, however many pods the tree holds.
func TestScopePolicyNarrowsOnePod(t *testing.T) {
	a := scopeLocal(0, map[string]string{"app": "a"})
	pods := []policy.Pod{scopeRemote(0), a}
	for i := 1; i < 20; i++ {
		pods = append(pods, scopeLocal(i, db()))
	}
	h := newScopeHarness(t, pods, ingressFromClients("db", "db", 80), ingressFromClients("a", "a", 80, 8080))
	h.addFlow(a, 8080)
	h.in.Policies[1] = ingressFromClients("a", "a", 80)
	h.ct.dumps = 0
	h.rs = policy.Compile(h.in)
	r := &recorder{denied: evalDenied(h.rs)}
	st, err := h.p.Apply(h.rs, r.judge)
	if err != nil {
		t.Fatal(err)
	}
	if want := h.flowsTo(a); !slices.Equal(r.asked, want) || st.FlowsCut != 1 || st.ConntrackDumps != 1 {
		t.Errorf("judged %v (%+v), want a's %v", r.asked, st, want)
	}
	if got := h.ct.cut(); !slices.Equal(got, []string{"TCP 10.244.2.10 -> 10.244.1.10:8080"}) {
		t.Errorf("cut %v", got)
	}
}
