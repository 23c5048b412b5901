// Real nodes (Options.Real): the control plane in a network namespace of its
// own on the fabric, as kind's control-plane node is; per node the real
// kubelet, containerd, runc and kube-proxy (package kubenode); kube-scheduler
// places pods; tern installed with `kubectl apply -k` of an overlay that sets
// the image, its DaemonSet running the agents.

package lab

import (
	"archive/tar"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tern-net/tern/internal/kubeconf"
	"github.com/tern-net/tern/internal/kubenode"
	"github.com/tern-net/tern/internal/nsfwd"
)

// Images and addresses of a real-node lab.
const (
	PauseImage   = "registry.k8s.io/pause:3.10.2"
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	// ServerImage is what the lab's own pods run: `tern-lab serve`, built
	// by `hack/image.sh server` (the light lab serves its pods in process
	// and only reads the ports they declare). No registry has it.
	ServerImage = "tern-lab.local/server:v1"
	ternImage   = "ghcr.io/tern-net/tern" // as manifests/04-daemonset.yaml names it
	ClusterDNS  = "10.96.0.10"
	// ClusterDNS6 is the cluster DNS of an IPv6-only lab.
	ClusterDNS6 = "fd74:6572:6e96::a"
)

// ClusterDNS is the kube-dns Service's address: of the primary family.
func (o Options) ClusterDNS() netip.Addr {
	if o.IPFamily == IPv6 {
		return netip.MustParseAddr(ClusterDNS6)
	}
	return netip.MustParseAddr(ClusterDNS)
}

// ControlPlaneAddress is where the control plane's namespace sits: on the
// routers' spine, or on the one segment of a lab without routers; of the
// lab's primary family (the API server advertises it: the kubernetes
// Service's endpoint).
func (o Options) ControlPlaneAddress() netip.Addr { return o.ControlPlaneAddresses()[0] }

// ControlPlaneAddresses are the control plane's addresses, one per family of
// the lab, the primary first.
func (o Options) ControlPlaneAddresses() []netip.Addr {
	var out []netip.Addr
	for _, v6 := range o.Families() {
		switch {
		case v6 && o.Router == RouterNone:
			out = append(out, addr6(0x30, 0, 0xfa))
		case v6:
			out = append(out, addr6(0x31, 0, 0xfa))
		case o.Router == RouterNone:
			out = append(out, netip.AddrFrom4([4]byte{10, 30, 0, 250}))
		default:
			out = append(out, netip.AddrFrom4([4]byte{10, 31, 0, 250}))
		}
	}
	return out
}

// realParts are what real nodes run, from the caches of hack/kube-env.sh and
// hack/node-env.sh, and tern's image from `make image`.
type realParts struct {
	kubeBin, nodeBin, images string
	ternArchive, ternRef     string // bin/tern-image.tar and the name it carries
	corednsRef               string // the name the CoreDNS archive carries
	serverArchive            string // ServerImage, built from this tern-lab
}

func (d *daemon) findParts() (realParts, error) {
	var p realParts
	if _, err := d.script("build", "node"); err != nil {
		return p, err
	}
	var err error
	if p.kubeBin, err = d.script("bindir"); err != nil {
		return p, err
	}
	nodeEnv := func(args ...string) (string, error) {
		return hackScript(context.Background(), d.cfg.Root, "node-env.sh", args...)
	}
	if _, err := nodeEnv("build"); err != nil {
		return p, err
	}
	if p.nodeBin, err = nodeEnv("bindir"); err != nil {
		return p, err
	}
	if p.images, err = nodeEnv("imagedir"); err != nil {
		return p, err
	}
	if p.corednsRef, err = ArchiveRef(filepath.Join(p.images, "coredns.tar")); err != nil {
		return p, fmt.Errorf("CoreDNS's image (hack/node-env.sh build): %w", err)
	}
	p.ternArchive = filepath.Join(d.cfg.BinDir, "tern-image.tar")
	if p.ternRef, err = ArchiveRef(p.ternArchive); err != nil {
		return p, fmt.Errorf("tern's image (make image): %w", err)
	}
	// The pods' image is this very tern-lab, so it is built at every up.
	p.serverArchive = filepath.Join(d.cfg.Dir, "server-image.tar")
	img := exec.Command("bash", filepath.Join(d.cfg.Root, "hack", "image.sh"), "server", p.serverArchive, ServerImage)
	img.Env = append(os.Environ(), "TERN_BIN_DIR="+d.cfg.BinDir)
	if out, err := img.CombinedOutput(); err != nil {
		return p, fmt.Errorf("hack/image.sh server: %w: %s", err, tail(string(out), 2000))
	}
	return p, nil
}

// ArchiveRef is the first name a docker-save archive carries.
func ArchiveRef(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s has no manifest.json", path)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", fmt.Errorf("%s: manifest.json: %w", path, err)
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s: no image name in manifest.json", path)
		}
		return m[0].RepoTags[0], nil
	}
}

// upReal brings up a lab of real nodes.
func (d *daemon) upReal(ctx context.Context) error {
	t0 := time.Now()
	d.mark(func(t *Timings) { t.Up = t0 })
	tunables, err := kubenode.ReadKernelTunables()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.tunables = tunables
	d.mu.Unlock()
	parts, err := d.findParts()
	if err != nil {
		return err
	}
	d.parts = parts
	created, err := kubenode.EnsureMountPoints()
	d.mu.Lock()
	d.mountPoints = created
	d.mu.Unlock()
	d.writeState()
	if err != nil {
		return err
	}
	if err := d.startNetwork(); err != nil {
		return err
	}
	if err := d.startControlPlaneNS(ctx); err != nil {
		return err
	}
	if err := d.installTern(ctx); err != nil {
		return err
	}
	d.mark(func(t *Timings) { t.ControlPlaneUp = time.Now() })
	d.writeState()
	d.log.Info("control plane up, tern applied", "took", time.Since(t0).Round(time.Millisecond))
	var initial []Node
	for i := 0; i < d.cfg.Nodes; i++ {
		initial = append(initial, d.cfg.PlanNode(d.next+i, 0))
	}
	if err := d.startRouters(initial); err != nil {
		return err
	}
	errs := make(chan error, len(initial))
	for _, n := range initial {
		d.next++
		go func() { errs <- d.addRealNode(ctx, n) }()
	}
	var failed []error
	for range initial {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	if err := errors.Join(failed...); err != nil {
		return err
	}
	return d.waitConverged(ctx, 2*time.Minute+time.Duration(d.cfg.Nodes)*10*time.Second, d.realConverged)
}

// startControlPlaneNS runs hack/kube-env.sh in the control plane's own
// namespace on the fabric, with kube-scheduler, the API advertised on the
// fabric address (the kubernetes Service's endpoint), and reaches it from
// the host through a forwarder on the host's loopback.
func (d *daemon) startControlPlaneNS(ctx context.Context) error {
	netns := ControlPlaneNetNS(d.cfg.Prefix)
	if err := addNS(netns); err != nil {
		return err
	}
	d.mu.Lock()
	d.shared = append(d.shared, netns)
	d.cpNetNS = netns
	d.mu.Unlock()
	seg := d.cfg.Prefix + "-spine"
	if d.cfg.Router == RouterNone {
		seg = d.cfg.Prefix + "-fabric"
	}
	if err := veth(seg, "cp", netns, "eth0"); err != nil {
		return err
	}
	if err := ip(seg, "link", "set", "cp", "master", "br0", "up"); err != nil {
		return err
	}
	addr := d.cfg.ControlPlaneAddress()
	var steps [][]string
	for _, a := range d.cfg.ControlPlaneAddresses() {
		steps = append(steps, addrStep(a))
	}
	steps = append(steps, []string{"link", "set", "eth0", "up"})
	if rs := d.cfg.Routers(); len(rs) > 0 {
		// Everything else (the racks, the pods) through the first ToR,
		// which learns it all over BGP.
		for _, v6 := range d.cfg.Families() {
			gw := rs[0].Spine
			if v6 {
				gw = rs[0].Spine6
			}
			steps = append(steps, defaultRouteStep(gw, "eth0"))
		}
	}
	for _, s := range steps {
		if err := ip(netns, s...); err != nil {
			return err
		}
	}
	if _, err := d.script("build"); err != nil {
		return err
	}
	d.kubectl = filepath.Join(d.parts.kubeBin, "kubectl")
	d.kubeDir = filepath.Join(d.cfg.Dir, "kube")
	if err := os.MkdirAll(d.kubeDir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	kc, err := d.scriptIn(netns, []string{"TERN_KUBE_ADDRESS=" + addr.String(), "TERN_KUBE_SCHEDULER=1",
		"TERN_KUBE_CLUSTER_CIDR=" + strings.Join(d.cfg.ClusterCIDRs(), ","), "TERN_KUBE_SERVICE_CIDR=" + strings.Join(d.cfg.ServiceCIDRs(), ",")}, "up", d.kubeDir)
	if err != nil {
		return err
	}
	d.mark(func(t *Timings) { t.KubeEnvUp = time.Since(t0) })
	port, err := apiPort(d.kubeDir)
	if err != nil {
		return err
	}
	fwd, err := nsfwd.ListenInto("127.0.0.1:0", NSPath(netns), net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return err
	}
	d.cpFwd = fwd
	d.apiNodes = "https://" + net.JoinHostPort(addr.String(), port)
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + fwd.Addr().String()
	}
	return d.useAdmin(cfg)
}

// scriptIn runs hack/kube-env.sh in netns with env added.
func (d *daemon) scriptIn(netns string, env []string, args ...string) (string, error) {
	all := append([]string{"--net=" + NSPath(netns), "bash", filepath.Join(d.cfg.Root, "hack", "kube-env.sh")}, args...)
	cmd := exec.Command("nsenter", all...)
	cmd.Env = append(append(os.Environ(), "TERN_KUBE_WATCH_PID="+strconv.Itoa(os.Getpid())), env...)
	var stderr strings.Builder
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/kube-env.sh %s in %s: %w: %s", strings.Join(args, " "), netns, err, tail(stderr.String(), 2000))
	}
	return strings.TrimSpace(string(out)), nil
}

// apiPort reads the API server's port from the control plane's ports file.
func apiPort(kubeDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(kubeDir, "ports"))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "kube-apiserver="); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s/ports names no kube-apiserver port", kubeDir)
}

// installTern applies manifests/ as a user does, through an overlay that
// sets the image `make image` built, then the lab's BGP objects.
func (d *daemon) installTern(ctx context.Context) error {
	dir := filepath.Join(d.cfg.Dir, "install")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	manifests, err := filepath.Rel(dir, filepath.Join(d.cfg.Root, "manifests"))
	if err != nil {
		return err
	}
	ref := d.parts.ternRef
	i := strings.LastIndexByte(ref, ':')
	if i < strings.LastIndexByte(ref, '/') {
		return fmt.Errorf("tern's image %s has no tag", ref)
	}
	repo, tag := ref[:i], ref[i+1:]
	// The ConfigMap's cluster-cidr is the cluster's, as README says to set
	// it: one CIDR per family. Without routers nothing outside the cluster
	// (the control plane's namespace included) has a route back to the
	// pods, so IPv6 pod traffic leaving the cluster is masqueraded as IPv4's
	// is: README's case for nat-outgoing-ipv6.
	nat6 := d.cfg.Router == RouterNone
	k := fmt.Sprintf("# Written by tern-lab: tern as a user installs it, with the image built here\n"+
		"# and the cluster's pod ranges.\n"+
		"resources: [%s]\nimages: [{name: %s, newName: %s, newTag: %q}]\n"+
		"patches:\n- patch: |-\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: tern-config, namespace: tern-system}\n    data: {cluster-cidr: %q, nat-outgoing-ipv6: \"%t\"}\n",
		manifests, ternImage, repo, tag, strings.Join(d.cfg.ClusterCIDRs(), ","), nat6)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return err
	}
	if out, err := d.kubectlRun("", "apply", "-k", dir); err != nil {
		return fmt.Errorf("kubectl apply -k %s: %w: %s", dir, err, out)
	}
	dns := strings.NewReplacer("COREDNS_IMAGE", d.parts.corednsRef, "CLUSTER_DNS", d.cfg.ClusterDNS().String()).Replace(corednsManifest)
	if out, err := d.kubectlRun(dns, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("kubectl apply CoreDNS: %w: %s", err, out)
	}
	return d.applyBGPObjects()
}

// The cluster's DNS, as kubeadm installs it.
//
//go:embed addons/coredns.yaml
var corednsManifest string

// nodeImages are the image archives every node imports before its kubelet
// starts, as no registry has them: the sandbox's pause, tern's, the lab
// server's, CoreDNS, the images Kubernetes' e2e suite runs (agnhost,
// nginx, glibc-dns-testing) and network-policy-api's (agnhost-npapi).
func (p realParts) nodeImages() []string {
	imgs := []string{p.ternArchive, p.serverArchive}
	for _, n := range []string{"pause", "coredns", "agnhost", "nginx", "glibc-dns-testing", "agnhost-npapi"} {
		imgs = append(imgs, filepath.Join(p.images, n+".tar"))
	}
	return imgs
}

// addRealNode makes node n's namespace and link, registers its Node with
// the lab's labels and annotations (as an operator provisions a node before
// its kubelet joins), and starts it.
func (d *daemon) addRealNode(ctx context.Context, n Node) error {
	ln, err := d.plugNode(n)
	if err != nil {
		return err
	}
	labels := map[string]string{LabelRack: fmt.Sprint(n.Rack)}
	ann := map[string]string{"tern.io/as-number": fmt.Sprint(n.AS)}
	if n.Reflector {
		labels[LabelReflector] = "true"
		ann["tern.io/route-reflector-cluster-id"] = ReflectorClusterID
	}
	nd := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: ann}}
	if _, err := d.client.CoreV1().Nodes().Create(ctx, nd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", n.Name, err)
	}
	pki := filepath.Join(d.kubeDir, "pki")
	kubelet, proxy := filepath.Join(ln.dir, "kubelet.kubeconfig"), filepath.Join(ln.dir, "kube-proxy.kubeconfig")
	if err := kubeconf.WriteClient(pki+"/ca.crt", pki+"/ca.key", d.apiNodes, "system:node:"+n.Name, []string{"system:nodes"}, kubelet); err != nil {
		return err
	}
	if err := kubeconf.WriteClient(pki+"/ca.crt", pki+"/ca.key", d.apiNodes, "system:kube-proxy", nil, proxy); err != nil {
		return err
	}
	p := d.parts
	kn, err := kubenode.Start(ctx, kubenode.Config{
		Name: n.Name, NetNS: NSPath(ln.netns), Dir: filepath.Join(ln.dir, "node"), NodeIPs: n.Addresses(),
		Kubeconfig: kubelet, ClientCA: pki + "/ca.crt", KubeBin: p.kubeBin, NodeBin: p.nodeBin,
		Images:     p.nodeImages(),
		PauseImage: PauseImage,
		// What a node's system brings (kind's node image, kubeadm's
		// kubernetes-cni package): the runtime's loopback and portmap.
		Install: map[string]string{
			"/opt/cni/bin/loopback": "/usr/lib/cni/loopback",
			"/opt/cni/bin/portmap":  "/usr/lib/cni/portmap",
		},
		ProxyKubeconfig: proxy, ProxyMode: d.cfg.ProxyMode, ClusterCIDR: strings.Join(d.cfg.ClusterCIDRs(), ","),
		ClusterDNS: []netip.Addr{d.cfg.ClusterDNS()},
		CgroupRoot: "/" + d.cfg.Prefix + "-" + n.Name,
		Log:        d.log,
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	ln.real = kn
	d.mu.Unlock()
	d.nodeStarted(n, "kubelet", kn.KubeletPID())
	return nil
}

// realConverged reports whether every Node is Ready with its network
// available, the DaemonSet has a ready agent on every node, and every node
// has every other node's pod CIDR installed; if not, what it waits for.
func (d *daemon) realConverged(ctx context.Context) (bool, string) {
	nodes, err := d.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err.Error()
	}
	d.mu.Lock()
	want := len(d.nodes)
	d.mu.Unlock()
	if len(nodes.Items) < want {
		return false, fmt.Sprintf("%d of %d nodes registered", len(nodes.Items), want)
	}
	cidrs := map[string][]string{}
	for _, n := range nodes.Items {
		if n.Spec.PodCIDR == "" {
			return false, n.Name + " to have a pod CIDR"
		}
		cidrs[n.Name] = n.Spec.PodCIDRs
		if len(n.Spec.PodCIDRs) < len(d.cfg.Families()) {
			return false, fmt.Sprintf("%s to have a pod CIDR of each family (has %v)", n.Name, n.Spec.PodCIDRs)
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return false, fmt.Sprintf("%s to be Ready (%s)", n.Name, c.Message)
			}
			if c.Type == corev1.NodeNetworkUnavailable && c.Status != corev1.ConditionFalse {
				return false, fmt.Sprintf("%s's network (NetworkUnavailable %s: %s)", n.Name, c.Status, c.Message)
			}
		}
	}
	if dep, err := d.client.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
		return false, err.Error()
	} else if dep.Status.AvailableReplicas < 1 {
		return false, fmt.Sprintf("CoreDNS to be available (%d of %d replicas ready)", dep.Status.ReadyReplicas, *dep.Spec.Replicas)
	}
	ds, err := d.client.AppsV1().DaemonSets("tern-system").Get(ctx, "tern-agent", metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	if !daemonSetReady(ds, want) {
		return false, fmt.Sprintf("tern-agent ready on every node (%d of %d)", ds.Status.NumberReady, want)
	}
	d.mu.Lock()
	var lns []*labNode
	for _, ln := range d.nodes {
		lns = append(lns, ln)
	}
	d.mu.Unlock()
	return routesIn(lns, cidrs)
}

func daemonSetReady(ds *appsv1.DaemonSet, nodes int) bool {
	s := ds.Status
	return s.ObservedGeneration >= ds.Generation && int(s.DesiredNumberScheduled) == nodes &&
		int(s.NumberReady) == nodes && int(s.UpdatedNumberScheduled) == nodes
}

// teardownReal stops the real nodes (their pods, kubelets, containerds,
// kube-proxies) before anything else, and after everything puts the host's
// mount points and kernel tunables back.
func (d *daemon) stopRealNode(ln *labNode) {
	if ln.real == nil {
		return
	}
	if err := ln.real.Stop(); err != nil {
		d.log.Warn("stop node", "node", ln.Name, "err", err)
	}
}

func (d *daemon) afterRealTeardown() {
	if d.cpFwd != nil {
		d.cpFwd.Close()
	}
	d.mu.Lock()
	created := d.mountPoints
	d.mu.Unlock()
	if err := kubenode.RemoveMountPoints(created); err != nil {
		d.log.Warn("remove mount points", "err", err)
	}
	if err := kubenode.WriteKernelTunables(d.tunables); err != nil {
		d.log.Warn("restore kernel tunables", "err", err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// realPods are the running, ready pods of the real nodes (host-network pods
// aside), each with its network namespace as the lab's probe and exec enter
// it: the sandbox's /proc/PID/ns/net.
func (d *daemon) realPods(nodes map[string]*kubenode.Node) []PodInfo {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	list, err := d.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		d.log.Warn("list pods", "err", err)
		return nil
	}
	var out []PodInfo
	for _, p := range list.Items {
		kn := nodes[p.Spec.NodeName]
		if kn == nil || p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		info := PodInfo{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				info.IPs = append(info.IPs, a)
			}
		}
		if len(info.IPs) == 0 {
			continue
		}
		if info.NetNS, err = kn.PodNetNS(p.Namespace, p.Name); err != nil {
			d.log.Warn("pod network namespace", "pod", p.Namespace+"/"+p.Name, "err", err)
			continue
		}
		out = append(out, info)
	}
	return out
}
