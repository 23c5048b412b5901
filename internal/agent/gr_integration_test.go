package agent_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

// TestGracefulRestart kills an agent with SIGKILL while a pod on another node
// probes a pod on its node every 100 ms. With graceful restart (the default)
// the peer keeps the routes and no probe is lost; without it, probes are lost
// until the agent is back.
func TestGracefulRestart(t *testing.T) {
	c := clustertest.NewCluster(t)
	fab := clustertest.NewFabric(t)
	var nodes []*nodetest.Node
	for i := range 2 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.35.0.%d", i+1)
		fab.Join(n, fmt.Sprintf("g%d", i), addr+"/24")
		c.Start(n, addr, nil, nil)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.WaitReady(30 * time.Second)
	}
	a := nodes[0].MustAdd(nodes[0].ConfList("1.0.0"), "gr-a")
	b := nodes[1].MustAdd(nodes[1].ConfList("1.0.0"), "gr-b")
	srv := net.JoinHostPort(b.IPs()[0].String(), "8080")
	nodetest.Serve(t, b.NS, srv, "b")
	if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) {
		_, err := nodetest.Dial(a.NS, srv)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("no path from node 1 to node 2's pod: %v\n%s", err, clustertest.Tail(nodes[0].AgentLog(), 2000))
	}

	// probe dials every 100 ms for d and returns sent and lost probes.
	probe := func(d time.Duration, during func()) (sent, lost int) {
		var stop atomic.Bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			for !stop.Load() {
				sent++
				c, err := dialOnce(a, srv)
				if err != nil {
					lost++
				} else {
					c.Close()
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		during()
		time.Sleep(d)
		stop.Store(true)
		<-done
		return sent, lost
	}
	restart := func() {
		nodes[1].KillAgent()
		time.Sleep(2 * time.Second) // the agent is down for 2 s
		nodes[1].StartAgent()
	}
	sent, lost := probe(3*time.Second, restart)
	t.Logf("graceful restart on: %d of %d probes lost over a SIGKILL and restart", lost, sent)
	if lost != 0 || sent < 40 {
		t.Fatalf("graceful restart on: %d of %d probes lost", lost, sent)
	}

	// Without graceful restart, the peer flushes the routes at once.
	manifest := "apiVersion: tern.io/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {gracefulRestartSeconds: 0}\n"
	c.Apply(manifest)
	// The change resets the sessions (not the speakers): wait for new ones.
	applied := time.Now()
	for _, n := range nodes {
		if err := kubetest.Eventually(30*time.Second, func(ctx context.Context) (bool, error) {
			b, err := n.Client().BGP(ctx)
			return err == nil && len(b.Peers) == 1 && b.Peers[0].State == "Established" && b.Peers[0].Since.After(applied.Add(-time.Second)), nil
		}); err != nil {
			t.Fatalf("the sessions did not come back without graceful restart: %v", err)
		}
	}
	time.Sleep(4 * time.Second) // both sides settled
	sent, lost = probe(3*time.Second, restart)
	t.Logf("graceful restart off: %d of %d probes lost over a SIGKILL and restart", lost, sent)
	if lost == 0 {
		t.Fatalf("graceful restart off: no probe lost (%d sent); the test cannot tell the two apart", sent)
	}
}

func dialOnce(p *nodetest.Pod, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 300*time.Millisecond)
		return err
	})
	return c, err
}
