package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// Node applies a Plan to the kernel of the network namespace it runs in.
type Node struct {
	log     *slog.Logger
	backend *Backend
	ipt4    *iptablesDriver
	ipt6    *iptablesDriver
}

// NewNode returns a driver for the current network namespace.
func NewNode(log *slog.Logger) *Node { return &Node{log: log} }

// UseBackend makes the node write through backend b instead of detecting one
// at its first Apply. Give the node and the policy driver the same backend.
func (n *Node) UseBackend(b Backend) {
	n.backend = &b
	n.ipt4, n.ipt6 = nil, nil
}

// ApplyStats says what an Apply changed.
type ApplyStats struct {
	RoutesAdded, RoutesDeleted, ChainsWritten, JumpsInserted, StaleRemoved int
}

// Apply brings the node to plan, writing only what differs. It never removes
// anything that is not tern's, nor the policy driver's chains.
//
// A plan made with NodeConfig.Policy has TERN-FORWARD jump to
// policy.ChainPolicy: Policy.Apply must have succeeded in this namespace
// before (it creates that chain in every family), or this Apply fails for
// that family and leaves the installed TERN-FORWARD as it was.
func (n *Node) Apply(plan Plan) (ApplyStats, error) {
	var st ApplyStats
	var errs []error
	if plan.IPv4 {
		errs = append(errs, writeSysctl("net/ipv4/ip_forward", "1"))
	}
	if plan.IPv6 {
		errs = append(errs, writeSysctl("net/ipv6/conf/all/forwarding", "1"))
	}
	var err error
	st.RoutesAdded, st.RoutesDeleted, err = applyRoutes(plan.Routes)
	errs = append(errs, err)
	for _, v6 := range []bool{false, true} {
		planned := (v6 && plan.IPv6) || (!v6 && plan.IPv4)
		d, err := n.driver(v6)
		if err != nil {
			if planned {
				errs = append(errs, err)
			}
			continue // no ip6tables: nothing of tern's can be there either
		}
		if planned {
			w, err := d.syncChains(plan.Chains)
			st.ChainsWritten += w
			j, err2 := d.ensureJumps(plan.Jumps)
			st.JumpsInserted += j
			errs = append(errs, err, err2)
		}
		r, err := d.removeStale(plan)
		st.StaleRemoved += r
		errs = append(errs, err)
	}
	if st != (ApplyStats{}) {
		n.log.Info("dataplane updated", "routesAdded", st.RoutesAdded, "routesDeleted", st.RoutesDeleted, "chainsWritten", st.ChainsWritten, "jumpsInserted", st.JumpsInserted, "staleRemoved", st.StaleRemoved)
	}
	return st, errors.Join(errs...)
}

func (n *Node) driver(v6 bool) (*iptablesDriver, error) {
	p := &n.ipt4
	if v6 {
		p = &n.ipt6
	}
	if *p == nil {
		if n.backend == nil {
			b, err := DetectBackend()
			if err != nil {
				return nil, err
			}
			n.log.Info("iptables backend", "mode", b.Mode)
			n.backend = &b
		}
		d, err := newIPTablesDriver(v6, *n.backend)
		if err != nil {
			return nil, err
		}
		*p = d
	}
	return *p, nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
