// Nodes: a node's namespace, link, kubeconfig, CNI configuration, kubelet
// and agent; nodes added to and removed from the running lab.

package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/kubeconf"
	"github.com/tern-net/tern/internal/nsfwd"
)

// plugNode makes node n's namespace and its link: into its rack's bridge
// (in the ToR's namespace), or into the shared segment.
func (d *daemon) plugNode(n Node) (*labNode, error) {
	ln := &labNode{Node: n, netns: fmt.Sprintf("%s-%s", d.cfg.Prefix, n.Name), dir: filepath.Join(d.cfg.Dir, "nodes", n.Name)}
	d.mu.Lock()
	d.nodes[n.Name] = ln
	d.mu.Unlock()
	if err := os.MkdirAll(ln.dir, 0o755); err != nil {
		return nil, err
	}
	if err := addNS(ln.netns); err != nil {
		return nil, err
	}
	seg, port := d.cfg.Prefix+"-fabric", fmt.Sprintf("n%d", n.Number)
	if n.Rack > 0 {
		seg = fmt.Sprintf("%s-tor%d", d.cfg.Prefix, n.Rack)
	}
	if err := veth(seg, port, ln.netns, "eth0"); err != nil {
		return nil, err
	}
	if err := ip(seg, "link", "set", port, "master", "br0", "up"); err != nil {
		return nil, err
	}
	var steps [][]string
	for _, a := range n.Addresses() {
		steps = append(steps, addrStep(a))
	}
	steps = append(steps, []string{"link", "set", "eth0", "up"})
	gws := validAddrs(n.Gateway4, n.Gateway6)
	if len(gws) == 0 && d.cfg.Real {
		// One segment, no router: a node still needs a default route, as
		// any host has, for its Service traffic to be routed at all
		// (kube-proxy rewrites the destination after the route lookup):
		// the control plane's address on the segment.
		gws = d.cfg.ControlPlaneAddresses()
	}
	for _, gw := range gws {
		steps = append(steps, defaultRouteStep(gw, "eth0"))
	}
	for _, s := range steps {
		if err := ip(ln.netns, s...); err != nil {
			return nil, err
		}
	}
	return ln, nil
}

// addNode creates node n's namespace and link (plugNode), registers it, and
// starts its agent and tern's own kubelet.
func (d *daemon) addNode(ctx context.Context, n Node) error {
	ln, err := d.plugNode(n)
	if err != nil {
		return err
	}
	fwd, err := nsfwd.Listen(NSPath(ln.netns), "127.0.0.1:6443", d.api)
	if err != nil {
		return err
	}
	ln.fwd = fwd
	kubeconfig, err := d.agentKubeconfig(ln)
	if err != nil {
		return err
	}
	conf, err := d.confList(ln)
	if err != nil {
		return err
	}
	pluginLog, err := os.OpenFile(filepath.Join(ln.dir, "plugins.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	k := &kubelet{log: d.log, client: d.client, node: n, netns: ln.netns, prefix: d.cfg.Prefix, conf: conf, pods: map[string]*podRT{}, kick: make(chan string, 64),
		cni: libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(d.cfg.Dir, "cni-bin"), "/usr/lib/cni"}, filepath.Join(ln.dir, "cni-cache"), &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: pluginLog}})}
	if err := k.register(ctx); err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(d.ctx)
	ln.kubelet, ln.cancel = k, cancel
	go k.heartbeat(kctx)
	go k.run(kctx)
	args := append([]string{filepath.Join(d.cfg.BinDir, "tern-agent"), "--node-name", n.Name, "--kubeconfig", kubeconfig,
		"--state-dir", filepath.Join(ln.dir, "state"), "--run-dir", filepath.Join(ln.dir, "run"),
		"--health-addr", "127.0.0.1:9099", "--cluster-cidr", ClusterCIDR}, d.cfg.ExtraAgentArgs...)
	agent, err := startProc(d.log, "tern-agent "+n.Name, ln.netns, filepath.Join(ln.dir, "agent.log"), true, args...)
	if err != nil {
		return err
	}
	d.mu.Lock()
	ln.agent = agent
	d.mu.Unlock()
	d.nodeStarted(n)
	return nil
}

func (d *daemon) agentKubeconfig(ln *labNode) (string, error) {
	path := filepath.Join(ln.dir, "kubeconfig")
	return path, kubeconf.WriteToken(d.admin, d.token, "https://127.0.0.1:6443", path)
}

// confList is the CNI configuration the DaemonSet installs (from
// manifests/03-config.yaml), with the node's agent socket and log file.
func (d *daemon) confList(ln *labNode) (*libcni.NetworkConfigList, error) {
	raw, err := os.ReadFile(filepath.Join(d.cfg.Root, "manifests", "03-config.yaml"))
	if err != nil {
		return nil, err
	}
	js, err := conflistFromConfigMap(raw)
	if err != nil {
		return nil, err
	}
	js = strings.ReplaceAll(js, "/run/tern/cni.sock", filepath.Join(ln.dir, "run", "cni.sock"))
	js = strings.ReplaceAll(js, "/var/log/tern/cni.log", filepath.Join(ln.dir, "tern-cni.log"))
	if err := os.WriteFile(filepath.Join(ln.dir, "10-tern.conflist"), []byte(js), 0o644); err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes([]byte(js))
}

// conflistFromConfigMap takes the 10-tern.conflist block out of the ConfigMap's YAML.
func conflistFromConfigMap(raw []byte) (string, error) {
	var b strings.Builder
	in := false
	indent := ""
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		l := sc.Text()
		if strings.TrimSpace(l) == "10-tern.conflist: |" {
			in = true
			continue
		}
		if !in {
			continue
		}
		if indent == "" {
			indent = l[:len(l)-len(strings.TrimLeft(l, " "))]
		}
		if !strings.HasPrefix(l, indent) {
			break
		}
		b.WriteString(strings.TrimPrefix(l, indent) + "\n")
	}
	if b.Len() == 0 {
		return "", errors.New("manifests/03-config.yaml has no 10-tern.conflist")
	}
	return b.String(), nil
}

// removeNode: the kubelet stops, the Node object goes, the agent withdraws
// its routes and closes its sessions (it sees its Node deleted), then the
// agent stops and the namespace goes.
func (d *daemon) removeNode(ctx context.Context, name string) error {
	d.mu.Lock()
	ln := d.nodes[name]
	d.mu.Unlock()
	if ln == nil {
		return fmt.Errorf("no node %q in the lab", name)
	}
	if ln.cancel != nil {
		ln.cancel()
	}
	socket := filepath.Join(ln.dir, "run", "cni.sock")
	if ln.real != nil {
		// A real node leaves as an operator takes one out: its kubelet
		// stops (so that it does not register the Node again), then the
		// Node is deleted while its agent still runs, which withdraws its
		// routes and closes its sessions.
		ln.real.StopKubelet()
		socket = ln.real.HostPath("/run/tern/cni.sock")
	}
	err := d.client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	c := agentapi.NewClient(socket, 2*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := c.BGP(ctx)
		if err == nil && len(b.Peers) == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ln.agent != nil {
		ln.agent.stop(10 * time.Second)
	}
	if ln.fwd != nil {
		ln.fwd.Close()
	}
	if ln.kubelet != nil {
		ln.kubelet.stopPods()
	}
	d.stopRealNode(ln)
	pods, err := d.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + name})
	if err == nil {
		for _, p := range pods.Items {
			_ = d.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		}
	}
	if err := delNS(ln.netns); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.nodes, name)
	d.mu.Unlock()
	if err := d.reconfigureRouters(ln.Rack, ln.Node, false); err != nil {
		return err
	}
	d.writeState()
	d.log.Info("node removed", "node", name)
	return nil
}

// AddNode adds a node to the running lab (rack 0: the next in turn).
func (d *daemon) AddNode(ctx context.Context, rack int) (Node, error) {
	if rack < 0 || (d.cfg.Router != RouterNone && rack > d.cfg.Racks) || (d.cfg.Router == RouterNone && rack > 1) {
		return Node{}, fmt.Errorf("--rack %d: the lab has racks 1 to %d", rack, d.cfg.Racks)
	}
	d.mu.Lock()
	num := d.next
	d.next++
	d.mu.Unlock()
	if num > MaxNodeNumber {
		return Node{}, fmt.Errorf("the lab has numbered %d nodes: no more addresses", MaxNodeNumber)
	}
	n := d.cfg.PlanNode(num, rack)
	n.Reflector = false // reflectors are chosen at `up`
	if d.cfg.Router != RouterNone && d.cfg.RouteReflectors == 0 {
		n.AS = uint32(NodeASBase + num)
	}
	add := d.addNode
	if d.cfg.Real {
		add = d.addRealNode
	}
	if err := add(ctx, n); err != nil {
		return n, err
	}
	return n, d.reconfigureRouters(n.Rack, n, true)
}
