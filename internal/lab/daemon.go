// The lab daemon: its configuration and state, RunDaemon, and bringing
// the lab up and tearing it down.

package lab

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/tern-net/tern/internal/kubenode"
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
	// MountPoints are what a lab of real nodes created on the host
	// (kubenode.EnsureMountPoints), removed at down.
	MountPoints []string `json:"mountPoints,omitempty"`
	// Tunables are the host's kernel tunables before the lab's kubelets
	// changed them, written back at down (or by the next up after a crash).
	Tunables map[string]string `json:"tunables,omitempty"`
	Timings  Timings           `json:"timings"`
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
	NetNS       string `json:"netns"`
	ClientNetNS string `json:"clientNetns"` // the host behind the router
	Dir         string `json:"dir"`
	PIDs        []int  `json:"pids"`
}

type labNode struct {
	Node
	netns, dir string
	agent      *proc
	kubelet    *kubelet
	real       *kubenode.Node // a real node's kubelet, containerd, kube-proxy
	cancel     context.CancelFunc
	fwd        net.Listener
}

type labRouter struct {
	Router
	netns, dir string
	client     string // the namespace of the host behind it
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

	// Real nodes.
	parts       realParts
	cpNetNS     string            // the control plane's namespace
	cpFwd       net.Listener      // the host's way to the API server
	apiNodes    string            // the API server's URL as nodes reach it
	mountPoints []string          // created on the host by kubenode.EnsureMountPoints
	tunables    map[string]string // the host's kernel tunables as they were
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
	if d.cfg.Real {
		return d.upReal(ctx)
	}
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
	return d.waitConverged(ctx, time.Minute+time.Duration(d.cfg.Nodes)*3*time.Second, d.converged)
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
				d.stopRealNode(ln)
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
		d.afterRealTeardown()
		_ = os.Remove(StatePath(d.cfg.Dir))
		d.log.Info("lab down")
	})
}
