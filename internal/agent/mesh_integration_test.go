package agent_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

// TestBGPMesh runs three real agents, each in its node namespace on one
// fabric, against the real control plane: they peer in a full mesh, install
// each other's pod CIDRs, pods on different nodes talk TCP with no
// encapsulation, and a node deleted from the API withdraws its routes.
func TestBGPMesh(t *testing.T) {
	c := clustertest.NewCluster(t)
	ctx := context.Background()
	fab := clustertest.NewFabric(t)
	var nodes []*nodetest.Node
	for i := range 3 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.30.0.%d", i+1)
		fab.Join(n, fmt.Sprintf("p%d", i), addr+"/24")
		c.Start(n, addr, nil, nil)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.WaitReady(30 * time.Second)
	}
	cidr := func(n *nodetest.Node) string {
		st, err := n.Client().Status(ctx)
		if err != nil || len(st.PodCIDRs) == 0 {
			t.Fatalf("status of %s: %+v %v", n.Name, st, err)
		}
		return st.PodCIDRs[0].String()
	}
	// Each node installs the others' pod CIDRs via their fabric addresses.
	for i, n := range nodes {
		if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) {
			out, err := n.Output("ip", "route", "show", "proto", "96")
			if err != nil {
				return false, err
			}
			for j, m := range nodes {
				if i != j && !strings.Contains(out, fmt.Sprintf("%s via 10.30.0.%d dev eth0", cidr(m), j+1)) {
					return false, fmt.Errorf("%s lacks %s:\n%s", n.Name, cidr(m), out)
				}
			}
			return true, nil
		}); err != nil {
			t.Fatalf("%v\nagent log:\n%s", err, nodetest.Tail(n.AgentLog(), 3000))
		}
		b, err := n.Client().BGP(ctx)
		if err != nil || len(b.Peers) != 2 || b.Peers[0].State != "Established" || b.Peers[1].State != "Established" || b.Peers[0].Kind != "mesh" {
			t.Fatalf("BGP of %s: %+v %v", n.Name, b, err)
		}
		// What an operator sees: ternctl node status, and the metrics.
		out, err := exec.Command(filepath.Join(n.BinDir, "ternctl"), "--socket", n.Socket(), "node", "status").CombinedOutput()
		other := fmt.Sprintf("10.30.0.%d", (i+1)%3+1)
		if err != nil || !strings.Contains(string(out), "BGP: AS 64512, router ID 10.30.0.") ||
			!regexp.MustCompile(other+`\s+64512\s+mesh\s+Established\s+\S+\s+1\s+1`).MatchString(string(out)) {
			t.Fatalf("ternctl node status on %s: %v\n%s", n.Name, err, out)
		}
		_, metrics, _ := n.Health("/metrics")
		if !strings.Contains(metrics, `tern_bgp_session_up{family="ipv4",kind="mesh",peer="`+other+`"} 1`) {
			t.Fatalf("metrics of %s lack the session:\n%s", n.Name, metrics)
		}
	}

	// Pods on two nodes talk TCP through the routes BGP installed.
	list0, list1 := nodes[0].ConfList("1.0.0"), nodes[1].ConfList("1.0.0")
	a := c.AddPod(nodes[0], list0, "mesh-a")
	b := c.AddPod(nodes[1], list1, "mesh-b")
	srv := net.JoinHostPort(b.IPs()[0].String(), "8080")
	nodetest.Serve(t, b.NS, srv, "b")
	got, err := nodetest.Dial(a.NS, srv)
	if err != nil || !strings.HasPrefix(got, "b from="+a.IPs()[0].String()+":") {
		t.Fatalf("pod on node 1 -> pod on node 2: %q %v (want b, seeing a's own address: no NAT, no tunnel)", got, err)
	}

	// Node 3 leaves the API: its agent withdraws, the others drop its CIDR.
	gone := cidr(nodes[2])
	if err := c.Env.Client.CoreV1().Nodes().Delete(ctx, nodes[2].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[:2] {
		if err := kubetest.Eventually(15*time.Second, func(context.Context) (bool, error) {
			out, err := n.Output("ip", "route", "show", "proto", "96")
			return err == nil && !strings.Contains(out, gone+" via"), err
		}); err != nil {
			t.Fatalf("%s still routes the deleted node's %s: %v", n.Name, gone, err)
		}
		if err := kubetest.Eventually(15*time.Second, func(ctx context.Context) (bool, error) {
			b, err := n.Client().BGP(ctx)
			return err == nil && len(b.Peers) == 1, err
		}); err != nil {
			t.Fatalf("%s keeps the deleted node as a peer: %v", n.Name, err)
		}
	}
	// The others may drop it (it is gone from the API) just before it leaves.
	if err := kubetest.Eventually(10*time.Second, func(context.Context) (bool, error) {
		return strings.Contains(nodes[2].AgentLog(), "BGP routes withdrawn, sessions closed"), nil
	}); err != nil {
		t.Fatalf("the deleted node's agent did not leave BGP:\n%s", nodetest.Tail(nodes[2].AgentLog(), 2000))
	}
}
