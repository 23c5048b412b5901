// Command ternctl is the operator's view of a tern node.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
)

const usage = `ternctl: look at a tern node

usage:
  ternctl version                         this ternctl's version, and the agent's if it answers
  ternctl [--socket PATH] status          the agent's readiness and pod CIDR usage per address family
  ternctl [--socket PATH] node status     this node's addresses and BGP sessions (family, address, AS, type,
                                          state, since, prefixes), with a summary per address family
  ternctl [--socket PATH] routes          the routes tern installed from BGP, per address family
  ternctl [--socket PATH] policy show NAMESPACE/POD
                                          the NetworkPolicies selecting a pod of this node and its rules
  ternctl [--socket PATH] ipam show       every address allocation on this node
  ternctl [--socket PATH] ipam release CONTAINER-ID [IFNAME]
                                          release one allocation by hand (as CNI DEL would)

flags:
  --socket PATH   the agent's socket (default /run/tern/cni.sock)
  -o json         print JSON instead of a table
`

// version is set at build time.
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ternctl:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ternctl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	socket := fs.String("socket", agentapi.DefaultSocket, "the agent's socket")
	format := fs.String("o", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := agentapi.NewClient(*socket, 10*time.Second)
	cmd := strings.Join(fs.Args(), " ")
	switch {
	case cmd == "version":
		fmt.Fprintf(out, "ternctl:    %s\n", version)
		if st, err := c.Status(ctx); err == nil {
			fmt.Fprintf(out, "tern-agent: %s (node %s)\n", st.Version, st.Node)
		} else {
			fmt.Fprintf(out, "tern-agent: unreachable at %s\n", *socket)
		}
		return nil
	case cmd == "status":
		st, err := c.Status(ctx)
		if err != nil {
			return hint(err, *socket)
		}
		if *format == "json" {
			return printJSON(out, st)
		}
		return printStatus(out, st)
	case cmd == "node status":
		b, err := c.BGP(ctx)
		if err != nil {
			return hint(err, *socket)
		}
		if *format == "json" {
			return printJSON(out, b)
		}
		return printNodeStatus(out, b, time.Now())
	case cmd == "routes":
		b, err := c.BGP(ctx)
		if err != nil {
			return hint(err, *socket)
		}
		if *format == "json" {
			return printJSON(out, b.Routes)
		}
		return printRoutes(out, b)
	case strings.HasPrefix(cmd, "policy show "):
		pod := strings.TrimPrefix(cmd, "policy show ")
		v, err := c.Policy(ctx, pod)
		if err != nil {
			return hint(err, *socket)
		}
		if *format == "json" {
			return printJSON(out, v)
		}
		printPolicy(out, v)
		return nil
	case cmd == "ipam show":
		list, err := c.List(ctx)
		if err != nil {
			return hint(err, *socket)
		}
		if *format == "json" {
			return printJSON(out, list)
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ADDRESSES\tPOD\tHOST VETH\tCONTAINER\tIFNAME\tAGE")
		for _, al := range list {
			pod := "-"
			if al.Pod != "" {
				pod = al.Namespace + "/" + al.Pod
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", joinAddrs(al.IPs, ","), pod, al.HostIf,
				short(al.ContainerID), al.IfName, time.Since(al.Created).Round(time.Second))
		}
		return w.Flush()
	case len(fs.Args()) >= 3 && fs.Arg(0) == "ipam" && fs.Arg(1) == "release":
		ifName := "eth0"
		if fs.NArg() > 3 {
			ifName = fs.Arg(3)
		}
		al, err := c.Release(ctx, agentapi.Attachment{ContainerID: fs.Arg(2), IfName: ifName})
		if err != nil {
			return hint(err, *socket)
		}
		fmt.Fprintf(out, "released %v of %s/%s\n", al.IPs, al.ContainerID, al.IfName)
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func hint(err error, socket string) error {
	if errors.Is(err, agentapi.ErrUnreachable) {
		return fmt.Errorf("%w\n(is tern-agent running on this node? is %s its socket? use --socket)", err, socket)
	}
	return err
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printPolicy prints which policies apply to a pod, tier by tier in the
// order they are evaluated, and the rules in force.
func printPolicy(out io.Writer, v agentapi.PodPolicy) {
	fmt.Fprintf(out, "pod %s (host veth %s, %s)\n", v.Pod, v.HostIf, joinAddrs(v.IPs, ", "))
	for _, d := range []struct {
		name, chain, tail     string
		admin, np, baseline   []string
		rules, rules6         []string
		tailRules, tailRules6 []string
	}{
		{"ingress", v.IngressChain, v.IngressTailChain, v.AdminIngress, v.Ingress, v.BaselineIngress,
			v.IngressRules, v.IngressRulesIPv6, v.IngressTailRules, v.IngressTailRulesIPv6},
		{"egress", v.EgressChain, v.EgressTailChain, v.AdminEgress, v.Egress, v.BaselineEgress,
			v.EgressRules, v.EgressRulesIPv6, v.EgressTailRules, v.EgressTailRulesIPv6},
	} {
		if len(d.admin)+len(d.np)+len(d.baseline) == 0 {
			fmt.Fprintf(out, "\n%s: open (no policy applies to the pod's %s)\n", d.name, d.name)
			continue
		}
		if len(d.admin)+len(d.baseline) == 0 {
			fmt.Fprintf(out, "\n%s: isolated by %s\n", d.name, strings.Join(d.np, ", "))
		} else {
			// The tiers in evaluation order; NetworkPolicy decides for a
			// pod it isolates, the default allows what no tier decided.
			fmt.Fprintf(out, "\n%s:\n", d.name)
			if len(d.admin) > 0 {
				fmt.Fprintf(out, "  1. Admin tier: %s\n", strings.Join(d.admin, ", "))
			}
			if len(d.np) > 0 {
				fmt.Fprintf(out, "  2. NetworkPolicy: isolated by %s (denies what they do not allow)\n", strings.Join(d.np, ", "))
			} else {
				fmt.Fprintf(out, "  2. NetworkPolicy: none selects the pod\n")
				if len(d.baseline) > 0 {
					fmt.Fprintf(out, "  3. Baseline tier: %s\n", strings.Join(d.baseline, ", "))
				}
				fmt.Fprintf(out, "  then: allowed\n")
			}
		}
		// The IPv4 chains (iptables), and on a node with IPv6 pods the
		// IPv6 chains of the same names (ip6tables).
		for _, c := range []struct {
			chain, fam string
			rules      []string
		}{{d.chain, "IPv4", d.rules}, {d.chain, "IPv6", d.rules6}, {d.tail, "IPv4", d.tailRules}, {d.tail, "IPv6", d.tailRules6}} {
			if len(c.rules) == 0 {
				continue
			}
			fmt.Fprintf(out, "  chain %s (%s):\n", c.chain, c.fam)
			for _, r := range c.rules {
				fmt.Fprintf(out, "    %s\n", r)
			}
		}
	}
	if len(v.Sets) > 0 {
		fmt.Fprintln(out, "\nsets:")
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		for _, s := range v.Sets {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%d members\t%s\n", s.Name, familyName(s.Family), s.Type, s.Members, s.Comment)
		}
		w.Flush()
	}
}
