package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
)

// Node applies a Plan to the kernel of the network namespace it runs in.
type Node struct {
	log     *slog.Logger
	backend *Backend
	ipt4    *iptablesDriver
	ipt6    *iptablesDriver
	// applied is the plan whose chains and jumps the last Apply found or
	// wrote without error; while a plan's rules equal it, Apply does not
	// read iptables back (each read is an exec) until Resync.
	applied *Plan
}

// Resync makes the next Apply read back the installed rules, repairing
// drift (a periodic pass does it).
func (n *Node) Resync() { n.applied = nil }

// NewNode returns a driver for the current network namespace.
func NewNode(log *slog.Logger) *Node { return &Node{log: log} }

// UseBackend makes the node write through backend b instead of detecting one
// at its first Apply. Give the node and the policy driver the same backend.
func (n *Node) UseBackend(b Backend) {
	n.backend = &b
	n.ipt4, n.ipt6, n.applied = nil, nil, nil
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
	if n.applied != nil && sameRules(*n.applied, plan) {
		return st, errors.Join(errs...)
	}
	rulesOK := true
	for _, v6 := range []bool{false, true} {
		planned := (v6 && plan.IPv6) || (!v6 && plan.IPv4)
		d, err := n.driver(v6)
		if err != nil {
			if planned {
				errs = append(errs, err)
				rulesOK = false
			}
			continue // no ip6tables: nothing of tern's can be there either
		}
		if planned {
			w, err := d.syncChains(plan.Chains)
			st.ChainsWritten += w
			j, err2 := d.ensureJumps(plan.Jumps)
			st.JumpsInserted += j
			errs = append(errs, err, err2)
			rulesOK = rulesOK && err == nil && err2 == nil
		}
		r, err := d.removeStale(plan)
		st.StaleRemoved += r
		errs = append(errs, err)
		rulesOK = rulesOK && err == nil
	}
	if rulesOK {
		p := plan
		n.applied = &p
	} else {
		n.applied = nil
	}
	if st != (ApplyStats{}) {
		n.log.Info("dataplane updated", "routesAdded", st.RoutesAdded, "routesDeleted", st.RoutesDeleted, "chainsWritten", st.ChainsWritten, "jumpsInserted", st.JumpsInserted, "staleRemoved", st.StaleRemoved)
	}
	return st, errors.Join(errs...)
}

// sameRules reports whether two plans want the same chains and jumps.
func sameRules(a, b Plan) bool {
	if a.IPv4 != b.IPv4 || a.IPv6 != b.IPv6 || len(a.Chains) != len(b.Chains) || !slices.Equal(a.Jumps, b.Jumps) {
		return false
	}
	for i := range a.Chains {
		x, y := a.Chains[i], b.Chains[i]
		if x.IPv6 != y.IPv6 || x.Table != y.Table || x.Name != y.Name || len(x.Rules) != len(y.Rules) {
			return false
		}
		for j := range x.Rules {
			if !slices.Equal(x.Rules[j], y.Rules[j]) {
				return false
			}
		}
	}
	return true
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
