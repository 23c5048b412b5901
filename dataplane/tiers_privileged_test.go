package dataplane

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/tern-net/tern/policy"
)

// ClusterNetworkPolicy's tiers compiled by the policy package and written
// to the kernel: real connections between two pods of the cut lab show the
// Admin tier's Deny cut an established flow that NetworkPolicy allows,
// Pass hand it back to NetworkPolicy, and the Baseline tier's Deny apply
// only while no NetworkPolicy isolates the pod.
func TestTiersEnforcedAndCut(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			l := newCutLab(t, b)
			node := l.node
			in := policy.Input{
				Node: "n1",
				Pods: []policy.Pod{
					{Namespace: "team-a", Name: "a", Node: "n1", HostIf: "terna", IPs: []netip.Addr{ipA}, Labels: map[string]string{"app": "client"}},
					{Namespace: "team-b", Name: "b", Node: "n1", HostIf: "ternb", IPs: []netip.Addr{ipB}, Labels: map[string]string{"app": "server"},
						Ports: []policy.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}},
				},
				Namespaces: []policy.Namespace{
					{Name: "team-a", Labels: map[string]string{"kubernetes.io/metadata.name": "team-a", "tenant": "a"}},
					{Name: "team-b", Labels: map[string]string{"kubernetes.io/metadata.name": "team-b", "tenant": "b"}},
				},
			}
			tcp := corev1.ProtocolTCP
			// NetworkPolicy: b accepts 8080 and 9090 from team-a.
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "team-b", Name: "from-a"}}
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tenant": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: new(intstr.FromInt32(8080))}, {Protocol: &tcp, Port: new(intstr.FromInt32(9090))}},
			}}
			tenantA := cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"tenant": "a"}}}
			subjectB := cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"tenant": "b"}}}
			named := []cnpv1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "http"}}
			adminDeny := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-http"}, Spec: cnpv1.ClusterNetworkPolicySpec{
				Tier: cnpv1.AdminTier, Priority: 10, Subject: subjectB,
				Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: []cnpv1.ClusterNetworkPolicyIngressPeer{tenantA}, Protocols: named}},
			}}
			adminPass := adminDeny.DeepCopy()
			adminPass.Name, adminPass.Spec.Priority = "pass-http", 5
			adminPass.Spec.Ingress[0].Action = cnpv1.ClusterNetworkPolicyRuleActionPass
			baselineDeny := adminDeny.DeepCopy()
			baselineDeny.Name, baselineDeny.Spec.Tier = "baseline-deny", cnpv1.BaselineTier
			baselineDeny.Spec.Ingress[0].Protocols = nil

			p := node.newPolicy()
			var cuts []Flow
			applyIn := func(what string, wantCut, wantRestored int) policy.Ruleset {
				t.Helper()
				rs := policy.Compile(in)
				ev := rs.Evaluator()
				st := node.apply(p, rs, func(f Flow) bool {
					ok, _ := ev.Allowed(policy.Flow{Src: f.Src, Dst: f.Dst, Protocol: corev1.Protocol(f.Protocol), DstPort: f.DstPort})
					if !ok {
						cuts = append(cuts, f)
					}
					return !ok
				})
				if st.FlowsCut != wantCut || st.FlowsRestored != wantRestored {
					t.Fatalf("%s: %+v, want %d cut and %d restored (denied: %v)\n%s", what, st, wantCut, wantRestored, cuts, rs.String())
				}
				return rs
			}
			echo := func(what string, c *echoConn, line string, ok bool) {
				t.Helper()
				got, err := c.echo(line, 2*time.Second)
				if ok && (err != nil || got != line) {
					t.Fatalf("%s: %q %v, want the echo", what, got, err)
				}
				if !ok && err == nil {
					t.Fatalf("%s: %q echoed through a denied connection", what, got)
				}
			}

			in.Policies = []*networkingv1.NetworkPolicy{np}
			applyIn("NetworkPolicy alone", 0, 0)
			l.nodeApply(t, true, false)
			echoServer(t, l.b.ns, "10.244.2.2:8080")
			echoServer(t, l.b.ns, "10.244.2.2:9090")
			echoServer(t, l.b.ns, "10.244.2.2:7070")
			c8080, err := dialIn(l.a.ns, "10.244.2.2:8080")
			if err != nil {
				t.Fatal(err)
			}
			defer c8080.c.Close()
			c9090, err := dialIn(l.a.ns, "10.244.2.2:9090")
			if err != nil {
				t.Fatal(err)
			}
			defer c9090.c.Close()
			echo("NetworkPolicy allows 8080", c8080, "one", true)
			echo("NetworkPolicy allows 9090", c9090, "one", true)
			if _, err := dialIn(l.a.ns, "10.244.2.2:7070"); err == nil {
				t.Fatal("NetworkPolicy: a connection to 7070 was let through")
			}

			// Admin Deny of the named port: the established 8080 flow is
			// cut, 9090 goes on.
			in.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{adminDeny}
			applyIn("Admin Deny", 1, 0)
			echo("Admin Deny cuts 8080", c8080, "two", false)
			echo("Admin Deny leaves 9090", c9090, "two", true)
			if _, err := dialIn(l.a.ns, "10.244.2.2:8080"); err == nil {
				t.Fatal("Admin Deny: a new connection to 8080 was let through")
			}

			// Pass at a higher precedence: NetworkPolicy decides again,
			// the cut flow resumes.
			in.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{adminDeny, adminPass}
			applyIn("Admin Pass", 0, 1)
			if got, err := c8080.echo("", 15*time.Second); err != nil || got != "two" {
				t.Fatalf("Admin Pass: the cut connection did not resume: %q %v", got, err)
			}

			// Baseline Deny under NetworkPolicy: NetworkPolicy isolates b,
			// the Baseline tier is not reached.
			in.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{baselineDeny}
			applyIn("Baseline Deny under NetworkPolicy", 0, 0)
			echo("Baseline Deny under NetworkPolicy", c9090, "three", true)

			// Without the NetworkPolicy, Baseline denies team-a, and both
			// connections are cut.
			in.Policies = nil
			applyIn("Baseline Deny alone", 2, 0)
			echo("Baseline Deny cuts 9090", c9090, "four", false)
			if _, err := dialIn(l.a.ns, "10.244.2.2:7070"); err == nil {
				t.Fatal("Baseline Deny: a connection to 7070 was let through")
			}
		})
	}
}
