package policy

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tern-net/tern/hostveth"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDispatchChainName(t *testing.T) {
	for _, d := range []direction{ingress, egress} {
		if n := dispatchChainName(d, strings.Repeat("f", hostveth.HexLen)); len(n) > maxChainName || !strings.HasPrefix(n, ChainPrefix) {
			t.Errorf("dispatch chain %q", n)
		}
	}
}

// crowdedInput has n local pods (veths named as tern's CNI plugin names
// them) and as many remote ones, isolated both ways, every pod allowed to
// talk to every pod of the cluster.
func crowdedInput(n int) Input {
	in := Input{Node: testNode, Namespaces: []Namespace{{Name: "app"}}, Policies: []*networkingv1.NetworkPolicy{
		netpol("app", "cluster", sel(""), types(tIn, tOut),
			ingressRules(allow(peers(podPeer(sel(""))))), egressRules(allow(peers(podPeer(sel(""))))))}}
	for i := range 2 * n {
		node := testNode
		if i >= n {
			node = "n2"
		}
		name := fmt.Sprintf("pod%04d", i)
		p := pod("app", name, node, netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).String(), "app=x")
		if node == testNode {
			p.HostIf = hexIf("", "app."+name)
		}
		in.Pods = append(in.Pods, p)
	}
	return in
}

// TestDispatchBothChecks: a flow between two local pods passes the source's
// egress chain and then the destination's ingress chain, wherever their
// veths are in the dispatch trees; either one denies it alone.
func TestDispatchBothChecks(t *testing.T) {
	in := crowdedInput(300)
	// Pods labeled locked-in (locked-out) are isolated for ingress
	// (egress) with nothing allowed; the others allow everything.
	in.Policies = []*networkingv1.NetworkPolicy{
		netpol("app", "allow-in", expr("locked-in", metav1.LabelSelectorOpDoesNotExist), types(tIn), ingressRules(allow(nil))),
		netpol("app", "allow-out", expr("locked-out", metav1.LabelSelectorOpDoesNotExist), types(tOut), egressRules(allow(nil))),
		netpol("app", "deny-in", expr("locked-in", metav1.LabelSelectorOpExists), types(tIn)),
		netpol("app", "deny-out", expr("locked-out", metav1.LabelSelectorOpExists), types(tOut)),
	}
	const src, dst = 17, 242
	f := Flow{Src: in.Pods[src].IPs[0], Dst: in.Pods[dst].IPs[0], Protocol: tcp, DstPort: 80}
	back := Flow{Src: f.Dst, Dst: f.Src, Protocol: tcp, DstPort: 80}
	for _, tc := range []struct {
		name     string
		lock     map[int]string // pod → label
		want     bool
		why      string
		wantBack bool
	}{
		{"both allow", nil, true, "egress of app/pod0017 by `-j RETURN`; ingress of app/pod0242 by `-j RETURN`", true},
		{"source's egress denies", map[int]string{src: "locked-out"}, false, "egress of app/pod0017: denied, no rule of app/deny-out allows it", true},
		{"destination's ingress denies", map[int]string{dst: "locked-in"}, false, "ingress of app/pod0242: denied, no rule of app/deny-in allows it", true},
		{"destination's egress is not asked", map[int]string{dst: "locked-out"}, true, "ingress of app/pod0242 by", false},
		{"source's ingress is not asked", map[int]string{src: "locked-in"}, true, "egress of app/pod0017 by", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := in
			in.Pods = slices.Clone(in.Pods)
			for i, l := range tc.lock {
				in.Pods[i].Labels = map[string]string{"app": "x", l: ""}
			}
			rs := Compile(in)
			got, why := rs.Allowed(f)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("allowed %t (%s), want %t (%s)", got, why, tc.want, tc.why)
			}
			if ref := referenceAllowed(in, f); ref != tc.want {
				t.Errorf("the reference says %t", ref)
			}
			if got, why := rs.Allowed(back); got != tc.wantBack {
				t.Errorf("the way back: allowed %t (%s), want %t", got, why, tc.wantBack)
			}
		})
	}
}

// dispatchCosts returns, over every local pod of in, the most rules of the
// dispatch a flow from it to a remote address, and a flow from a remote
// address to it, pass.
func dispatchCosts(t *testing.T, in Input, rs Ruleset) (maxOut, maxIn int) {
	t.Helper()
	remote := netip.MustParseAddr("10.99.0.1")
	for _, pp := range rs.Pods {
		if len(pp.IPs) == 0 {
			continue
		}
		a := pp.IPs[0]
		out := rs.dispatchCost(Flow{Src: a, Dst: remote, Protocol: tcp, DstPort: 80})
		into := rs.dispatchCost(Flow{Src: remote, Dst: a, Protocol: tcp, DstPort: 80})
		if out < 4 || into < 4 {
			t.Fatalf("%s: dispatch costs %d and %d: the flows did not reach the dispatch", a, out, into)
		}
		maxOut, maxIn = max(maxOut, out), max(maxIn, into)
	}
	return maxOut, maxIn
}

// TestDispatchDepth: a new connection's first packet walks a bounded
// number of dispatch rules, however many local pods there are: of
// TERN-POLICY (cut mark, established, and the two tree entries it passes)
// and of the chains of one tree. TestDispatchDepthOfCluster (in
// cluster_test.go) is the same for the benchmarks' cluster.
func TestDispatchDepth(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    Input
		bound int
	}{
		{"300 local pods", crowdedInput(300), 4 + 2*dispatchLeafMax},
		{"1,000 local pods", crowdedInput(1000), 4 + 3*dispatchLeafMax},
	} {
		t.Run(tc.name, func(t *testing.T) { checkDispatchDepth(t, tc.in, tc.bound) })
	}
	// A flow between two local pods walks both trees: TERN-POLICY's four
	// rules and a path in each.
	in := crowdedInput(300)
	rs := Compile(in)
	checkValues(t, rs)
	if n := rs.dispatchCost(Flow{Src: in.Pods[3].IPs[0], Dst: in.Pods[200].IPs[0], Protocol: tcp, DstPort: 80}); n > 4+4*dispatchLeafMax {
		t.Errorf("local to local: %d dispatch rules", n)
	}
}

// checkDispatchDepth checks that no flow of a local pod of in walks more
// than bound dispatch rules, and that no dispatch chain is longer than a
// leaf.
func checkDispatchDepth(t *testing.T, in Input, bound int) {
	t.Helper()
	rs := Compile(in)
	maxOut, maxIn := dispatchCosts(t, in, rs)
	t.Logf("dispatch rules walked, at most: %d out of a pod, %d into one", maxOut, maxIn)
	if maxOut > bound || maxIn > bound {
		t.Errorf("a flow walks %d and %d dispatch rules, want at most %d", maxOut, maxIn, bound)
	}
	for _, c := range rs.Chains {
		if strings.HasPrefix(c.Name, dispatchFromPrefix) || strings.HasPrefix(c.Name, dispatchToPrefix) {
			if len(c.Rules) > dispatchLeafMax {
				t.Errorf("%s has %d rules", c.Name, len(c.Rules))
			}
		}
	}
}

// chainDiff lists the chains that differ between two rulesets (added,
// removed or rewritten), as "family name".
func chainDiff(a, b Ruleset) []string {
	m := map[chainKey][]Rule{}
	for _, c := range a.Chains {
		m[chainKey{c.IPv6, c.Name}] = c.Rules
	}
	var out []string
	for _, c := range b.Chains {
		k := chainKey{c.IPv6, c.Name}
		if r, ok := m[k]; !ok || !reflect.DeepEqual(r, c.Rules) {
			out = append(out, fmt.Sprintf("%s %s", ipFamily(c.IPv6), c.Name))
		}
		delete(m, k)
	}
	for k := range m {
		out = append(out, fmt.Sprintf("%s %s (removed)", ipFamily(k.v6), k.name))
	}
	slices.Sort(out)
	return out
}

// TestDispatchNewPodRewritesLittle: adding a local pod rewrites its own
// chains and a leaf of each tree; when the leaf splits, also its parent
// and its new children; never TERN-POLICY or a large chain.
func TestDispatchNewPodRewritesLittle(t *testing.T) {
	in := crowdedInput(300)
	rs := Compile(in)
	checkValues(t, rs)
	splits := 0
	for k := range 200 {
		name := fmt.Sprintf("new%03d", k)
		p := pod("app", name, testNode, netip.AddrFrom4([4]byte{10, 245, byte(k >> 8), byte(k)}).String(), "app=x")
		p.HostIf = hexIf("", "app."+name)
		in.Pods = append(slices.Clip(in.Pods), p)
		next := Compile(in)
		diff := chainDiff(rs, next)
		own := next.Pods["app/"+name]
		var dispatch []string
		for _, d := range diff {
			switch {
			case strings.HasSuffix(d, " "+own.IngressChain), strings.HasSuffix(d, " "+own.EgressChain):
			case strings.Contains(d, ChainPolicy):
				t.Fatalf("adding %s rewrote %s", name, d)
			default:
				dispatch = append(dispatch, d)
			}
		}
		// Per direction: the leaf; or the parent and a new leaf of two
		// when the pod joins one that had no chain of its own; or, when a
		// leaf splits, it and up to 16 children.
		if len(dispatch) > 4 {
			splits++
		}
		if len(dispatch) < 2 || len(dispatch) > 2*(2+dispatchLeafMax) {
			t.Fatalf("adding %s rewrote %d dispatch chains: %v", name, len(dispatch), dispatch)
		}
		rs = next
	}
	t.Logf("200 pods added to 300: %d rewrote more than two dispatch chains per tree (a leaf split)", splits)
	if splits > 40 {
		t.Errorf("%d splits out of 200", splits)
	}
}

// TestDispatchDuplicateVeth: two pods claiming one veth (not in a
// consistent snapshot) are both policed, as if each had its own.
func TestDispatchDuplicateVeth(t *testing.T) {
	in := crowdedInput(40)
	in.Pods[5].HostIf = in.Pods[6].HostIf
	in.Pods[5].Labels = map[string]string{"deny": "all"}
	in.Policies = []*networkingv1.NetworkPolicy{
		netpol("app", "only-80", sel("app=x"), types(tIn), ingressRules(allow(nil, port(tcp, 80)))),
		netpol("app", "deny", sel("deny=all"), types(tIn)),
	}
	rs := Compile(in)
	if got, why := rs.Allowed(Flow{Src: netip.MustParseAddr("10.99.0.1"), Dst: in.Pods[7].IPs[0], Protocol: tcp, DstPort: 80}); !got {
		t.Errorf("pod 7 denied: %s", why)
	}
	// A flow into pod 6's address goes out on the shared veth: pod 5's
	// ingress chain denies it as well.
	f := Flow{Src: netip.MustParseAddr("10.99.0.1"), Dst: in.Pods[6].IPs[0], Protocol: tcp, DstPort: 80}
	if got, why := rs.Allowed(f); got {
		t.Errorf("allowed through the shared veth: %s", why)
	}
}
