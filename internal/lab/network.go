// The shared segments and the top-of-rack routers: started, and
// reconfigured as nodes come and go.

package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
)

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
		}
		if r.Address6.IsValid() {
			steps = append(steps, addrStepOn(r.Address6, "br0"))
		}
		steps = append(steps, []string{"link", "set", "br0", "up"})
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
		steps = [][]string{addrStepOn(r.Spine, "spine")}
		if r.Spine6.IsValid() {
			steps = append(steps, addrStepOn(r.Spine6, "spine"))
		}
		for _, s := range append(steps, []string{"link", "set", "spine", "up"}) {
			if err := ip(lr.netns, s...); err != nil {
				return err
			}
		}
		if _, err := inNS(lr.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
		if r.Address6.IsValid() {
			if _, err := inNS(lr.netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"); err != nil {
				return err
			}
		}
		if err := d.startClient(lr); err != nil {
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

// startClient makes the host behind router lr: a namespace of its own on a
// segment to the router (the router announces the segment; the nodes reach
// it by their default route), through which tests and users reach the
// cluster from outside, as a machine on the rack's network would.
func (d *daemon) startClient(lr *labRouter) error {
	r := lr.Router
	lr.client = fmt.Sprintf("%s-%s", d.cfg.Prefix, ClientName(r.Rack))
	if err := addNS(lr.client); err != nil {
		return err
	}
	d.mu.Lock()
	d.shared = append(d.shared, lr.client)
	d.mu.Unlock()
	if err := veth(lr.netns, "client", lr.client, "eth0"); err != nil {
		return err
	}
	gw := ClientPrefix(r.Rack).Addr().Next()
	routerSteps := [][]string{addrStepOn(gw, "client")}
	clientSteps := [][]string{addrStep(r.Client)}
	gw6 := ClientPrefix6(r.Rack).Addr().Next()
	if r.Client6.IsValid() {
		routerSteps = append(routerSteps, addrStepOn(gw6, "client"))
		clientSteps = append(clientSteps, addrStep(r.Client6))
	}
	clientSteps = append(clientSteps, []string{"link", "set", "eth0", "up"}, []string{"link", "set", "lo", "up"}, defaultRouteStep(gw, "eth0"))
	if r.Client6.IsValid() {
		clientSteps = append(clientSteps, defaultRouteStep(gw6, "eth0"))
	}
	for _, s := range append(routerSteps, []string{"link", "set", "client", "up"}) {
		if err := ip(lr.netns, s...); err != nil {
			return err
		}
	}
	for _, s := range clientSteps {
		if err := ip(lr.client, s...); err != nil {
			return err
		}
	}
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
