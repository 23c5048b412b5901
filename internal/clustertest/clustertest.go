// Package clustertest builds multi-node tern clusters for tests and
// benchmarks: layer-2 fabrics and routers in network namespaces, node
// namespaces joined to them, and real agents registered with the real control
// plane, running as tern-agent's ServiceAccount with the RBAC the manifests
// install.
package clustertest

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/internal/kubeconf"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

// Cmd prepares a command that runs in netns.
func Cmd(netns ns.NetNS, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--"}, args...)...)
}

// Run runs a command in netns and fails t on error.
func Run(t testing.TB, netns ns.NetNS, args ...string) string {
	t.Helper()
	out, err := Cmd(netns, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// NewNS creates a network namespace with lo up, removed at cleanup.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); _ = testutils.UnmountNS(n) })
	Run(t, n, "ip", "link", "set", "lo", "up")
	return n
}

// NewRouter creates a namespace with IPv4 forwarding on, for a router.
func NewRouter(t testing.TB) ns.NetNS {
	t.Helper()
	r := NewNS(t)
	Run(t, r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return r
}

// Link joins two namespaces with a veth: devA in a with addrA, devB in b.
func Link(t testing.TB, a ns.NetNS, devA, addrA string, b ns.NetNS, devB, addrB string) {
	t.Helper()
	Run(t, a, "ip", "link", "add", devA, "type", "veth", "peer", "name", devB, "netns", filepath.Base(b.Path()))
	Run(t, a, "ip", "addr", "add", addrA, "dev", devA)
	Run(t, a, "ip", "link", "set", devA, "up")
	Run(t, b, "ip", "addr", "add", addrB, "dev", devB)
	Run(t, b, "ip", "link", "set", devB, "up")
}

// Fabric is one layer-2 segment: a bridge in a namespace of its own.
type Fabric struct {
	t  testing.TB
	ns ns.NetNS
}

// NewFabric creates the bridge.
func NewFabric(t testing.TB) *Fabric {
	t.Helper()
	f := &Fabric{t: t, ns: NewNS(t)}
	Run(t, f.ns, "ip", "link", "add", "br0", "type", "bridge")
	Run(t, f.ns, "ip", "link", "set", "br0", "up")
	return f
}

// Join gives a node's namespace an interface eth0 on the fabric with addrs
// (CIDRs), as JoinNS.
func (f *Fabric) Join(n *nodetest.Node, port string, addrs ...string) { f.JoinNS(n.NS, port, addrs...) }

// JoinNS gives netns an interface eth0 on the fabric with addrs (CIDRs, of
// either family; IPv6 ones usable at once: no duplicate address detection).
func (f *Fabric) JoinNS(netns ns.NetNS, port string, addrs ...string) {
	f.t.Helper()
	Run(f.t, f.ns, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(netns.Path()))
	Run(f.t, f.ns, "ip", "link", "set", port, "master", "br0", "up")
	for _, a := range addrs {
		args := []string{"ip", "addr", "add", a, "dev", "eth0"}
		if strings.Contains(a, ":") {
			args = append(args, "nodad")
		}
		Run(f.t, netns, args...)
	}
	Run(f.t, netns, "ip", "link", "set", "eth0", "up")
}

// Cluster is the real control plane with tern's namespace, CRDs and RBAC.
type Cluster struct {
	t     testing.TB
	Env   *kubetest.Env
	token string
	api   string // host:port of the API server
}

// NewCluster starts (or reuses) the control plane and applies the manifests
// the agent needs.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	env := kubetest.Start(t)
	root, err := nodetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"00-namespace.yaml", "01-crds.yaml", "01-crds-network-policy-api.yaml", "02-rbac.yaml"} {
		if out, err := env.Kubectl(t, "apply", "-f", filepath.Join(root, "manifests", f)); err != nil {
			t.Fatalf("apply %s: %v\n%s", f, err, out)
		}
	}
	api, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	return &Cluster{t: t, Env: env, token: env.ServiceAccountConfig(t, "tern-system", "tern-agent").BearerToken, api: api.Host}
}

// Apply applies YAML with kubectl and deletes it at cleanup.
func (c *Cluster) Apply(yaml string) {
	c.t.Helper()
	if out, err := c.Kubectl(yaml, "apply", "-f", "-"); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	c.t.Cleanup(func() { _, _ = c.Kubectl(yaml, "delete", "-f", "-") })
}

// Kubectl runs kubectl with stdin given as the file "-".
func (c *Cluster) Kubectl(stdin string, args ...string) (string, error) {
	c.t.Helper()
	f := filepath.Join(c.t.TempDir(), "in.yaml")
	if err := os.WriteFile(f, []byte(stdin), 0o644); err != nil {
		c.t.Fatal(err)
	}
	args = append([]string(nil), args...)
	for i, a := range args {
		if a == "-" {
			args[i] = f
		}
	}
	return c.Env.Kubectl(c.t, args...)
}

// Start registers n as a Node (address by annotation, labels, annotations)
// and starts its agent against the API; it does not wait for it.
func (c *Cluster) Start(n *nodetest.Node, addr string, labels, annotations map[string]string) {
	c.t.Helper()
	ann := map[string]string{k8s.AddressAnnotation: addr}
	for k, v := range annotations {
		ann[k] = v
	}
	_, err := c.Env.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, Labels: labels, Annotations: ann}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	name := n.Name
	c.t.Cleanup(func() { _ = c.Env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	_, kubeconfig := c.Connect(n, true)
	n.Args = append([]string{"--kubeconfig", kubeconfig, "--resync=1s", "--cluster-cidr=10.244.0.0/16"}, n.Args...)
	n.StartAgentNoWait()
}

// AddPod creates pod name in namespace "default" on node n in the API, as
// a kubelet finds it before it asks for the pod's sandbox, and attaches it
// with list, as the runtime would (with the pod's UID); both go at cleanup.
// The agent attaches only pods it knows (fail closed).
func (c *Cluster) AddPod(n *nodetest.Node, list *libcni.NetworkConfigList, name string) *nodetest.Pod {
	c.t.Helper()
	ctx := context.Background()
	pod, err := c.Env.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create pod %s: %v", name, err)
	}
	c.t.Cleanup(func() {
		zero := int64(0)
		_ = c.Env.Client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	return n.MustAddPod(list, name, string(pod.UID))
}

// Connect gives n's namespace a way to the API server (a forwarder, open or
// not yet) and returns it with a kubeconfig for tern-agent's ServiceAccount.
func (c *Cluster) Connect(n *nodetest.Node, open bool) (*nodetest.Forwarder, string) {
	c.t.Helper()
	fwd := nodetest.Forward(c.t, n.NS, c.api, open)
	return fwd, KubeconfigVia(c.t, c.Env, c.token, "https://"+fwd.Addr, n.Dir)
}

// KubeconfigVia writes a kubeconfig that reaches the API server at server
// (a forwarder in a node namespace) with the bearer token.
func KubeconfigVia(t testing.TB, env *kubetest.Env, token, server, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "kubeconfig")
	if err := kubeconf.WriteToken(env.Kubeconfig, token, server, path); err != nil {
		t.Fatal(err)
	}
	return path
}
