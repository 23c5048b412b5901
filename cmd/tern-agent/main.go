// Command tern-agent is tern's node agent: it owns the node's pod addresses,
// serves the CNI plugin on a unix socket and programs the node's dataplane.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tern-net/tern/internal/agent"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tern-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tern-agent", flag.ContinueOnError)
	var (
		cfg         agent.Config
		podCIDRs    = fs.String("pod-cidr", "", "this node's pod CIDRs, comma-separated, at most one per address family (standalone mode)")
		clusterCIDR = fs.String("cluster-cidr", "", "the cluster's pod CIDRs, comma-separated; traffic to them is not masqueraded (default: --pod-cidr)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
	)
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/tern", "directory of the IPAM database")
	fs.StringVar(&cfg.RunDir, "run-dir", "/run/tern", "directory of the CNI socket (cni.sock)")
	fs.BoolVar(&cfg.NATOutgoing, "nat-outgoing", true, "masquerade pod traffic leaving the cluster's pod CIDRs")
	fs.DurationVar(&cfg.GCMinAge, "gc-min-age", time.Minute, "CNI GC spares allocations younger than this (an ADD may be in flight)")
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "period of the resync that repairs drift")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.PodCIDRs, err = parseCIDRs("--pod-cidr", *podCIDRs); err != nil {
		return err
	}
	if cfg.ClusterCIDRs, err = parseCIDRs("--cluster-cidr", *clusterCIDR); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return agent.Run(ctx, cfg, log)
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
