package kubenode_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tern-net/tern/internal/kubeconf"
	"github.com/tern-net/tern/internal/kubenode"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// parts are the built node binaries and images (make test builds them:
// hack/node-env.sh build).
type parts struct{ kubeBin, nodeBin, images string }

func nodeParts(t *testing.T) parts {
	t.Helper()
	root, err := nodetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := func(script, arg string) string {
		out, err := exec.Command("bash", filepath.Join(root, "hack", script), arg).Output()
		if err != nil {
			t.Fatalf("hack/%s %s: %v", script, arg, err)
		}
		return strings.TrimSpace(string(out))
	}
	p := parts{kubeBin: dir("kube-env.sh", "bindir"), nodeBin: dir("node-env.sh", "bindir"), images: dir("node-env.sh", "imagedir")}
	for _, f := range []string{p.kubeBin + "/kubelet", p.nodeBin + "/containerd", p.nodeBin + "/runc", p.images + "/pause.tar", p.images + "/agnhost.tar"} {
		nodetest.RequirePath(t, f, "the lab's node parts (hack/node-env.sh build)")
	}
	return p
}

// TestNodeRunsPods starts one real node (containerd, runc, kubelet) in a
// network namespace, with tern's plugin and a standalone agent in it, and
// checks what a user of a node sees: the Node registers and turns Ready, an
// agnhost pod runs with an address from tern's pod CIDR and answers, and so
// does a ClusterIP Service in front of it (kube-proxy), and it keeps its
// address and answers across a restart of the kubelet; deleted, it leaves no
// veth and no allocation; then that Stop leaves nothing behind on the host.
func TestNodeRunsPods(t *testing.T) {
	nodetest.RequireRoot(t)
	env := kubetest.Start(t)
	if env.Dir == "" {
		t.Fatal("a real node needs the control plane's CA key: run without TERN_KUBECONFIG")
	}
	p := nodeParts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	restore, err := kubenode.SaveKernelTunables()
	if err != nil {
		t.Fatal(err)
	}
	before := tunables(t)
	created, err := kubenode.EnsureMountPoints()
	if err != nil {
		t.Fatal(err)
	}
	hostMounts := mounts(t)

	n := nodetest.NewNodeNS(t)
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"},
		{"addr", "add", "10.82.0.2/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0-peer", "up"},
		{"route", "add", "default", "via", "10.82.0.1", "dev", "eth0", "onlink"},
	} {
		if err := n.Exec("ip", args...); err != nil {
			t.Fatalf("ip %v: %v", args, err)
		}
	}
	fwd := nodetest.Forward(t, n.NS, strings.TrimPrefix(env.Config.Host, "https://"), true)
	dir := t.TempDir()
	name := "kn-" + strings.ToLower(strings.TrimPrefix(filepath.Base(n.NS.Path()), "cnitest-"))[:8]
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	pki := filepath.Join(env.Dir, "pki")
	if err := kubeconf.WriteClient(pki+"/ca.crt", pki+"/ca.key", "https://"+fwd.Addr, "system:node:"+name, []string{"system:nodes"}, kubeconfig); err != nil {
		t.Fatal(err)
	}
	proxyKubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := kubeconf.WriteClient(pki+"/ca.crt", pki+"/ca.key", "https://"+fwd.Addr, "system:kube-proxy", nil, proxyKubeconfig); err != nil {
		t.Fatal(err)
	}
	node, err := kubenode.Start(ctx, kubenode.Config{
		// kube-proxy in nftables mode: the e2e lab runs its default,
		// iptables, so both modes run beside tern's iptables rules.
		ProxyKubeconfig: proxyKubeconfig, ProxyMode: "nftables", ClusterCIDR: "10.83.0.0/16",
		Name: name, NetNS: n.NS.Path(), Dir: filepath.Join(dir, "node"), NodeIPs: []netip.Addr{netip.MustParseAddr("10.82.0.2")},
		Kubeconfig: kubeconfig, ClientCA: pki + "/ca.crt",
		KubeBin: p.kubeBin, NodeBin: p.nodeBin,
		Images:     []string{p.images + "/pause.tar", p.images + "/agnhost.tar"},
		PauseImage: "registry.k8s.io/pause:3.10.2",
		ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		// tern on the node, as its DaemonSet would install it: the plugin,
		// the runtime's loopback and portmap (the conflist comes below).
		Install: map[string]string{
			"/opt/cni/bin/tern":     filepath.Join(n.BinDir, "tern"),
			"/opt/cni/bin/loopback": nodetest.DebianCNIDir + "/loopback",
			"/opt/cni/bin/portmap":  nodetest.DebianCNIDir + "/portmap",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if err := node.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}
	t.Cleanup(func() {
		stop()
		env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		kubenode.RemoveMountPoints(created)
		restore()
	})

	// The agent standalone.
	agent := node.Command(filepath.Join(n.BinDir, "tern-agent"), "--node-name", name, "--pod-cidr", "10.83.0.0/24",
		"--bgp=false", "--health-addr", "127.0.0.1:9099")
	agentLog, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { agent.Wait(); close(agentDone) }()
	t.Cleanup(func() { agent.Process.Kill(); <-agentDone })
	conflist := `{"cniVersion": "1.0.0", "name": "tern", "plugins": [
  {"type": "tern", "agentSocket": "/run/tern/cni.sock", "logFile": "/var/log/tern/cni.log"},
  {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]}`
	if err := os.WriteFile(node.HostPath("/etc/cni/net.d/10-tern.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}

	err = kubetest.EventuallyErr(90*time.Second, func() error {
		nd, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status != corev1.ConditionTrue {
					return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
				}
				if got := nd.Status.NodeInfo.ContainerRuntimeVersion; got != "containerd://2.3.7" {
					t.Errorf("runtime %q, want containerd://2.3.7", got)
				}
				return nil
			}
		}
		return fmt.Errorf("no Ready condition")
	})
	if err != nil {
		t.Fatalf("node %s not Ready: %v\nkubelet log:\n%s", name, err, nodetest.Tail(node.Log("kubelet"), 30))
	}

	ns := env.NewNamespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:                      name,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "agnhost", Image: "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"netexec", "--http-port=8080"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/hostname", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ip string
	err = kubetest.EventuallyErr(90*time.Second, func() error {
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		}
		if p.Status.Phase != corev1.PodRunning || !ready {
			return fmt.Errorf("phase %s, ready %v, %+v", p.Status.Phase, ready, p.Status.ContainerStatuses)
		}
		ip = p.Status.PodIP
		return nil
	})
	if err != nil {
		t.Fatalf("pod not running: %v\nkubelet log:\n%s\ncontainerd log:\n%s", err,
			nodetest.Tail(node.Log("kubelet"), 30), nodetest.Tail(node.Log("containerd"), 30))
	}
	if a, err := netip.ParseAddr(ip); err != nil || !netip.MustParsePrefix("10.83.0.0/24").Contains(a) {
		t.Fatalf("pod IP %q not from the node's pod CIDR 10.83.0.0/24", ip)
	}
	// The pod answers from the node (the agnhost container's own server).
	out, err := node.Command("curl", "-sf", "--max-time", "5", "http://"+ip+":8080/hostname").Output()
	if err != nil || string(out) != "web" {
		t.Fatalf("GET http://%s:8080/hostname from the node: %q, %v", ip, out, err)
	}
	// A ClusterIP Service in front of it answers from the node, through
	// the node's kube-proxy.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err = env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = kubetest.EventuallyErr(30*time.Second, func() error {
		out, err := node.Command("curl", "-sf", "--max-time", "2", "http://"+svc.Spec.ClusterIP+"/hostname").Output()
		if err != nil || string(out) != "web" {
			return fmt.Errorf("GET http://%s/hostname: %q, %v", svc.Spec.ClusterIP, out, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\nkube-proxy log:\n%s", err, nodetest.Tail(node.Log("kube-proxy"), 20))
	}
	// ... through its nftables table (and not an iptables fallback).
	if out, err := node.Command("nft", "list", "table", "ip", "kube-proxy").CombinedOutput(); err != nil || !strings.Contains(string(out), svc.Spec.ClusterIP) {
		t.Errorf("kube-proxy's nftables table has no element for the ClusterIP %s: %v\n%s", svc.Spec.ClusterIP, err, nodetest.Tail(string(out), 2000))
	}
	if pids := cgroupProcs(t, node.CgroupRoot()); len(pids) == 0 {
		t.Errorf("no process in the node's cgroup root %s: where do its containers run?", node.CgroupRoot())
	}

	// The kubelet restarted: the pod keeps its sandbox, its address and its
	// connectivity (the kubelet finds it again through containerd).
	if err := node.RestartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	err = kubetest.EventuallyErr(60*time.Second, func() error {
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.PodIP != ip || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 || !p.Status.ContainerStatuses[0].Ready {
			return fmt.Errorf("after the kubelet's restart: IP %s (was %s), %+v", p.Status.PodIP, ip, p.Status.ContainerStatuses)
		}
		out, err := node.Command("curl", "-sf", "--max-time", "2", "http://"+ip+":8080/hostname").Output()
		if err != nil || string(out) != "web" {
			return fmt.Errorf("GET http://%s:8080/hostname after the kubelet's restart: %q, %v", ip, out, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Deleted through the API: the kubelet stops it and the CNI DEL
	// releases its address.
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = kubetest.EventuallyErr(60*time.Second, func() error {
		_, err := env.Client.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("pod still there (%v)", err)
		}
		out, err := node.Command("ip", "-o", "link", "show").Output()
		if err != nil {
			return err
		}
		if strings.Contains(string(out), " tern") {
			return fmt.Errorf("a tern veth is left: %s", out)
		}
		// The address is released: the agent holds no allocation.
		st, err := node.Command(filepath.Join(n.BinDir, "ternctl"), "--socket", node.HostPath("/run/tern/cni.sock"), "ipam", "show").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ternctl ipam show: %v: %s", err, st)
		}
		if strings.Contains(string(st), ip) {
			return fmt.Errorf("%s still allocated:\n%s", ip, st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Stop: nothing of the node is left on the host.
	root, mnt := node.CgroupRoot(), node.MountNamespace()
	stop()
	if pids := inMountNS(mnt); len(pids) != 0 {
		t.Errorf("processes left in the node's mount namespace %s: %v", mnt, pids)
	}
	if pids := cgroupProcs(t, root); len(pids) != 0 {
		t.Errorf("processes left in %s: %v", root, pids)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + root); len(left) != 0 {
		t.Errorf("cgroups left: %v", left)
	}
	if after := mounts(t); after != hostMounts {
		t.Errorf("the host's mounts changed:\nbefore:\n%s\nafter:\n%s", hostMounts, after)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if after := tunables(t); after != before {
		t.Errorf("kernel tunables not restored: before %s, after %s", before, after)
	}
}

// mounts is the host's mount table: mount points and sources, in order;
// the network namespaces in /run/netns left out (tests running beside this
// one make and remove theirs).
func mounts(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && !strings.HasPrefix(fields[4], "/run/netns/") {
			b.WriteString(fields[3] + " " + fields[4] + "\n")
		}
	}
	return b.String()
}

func tunables(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, k := range kubenode.KernelTunables {
		v, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s=%s ", k, strings.TrimSpace(string(v)))
	}
	return b.String()
}

func cgroupProcs(t *testing.T, root string) []string {
	t.Helper()
	var pids []string
	filepath.WalkDir("/sys/fs/cgroup/memory"+root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		pids = append(pids, strings.Fields(string(b))...)
		return nil
	})
	return pids
}

// inMountNS are the processes in the mount namespace mnt.
func inMountNS(mnt string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && l == mnt {
			pids = append(pids, e.Name())
		}
	}
	return pids
}
