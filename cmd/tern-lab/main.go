// Command tern-lab runs a real multi-node tern cluster on this machine: the
// real control plane, one network namespace per node with the real tern-agent,
// BIRD or FRR top-of-rack routers, and pods attached by the real CNI plugin.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/lab"
)

const usage = `tern-lab: a real tern cluster in network namespaces on this machine (root)

usage:
  tern-lab up [--nodes N] [--racks R] [--router bird|frr|mixed|none] [--route-reflectors K] [--ip-family ipv4|ipv6|dual]
             [--proxy-mode iptables|nftables] [--light]
                                   start a lab (defaults: 3 real dual-stack nodes, 1 rack, BIRD); cleans a previous one first
  tern-lab down                    stop it and remove everything it made
  tern-lab status                  nodes, BGP sessions per node, pods
  tern-lab kubeconfig              the admin kubeconfig's path: export KUBECONFIG=$(tern-lab kubeconfig)
  tern-lab exec NODE -- CMD...     run a host command in a node's network namespace
  tern-lab exec NS/POD -- CMD...   run a host command in a pod's network namespace
  tern-lab probe NS/POD NS/POD:PORT[/tcp|udp]
                                   connect from one pod to another and print who answered
  tern-lab node add [--rack R]     add a node
  tern-lab node remove NODE        remove a node (its agent withdraws its routes first)
  tern-lab demo                    pods in two namespaces, their connectivity matrix, BGP status
  tern-lab conformance [--suite netpol,sig-network-conformance] [--runs N] [--procs P] [--out DIR] [--report FILE] [--timeout D]
                                   Kubernetes' own e2e suites on this lab (real nodes): JUnit in DIR,
                                   a summary in FILE (make conformance writes CONFORMANCE.md)
  tern-lab serve [PORT/PROTO...]   what the lab's pods run (image ` + lab.ServerImage + `): on each port
                                   (default 80/tcp 81/tcp 80/udp 81/udp) answer with
                                   $POD_NAMESPACE/$POD_NAME; TCP then echoes lines

environment:
  TERN_LAB_DIR    state, logs and the control plane's data (default /run/tern-lab)
  TERN_LAB_NAME   prefix of the lab's network namespaces (default ternlab)
`

var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tern-lab:", err)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		os.Exit(1)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	dir := env("TERN_LAB_DIR", "/run/tern-lab")
	prefix := env("TERN_LAB_NAME", "ternlab")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	c := lab.NewClient(dir)
	switch args[0] {
	case "version":
		fmt.Fprintln(out, "tern-lab", version)
		return nil
	case "daemon": // started by `up`
		var cfg lab.Config
		if len(args) != 2 {
			return errors.New("daemon: want the configuration as JSON")
		}
		if err := json.Unmarshal([]byte(args[1]), &cfg); err != nil {
			return fmt.Errorf("daemon configuration: %w", err)
		}
		return lab.RunDaemon(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	case "up":
		if os.Geteuid() != 0 {
			return errors.New("up needs root: it creates network namespaces")
		}
		fs := flag.NewFlagSet("up", flag.ContinueOnError)
		var o lab.Options
		fs.IntVar(&o.Nodes, "nodes", 3, "number of nodes")
		fs.IntVar(&o.Racks, "racks", 1, "number of racks, each behind its own router")
		fs.StringVar(&o.Router, "router", lab.RouterBIRD, "bird, frr, mixed (racks alternate) or none (one segment, node-to-node mesh)")
		fs.IntVar(&o.RouteReflectors, "route-reflectors", 0, "nodes acting as route reflectors (the mesh goes off)")
		fs.StringVar(&o.IPFamily, "ip-family", "", "the nodes', pods' and Services' IP families: ipv4, ipv6 or dual (IPv4 primary; real nodes only); default dual on real nodes, ipv4 on light ones")
		fs.StringVar(&o.ProxyMode, "proxy-mode", "", "kube-proxy's mode on real nodes: iptables (default) or nftables")
		light := fs.Bool("light", false, "light nodes: tern's own kubelet (pods are network namespaces) and agents started by the lab, for 20- and 40-node labs on 2 cores; default: real nodes (kubelet, containerd and kube-proxy on each, tern installed by its DaemonSet; needs make image)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("up: unexpected %q", fs.Args())
		}
		o.Real = !*light
		if o.IPFamily == "" {
			o.IPFamily = lab.IPv4
			if o.Real {
				o.IPFamily = lab.Dual
			}
		}
		self, err := os.Executable()
		if err != nil {
			return err
		}
		root, err := sourceRoot(self)
		if err != nil {
			return err
		}
		cfg := lab.Config{Options: o, Dir: dir, Prefix: prefix, BinDir: filepath.Dir(self), Root: root}
		t0 := time.Now()
		s, err := lab.Up(ctx, cfg, self, out)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "\nlab up in %s: %d nodes, %d routers\n  export KUBECONFIG=%s\n  tern-lab status\n  tern-lab down\n", time.Since(t0).Round(100*time.Millisecond), len(s.Nodes), len(s.Routers), s.Kubeconfig)
		return nil
	case "down":
		if err := lab.Down(ctx, dir, prefix, out); err != nil {
			return err
		}
		fmt.Fprintln(out, "lab down")
		return nil
	case "kubeconfig":
		s, err := c.State(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, s.Kubeconfig)
		return nil
	case "status":
		return status(ctx, c, out)
	case "exec":
		return execIn(ctx, c, args[1:])
	case "probe":
		if len(args) != 3 {
			return errors.New("probe: want NS/POD NS/POD:PORT[/tcp|udp]")
		}
		reply, err := c.ProbePods(ctx, args[1], args[2], 2*time.Second)
		if err != nil {
			fmt.Fprintf(out, "%s -> %s: FAILED: %v\n", args[1], args[2], err)
			return errors.New("probe failed")
		}
		fmt.Fprintf(out, "%s -> %s: ok, answered by %s\n", args[1], args[2], reply)
		return nil
	case "node":
		return node(ctx, c, args[1:], out)
	case "demo":
		return lab.Demo(ctx, c, out)
	case "serve":
		return serve(ctx, args[1:])
	case "conformance":
		return runConformance(ctx, c, args[1:], out)
	}
	return fmt.Errorf("unknown command %q; see tern-lab help", args[0])
}

// sourceRoot finds tern's source tree (hack/kube-env.sh, manifests/): $TERN_ROOT,
// the parent of the executable's directory (bin/tern-lab), or the working directory.
func sourceRoot(self string) (string, error) {
	cands := []string{os.Getenv("TERN_ROOT"), filepath.Dir(filepath.Dir(self))}
	if wd, err := os.Getwd(); err == nil {
		cands = append(cands, wd)
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(c, "hack", "kube-env.sh")); err == nil {
			return c, nil
		}
	}
	return "", errors.New("cannot find tern's source tree (hack/kube-env.sh): run from it, or set TERN_ROOT")
}

func execIn(ctx context.Context, c *lab.Client, args []string) error {
	if len(args) < 3 || args[1] != "--" {
		return errors.New("exec: want NODE|NS/POD -- CMD [ARGS...]")
	}
	netns, err := c.Resolve(ctx, args[0])
	if err != nil {
		return err
	}
	path, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}
	// Replace this process: the command's exit status and terminal are the caller's.
	return syscall.Exec(path, append([]string{"nsenter", "--net=" + lab.NSPath(netns), "--"}, args[2:]...), os.Environ())
}

func node(ctx context.Context, c *lab.Client, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("node: want add [--rack R] or remove NODE")
	}
	switch args[0] {
	case "add":
		fs := flag.NewFlagSet("node add", flag.ContinueOnError)
		rack := fs.Int("rack", 0, "the node's rack (default: the next in turn)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		n, err := c.AddNode(ctx, *rack)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "node %s added (rack %d, %s, AS %d)\n", n.Name, n.Rack, lab.JoinAddrs(n.Addresses()), n.AS)
		return nil
	case "remove":
		if len(args) != 2 {
			return errors.New("node remove: want NODE")
		}
		if err := c.RemoveNode(ctx, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(out, "node %s removed\n", args[1])
		return nil
	}
	return fmt.Errorf("node %q: want add or remove", args[0])
}

func status(ctx context.Context, c *lab.Client, out io.Writer) error {
	s, err := c.State(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lab %s (%s): %d nodes, %d racks, router %s, %d route reflectors\nkubeconfig: %s\n\n",
		s.Config.Prefix, s.Phase, len(s.Nodes), s.Config.Racks, s.Config.Router, s.Config.RouteReflectors, s.Kubeconfig)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tRACK\tADDRESS\tAS\tPOD CIDR\tAGENT\tBGP SESSIONS\tROUTES")
	for _, n := range s.Nodes {
		ac := agentapi.NewClient(n.Socket, 2*time.Second)
		cidr, agent, sessions, routes := "-", "down", "-", "-"
		if st, err := ac.Status(ctx); err == nil {
			agent = "not ready"
			if st.Ready {
				agent = "ready"
			}
			if len(st.PodCIDRs) > 0 {
				var cs []string
				for _, c := range st.PodCIDRs {
					cs = append(cs, c.String())
				}
				cidr = strings.Join(cs, ",")
			}
		}
		if n.Restarts > 0 {
			agent += fmt.Sprintf(" (%d restarts)", n.Restarts)
		}
		if b, err := ac.BGP(ctx); err == nil {
			up := 0
			var peers []string
			for _, p := range b.Peers {
				if p.State == "Established" {
					up++
				}
				peers = append(peers, fmt.Sprintf("%s %s", p.Address, strings.ToLower(p.State)))
			}
			sessions = fmt.Sprintf("%d/%d up", up, len(b.Peers))
			if len(peers) <= 3 {
				sessions += " (" + strings.Join(peers, ", ") + ")"
			}
			routes = fmt.Sprint(len(b.Routes))
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n", n.Name, n.Rack, lab.JoinAddrs(n.Addresses()), n.AS, cidr, agent, sessions, routes)
	}
	w.Flush()
	if len(s.Routers) > 0 {
		fmt.Fprintln(out)
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ROUTER\tKIND\tAS\tADDRESS\tSPINE\tPIDS")
		for _, r := range s.Routers {
			fmt.Fprintf(w, "tor%d\t%s\t%d\t%s\t%s\t%v\n", r.Rack, r.Kind, r.AS, r.Address, r.Spine, r.PIDs)
		}
		w.Flush()
	}
	pods, err := c.Pods(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POD\tNODE\tIP\tNETNS")
	for _, p := range pods {
		fmt.Fprintf(w, "%s/%s\t%s\t%v\t%s\n", p.Namespace, p.Name, p.Node, p.IPs, p.NetNS)
	}
	return w.Flush()
}

// serve is a lab pod's server, in its container.
func serve(ctx context.Context, args []string) error {
	ns, name := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
	if ns == "" || name == "" {
		return errors.New("serve: POD_NAMESPACE and POD_NAME must name the pod (the downward API sets them)")
	}
	if len(args) == 0 {
		args = []string{"80/tcp", "81/tcp", "80/udp", "81/udp"}
	}
	var ports []lab.Port
	for _, a := range args {
		p, err := lab.ParsePort(a)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		ports = append(ports, p)
	}
	return lab.ServePod(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)), ns+"/"+name, ports)
}
