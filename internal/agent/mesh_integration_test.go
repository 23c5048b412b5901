package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

// fabric is one layer-2 segment (a bridge in a namespace of its own) that
// node namespaces join with a veth each.
type fabric struct {
	t  *testing.T
	ns ns.NetNS
}

func newFabric(t *testing.T) *fabric {
	t.Helper()
	f, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); _ = testutils.UnmountNS(f) })
	fab := &fabric{t: t, ns: f}
	fab.run("ip", "link", "add", "br0", "type", "bridge")
	fab.run("ip", "link", "set", "br0", "up")
	return fab
}

func (f *fabric) run(args ...string) {
	f.t.Helper()
	out, err := nsenterCmd(f.ns, args...).CombinedOutput()
	if err != nil {
		f.t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// join gives n an interface eth0 on the fabric with address addr (CIDR).
func (f *fabric) join(n *nodetest.Node, port, addr string) { f.joinNS(n.NS, port, addr) }

// joinNS gives netns an interface eth0 on the fabric with address addr (CIDR).
func (f *fabric) joinNS(netns ns.NetNS, port, addr string) {
	f.t.Helper()
	f.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(netns.Path()))
	f.run("ip", "link", "set", port, "master", "br0", "up")
	for _, c := range [][]string{{"ip", "addr", "add", addr, "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"}} {
		if out, err := nsenterCmd(netns, c...).CombinedOutput(); err != nil {
			f.t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
}

// TestBGPMesh runs three real agents, each in its node namespace on one
// fabric, against the real control plane: they peer in a full mesh, install
// each other's pod CIDRs, pods on different nodes talk TCP with no
// encapsulation, and a node deleted from the API withdraws its routes.
func TestBGPMesh(t *testing.T) {
	c := newKubeCluster(t)
	ctx := context.Background()
	fab := newFabric(t)
	var nodes []*nodetest.Node
	for i := range 3 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.30.0.%d", i+1)
		fab.join(n, fmt.Sprintf("p%d", i), addr+"/24")
		c.start(n, addr, nil, nil)
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
			t.Fatalf("%v\nagent log:\n%s", err, tailLog(n.AgentLog(), 3000))
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
		if !strings.Contains(metrics, `tern_bgp_session_up{kind="mesh",peer="`+other+`"} 1`) {
			t.Fatalf("metrics of %s lack the session:\n%s", n.Name, metrics)
		}
	}

	// Pods on two nodes talk TCP through the routes BGP installed.
	list0, list1 := nodes[0].ConfList("1.0.0"), nodes[1].ConfList("1.0.0")
	a := nodes[0].MustAdd(list0, "mesh-a")
	b := nodes[1].MustAdd(list1, "mesh-b")
	srv := net.JoinHostPort(b.IPs()[0].String(), "8080")
	nodetest.Serve(t, b.NS, srv, "b")
	got, err := nodetest.Dial(a.NS, srv)
	if err != nil || !strings.HasPrefix(got, "b from="+a.IPs()[0].String()+":") {
		t.Fatalf("pod on node 1 -> pod on node 2: %q %v (want b, seeing a's own address: no NAT, no tunnel)", got, err)
	}

	// Node 3 leaves the API: its agent withdraws, the others drop its CIDR.
	gone := cidr(nodes[2])
	if err := c.env.Client.CoreV1().Nodes().Delete(ctx, nodes[2].Name, metav1.DeleteOptions{}); err != nil {
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
	if !strings.Contains(nodes[2].AgentLog(), "BGP routes withdrawn, sessions closed") {
		t.Fatalf("the deleted node's agent did not leave BGP:\n%s", tailLog(nodes[2].AgentLog(), 2000))
	}
}

func tailLog(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func nsenterCmd(netns ns.NetNS, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--"}, args...)...)
}

// kubeCluster is the real control plane with tern's CRDs and RBAC applied,
// for agents that run as tern-agent's ServiceAccount.
type kubeCluster struct {
	t     *testing.T
	env   *kubetest.Env
	token string
	api   string // host:port of the API server
}

func newKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	env := kubetest.Start(t)
	root, err := nodetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"00-namespace.yaml", "01-crds.yaml", "02-rbac.yaml"} {
		if out, err := env.Kubectl(t, "apply", "-f", filepath.Join(root, "manifests", f)); err != nil {
			t.Fatalf("apply %s: %v\n%s", f, err, out)
		}
	}
	api, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	return &kubeCluster{t: t, env: env, token: env.ServiceAccountConfig(t, "tern-system", "tern-agent").BearerToken, api: api.Host}
}

// start registers n as a Node (address by annotation, with labels and more
// annotations) and starts its agent against the API.
func (c *kubeCluster) start(n *nodetest.Node, addr string, labels, annotations map[string]string) {
	c.t.Helper()
	ann := map[string]string{k8s.AddressAnnotation: addr}
	for k, v := range annotations {
		ann[k] = v
	}
	_, err := c.env.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, Labels: labels, Annotations: ann}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	name := n.Name
	c.t.Cleanup(func() { _ = c.env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	fwd := nodetest.Forward(c.t, n.NS, c.api, true)
	n.Args = append([]string{"--kubeconfig", kubeconfigVia(c.t, c.env, c.token, "https://"+fwd.Addr, n.Dir),
		"--resync=1s", "--cluster-cidr=10.244.0.0/16"}, n.Args...)
	n.StartAgentNoWait()
}
