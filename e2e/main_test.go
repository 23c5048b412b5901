// Package e2e runs tern end to end on a lab of real nodes (tern-lab): the
// real control plane and kube-scheduler, the real kubelet, containerd, runc
// and kube-proxy on every node, tern installed by `kubectl apply -k` with the
// image built from this tree (its DaemonSet runs the agents), real BIRD and
// FRR top-of-rack routers, pods that are agnhost containers. It needs root;
// `make e2e` runs it alone, `make test` with everything else.
package e2e

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
)

// The lab every test here shares: 4 nodes in 2 racks, rack 1 behind BIRD and
// rack 2 behind FRR, of the IP families TERN_E2E_IP_FAMILY names (ipv4,
// ipv6 or dual; default dual: every test then runs over both).
var (
	tl       *labtest.Lab
	prefix   = "tle2e"
	ipFamily = cmp.Or(os.Getenv("TERN_E2E_IP_FAMILY"), lab.Dual)
)

func TestMain(m *testing.M) {
	labtest.Main(m, labtest.Setup{
		Name: "e2e", Prefix: prefix, Image: true,
		Up:         []string{"--nodes", "4", "--racks", "2", "--router", "mixed", "--ip-family", ipFamily},
		AfterTests: crashAndRestart,
	}, &tl)
}

// crashAndRestart kills the lab daemon with SIGKILL, leaving its nodes,
// routers, namespaces and control plane behind, and checks that `up` removes
// everything the dead lab left and brings up a new one of the other
// topology: one segment, the mesh off, a route reflector node (of every
// family of the lab: `up` waits until every node has every other node's pod
// CIDR of each family, through the reflector).
func crashAndRestart(tl *labtest.Lab, old lab.State) ([]lab.State, error) {
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("kill the lab daemon: %w", err)
	}
	// The daemon is dead (or a zombie) once SIGKILL has been delivered.
	for deadline := time.Now().Add(10 * time.Second); labtest.Alive(old.PID); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the lab daemon %d still runs 10 s after SIGKILL", old.PID)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, prefix+"-*")); len(left) == 0 {
		return nil, fmt.Errorf("the killed lab left no namespaces: the crash test tests nothing")
	}
	t0 := time.Now()
	out, err := tl.Cmd("up", "--nodes", "3", "--router", "none", "--route-reflectors", "1", "--ip-family", ipFamily).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("tern-lab up after a crash: %w\n%s", err, out)
	}
	for _, n := range old.Nodes {
		if n.AgentPID > 0 && labtest.Alive(n.AgentPID) {
			return nil, fmt.Errorf("the crashed lab's agent %d (%s) still runs after up", n.AgentPID, n.Name)
		}
	}
	s, err := tl.Client.State(context.Background())
	if err != nil || len(s.Nodes) != 3 || len(s.Routers) != 0 {
		return nil, fmt.Errorf("the new lab: %+v %v", s, err)
	}
	fmt.Fprintf(os.Stderr, "e2e: up after a crashed lab: cleaned and up again (3 nodes, a route reflector, %s) in %s\n", ipFamily, time.Since(t0).Round(100*time.Millisecond))
	return []lab.State{s}, nil
}
