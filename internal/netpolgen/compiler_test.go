package netpolgen

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/policy"
)

// TestCompilerAgrees compiles generated cases with tern's policy compiler
// (incrementally, one case after the other, as the agent does) and judges
// every flow of the world with the interpreter of the rules it emitted (policy.Ruleset.Allowed), against this package's model: two
// implementations written apart, on thousands of flows, in a second. (The
// end-to-end test makes the same comparison on a lab, packet by packet.)
func TestCompilerAgrees(t *testing.T) {
	w := world()
	const node = "n1"
	g := NewGenerator(2026, w)
	targets := []Target{}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		for port := int32(78); port <= 83; port++ {
			targets = append(targets, Target{port, proto})
		}
	}
	flows := 0
	var comp policy.Compiler
	for i := range 300 {
		c := g.Next()
		cw := w.Apply(c.Labels)
		in := policy.Input{Node: node, Policies: c.Policies}
		for _, n := range cw.Namespaces {
			in.Namespaces = append(in.Namespaces, policy.Namespace{Name: n.Name, Labels: n.Labels})
		}
		for j, p := range cw.Pods {
			pp := policy.Pod{Namespace: p.Namespace, Name: p.Name, Node: node, Labels: p.Labels,
				IPs: []netip.Addr{p.IP}, HostIf: fmt.Sprintf("tern%02d", j)}
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
					want := Allowed(cw, c.Policies, from, to, tg)
					got, why := ev.Allowed(policy.Flow{Src: from.IP, Dst: to.IP, Protocol: tg.Protocol, DstPort: tg.Port})
					flows++
					if got != want {
						t.Fatalf("case %d: %s -> %s %d/%s: tern's rules say %v (%s), the model %v\nthe case:\n%s",
							i, from.ID(), to.ID(), tg.Port, tg.Protocol, got, why, want, c)
					}
				}
			}
		}
	}
	t.Logf("%d flows agree", flows)
}
