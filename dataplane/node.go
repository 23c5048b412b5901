package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// Node applies a Plan to the kernel of the network namespace it runs in.
type Node struct {
	log  *slog.Logger
	ipt4 *iptablesDriver
	ipt6 *iptablesDriver
}

// NewNode returns a driver for the current network namespace.
func NewNode(log *slog.Logger) *Node { return &Node{log: log} }

// ApplyStats says what an Apply changed.
type ApplyStats struct {
	RoutesAdded, RoutesDeleted, ChainsWritten, JumpsInserted int
}

// Apply brings the node to plan, writing only what differs. It never removes
// anything that is not tern's.
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
		if (v6 && !plan.IPv6) || (!v6 && !plan.IPv4) {
			continue
		}
		d, err := n.driver(v6)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w, err := d.syncChains(plan.Chains)
		st.ChainsWritten += w
		j, err2 := d.ensureJumps(plan.Jumps)
		st.JumpsInserted += j
		errs = append(errs, err, err2)
	}
	if st != (ApplyStats{}) {
		n.log.Info("dataplane updated", "routesAdded", st.RoutesAdded, "routesDeleted", st.RoutesDeleted, "chainsWritten", st.ChainsWritten, "jumpsInserted", st.JumpsInserted)
	}
	return st, errors.Join(errs...)
}

func (n *Node) driver(v6 bool) (*iptablesDriver, error) {
	p := &n.ipt4
	if v6 {
		p = &n.ipt6
	}
	if *p == nil {
		d, err := newIPTablesDriver(v6)
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
