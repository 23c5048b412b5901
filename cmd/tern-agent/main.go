// Command tern-agent is tern's node agent: it owns the node's pod addresses,
// serves the CNI plugin on a unix socket and programs the node's dataplane.
// On Kubernetes (in the cluster, or with --kubeconfig) it follows the API;
// standalone (--pod-cidr) it needs nothing but its flags.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/tern-net/tern/internal/agent"
	"github.com/tern-net/tern/internal/k8s"
)

// version is set at build time.
var version = "dev"

func main() {
	// The agent is a long-lived DaemonSet pod: trade a little CPU in the
	// collector for a smaller footprint on every node. Each reconcile pass
	// compiles the policy snapshot afresh, and at the default GOGC=100 that
	// garbage keeps RSS near twice the live heap (100 MB against 79 MB at
	// 5,000 pods and 500 policies). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tern-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tern-agent", flag.ContinueOnError)
	var (
		cfg         agent.Config
		podCIDRs    = fs.String("pod-cidr", "", "standalone mode: this node's pod CIDRs, comma-separated, at most one per address family (on Kubernetes the node's spec.podCIDRs are used)")
		clusterCIDR = fs.String("cluster-cidr", "", "the cluster's pod CIDRs, comma-separated, one per address family (e.g. 10.244.0.0/16,2001:db8:42::/56); pod traffic to them is not masqueraded (default: the node's pod CIDRs)")
		kubeconfig  = fs.String("kubeconfig", "", "kubeconfig of the API server (default: in-cluster configuration, unless --pod-cidr is set)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", "text or json")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	cfg.Version = version
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/tern", "directory of the IPAM database")
	fs.StringVar(&cfg.RunDir, "run-dir", "/run/tern", "directory of the CNI socket (cni.sock)")
	fs.StringVar(&cfg.HealthAddr, "health-addr", ":9099", "address of /healthz, /readyz and /metrics (empty: off)")
	fs.BoolVar(&cfg.NATOutgoing, "nat-outgoing", true, "masquerade IPv4 pod traffic leaving the cluster's pod CIDRs")
	fs.BoolVar(&cfg.NATOutgoingIPv6, "nat-outgoing-ipv6", false, "masquerade IPv6 pod traffic leaving the cluster's pod CIDRs (only for pod ranges nothing routes back to, e.g. ULA)")
	fs.DurationVar(&cfg.GCMinAge, "gc-min-age", time.Minute, "CNI GC spares allocations younger than this (an ADD may be in flight)")
	fs.DurationVar(&cfg.PodReleaseGrace, "pod-release-grace", time.Minute, "release the address of a pod gone from the API after this long (Kubernetes mode)")
	fs.BoolVar(&cfg.BGP, "bgp", true, "run the BGP speaker: announce this node's pod CIDRs, install the other nodes' (Kubernetes mode)")
	secretNamespace := fs.String("secret-namespace", envOr("POD_NAMESPACE", "tern-system"), "namespace of the Secrets that BGPPeers name (default $POD_NAMESPACE or tern-system); the agent watches the Secrets there")
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "period of the resync that repairs drift")
	fs.BoolVar(&cfg.NetworkPolicy, "network-policy", true, "enforce Kubernetes NetworkPolicy (Kubernetes mode)")
	fs.BoolVar(&cfg.LogDrops, "log-policy-drops", false, "log packets dropped by NetworkPolicy to NFLOG group 2500 (rate-limited)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println("tern-agent", version)
		return nil
	}
	var err error
	if cfg.PodCIDRs, err = parseCIDRs("--pod-cidr", *podCIDRs); err != nil {
		return err
	}
	if cfg.ClusterCIDRs, err = parseCIDRs("--cluster-cidr", *clusterCIDR); err != nil {
		return err
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}

	var cluster agent.Cluster
	if len(cfg.PodCIDRs) == 0 {
		klog.SetSlogLogger(log.With("component", "client-go")) // one log, one format
		rc, err := k8s.Config(*kubeconfig)
		if err != nil {
			return err
		}
		rc.UserAgent = "tern-agent/" + version
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("client of the Kubernetes API: %w", err)
		}
		dyn, err := dynamic.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("client of the Kubernetes API: %w", err)
		}
		if !cfg.BGP {
			*secretNamespace = "" // no passwords to read
		}
		w := k8s.NewWatcher(client, dyn, cfg.NodeName, *secretNamespace, log)
		if cfg.NetworkPolicy {
			w.WriteClusterPolicyStatus(envOr("POD_NAMESPACE", "tern-system"))
		}
		cluster = w
	} else if *kubeconfig != "" {
		return fmt.Errorf("--pod-cidr (standalone mode) and --kubeconfig exclude each other")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return agent.Run(ctx, cfg, cluster, log)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", format)
	}
}

func parseCIDRs(flagName, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR: %w", flagName, f, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%s: %s has host bits set; did you mean %s?", flagName, p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}
