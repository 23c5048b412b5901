package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/bgp"
	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/routertest"
)

// envSpeaker names the file of a speakerNode: the bench binary, started
// with it inside a node's network namespace, runs that node's BGP as the
// agent does instead of benchmarks (GoBGP opens its sockets from
// goroutines of its own, so a speaker needs a process that is in the
// namespace as a whole).
const envSpeaker = "TERN_BENCH_SPEAKER"

// speakerNode is one node's BGP as the agent reads it from the API: the
// Node (its addresses, one per family it has, and its pod CIDRs), the
// BGPConfiguration (mesh off, graceful restart off, as the benchmarks
// apply it) and one BGPPeer.
type speakerNode struct {
	Name         string
	IPv4, IPv6   netip.Addr
	PodCIDRs     []netip.Prefix
	ClusterCIDRs []netip.Prefix // the agent's --cluster-cidr: what it imports
	PeerIP       netip.Addr
	PeerASN      uint32
}

// runSpeaker is the node's BGP pass of the agent (internal/agent, syncBGP)
// without the API: bgp.Plan of the node's snapshot, bgp.Start, Apply, and on
// every change (or each second) the learned best paths through
// dataplane.FilterImport into the kernel with dataplane.SyncLearned, routes
// not relearned kept (the agent sweeps only once its peers have settled).
func runSpeaker(path string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	data, err := os.ReadFile(path)
	var n speakerNode
	if err == nil {
		err = json.Unmarshal(data, &n)
	}
	if err != nil {
		log.Error("speaker config", "err", err)
		return 2
	}
	cfg := bgp.DefaultConfig()
	cfg.NodeToNodeMesh, cfg.GracefulRestart = false, 0
	local := bgp.NodeInfo{Name: n.Name, IPv4: n.IPv4, IPv6: n.IPv6, PodCIDRs: n.PodCIDRs}
	g, d, err := bgp.Plan(bgp.Snapshot{Local: local, Nodes: []bgp.NodeInfo{local}, Config: cfg,
		Peers: []bgp.PeerSpec{{Name: "bench", PeerIP: n.PeerIP, ASN: n.PeerASN}}})
	if err != nil {
		log.Error("plan", "err", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	changed := make(chan struct{}, 1)
	sp, err := bgp.Start(ctx, g, log, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		log.Error("start", "err", err)
		return 2
	}
	if err := sp.Apply(ctx, d); err != nil {
		log.Error("apply", "err", err)
		return 2
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		routes, err := sp.Routes(ctx)
		if err != nil {
			log.Error("routes", "err", err)
		}
		var learned []dataplane.LearnedRoute
		for _, r := range routes {
			learned = append(learned, dataplane.LearnedRoute{Dst: r.Prefix, Gateways: r.NextHops})
		}
		keep, _ := dataplane.FilterImport(learned, n.ClusterCIDRs, n.PodCIDRs)
		if _, err := dataplane.SyncLearned(keep, false); err != nil {
			log.Error("sync learned routes", "err", err)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-changed:
		case <-tick.C:
		}
	}
}

// startSpeaker runs the bench binary as n's speaker in netns until t's
// cleanup (SIGTERM, by PID), and returns the process.
func startSpeaker(t testing.TB, netns ns.NetNS, n speakerNode) *exec.Cmd {
	t.Helper()
	data, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "tern-bench-speaker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "node.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return routertest.Start(t, netns, filepath.Join(dir, "speaker.log"), []string{envSpeaker + "=" + path}, os.Args[0], "-test.run=^$", "-test.bench=^$")
}

// speakerLog is what the speaker of cmd printed so far.
func speakerLog(cmd *exec.Cmd) string {
	if f, ok := cmd.Stdout.(*os.File); ok {
		b, _ := os.ReadFile(f.Name())
		return string(b)
	}
	return fmt.Sprintf("(no log for %v)", cmd.Args)
}
