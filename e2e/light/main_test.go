// Package light keeps the light lab (tern-lab up --light) tested: the real
// control plane, the real tern-agent started by the lab in each node's
// namespace, real BIRD and FRR top-of-rack routers, and pods that are network
// namespaces attached by the real CNI plugin and served by the lab in
// process. The 20- and 40-node benchmarks run on it; everything else runs on
// real nodes (package e2e). It needs root; `make e2e` runs it, `make test`
// with everything else.
package light

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
)

// The lab every test here shares: 4 light nodes in 2 racks, rack 1 behind
// BIRD and rack 2 behind FRR.
var tl *labtest.Lab

func TestMain(m *testing.M) {
	labtest.Main(m, labtest.Setup{
		Name: "e2e/light", Prefix: "tllight",
		Up: []string{"--light", "--nodes", "4", "--racks", "2", "--router", "mixed"},
	}, &tl)
}

// TestLightPodsAndPolicy: a pod on every node of both racks reaches every
// other over TCP and UDP; a default-deny ingress policy in the namespace
// refuses every connection between them but a pod's own; deleted, it lets
// them through again.
func TestLightPodsAndPolicy(t *testing.T) {
	nodes := tl.State(t).Nodes
	if len(nodes) != 4 {
		t.Fatalf("the light lab has %d nodes, want 4", len(nodes))
	}
	var yaml strings.Builder
	yaml.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: light}\n---\n")
	var ids []string
	for i, n := range nodes {
		name := fmt.Sprintf("p%d", i+1)
		fmt.Fprintf(&yaml, `apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: light}
spec:
  nodeName: %s
  containers:
  - name: serve
    image: %s
    ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]
---
`, name, n.Name, lab.ServerImage)
		ids = append(ids, "light/"+name)
	}
	tl.Kubectl(t, yaml.String(), "apply", "-f", "-")
	t.Cleanup(func() { _, _ = tl.KubectlErr(t, "", "delete", "namespace", "light", "--wait=false") })
	pods := tl.WaitPods(t, ids...)

	// matrix waits (bounded) until every probe's outcome, all 32 probed at
	// once, is the one want gives.
	matrix := func(what string, want func(from, to string) bool) {
		t.Helper()
		err := kubetest.EventuallyErr(20*time.Second, func() error {
			var wrong []string
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, from := range ids {
				for _, to := range ids {
					for _, proto := range []string{"TCP", "UDP"} {
						wg.Go(func() {
							got, err := lab.Probe(labtest.Ctx(t), pods[from].NetNS, netip.AddrPortFrom(pods[to].IPs[0], 80), proto, time.Second)
							if allowed := err == nil && got == to; allowed != want(from, to) {
								mu.Lock()
								wrong = append(wrong, fmt.Sprintf("%s -> %s %s (%s to %s): %q %v", from, to, proto, pods[from].Node, pods[to].Node, got, err))
								mu.Unlock()
							}
						})
					}
				}
			}
			wg.Wait()
			if len(wrong) > 0 {
				return fmt.Errorf("%s: %d probes not as expected:\n%s", what, len(wrong), strings.Join(wrong, "\n"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	matrix("no policy", func(string, string) bool { return true })
	tl.Kubectl(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: light}
spec: {podSelector: {}, policyTypes: [Ingress]}
`, "apply", "-f", "-")
	matrix("default deny ingress", func(from, to string) bool { return from == to })
	tl.Kubectl(t, "", "delete", "networkpolicy", "deny", "-n", "light")
	matrix("policy deleted", func(string, string) bool { return true })
}
