// Convergence: every agent ready and every node with every other node's
// pod CIDR installed.

package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
)

// waitConverged waits until converged says the lab is fully up (d.converged:
// every agent ready and every node with every other node's pod CIDR).
func (d *daemon) waitConverged(ctx context.Context, timeout time.Duration, converged func(context.Context) (bool, string)) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := converged(ctx)
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
	cidrs := map[string][]string{}
	for _, ln := range nodes {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := agentapi.NewClient(filepath.Join(ln.dir, "run", "cni.sock"), 2*time.Second).Status(cctx)
		cancel()
		if err != nil || !st.Ready || len(st.PodCIDRs) == 0 {
			return false, fmt.Sprintf("the agent of %s to be ready", ln.Name)
		}
		cidrs[ln.Name] = []string{st.PodCIDRs[0].String()}
	}
	return routesIn(nodes, cidrs)
}

// routesIn reports whether every node has the pod CIDR of every other node
// (cidrs: by node name) installed; if not, which it waits for.
func routesIn(nodes []*labNode, cidrs map[string][]string) (bool, string) {
	for _, ln := range nodes {
		have, err := installedRoutes(ln.netns)
		if err != nil {
			return false, err.Error()
		}
		for other, cs := range cidrs {
			for _, c := range cs {
				if other != ln.Name && !have[c] {
					return false, fmt.Sprintf("%s to have %s's pod CIDR %s", ln.Name, other, c)
				}
			}
		}
	}
	return true, ""
}

// nodeStarted records when node n started, writes the state and logs it.
func (d *daemon) nodeStarted(n Node, attrs ...any) {
	d.mu.Lock()
	if d.timings.NodesStarted == nil {
		d.timings.NodesStarted = map[string]time.Time{}
	}
	d.timings.NodesStarted[n.Name] = time.Now()
	d.mu.Unlock()
	d.writeState()
	d.log.Info("node started", append([]any{"node", n.Name, "rack", n.Rack, "address", n.Addresses(), "as", n.AS, "reflector", n.Reflector}, attrs...)...)
}

// installedRoutes lists the destinations of tern's routes in netns.
func installedRoutes(netns string) (map[string]bool, error) {
	out, err := inNS(netns, "ip", "-4", "route", "show", "proto", "96")
	if err != nil {
		return nil, err
	}
	out6, err := inNS(netns, "ip", "-6", "route", "show", "proto", "96")
	if err != nil {
		return nil, err
	}
	out += "\n" + out6
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
