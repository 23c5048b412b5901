// Package kubenode runs a real Kubernetes node on this machine: containerd,
// runc and the kubelet, in a network namespace and a mount namespace of the
// node's own, the way kind runs a node in a container.
//
// In the node's mount namespace the paths a node's software and a
// DaemonSet's hostPath volumes use (/etc/cni/net.d, /opt/cni/bin, /run/tern,
// /var/lib/kubelet, containerd's root and state, ...) are the node's own
// directories under Config.Dir, so that /opt/cni/bin on a lab node means what
// it means on a real one. Everything a node creates (processes, mounts,
// cgroups under a cgroup root of its own, containers' network namespaces)
// is gone after Stop.
//
// The host's mount points: a bind mount needs its target to exist, and the
// targets are standard paths a node has and this machine may not. Start
// creates the missing ones as empty directories (MountPoints lists them);
// RemoveMountPoints removes those created, once no node runs.
package kubenode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config describes one node.
type Config struct {
	Name  string // the Node's name
	NetNS string // path of the node's network namespace (made by the caller)
	Dir   string // the node's directories, configuration and logs
	// NodeIPs are the node's addresses in NetNS, one per family, the
	// primary first: its InternalIPs (kubelet's --node-ip).
	NodeIPs    []netip.Addr
	Kubeconfig string   // the kubelet's (system:node:<Name>); its server as NetNS reaches it
	ClientCA   string   // CA of the clients the kubelet's server accepts (the API server's)
	KubeBin    string   // kubelet (hack/kube-env.sh bindir)
	NodeBin    string   // containerd, containerd-shim-runc-v2, runc, ctr (hack/node-env.sh bindir)
	Images     []string // image archives imported into containerd before the kubelet starts
	// Install are files the node's own system provides (a node path, such
	// as /opt/cni/bin/loopback, to the host file copied there) before the
	// kubelet starts.
	Install    map[string]string
	PauseImage string // the sandbox image (one of Images)

	// ProxyKubeconfig, when set, runs kube-proxy on the node with this
	// kubeconfig (user system:kube-proxy), in ProxyMode (iptables or
	// nftables; default iptables), ClusterCIDR its --cluster-cidr (one
	// CIDR per family, comma-separated).
	ProxyKubeconfig string
	ProxyMode       string
	ClusterCIDR     string

	ClusterDNS    []netip.Addr
	ClusterDomain string // default cluster.local
	CgroupRoot    string // the kubelet's cgroup root; default /tern-node-<Name>
	MaxPods       int    // default 110
	Verbosity     int    // kubelet's -v

	Log *slog.Logger
}

func (c Config) clusterDomain() string {
	if c.ClusterDomain == "" {
		return "cluster.local"
	}
	return c.ClusterDomain
}

// nodeIPList is kubelet's --node-ip: the addresses, comma-separated.
func (c Config) nodeIPList() string {
	var s []string
	for _, a := range c.NodeIPs {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

// bindAddress is where kubelet's server listens: the node's one address,
// or with two families every address ("::" takes IPv4 too).
func (c Config) bindAddress() netip.Addr {
	if len(c.NodeIPs) == 1 {
		return c.NodeIPs[0]
	}
	return netip.IPv6Unspecified()
}

func (c Config) maxPods() int {
	if c.MaxPods == 0 {
		return 110
	}
	return c.MaxPods
}

func (c Config) validate() error {
	var errs []error
	if c.Name == "" || strings.ContainsAny(c.Name, "/ ") {
		errs = append(errs, fmt.Errorf("node name %q: want a DNS label", c.Name))
	}
	if !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Errorf("node directory %q is not absolute", c.Dir))
	}
	if c.CgroupRoot != "" && (!strings.HasPrefix(c.CgroupRoot, "/") || strings.Count(c.CgroupRoot, "/") != 1) {
		errs = append(errs, fmt.Errorf("cgroup root %q: want /name", c.CgroupRoot))
	}
	if len(c.NodeIPs) == 0 || len(c.NodeIPs) > 2 || (len(c.NodeIPs) == 2 && c.NodeIPs[0].Is4() == c.NodeIPs[1].Is4()) {
		errs = append(errs, fmt.Errorf("node addresses %v: want one, or one of each family", c.NodeIPs))
	}
	for _, a := range c.NodeIPs {
		if !a.IsValid() {
			errs = append(errs, errors.New("an invalid node address"))
		}
	}
	for _, f := range []struct{ what, path string }{
		{"network namespace", c.NetNS}, {"kubeconfig", c.Kubeconfig}, {"client CA", c.ClientCA},
		{"kubelet", filepath.Join(c.KubeBin, "kubelet")},
		{"containerd", filepath.Join(c.NodeBin, "containerd")},
		{"containerd-shim-runc-v2", filepath.Join(c.NodeBin, "containerd-shim-runc-v2")},
		{"runc", filepath.Join(c.NodeBin, "runc")},
		{"ctr", filepath.Join(c.NodeBin, "ctr")},
	} {
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.what, err))
		}
	}
	for _, img := range c.Images {
		if _, err := os.Stat(img); err != nil {
			errs = append(errs, fmt.Errorf("image archive: %w", err))
		}
	}
	for dst, src := range c.Install {
		if !filepath.IsAbs(dst) {
			errs = append(errs, fmt.Errorf("install %s: not an absolute node path", dst))
		}
		if _, err := os.Stat(src); err != nil {
			errs = append(errs, fmt.Errorf("install %s: %w", dst, err))
		}
	}
	if c.PauseImage == "" {
		errs = append(errs, errors.New("no sandbox (pause) image named"))
	}
	if c.ProxyKubeconfig != "" {
		if _, err := os.Stat(filepath.Join(c.KubeBin, "kube-proxy")); err != nil {
			errs = append(errs, fmt.Errorf("kube-proxy: %w", err))
		}
		switch c.ProxyMode {
		case "", "iptables", "nftables":
		default:
			errs = append(errs, fmt.Errorf("proxy mode %q: want iptables or nftables", c.ProxyMode))
		}
	}
	return errors.Join(errs...)
}

// MountPoints are the paths that are the node's own inside its mount
// namespace: directories, and one file (/run/xtables.lock, iptables' lock,
// which a node shares with nobody).
var MountPoints = []string{
	"/etc/cni/net.d",
	"/opt/cni/bin",
	"/run/containerd",
	"/run/tern",
	"/var/lib/containerd",
	"/var/lib/kubelet",
	"/var/lib/tern",
	"/var/log/containers",
	"/var/log/pods",
	"/var/log/tern",
	"/lib/modules",
}

const lockFile = "/run/xtables.lock"

// Node is a running node.
type Node struct {
	cfg        Config
	holder     *proc // owns the node's mount namespace
	containerd *proc
	kubelet    *proc
	proxy      *proc
	cgroupRoot string
	mntNS      string // the holder's /proc/PID/ns/mnt, read at start (identity of the namespace)
	log        *slog.Logger
}

// HostPath is where path of the node (one of MountPoints, or below one) is
// on the host: how a caller installs CNI binaries in /opt/cni/bin or reads a
// pod's log.
func (n *Node) HostPath(path string) string { return filepath.Join(n.cfg.Dir, "root", path) }

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Start creates the node's directories and mount namespace, starts
// containerd, imports the images, and starts the kubelet. It returns once
// the kubelet runs (the Node's registration and readiness are the caller's
// to wait for); on error everything started is stopped. The host's mount
// points must exist (EnsureMountPoints).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n := &Node{cfg: cfg, cgroupRoot: cfg.CgroupRoot, log: cfg.Log.With("node", cfg.Name)}
	if n.cgroupRoot == "" {
		n.cgroupRoot = "/tern-node-" + cfg.Name
	}
	if err := n.start(ctx); err != nil {
		n.Stop()
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	for _, p := range append(MountPoints, lockFile) {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("mount point: %w (EnsureMountPoints creates it)", err)
		}
	}
	if err := n.prepare(); err != nil {
		return err
	}
	if err := n.startHolder(ctx); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.cgroupRoot); err != nil {
		return err
	}
	var err error
	n.containerd, err = n.spawn("containerd", n.bin("containerd"), "--config", n.path("containerd.toml"))
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, n.containerd, func() bool { return n.ctr("version") == nil }); err != nil {
		return fmt.Errorf("containerd did not answer: %w (log: %s)", err, n.Log("containerd"))
	}
	for _, img := range n.cfg.Images {
		if err := n.ctr("--namespace", "k8s.io", "images", "import", "--no-unpack=false", img); err != nil {
			return fmt.Errorf("importing %s: %w", img, err)
		}
	}
	if err := n.startKubelet(ctx); err != nil {
		return err
	}
	if n.cfg.ProxyKubeconfig == "" {
		return nil
	}
	n.proxy, err = n.spawn("kube-proxy", filepath.Join(n.cfg.KubeBin, "kube-proxy"), "--config", n.path("kube-proxy.yaml"), "-v", "1")
	if err != nil {
		return err
	}
	// Healthy once it has programmed its rules; on a loaded 2-core machine
	// with several nodes starting that can take tens of seconds.
	err = waitFor(ctx, 60*time.Second, n.proxy, func() bool {
		return n.inNode("curl", "-sf", "--max-time", "1", "http://127.0.0.1:10256/healthz").Run() == nil
	})
	if err != nil {
		return fmt.Errorf("kube-proxy not healthy: %w (log: %s; it ends:\n%s)", err, n.Log("kube-proxy"), logTail(n.Log("kube-proxy"), 3000))
	}
	return nil
}

// startKubelet starts the kubelet and waits until it is healthy.
func (n *Node) startKubelet(ctx context.Context) error {
	args := []string{"--config", n.path("kubelet.yaml"), "--kubeconfig", n.cfg.Kubeconfig,
		"--hostname-override", n.cfg.Name, "--node-ip", n.cfg.nodeIPList(),
		"-v", strconv.Itoa(n.cfg.Verbosity)}
	var err error
	n.kubelet, err = n.spawn("kubelet", filepath.Join(n.cfg.KubeBin, "kubelet"), args...)
	if err != nil {
		return err
	}
	// Running means its health endpoint answers (inside the node's namespace).
	err = waitFor(ctx, 60*time.Second, n.kubelet, func() bool {
		out, err := n.inNode("curl", "-sf", "--max-time", "1", "http://127.0.0.1:10248/healthz").Output()
		return err == nil && string(out) == "ok"
	})
	if err != nil {
		return fmt.Errorf("kubelet not healthy: %w (log: %s)", err, n.Log("kubelet"))
	}
	return nil
}

// RestartKubelet stops the kubelet (SIGTERM, as a service manager does; its
// pods keep running) and starts it again, returning once it is healthy.
func (n *Node) RestartKubelet(ctx context.Context) error {
	n.kubelet.stop(10 * time.Second)
	return n.startKubelet(ctx)
}

// prepare writes the node's directories and configuration.
func (n *Node) prepare() error {
	for _, p := range MountPoints {
		if err := os.MkdirAll(n.HostPath(p), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(n.HostPath(lockFile), nil, 0o600); err != nil {
		return err
	}
	files := map[string]string{
		"containerd.toml": containerdConfig(n.bin("runc"), n.cfg.PauseImage),
		"kubelet.yaml":    kubeletConfig(n.cfg, n.cgroupRoot, n.cfg.ClientCA, n.path("resolv.conf")),
		"resolv.conf":     resolvConf(n.cfg.ClusterDNS, n.cfg.clusterDomain()),
	}
	if n.cfg.ProxyKubeconfig != "" {
		files["kube-proxy.yaml"] = proxyConfig(n.cfg)
	}
	for name, content := range files {
		if err := os.WriteFile(n.path(name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	for dst, src := range n.cfg.Install {
		if err := copyFile(src, n.HostPath(dst)); err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
	}
	return nil
}

// copyFile copies src to dst (its directory made), with src's mode.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, st.Mode().Perm())
}

// holderScript runs in the new mount namespace (a slave of the host's, so
// nothing mounted in it reaches the host): the node's directories over the
// mount points, the tree made shared (kubelet's volumes need propagation, as
// on any node), then it waits, holding the namespace, until killed.
func (n *Node) holderScript() string {
	var b strings.Builder
	b.WriteString("set -e\n")
	for _, p := range append(MountPoints, lockFile) {
		fmt.Fprintf(&b, "mount --bind %q %q\n", n.HostPath(p), p)
	}
	b.WriteString("mount --make-rshared /\necho ready\nexec sleep infinity\n")
	return b.String()
}

func (n *Node) startHolder(ctx context.Context) error {
	cmd := exec.Command("nsenter", "--net="+n.cfg.NetNS, "--",
		"unshare", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", n.holderScript())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	logf, err := os.Create(n.path("holder.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if n.holder, err = startProc("mount namespace", cmd); err != nil {
		return err
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			b, _ := os.ReadFile(n.path("holder.log"))
			return fmt.Errorf("mount namespace: %v: %s", err, strings.TrimSpace(string(b)))
		}
	case <-n.holder.done:
		b, _ := os.ReadFile(n.path("holder.log"))
		return fmt.Errorf("mount namespace: exited: %s", strings.TrimSpace(string(b)))
	case <-time.After(10 * time.Second):
		return errors.New("mount namespace: not ready in 10 s")
	case <-ctx.Done():
		return ctx.Err()
	}
	n.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	return err
}

// Command is a command in the node's network and mount namespaces, as a
// process of the node's host would run.
func (n *Node) Command(name string, args ...string) *exec.Cmd { return n.inNode(name, args...) }

// inNode is a command in the node's network and mount namespaces.
func (n *Node) inNode(name string, args ...string) *exec.Cmd {
	pid := strconv.Itoa(n.holder.cmd.Process.Pid)
	cmd := exec.Command("nsenter", append([]string{"--target", pid, "--mount", "--net", "--", name}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+n.cfg.NodeBin+":"+os.Getenv("PATH"))
	return cmd
}

// spawn starts a daemon of the node, its output in Dir/<name>.log.
func (n *Node) spawn(name, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(n.Log(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := n.inNode(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := startProc(name, cmd)
	if err != nil {
		return nil, err
	}
	n.log.Info("started", "process", name, "pid", cmd.Process.Pid)
	return p, nil
}

// ctr runs containerd's ctr against the node's containerd.
func (n *Node) ctr(args ...string) error {
	cmd := exec.Command(n.bin("ctr"), append([]string{"--address", n.HostPath("/run/containerd/containerd.sock")}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *Node) bin(name string) string  { return filepath.Join(n.cfg.NodeBin, name) }
func (n *Node) path(name string) string { return filepath.Join(n.cfg.Dir, name) }

// Log is the path of the log of one of the node's daemons: containerd,
// kubelet.
func (n *Node) Log(name string) string { return n.path(name + ".log") }

// logTail is the last max bytes of the log at path, for an error that must
// outlive the node's directory.
func logTail(path string, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// KubeletPID is the kubelet's process ID.
func (n *Node) KubeletPID() int { return n.kubelet.cmd.Process.Pid }

// MountNamespace names the node's mount namespace (as /proc/PID/ns/mnt
// reads, e.g. mnt:[4026532290]).
func (n *Node) MountNamespace() string { return n.mntNS }

// CgroupRoot is the kubelet's cgroup root (in every cgroup hierarchy).
func (n *Node) CgroupRoot() string { return n.cgroupRoot }

// waitFor polls cond every 50 ms until it holds, p exits, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *proc, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PodNetNS is the network namespace of pod namespace/name on this node, as
// /proc/PID/ns/net of its sandbox (the pod's namespace file itself is
// mounted in the node's mount namespace only), asked of containerd's CRI.
func (n *Node) PodNetNS(namespace, name string) (string, error) {
	crictl := func(args ...string) ([]byte, error) {
		cmd := exec.Command(n.bin("crictl"), append([]string{"--runtime-endpoint", "unix://" + n.HostPath("/run/containerd/containerd.sock"), "--timeout", "5s"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
			}
			return nil, fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
		}
		return out, nil
	}
	out, err := crictl("pods", "--namespace", namespace, "--name", "^"+regexp.QuoteMeta(name)+"$", "--state", "ready", "-o", "json")
	if err != nil {
		return "", err
	}
	var pods struct {
		Items []struct{ ID string }
	}
	if err := json.Unmarshal(out, &pods); err != nil {
		return "", fmt.Errorf("crictl pods: %w", err)
	}
	if len(pods.Items) != 1 {
		return "", fmt.Errorf("pod %s/%s: %d ready sandboxes on %s", namespace, name, len(pods.Items), n.cfg.Name)
	}
	out, err = crictl("inspectp", "-o", "json", pods.Items[0].ID)
	if err != nil {
		return "", err
	}
	var sb struct {
		Info struct{ PID int }
	}
	if err := json.Unmarshal(out, &sb); err != nil || sb.Info.PID == 0 {
		return "", fmt.Errorf("crictl inspectp %s: no sandbox PID (%v)", pods.Items[0].ID, err)
	}
	return fmt.Sprintf("/proc/%d/ns/net", sb.Info.PID), nil
}

// StopKubelet stops the kubelet (its pods keep running), as when a node is
// being taken out of the cluster.
func (n *Node) StopKubelet() { n.kubelet.stop(10 * time.Second) }

// PIDsOf are the processes named comm (as /proc/PID/comm says) in the
// node's network namespace: a host-network pod's processes, such as
// tern-agent's.
func (n *Node) PIDsOf(comm string) []int {
	var st syscall.Stat_t
	if err := syscall.Stat(n.cfg.NetNS, &st); err != nil {
		return nil
	}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		var ps syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &ps) == nil && ps.Ino == st.Ino && ps.Dev == st.Dev && !zombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
