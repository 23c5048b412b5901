package dataplane

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tern-net/tern/policy"
)

// The IPv6 half of the policy dataplane, with rulesets from the compiler
// itself: cutLab's pods a and b (default/a on terna, default/b on ternb,
// dual-stack) and a remote pod c, policed on node n1.

const labNode = "n1"

var ip6C = netip.MustParseAddr("fd10:244:3::2")

// labInput is the compiler's snapshot of cutLab's pods with policies; extra
// pods are remote peers.
func labInput(policies []*networkingv1.NetworkPolicy, extra ...policy.Pod) policy.Input {
	pods := []policy.Pod{
		{Namespace: "default", Name: "a", Node: labNode, HostIf: "terna", Labels: map[string]string{"app": "a"},
			IPs: []netip.Addr{ipA, ip6A}},
		{Namespace: "default", Name: "b", Node: labNode, HostIf: "ternb", Labels: map[string]string{"app": "b"},
			IPs: []netip.Addr{ipB, ip6B}, Ports: []policy.NamedPort{{Name: "web", Protocol: corev1.ProtocolTCP, Port: 9090}}},
		{Namespace: "default", Name: "c", Node: "n2", Labels: map[string]string{"app": "a"},
			IPs: []netip.Addr{netip.MustParseAddr("10.244.3.2"), ip6C}},
	}
	return policy.Input{Node: labNode, IPv6: true, Pods: append(pods, extra...),
		Namespaces: []policy.Namespace{{Name: "default"}}, Policies: policies}
}

// isolateBPolicy lets into b TCP to its named port "web" (9090) from the
// pods labelled app=a, and TCP 8000 to 8100 from the block (and its
// excepts), of whichever family.
func isolateBPolicy(cidr string, except ...string) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	web, lo, hi := intstr.FromString("web"), intstr.FromInt32(8000), int32(8100)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "b"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &web}}},
				{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &lo, EndPort: &hi}}},
			},
		},
	}
}

// evaluatorDenies is the agent's denied function: the compiled rules'
// verdict (policy.Evaluator), recording what it was asked.
func evaluatorDenies(rs policy.Ruleset, judged *[]Flow) func(Flow) bool {
	ev := rs.Evaluator()
	return func(f Flow) bool {
		*judged = append(*judged, f)
		ok, _ := ev.Allowed(policy.Flow{Src: f.Src, Dst: f.Dst, Protocol: corev1.Protocol(f.Protocol), DstPort: f.DstPort})
		return !ok
	}
}

// eachIPv6Backend runs f as a subtest for each installed backend that has
// ip6tables.
func eachIPv6Backend(t *testing.T, f func(t *testing.T, b Backend)) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			if !b.v6.has() {
				t.Skip("no ip6tables")
			}
			f(t, b)
		})
	}
}

// chainNames are the names of the ruleset's chains of a family.
func chainNames(rs policy.Ruleset, v6 bool) []string {
	var out []string
	for _, c := range rs.Chains {
		if c.IPv6 == v6 {
			out = append(out, c.Name)
		}
	}
	slices.Sort(out)
	return out
}

// installedChains are the policy chains the family's filter table holds.
func (n *testNS) installedChains(v6 bool) []string {
	var out []string
	for _, l := range strings.Split(n.save(v6), "\n") {
		if strings.HasPrefix(l, ":"+policy.ChainPrefix) {
			name, _, _ := strings.Cut(l[1:], " ")
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// A compiled dual-stack ruleset: ip6tables gets the chains iptables gets,
// rule for rule the same but for the sets, which are inet6 ipsets of the
// pods' IPv6 addresses; a restarted driver writes nothing; a change of one
// family's members or rules writes that family's only, and no more.
func TestPolicyIPv6Compiled(t *testing.T) {
	eachIPv6Backend(t, func(t *testing.T, b Backend) {
		n := newTestNS(t, b)
		n.addForeign()
		foreign := n.foreign()
		pols := []*networkingv1.NetworkPolicy{isolateBPolicy("fd10:244::/32", "fd10:244:1::/48")}
		rs := policy.Compile(labInput(pols))
		p := n.newPolicy()
		st := n.apply(p, rs, nil)
		if st.Restores != 2 || st.SetRestores != 1 || st.SetsCreated != len(rs.Sets) {
			t.Fatalf("first Apply: %+v (ruleset:\n%s)", st, rs.String())
		}

		// The same shape in both families.
		v4, v6 := chainNames(rs, false), chainNames(rs, true)
		if !slices.Equal(v4, v6) || len(v6) < 3 {
			t.Fatalf("chains: IPv4 %v, IPv6 %v", v4, v6)
		}
		for _, v6 := range []bool{false, true} {
			if got := n.installedChains(v6); !slices.Equal(got, v4) {
				t.Errorf("%s holds %v, want %v", family(v6), got, v4)
			}
		}
		ingress := rs.Pods["default/b"].IngressChain
		rules6 := n.ipt(true, "-S", ingress)
		for _, want := range []string{"-m set --match-set ", " --dport 9090 -j RETURN", " --dport 8000:8100 -j RETURN", "-j DROP"} {
			if !strings.Contains(rules6, want) {
				t.Errorf("ip6tables %s lacks %q:\n%s", ingress, want, rules6)
			}
		}
		// The entry and dispatch chains are the same rules, hash
		// comments and all; the pod chains differ in their sets (and
		// the IPv6 block's rule).
		for _, c := range rs.Chains {
			if c.Kind != policy.PodChain && c.IPv6 {
				if a, b := n.ipt(false, "-S", c.Name), n.ipt(true, "-S", c.Name); a != b {
					t.Errorf("%s differs between the families:\n%s\n%s", c.Name, a, b)
				}
			}
		}
		sets6 := 0
		for _, s := range rs.Sets {
			out := n.sh("ipset", "list", s.Name)
			if strings.Contains(out, "family inet6") != s.IPv6 {
				t.Errorf("set %s (IPv6 %t):\n%s", s.Name, s.IPv6, out)
			}
			for _, m := range s.Members {
				if !strings.HasSuffix(m, " nomatch") {
					n.sh("ipset", "test", s.Name, m) // fails the test if absent
				}
			}
			if s.IPv6 {
				sets6++
			}
		}
		// The pods app=a (both addresses of a and c, one per family's
		// set) and the IPv6 block with its except.
		if sets6 != 2 {
			t.Errorf("%d IPv6 sets, want 2:\n%s", sets6, rs.String())
		}
		out := n.sh("ipset", "save")
		for _, want := range []string{ip6A.String(), ip6C.String(), "fd10:244::/32", "fd10:244:1::/48 nomatch"} {
			if !strings.Contains(out, want) {
				t.Errorf("ipset save lacks %s:\n%s", want, out)
			}
		}
		if got := n.foreign(); got != foreign {
			t.Fatalf("foreign state changed:\n%s\nwas:\n%s", got, foreign)
		}
		before4, before6 := n.save(false), n.save(true)

		// A restarted agent: reads back, writes nothing.
		p2 := n.newPolicy()
		calls := countRuns(p2)
		if st := n.apply(p2, rs, nil); st != (PolicyStats{}) || len(*calls) != 3 {
			t.Fatalf("fresh Policy, same ruleset: %+v, ran %v", st, *calls)
		}

		// A new IPv6 peer (a pod app=a with an IPv6 address only):
		// one member, one ipset restore, no iptables.
		d := policy.Pod{Namespace: "default", Name: "d", Node: "n2", Labels: map[string]string{"app": "a"}, IPs: []netip.Addr{netip.MustParseAddr("fd10:244:4::2")}}
		*calls = nil
		st = n.apply(p2, policy.Compile(labInput(pols, d)), nil)
		if st != (PolicyStats{MembersAdded: 1, SetRestores: 1}) || !slices.Equal(*calls, []string{"ipset restore -exist"}) {
			t.Fatalf("IPv6 peer added: %+v, ran %v", st, *calls)
		}
		n.sh("ipset", "test", rs.Pods["default/b"].Sets[0], "fd10:244:4::2")
		if !sameTables(n.save(false), before4) || !sameTables(n.save(true), before6) {
			t.Fatal("a member change touched iptables")
		}

		// The IPv6 block's except changes: a new inet6 set, the IPv6
		// ingress chain rewritten; IPv4 untouched.
		*calls = nil
		pols2 := []*networkingv1.NetworkPolicy{isolateBPolicy("fd10:244::/32", "fd10:244:1::/48", "fd10:244:2::/48")}
		rs2 := policy.Compile(labInput(pols2, d))
		st = n.apply(p2, rs2, nil)
		if st.Restores != 1 || st.ChainsWritten != 1 || st.SetsCreated != 1 || st.SetsDestroyed != 1 {
			t.Fatalf("IPv6 except added: %+v, ran %v", st, *calls)
		}
		if !sameTables(n.save(false), before4) {
			t.Fatalf("an IPv6 change rewrote IPv4 chains:\n%s\nwas:\n%s", n.save(false), before4)
		}
		if !strings.Contains(n.sh("ipset", "save"), "fd10:244:2::/48 nomatch") {
			t.Fatalf("the new except is not in a set:\n%s", n.sh("ipset", "save"))
		}
		if st := n.apply(n.newPolicy(), rs2, nil); st != (PolicyStats{}) {
			t.Fatalf("fresh Policy after the change: %+v", st)
		}
	})
}

// An established IPv6 connection (real TCP between namespaces) that a new
// compiled policy denies is cut, in the same pass as its IPv4 twin; an
// allowed IPv6 connection goes on; new IPv6 connections are refused; once
// the policy goes, the cut connection resumes.
func TestPolicyCutsDeniedIPv6Flows(t *testing.T) {
	eachIPv6Backend(t, func(t *testing.T, b Backend) {
		l := newCutLab(t, b)
		open := policy.Compile(labInput(nil))
		p := l.node.newPolicy()
		var judged []Flow
		l.node.apply(p, open, evaluatorDenies(open, &judged))
		l.nodeApply(t, true, true)

		// a's addresses are in the block's except: only its named
		// port is allowed.
		dial := func(addr string) *echoConn {
			t.Helper()
			var c *echoConn
			var err error
			// The first neighbour solicitations may go unanswered
			// while the links settle: a few attempts, each bounded.
			for try := 0; try < 5 && (c == nil || err != nil); try++ {
				c, err = dialIn(l.a.ns, addr)
			}
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			t.Cleanup(func() { c.c.Close() })
			if got, err := c.echo("hello", 2*time.Second); err != nil || got != "hello" {
				t.Fatalf("%s before the policy: %q %v", addr, got, err)
			}
			return c
		}
		for _, a := range []string{"10.244.2.2:8080", "[fd10:244:2::2]:8080", "[fd10:244:2::2]:9090"} {
			echoServer(t, l.b.ns, a)
		}
		c4, c6, c6web := dial("10.244.2.2:8080"), dial("[fd10:244:2::2]:8080"), dial("[fd10:244:2::2]:9090")

		isolated := policy.Compile(labInput([]*networkingv1.NetworkPolicy{isolateBPolicy("fd10:244::/32", "fd10:244:1::/48")}))
		judged = nil
		st := l.node.apply(p, isolated, evaluatorDenies(isolated, &judged))
		// The flows to 8080 are cut, in both families (an unanswered
		// first IPv6 attempt leaves an entry of its own).
		to8080, v6to8080 := 0, 0
		for _, f := range judged {
			if f.DstPort == 8080 {
				to8080++
				if f.Dst == ip6B {
					v6to8080++
				}
			}
		}
		if st.FlowsCut != to8080 || v6to8080 == 0 || to8080 == v6to8080 || st.ConntrackDumps != 1 || st.FlowsJudged != len(judged) {
			t.Fatalf("isolating b: %+v, judged %+v", st, judged)
		}
		if !slices.ContainsFunc(judged, func(f Flow) bool { return f.Src == ip6A && f.Dst == ip6B && f.DstPort == 9090 }) {
			t.Errorf("the IPv6 flow to 9090 was not judged: %+v", judged)
		}
		if ct := l.node.sh("conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", "8080"); !strings.Contains(ct, "fd10:244:2::2") || !strings.Contains(ct, "mark=16777216") {
			t.Errorf("conntrack entry of the cut IPv6 flow:\n%s", ct)
		}
		for name, c := range map[string]*echoConn{"IPv4 8080": c4, "IPv6 8080": c6} {
			if got, err := c.echo("cut", time.Second); err == nil {
				t.Errorf("%s: the denied connection still echoes: %q", name, got)
			}
		}
		if got, err := c6web.echo("still", 2*time.Second); err != nil || got != "still" {
			t.Fatalf("the allowed IPv6 connection broke: %q %v", got, err)
		}
		if _, err := dialIn(l.a.ns, "[fd10:244:2::2]:8080"); err == nil {
			t.Fatal("a new IPv6 connection to 8080 was let through")
		}

		// The policy goes: the marks go, the retransmitted lines get
		// through.
		judged = nil
		st = l.node.apply(p, open, evaluatorDenies(open, &judged))
		if st.FlowsRestored != to8080 {
			t.Fatalf("opening b: %+v, judged %+v", st, judged)
		}
		if got, err := c6.echo("", 15*time.Second); err != nil || got != "cut" {
			t.Fatalf("the IPv6 connection did not resume: %q %v", got, err)
		}
	})
}
