package agent_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// TestRouteReflector: with the node-to-node mesh off, BIRD reflects the
// nodes' routes: each node keeps one session, not one per other node. A hung
// agent (SIGSTOP) is noticed by the hold timer and its routes go; they come
// back when it resumes.
func TestRouteReflector(t *testing.T) {
	c := clustertest.NewCluster(t)
	ctx := context.Background()
	manifest := `apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: reflector}
spec: {peerIP: 10.36.0.254, asNumber: 64512, holdTimeSeconds: 6, keepaliveSeconds: 2}
`
	c.Apply(manifest)
	fab := clustertest.NewFabric(t)
	rr := clustertest.NewRouter(t)
	fab.JoinNS(rr, "rr", "10.36.0.254/24")
	conf := "router id 10.36.0.254;\nprotocol device { scan time 1; }\n"
	for i := 1; i <= 3; i++ {
		conf += fmt.Sprintf(`protocol bgp n%d { local 10.36.0.254 as 64512; neighbor 10.36.0.%d as 64512; rr client;
  hold time 6; keepalive time 2; connect retry time 1; error wait time 1, 5; ipv4 { import all; export all; }; }
`, i, i)
	}
	bird := routertest.StartBIRD(t, rr, conf)
	var nodes []*nodetest.Node
	for i := range 3 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.36.0.%d", i+1)
		fab.Join(n, fmt.Sprintf("r%d", i), addr+"/24")
		c.Start(n, addr, nil, nil)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.WaitReady(30 * time.Second)
	}
	cidr := map[*nodetest.Node]string{}
	for _, n := range nodes {
		st, _ := n.Client().Status(ctx)
		cidr[n] = st.PodCIDRs[0].String()
	}
	routeTo := func(from, to *nodetest.Node, want bool) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) {
			out, err := from.Output("ip", "route", "show", "proto", "96")
			has := strings.Contains(out, cidr[to]+" via 10.36.0.")
			return err == nil && has == want, err
		}
	}
	for i, n := range nodes {
		for j, m := range nodes {
			if i == j {
				continue
			}
			if err := kubetest.Eventually(20*time.Second, routeTo(n, m, true)); err != nil {
				t.Fatalf("node %d lacks node %d's CIDR through the reflector: %v\nBIRD: %s\n%s", i, j, err,
					bird.Birdc("show", "protocols"), nodetest.Tail(n.AgentLog(), 2000))
			}
		}
		b, err := n.Client().BGP(ctx)
		if err != nil || len(b.Peers) != 1 || b.Peers[0].Address.String() != "10.36.0.254" {
			t.Fatalf("node %d: %+v %v (want one session, to the reflector)", i, b.Peers, err)
		}
	}
	// Pods on nodes 1 and 3 talk: the reflector keeps the next hop (node 3).
	a := c.AddPod(nodes[0], nodes[0].ConfList("1.0.0"), "rr-a")
	z := c.AddPod(nodes[2], nodes[2].ConfList("1.0.0"), "rr-z")
	srv := net.JoinHostPort(z.IPs()[0].String(), "8080")
	nodetest.Serve(t, z.NS, srv, "z")
	if got, err := nodetest.Dial(a.NS, srv); err != nil || !strings.HasPrefix(got, "z from="+a.IPs()[0].String()) {
		t.Fatalf("node 1 pod -> node 3 pod: %q %v", got, err)
	}
	if out, _ := nodes[0].Output("ip", "route", "show", cidr[nodes[2]]); !strings.Contains(out, "via 10.36.0.3") {
		t.Fatalf("the reflected route should go straight to node 3: %s", out)
	}

	// Node 3's agent hangs: the hold timer (6 s) takes its routes away.
	pid := nodes[2].AgentPID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	start := time.Now()
	if err := kubetest.Eventually(20*time.Second, routeTo(nodes[0], nodes[2], false)); err != nil {
		t.Fatalf("a hung agent's routes stayed: %v\nBIRD: %s", err, bird.Birdc("show", "protocols", "all", "n3"))
	}
	t.Logf("hung agent's routes gone after %s", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(bird.Log()+bird.Birdc("show", "protocols", "all", "n3"), "Hold timer expired") {
		t.Logf("BIRD did not say why; protocols: %s", bird.Birdc("show", "protocols", "all", "n3"))
	}
	_ = syscall.Kill(pid, syscall.SIGCONT)
	resumed = true
	if err := kubetest.Eventually(30*time.Second, routeTo(nodes[0], nodes[2], true)); err != nil {
		t.Fatalf("routes did not come back after the agent resumed: %v", err)
	}
}
