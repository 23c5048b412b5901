package netpolgen

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/policy"
)

// TestCompilerAgrees compiles generated cases with tern's policy compiler
// (incrementally, one case after the other, as the agent does) and judges
// every flow of the world with the interpreter of the rules it emitted
// (policy.Ruleset.Allowed), against this package's model: two
// implementations written apart, on thousands of flows, in a second. The
// world is dual-stack (but for one IPv4-only pod), so flows go over both
// families and the cases have blocks of both. (The end-to-end test makes
// the same comparison on a lab, packet by packet.)
func TestCompilerAgrees(t *testing.T) {
	w := dualWorld()
	const node = "n1"
	g := NewGenerator(2026, w).WithClusterPolicies(true)
	targets := []Target{}
	for _, v6 := range []bool{false, true} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			for port := int32(78); port <= 83; port++ {
				targets = append(targets, Target{Port: port, Protocol: proto, IPv6: v6})
			}
		}
	}
	flows, byFamily := 0, map[bool]int{}
	var comp policy.Compiler
	for i := range 300 {
		c := g.Next()
		cw := w.Apply(c.Labels)
		in := policy.Input{Node: node, Policies: c.Policies, ClusterPolicies: c.ClusterPolicies}
		for _, n := range cw.Namespaces {
			in.Namespaces = append(in.Namespaces, policy.Namespace{Name: n.Name, Labels: n.Labels})
		}
		for j, p := range cw.Pods {
			pp := policy.Pod{Namespace: p.Namespace, Name: p.Name, Node: node, Labels: p.Labels,
				IPs: p.IPs, HostIf: fmt.Sprintf("tern%02d", j)}
			for _, cp := range p.Ports {
				pp.Ports = append(pp.Ports, policy.NamedPort{Name: cp.Name, Protocol: cp.Protocol, Port: cp.ContainerPort})
			}
			in.Pods = append(in.Pods, pp)
		}
		// One Compiler across the cases: each compiles incrementally
		// from the last (pods relabelled, policies replaced).
		rs := comp.Compile(in)
		ev := rs.Evaluator()
		for _, from := range cw.Pods {
			for _, to := range cw.Pods {
				if from.ID() == to.ID() {
					continue
				}
				for _, tg := range targets {
					src, ok1 := from.Addr(tg.IPv6)
					dst, ok2 := to.Addr(tg.IPv6)
					if !ok1 || !ok2 {
						continue // no such connection
					}
					want := c.Allowed(cw, from, to, tg)
					got, why := ev.Allowed(policy.Flow{Src: src, Dst: dst, Protocol: tg.Protocol, DstPort: tg.Port})
					flows++
					byFamily[tg.IPv6]++
					if got != want {
						t.Fatalf("case %d: %s -> %s (%s -> %s) %d/%s: tern's rules say %v (%s), the model %v\nthe case:\n%s",
							i, from.ID(), to.ID(), src, dst, tg.Port, tg.Protocol, got, why, want, c)
					}
				}
			}
		}
	}
	t.Logf("%d flows agree, %d of them IPv6", flows, byFamily[true])
	if byFamily[true] == 0 || byFamily[false] == 0 {
		t.Errorf("flows by family: %v, want both", byFamily)
	}
}
