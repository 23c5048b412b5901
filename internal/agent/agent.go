// Package agent wires tern-agent together: the IPAM store and its socket API for
// the CNI plugin, and the single reconcile loop that writes the node dataplane.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/ipam"
	"github.com/tern-net/tern/policy"
)

// Config is the agent's configuration, from flags.
type Config struct {
	NodeName     string
	PodCIDRs     []netip.Prefix
	ClusterCIDRs []netip.Prefix
	StateDir     string
	RunDir       string
	// NATOutgoing masquerades IPv4 pod traffic leaving ClusterCIDRs,
	// NATOutgoingIPv6 IPv6 pod traffic (off by default: see
	// dataplane.NodeConfig).
	NATOutgoing     bool
	NATOutgoingIPv6 bool
	Resync          time.Duration
	// GCMinAge spares allocations younger than this from CNI GC, so a GC that
	// races an ADD in flight does not release the new pod's address.
	GCMinAge time.Duration
	// PodReleaseGrace: the address of a pod that is gone from the API is
	// released after it has been missing this long (Kubernetes mode).
	PodReleaseGrace time.Duration
	// HealthAddr serves /healthz, /readyz and /metrics; empty: not served.
	HealthAddr string
	// Version is the agent's build version, for ternctl.
	Version string
	// BGP runs the speaker (Kubernetes mode).
	BGP bool
	// NetworkPolicy enforces Kubernetes NetworkPolicy (Kubernetes mode).
	NetworkPolicy bool
	// LogDrops logs packets that policy drops (NFLOG group 2500, rate-limited).
	LogDrops bool
}

// SocketPath is where the agent serves the CNI plugin.
func (c Config) SocketPath() string { return filepath.Join(c.RunDir, "cni.sock") }

// StorePath is the IPAM database.
func (c Config) StorePath() string { return filepath.Join(c.StateDir, "ipam.db") }

// Validate checks the configuration; withCluster says whether the pod CIDRs
// come from the Kubernetes API.
func (c Config) Validate(withCluster bool) error {
	if c.NodeName == "" {
		return errors.New("node name is empty: set --node-name or NODE_NAME")
	}
	if len(c.PodCIDRs) == 0 && !withCluster {
		return errors.New("no pod CIDR: set --pod-cidr (standalone) or run on Kubernetes")
	}
	if len(c.PodCIDRs) > 0 && withCluster {
		return errors.New("--pod-cidr is for standalone mode; on Kubernetes the node's spec.podCIDRs are used")
	}
	if c.StateDir == "" || c.RunDir == "" {
		return errors.New("--state-dir and --run-dir must not be empty")
	}
	return nil
}

// Agent is one node's tern-agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	ipam     *ipam.Allocator
	node     *dataplane.Node
	policyDP *dataplane.Policy
	cluster  Cluster // nil in standalone mode
	metrics  *metrics

	// Owned by the reconcile goroutine.
	runCtx           context.Context
	routing          routing
	api              apiCalls
	networkAvailable bool
	localNode        k8s.Node               // as read by this pass's clusterPools
	missing          map[ipam.Key]time.Time // allocations whose pod is gone, since
	releasedGone     atomic.Int64
	heartbeat        atomic.Int64 // unix nanoseconds of the loop's last pass

	trigger chan struct{} // a reconcile pass; requests coalesce
	// disposal wakes the reconcile goroutine to delete the veths of gone
	// pods (deleteVeths, hostveth.DeleteDisposed outside tests); requests
	// coalesce, and whatever is in hostveth.Group then goes in one request.
	disposal    chan struct{}
	deleteVeths func() (int, error)

	mu      sync.Mutex
	ready   bool
	lastErr error
	writes  uint64
	mtu     int // of the node's uplink, read at each reconcile
	bgpView agentapi.BGP
	ruleset *policy.Ruleset // last applied

	compiler policy.Compiler // the reconcile goroutine's
	// podWait bounds a CNI ADD's wait for its pod in the cache (0:
	// podCacheWait).
	podWait time.Duration

	passMu        sync.Mutex
	passesStarted uint64
	passesDone    uint64
	passErr       error         // of the last finished pass
	passCh        chan struct{} // closed at the end of each pass
}

// newAgent is an agent of cfg, not running yet.
func newAgent(cfg Config, cluster Cluster, alloc *ipam.Allocator, log *slog.Logger) *Agent {
	return &Agent{cfg: cfg, log: log, ipam: alloc, node: dataplane.NewNode(log), policyDP: dataplane.NewPolicy(log), cluster: cluster, passCh: make(chan struct{}),
		trigger: make(chan struct{}, 1), disposal: make(chan struct{}, 1), deleteVeths: hostveth.DeleteDisposed,
		missing: map[ipam.Key]time.Time{}, metrics: newMetrics()}
}

// Run starts the agent and blocks until ctx is done. Kernel state it wrote stays
// in place when it returns, so running pods are not disturbed by a restart.
func Run(ctx context.Context, cfg Config, cluster Cluster, log *slog.Logger) error {
	if err := cfg.Validate(cluster != nil); err != nil {
		return err
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.PodReleaseGrace <= 0 {
		cfg.PodReleaseGrace = time.Minute
	}
	store, err := ipam.OpenBoltStore(cfg.StorePath(), 10*time.Second)
	if err != nil {
		return err
	}
	defer store.Close()
	alloc, err := ipam.New(store, cfg.PodCIDRs)
	if err != nil {
		return err
	}
	a := newAgent(cfg, cluster, alloc, log)
	a.metrics.register(a)

	// The host's iptables backend (nft or legacy), as kube-proxy would use it.
	if b, err := dataplane.DetectBackend(); err != nil {
		log.Warn("iptables backend not detected; using the default iptables", "err", err)
	} else {
		a.node.UseBackend(b)
		a.policyDP.UseBackend(b)
		log.Info("iptables backend", "mode", b.String())
	}

	ln, err := listenUnix(cfg.SocketPath())
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	a.runCtx = ctx
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	srvErr := make(chan error, 2)
	go func() { srvErr <- srv.Serve(ln) }()
	if cfg.HealthAddr != "" {
		hln, err := net.Listen("tcp", cfg.HealthAddr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("health endpoint %s: %w", cfg.HealthAddr, err)
		}
		hsrv := &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { srvErr <- hsrv.Serve(hln) }()
		defer hsrv.Close()
		log.Info("health endpoints", "addr", hln.Addr().String())
	}
	if cluster != nil {
		if err := cluster.Start(ctx, a.Trigger); err != nil {
			return err
		}
	}
	log.Info("tern-agent started", "node", cfg.NodeName, "podCIDRs", cfg.PodCIDRs, "socket", cfg.SocketPath(),
		"allocations", len(alloc.List()))

	a.Trigger()
	loopDone := make(chan struct{})
	go func() { defer close(loopDone); a.reconcileLoop(ctx) }()

	select {
	case <-ctx.Done():
	case err = <-srvErr:
		err = fmt.Errorf("serve %s: %w", cfg.SocketPath(), err)
	}
	stop() // the loop ends with the server, whichever went first
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	<-loopDone
	log.Info("tern-agent stopped; routes and rules stay in place")
	return err
}

// dispose asks the reconcile goroutine, the one writer of kernel state, to
// delete the veths of gone pods. The plugin has put them into hostveth.Group,
// down (which removed their routes); until the goroutine gets to them they
// wait there, and a veth still in the group when the agent stops is deleted
// at its next start (and with its pod's namespace in any case).
func (a *Agent) dispose(links []hostveth.Link) {
	if len(links) == 0 {
		return
	}
	select {
	case a.disposal <- struct{}{}:
	default: // one is pending: it deletes these too
	}
}

// disposeIfReady deletes the veths of hostveth.Group on behalf of dispose,
// without a whole reconcile pass. It writes nothing before the agent is ready
// (the caches synced, the dataplane programmed): the first pass deletes them.
// Only the reconcile goroutine calls it.
func (a *Agent) disposeIfReady() {
	if ok, _ := a.readiness(); ok {
		a.deleteDisposed()
	}
}

// deleteDisposed deletes the veths of hostveth.Group. A request of dispose
// that came before it is answered by it. Only the reconcile goroutine calls it.
func (a *Agent) deleteDisposed() {
	select {
	case <-a.disposal:
	default:
	}
	if _, err := a.deleteVeths(); err != nil {
		a.log.Warn("delete veths of gone pods", "err", err)
	}
}

// Trigger asks the reconcile loop for a pass; requests coalesce.
func (a *Agent) Trigger() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// reconcileLoop is the one writer of the node's kernel state: the node
// dataplane, and the deletion of the veths of gone pods.
func (a *Agent) reconcileLoop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	backoff := time.Duration(0)
	resync := false // the periodic pass also reads back what drivers cache
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.disposal:
			a.disposeIfReady()
			continue
		case <-a.trigger:
		case <-tick.C:
			resync = true
		}
		t0 := time.Now()
		a.passStarted()
		err := a.reconcile(ctx, resync)
		resync = false
		a.passFinished(err)
		a.heartbeat.Store(time.Now().UnixNano())
		a.metrics.observe(time.Since(t0), err)
		a.mu.Lock()
		a.lastErr = err
		if err == nil && !a.ready {
			a.ready = true
			a.log.Info("node dataplane programmed; ready")
		}
		a.mu.Unlock()
		if errors.Is(err, errNotSynced) {
			continue // the watcher triggers a pass when the caches are in
		}
		if err != nil {
			a.log.Error("reconcile failed", "err", err)
			backoff = min(max(2*backoff, 200*time.Millisecond), 10*time.Second)
			time.AfterFunc(backoff, a.Trigger)
		} else {
			backoff = 0
		}
	}
}

func (a *Agent) reconcile(ctx context.Context, resync bool) error {
	usePolicy := a.cluster != nil && a.cfg.NetworkPolicy
	if a.cluster != nil {
		if err := a.clusterPools(); err != nil {
			return err
		}
	}
	// Policy first: TERN-FORWARD jumps to TERN-POLICY, which must exist, and
	// a new pod's rules are in force before anything lets its traffic through.
	if usePolicy {
		if err := a.syncPolicy(resync); err != nil {
			return fmt.Errorf("network policy: %w", err)
		}
	}
	if resync {
		a.node.Resync()
	}
	plan := dataplane.PlanNode(dataplane.NodeConfig{
		PodCIDRs: a.ipam.Pools(), ClusterCIDRs: a.cfg.ClusterCIDRs, NATOutgoing: a.cfg.NATOutgoing, NATOutgoingIPv6: a.cfg.NATOutgoingIPv6,
		Policy: usePolicy,
	})
	st, err := a.node.Apply(plan)
	mtu := dataplane.UplinkMTU()
	a.mu.Lock()
	a.mtu = mtu
	a.writes += uint64(st.RoutesAdded + st.RoutesDeleted + st.ChainsWritten + st.JumpsInserted + st.StaleRemoved)
	a.mu.Unlock()
	if err == nil && a.cluster != nil {
		err = a.afterProgrammed(ctx)
		// BGP does not gate readiness: pods on this node work without it.
		if a.cfg.BGP {
			if berr := a.syncBGP(ctx); berr != nil {
				a.log.Warn("BGP", "err", berr)
				a.metrics.bgpErrors.Inc()
				time.AfterFunc(2*time.Second, a.Trigger)
			}
		}
	}
	// Veths of gone pods: left by a DEL whose agent died before deleting
	// them, or by releaseGone just now.
	a.deleteDisposed()
	return err
}

// uplinkMTU is the MTU pods get unless their network configuration sets one.
func (a *Agent) uplinkMTU() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mtu
}

// readiness says whether the CNI plugin may attach pods: only once the node's
// dataplane has been programmed.
func (a *Agent) readiness() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready {
		return true, ""
	}
	if a.lastErr != nil {
		return false, "node dataplane not programmed yet: " + a.lastErr.Error()
	}
	return false, "node dataplane not programmed yet"
}

// listenUnix serves on path with mode 0600. A socket file left by a dead agent
// is replaced; the IPAM store's file lock already guarantees one agent per node.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
