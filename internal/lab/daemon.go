package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/kubeconf"
)

// Config says where a lab lives and what it runs.
type Config struct {
	Options
	Dir    string `json:"dir"`    // state, logs, the control plane's data
	Prefix string `json:"prefix"` // of every network namespace the lab makes
	BinDir string `json:"binDir"` // tern-agent, tern (the CNI plugin), ternctl
	Root   string `json:"root"`   // tern's source tree: hack/kube-env.sh, manifests/
	// ExtraAgentArgs are added to every agent's command line.
	ExtraAgentArgs []string `json:"extraAgentArgs,omitempty"`
}

// Lab phases.
const (
	PhaseStarting = "starting"
	PhaseReady    = "ready"
	PhaseStopping = "stopping"
	PhaseFailed   = "failed"
)

// State is what the daemon reports, and what it leaves on disk (state.json)
// so that a later `up` or `down` can clean up after a crash.
type State struct {
	PID        int           `json:"pid"`
	Phase      string        `json:"phase"`
	Error      string        `json:"error,omitempty"`
	Config     Config        `json:"config"`
	Kubeconfig string        `json:"kubeconfig"`
	KubeDir    string        `json:"kubeDir"`
	Nodes      []NodeState   `json:"nodes"`
	Routers    []RouterState `json:"routers"`
	Namespaces []string      `json:"namespaces"` // shared segments
	Timings    Timings       `json:"timings"`
}

// Timings are when the daemon's `up` passed its milestones (zero until it
// has): figures for the lab benchmark and for anyone timing a lab, read from
// `tern-lab status -o json` rather than from the log's wording.
type Timings struct {
	Up             time.Time            `json:"up,omitzero"`             // `up` began
	KubeEnvUp      time.Duration        `json:"kubeEnvUp,omitempty"`     // hack/kube-env.sh up alone (nanoseconds)
	ControlPlaneUp time.Time            `json:"controlPlaneUp,omitzero"` // the control plane serves, CRDs installed
	NodesStarted   map[string]time.Time `json:"nodesStarted,omitempty"`  // each node's agent started
	Ready          time.Time            `json:"ready,omitzero"`          // converged: every agent ready, every route in
}

// NodeState is one node as running.
type NodeState struct {
	Node
	NetNS    string `json:"netns"`
	Dir      string `json:"dir"`
	Socket   string `json:"socket"` // the agent's API socket
	AgentPID int    `json:"agentPID"`
	Restarts int    `json:"agentRestarts"`
}

// RouterState is one router as running.
type RouterState struct {
	Router
	NetNS string `json:"netns"`
	Dir   string `json:"dir"`
	PIDs  []int  `json:"pids"`
}

type labNode struct {
	Node
	netns, dir string
	agent      *proc
	kubelet    *kubelet
	cancel     context.CancelFunc
	fwd        net.Listener
}

type labRouter struct {
	Router
	netns, dir string
	procs      []*proc
}

type daemon struct {
	cfg     Config
	log     *slog.Logger
	client  kubernetes.Interface
	kubeDir string
	admin   string // admin kubeconfig
	api     string // host:port of the API server
	token   string // tern-agent's ServiceAccount token
	kubectl string

	mu      sync.Mutex
	phase   string
	timings Timings
	err     string
	nodes   map[string]*labNode
	routers []*labRouter
	shared  []string // namespaces of the segments
	next    int      // next node number
	rr      int      // round-robin position of the scheduler
	down    chan struct{}
	stopped sync.Once
	ctx     context.Context // the daemon's life: the kubelets of added nodes run in it
}

// frrRoot holds the FRR routers' runtime directories.
const frrRoot = "/run/tern-lab-frr"

// StatePath, SocketPath, LogPath: the lab's files in dir.
func StatePath(dir string) string  { return filepath.Join(dir, "state.json") }
func SocketPath(dir string) string { return filepath.Join(dir, "lab.sock") }
func LogPath(dir string) string    { return filepath.Join(dir, "lab.log") }

// RunDaemon brings the lab up and supervises it until `down` or a signal.
func RunDaemon(cfg Config, log *slog.Logger) error {
	d := &daemon{cfg: cfg, log: log, phase: PhaseStarting, nodes: map[string]*labNode{}, next: 1, down: make(chan struct{})}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	d.writeState()
	srv, err := d.serveControl()
	if err != nil {
		return err
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.ctx = ctx
	upErr := make(chan error, 1)
	go func() { upErr <- d.up(ctx) }()
	for {
		select {
		case err := <-upErr:
			if err != nil {
				d.setPhase(PhaseFailed, err.Error())
				log.Error("lab failed to come up", "err", err)
				cancel()
				d.teardown()
				return err
			}
			d.mark(func(t *Timings) { t.Ready = time.Now() })
			d.setPhase(PhaseReady, "")
			log.Info("lab ready", "nodes", len(d.nodes), "kubeconfig", d.admin)
			upErr = nil
		case s := <-sigs:
			log.Info("stopping", "signal", s.String())
			cancel()
			d.teardown()
			return nil
		case <-d.down:
			log.Info("stopping: tern-lab down")
			cancel()
			d.teardown()
			return nil
		}
	}
}

// mark records a milestone in the lab's timings.
func (d *daemon) mark(f func(*Timings)) {
	d.mu.Lock()
	f(&d.timings)
	d.mu.Unlock()
}

func (d *daemon) setPhase(p, err string) {
	d.mu.Lock()
	d.phase, d.err = p, err
	d.mu.Unlock()
	d.writeState()
}

// up starts everything in order and waits until the lab has converged.
func (d *daemon) up(ctx context.Context) error {
	t0 := time.Now()
	d.mark(func(t *Timings) { t.Up = t0 })
	if err := d.startControlPlane(ctx); err != nil {
		return err
	}
	d.mark(func(t *Timings) { t.ControlPlaneUp = time.Now() })
	d.writeState()
	d.log.Info("control plane up", "took", time.Since(t0).Round(time.Millisecond))
	if err := d.installPlugin(); err != nil {
		return err
	}
	if err := d.startNetwork(); err != nil {
		return err
	}
	var initial []Node
	for i := 0; i < d.cfg.Nodes; i++ {
		initial = append(initial, d.cfg.PlanNode(d.next+i, 0))
	}
	if err := d.startRouters(initial); err != nil {
		return err
	}
	go d.schedule(ctx)
	errs := make(chan error, len(initial))
	for _, n := range initial {
		d.next++
		go func() { errs <- d.addNode(ctx, n) }()
	}
	for range initial {
		if err := <-errs; err != nil {
			return err
		}
	}
	return d.waitConverged(ctx, time.Minute+time.Duration(d.cfg.Nodes)*3*time.Second)
}

func (d *daemon) script(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(d.cfg.Root, "hack", "kube-env.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "TERN_KUBE_WATCH_PID="+strconv.Itoa(os.Getpid()))
	var stderr bytes.Buffer
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/kube-env.sh %s: %w: %s", strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (d *daemon) startControlPlane(ctx context.Context) error {
	if _, err := d.script("build"); err != nil {
		return err
	}
	bindir, err := d.script("bindir")
	if err != nil {
		return err
	}
	d.kubectl = filepath.Join(bindir, "kubectl")
	d.kubeDir = filepath.Join(d.cfg.Dir, "kube")
	if err := os.MkdirAll(d.kubeDir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	kc, err := d.script("up", d.kubeDir)
	if err != nil {
		return err
	}
	d.mark(func(t *Timings) { t.KubeEnvUp = time.Since(t0) })
	b, err := os.ReadFile(kc)
	if err != nil {
		return err
	}
	d.admin = filepath.Join(d.cfg.Dir, "kubeconfig")
	if err := os.WriteFile(d.admin, b, 0o600); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", d.admin)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 100, 200
	if d.client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	d.api = strings.TrimPrefix(rc.Host, "https://")
	d.writeState()
	for _, f := range []string{"00-namespace.yaml", "01-crds.yaml", "02-rbac.yaml"} {
		if out, err := d.kubectlRun("", "apply", "-f", filepath.Join(d.cfg.Root, "manifests", f)); err != nil {
			return fmt.Errorf("kubectl apply %s: %w: %s", f, err, out)
		}
	}
	if out, err := d.kubectlRun("", "wait", "--for=condition=Established", "--timeout=60s", "crd/bgpconfigurations.tern.io", "crd/bgppeers.tern.io"); err != nil {
		return fmt.Errorf("CRDs not established: %w: %s", err, out)
	}
	if out, err := d.kubectlRun(d.cfg.BGPObjects(), "apply", "-f", "-"); err != nil {
		return fmt.Errorf("apply the lab's BGP objects: %w: %s", err, out)
	}
	sas := d.client.CoreV1().ServiceAccounts("tern-system")
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "tern-agent"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account tern-system/tern-agent: %w", err)
	}
	tr, err := sas.CreateToken(ctx, "tern-agent", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](30 * 24 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for tern-system/tern-agent: %w", err)
	}
	d.token = tr.Status.Token
	return nil
}

func (d *daemon) kubectlRun(stdin string, args ...string) (string, error) {
	cmd := exec.Command(d.kubectl, append([]string{"--kubeconfig", d.admin}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// installPlugin installs the CNI plugin as the DaemonSet does: bin/tern-cni
// as "tern" in the directory the runtime searches.
func (d *daemon) installPlugin() error {
	src, err := os.ReadFile(filepath.Join(d.cfg.BinDir, "tern-cni"))
	if errors.Is(err, os.ErrNotExist) {
		src, err = os.ReadFile(filepath.Join(d.cfg.BinDir, "tern")) // already under its installed name
	}
	if err != nil {
		return fmt.Errorf("the CNI plugin (build it with make build): %w", err)
	}
	dir := filepath.Join(d.cfg.Dir, "cni-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".tern.tmp")
	if err := os.WriteFile(tmp, src, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "tern"))
}

// startNetwork makes the shared segments: the routers' spine, or with no
// routers the one segment of all nodes.
func (d *daemon) startNetwork() error {
	name := d.cfg.Prefix + "-spine"
	if d.cfg.Router == RouterNone {
		name = d.cfg.Prefix + "-fabric"
	}
	if err := addNS(name); err != nil {
		return err
	}
	d.mu.Lock()
	d.shared = append(d.shared, name)
	d.mu.Unlock()
	if err := ip(name, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	return ip(name, "link", "set", "br0", "up")
}

func (d *daemon) startRouters(initial []Node) error {
	all := d.cfg.Routers()
	for _, r := range all {
		lr := &labRouter{Router: r, netns: fmt.Sprintf("%s-tor%d", d.cfg.Prefix, r.Rack), dir: filepath.Join(d.cfg.Dir, fmt.Sprintf("tor%d", r.Rack))}
		if r.Kind == RouterFRR {
			// FRR drops to user frr, which must reach its directory: the lab's
			// may sit under a private one (a test's temporary directory).
			lr.dir = filepath.Join(frrRoot, fmt.Sprintf("%s-tor%d", d.cfg.Prefix, r.Rack))
			_ = os.RemoveAll(lr.dir)
			if err := os.MkdirAll(frrRoot, 0o755); err != nil {
				return err
			}
		}
		d.mu.Lock()
		d.routers = append(d.routers, lr)
		d.mu.Unlock()
		if err := addNS(lr.netns); err != nil {
			return err
		}
		steps := [][]string{
			{"link", "add", "br0", "type", "bridge"},
			{"addr", "add", netip.PrefixFrom(r.Address, 24).String(), "dev", "br0"},
			{"link", "set", "br0", "up"},
		}
		for _, s := range steps {
			if err := ip(lr.netns, s...); err != nil {
				return err
			}
		}
		spine := d.cfg.Prefix + "-spine"
		port := fmt.Sprintf("tor%d", r.Rack)
		if err := veth(spine, port, lr.netns, "spine"); err != nil {
			return err
		}
		for _, s := range [][]string{{"link", "set", port, "master", "br0", "up"}} {
			if err := ip(spine, s...); err != nil {
				return err
			}
		}
		for _, s := range [][]string{{"addr", "add", netip.PrefixFrom(r.Spine, 24).String(), "dev", "spine"}, {"link", "set", "spine", "up"}} {
			if err := ip(lr.netns, s...); err != nil {
				return err
			}
		}
		if _, err := inNS(lr.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
		procs, err := startRouter(d.log, r, all, d.cfg.RouterNodes(r, initial), lr.netns, lr.dir)
		if err != nil {
			return err
		}
		d.mu.Lock()
		lr.procs = procs
		d.mu.Unlock()
	}
	d.writeState()
	return nil
}

// addNode creates node n's namespace and link, registers it, and starts its
// agent and kubelet.
func (d *daemon) addNode(ctx context.Context, n Node) error {
	ln := &labNode{Node: n, netns: fmt.Sprintf("%s-%s", d.cfg.Prefix, n.Name), dir: filepath.Join(d.cfg.Dir, "nodes", n.Name)}
	d.mu.Lock()
	d.nodes[n.Name] = ln
	d.mu.Unlock()
	if err := os.MkdirAll(ln.dir, 0o755); err != nil {
		return err
	}
	if err := addNS(ln.netns); err != nil {
		return err
	}
	// The node's link: into its rack's bridge (in the ToR's namespace), or
	// into the shared segment.
	seg, port := d.cfg.Prefix+"-fabric", fmt.Sprintf("n%d", n.Number)
	if n.Rack > 0 {
		seg = fmt.Sprintf("%s-tor%d", d.cfg.Prefix, n.Rack)
	}
	if err := veth(seg, port, ln.netns, "eth0"); err != nil {
		return err
	}
	if err := ip(seg, "link", "set", port, "master", "br0", "up"); err != nil {
		return err
	}
	steps := [][]string{{"addr", "add", netip.PrefixFrom(n.Address, 24).String(), "dev", "eth0"}, {"link", "set", "eth0", "up"}}
	if n.Gateway.IsValid() {
		steps = append(steps, []string{"route", "add", "default", "via", n.Gateway.String()})
	}
	for _, s := range steps {
		if err := ip(ln.netns, s...); err != nil {
			return err
		}
	}
	fwd, err := forward(ln.netns, "127.0.0.1:6443", d.api)
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
	if d.timings.NodesStarted == nil {
		d.timings.NodesStarted = map[string]time.Time{}
	}
	d.timings.NodesStarted[n.Name] = time.Now()
	d.mu.Unlock()
	d.writeState()
	d.log.Info("node started", "node", n.Name, "rack", n.Rack, "address", n.Address, "as", n.AS, "reflector", n.Reflector)
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

// forward listens on addr inside netns and forwards each connection to
// target in the daemon's own namespace (the API server on the host's
// loopback): the agents reach the API without any address or route in the
// host's namespace.
func forward(netns, addr, target string) (net.Listener, error) {
	h, err := ns.GetNS(NSPath(netns))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var ln net.Listener
	if err := h.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, netns, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				Pipe(c, up)
			}()
		}
	}()
	return ln, nil
}

// Pipe copies both ways between a and b until both directions are done
// (each half-closed in turn), then closes both.
func Pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
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
	err := d.client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	c := agentapi.NewClient(filepath.Join(ln.dir, "run", "cni.sock"), 2*time.Second)
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

// reconfigureRouters updates rack's router after node n came (added) or went.
func (d *daemon) reconfigureRouters(rack int, n Node, added bool) error {
	d.mu.Lock()
	var nodes []Node
	for _, ln := range d.nodes {
		nodes = append(nodes, ln.Node)
	}
	routers := slices.Clone(d.routers)
	d.mu.Unlock()
	before := slices.DeleteFunc(slices.Clone(nodes), func(x Node) bool { return x.Name == n.Name })
	if !added {
		before = append(before, n)
	}
	all := d.cfg.Routers()
	for _, lr := range routers {
		if lr.Rack != rack {
			continue
		}
		if err := reconfigureRouter(lr.Router, all, d.cfg.RouterNodes(lr.Router, nodes), d.cfg.RouterNodes(lr.Router, before), lr.netns, lr.dir); err != nil {
			return err
		}
	}
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
	if err := d.addNode(ctx, n); err != nil {
		return n, err
	}
	return n, d.reconfigureRouters(n.Rack, n, true)
}

// schedule binds pods that name no node to a lab node, round-robin among the
// nodes whose labels match the pod's nodeSelector.
func (d *daemon) schedule(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName="})
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
				continue
			}
			if err := d.bind(ctx, p); err != nil {
				d.log.Warn("cannot schedule pod", "pod", p.Namespace+"/"+p.Name, "err", err)
			}
		}
		w.Stop()
	}
}

func (d *daemon) bind(ctx context.Context, p *corev1.Pod) error {
	d.mu.Lock()
	var names []string
	for name, ln := range d.nodes {
		ok := true
		for k, v := range p.Spec.NodeSelector {
			if nodeLabel(ln.Node, k) != v {
				ok = false
			}
		}
		if ok && ln.agent != nil {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return d.nodes[a].Number - d.nodes[b].Number })
	if len(names) == 0 {
		d.mu.Unlock()
		return errNoNodes
	}
	node := names[d.rr%len(names)]
	d.rr++
	d.mu.Unlock()
	return d.client.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID},
		Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{})
}

func nodeLabel(n Node, key string) string {
	switch key {
	case "kubernetes.io/hostname":
		return n.Name
	case LabelRack:
		return fmt.Sprint(n.Rack)
	case LabelReflector:
		if n.Reflector {
			return "true"
		}
	}
	return ""
}

// waitConverged waits until every agent is ready and every node has every
// other node's pod CIDR installed.
func (d *daemon) waitConverged(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := d.converged(ctx)
		if ok {
			return nil
		}
		if why != last {
			d.log.Info("waiting", "for", why)
			last = why
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not converged after %s: %s%s", timeout, why, d.crashing())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// crashing describes the routers' and agents' processes that keep restarting.
func (d *daemon) crashing() string {
	d.mu.Lock()
	var procs []*proc
	for _, lr := range d.routers {
		procs = append(procs, lr.procs...)
	}
	for _, ln := range d.nodes {
		if ln.agent != nil {
			procs = append(procs, ln.agent)
		}
	}
	d.mu.Unlock()
	var b strings.Builder
	for _, p := range procs {
		p.mu.Lock()
		n := p.restarts
		p.mu.Unlock()
		if n > 0 {
			log, _ := os.ReadFile(p.logPath)
			fmt.Fprintf(&b, "\n%s restarted %d times; the end of %s:\n%s", p.name, n, p.logPath, tail(string(log), 600))
		}
	}
	return b.String()
}

// converged reports whether the lab is fully up, and if not, why.
func (d *daemon) converged(ctx context.Context) (bool, string) {
	d.mu.Lock()
	nodes := make([]*labNode, 0, len(d.nodes))
	for _, ln := range d.nodes {
		nodes = append(nodes, ln)
	}
	d.mu.Unlock()
	cidrs := map[string]string{}
	for _, ln := range nodes {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := agentapi.NewClient(filepath.Join(ln.dir, "run", "cni.sock"), 2*time.Second).Status(cctx)
		cancel()
		if err != nil || !st.Ready || len(st.PodCIDRs) == 0 {
			return false, fmt.Sprintf("the agent of %s to be ready", ln.Name)
		}
		cidrs[ln.Name] = st.PodCIDRs[0].String()
	}
	for _, ln := range nodes {
		have, err := installedRoutes(ln.netns)
		if err != nil {
			return false, err.Error()
		}
		for other, c := range cidrs {
			if other != ln.Name && !have[c] {
				return false, fmt.Sprintf("%s to have %s's pod CIDR %s", ln.Name, other, c)
			}
		}
	}
	return true, ""
}

// installedRoutes lists the destinations of tern's routes in netns.
func installedRoutes(netns string) (map[string]bool, error) {
	out, err := inNS(netns, "ip", "-4", "route", "show", "proto", "96")
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 {
			have[f[0]] = true
		}
		if len(f) > 1 && f[0] == "blackhole" {
			have[f[1]] = true
		}
	}
	return have, nil
}

// State returns the lab's state.
func (d *daemon) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := State{PID: os.Getpid(), Phase: d.phase, Error: d.err, Config: d.cfg, Kubeconfig: d.admin, KubeDir: d.kubeDir, Namespaces: slices.Clone(d.shared),
		Timings: d.timings}
	s.Timings.NodesStarted = maps.Clone(d.timings.NodesStarted)
	for _, ln := range d.nodes {
		ns := NodeState{Node: ln.Node, NetNS: ln.netns, Dir: ln.dir, Socket: filepath.Join(ln.dir, "run", "cni.sock")}
		if ln.agent != nil {
			ns.AgentPID = ln.agent.PID()
			ln.agent.mu.Lock()
			ns.Restarts = ln.agent.restarts
			ln.agent.mu.Unlock()
		}
		s.Nodes = append(s.Nodes, ns)
	}
	slices.SortFunc(s.Nodes, func(a, b NodeState) int { return a.Number - b.Number })
	for _, lr := range d.routers {
		rs := RouterState{Router: lr.Router, NetNS: lr.netns, Dir: lr.dir}
		for _, p := range lr.procs {
			rs.PIDs = append(rs.PIDs, p.PID())
		}
		s.Routers = append(s.Routers, rs)
	}
	return s
}

// writeState records the state on disk for `down` and for cleanup after a crash.
func (d *daemon) writeState() {
	b, _ := json.MarshalIndent(d.State(), "", "  ")
	tmp := StatePath(d.cfg.Dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		_ = os.Rename(tmp, StatePath(d.cfg.Dir))
	}
}

// Pods lists the pods the lab's kubelets run.
func (d *daemon) Pods() []PodInfo {
	d.mu.Lock()
	var ks []*kubelet
	for _, ln := range d.nodes {
		if ln.kubelet != nil {
			ks = append(ks, ln.kubelet)
		}
	}
	d.mu.Unlock()
	var out []PodInfo
	for _, k := range ks {
		out = append(out, k.Pods()...)
	}
	slices.SortFunc(out, func(a, b PodInfo) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// teardown stops everything the daemon started and removes every namespace.
func (d *daemon) teardown() {
	d.stopped.Do(func() {
		d.setPhase(PhaseStopping, d.err)
		d.mu.Lock()
		nodes := make([]*labNode, 0, len(d.nodes))
		for _, ln := range d.nodes {
			nodes = append(nodes, ln)
		}
		routers := d.routers
		shared := d.shared
		d.mu.Unlock()
		var wg sync.WaitGroup
		for _, ln := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ln.cancel != nil {
					ln.cancel()
				}
				if ln.agent != nil {
					ln.agent.stop(5 * time.Second)
				}
				if ln.fwd != nil {
					ln.fwd.Close()
				}
				if ln.kubelet != nil {
					ln.kubelet.stopPods()
				}
				if err := delNS(ln.netns); err != nil {
					d.log.Warn("remove namespace", "err", err)
				}
			}()
		}
		wg.Wait()
		for _, lr := range routers {
			for _, p := range lr.procs {
				p.stop(3 * time.Second)
			}
			if err := delNS(lr.netns); err != nil {
				d.log.Warn("remove namespace", "err", err)
			}
		}
		for _, s := range shared {
			if err := delNS(s); err != nil {
				d.log.Warn("remove namespace", "err", err)
			}
		}
		// Anything else with the lab's prefix (a pod namespace mid-setup).
		for _, s := range labNamespaces(d.cfg.Prefix) {
			_ = delNS(s)
		}
		if d.kubeDir != "" {
			if _, err := d.script("down", d.kubeDir); err != nil {
				d.log.Warn("control plane down", "err", err)
			}
		}
		for _, lr := range routers {
			if strings.HasPrefix(lr.dir, frrRoot+"/") {
				_ = os.RemoveAll(lr.dir)
			}
		}
		_ = os.Remove(StatePath(d.cfg.Dir))
		d.log.Info("lab down")
	})
}

// serveControl serves the CLI's requests on the lab's unix socket.
func (d *daemon) serveControl() (*http.Server, error) {
	path := SocketPath(d.cfg.Dir)
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) { reply(w, d.State(), nil) })
	mux.HandleFunc("GET /pods", func(w http.ResponseWriter, r *http.Request) { reply(w, d.Pods(), nil) })
	mux.HandleFunc("POST /nodes", func(w http.ResponseWriter, r *http.Request) {
		rack, _ := strconv.Atoi(r.URL.Query().Get("rack"))
		if d.State().Phase != PhaseReady {
			reply(w, nil, errors.New("the lab is not ready"))
			return
		}
		n, err := d.AddNode(r.Context(), rack)
		reply(w, n, err)
	})
	mux.HandleFunc("DELETE /nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := d.removeNode(r.Context(), r.PathValue("name"))
		reply(w, map[string]string{"removed": r.PathValue("name")}, err)
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"stopping": "true"}, nil)
		go func() {
			time.Sleep(100 * time.Millisecond)
			d.mu.Lock()
			select {
			case <-d.down:
			default:
				close(d.down)
			}
			d.mu.Unlock()
		}()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}
