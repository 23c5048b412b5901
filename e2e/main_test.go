// Package e2e runs tern end to end on a lab of real nodes (tern-lab): the
// real control plane and kube-scheduler, the real kubelet, containerd, runc
// and kube-proxy on every node, tern installed by `kubectl apply -k` with the
// image built from this tree (its DaemonSet runs the agents), real BIRD and
// FRR top-of-rack routers, pods that are agnhost containers. It needs root;
// `make e2e` runs it alone, `make test` with everything else.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
	"github.com/tern-net/tern/internal/nodetest"
)

// The lab every test here shares: 4 nodes in 2 racks, rack 1 behind BIRD and
// rack 2 behind FRR.
var (
	tl     *labtest.Lab
	client *lab.Client
	prefix = "tle2e"
)

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	if os.Geteuid() != 0 {
		if nodetest.InCI() {
			return 1, fmt.Errorf("the end-to-end tests need root (CI runs as root)")
		}
		fmt.Fprintln(os.Stderr, "e2e: not root: the end-to-end tests did not run")
		return 0, nil
	}
	tmp, err := os.MkdirTemp("", "tern-e2e-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)
	if tl, err = labtest.Build(tmp, prefix, true); err != nil {
		return 1, err
	}
	before := labtest.HostSnapshot()
	up := tl.Cmd("up", "--nodes", "4", "--racks", "2", "--router", "mixed")
	t0 := time.Now()
	if out, err := up.CombinedOutput(); err != nil {
		tl.Cmd("down").Run()
		return 1, fmt.Errorf("tern-lab up: %w\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "e2e: lab up in %s\n", time.Since(t0).Round(100*time.Millisecond))
	client = tl.Client
	st, _ := client.State(context.Background())
	pids := []int{st.PID}
	code := m.Run()
	if code != 0 {
		log, _ := os.ReadFile(lab.LogPath(tl.Dir))
		fmt.Fprintf(os.Stderr, "e2e: lab log (tail):\n%s\n", nodetest.Tail(string(log), 4000))
	}
	// A crashed lab: the daemon dies with SIGKILL, leaving its agents,
	// routers, namespaces and control plane behind. `up` cleans all that and
	// starts afresh (here the other topology: one segment, node-to-node mesh).
	if code == 0 {
		if err := crashAndRestart(st); err != nil {
			tl.Cmd("down").Run()
			return 1, err
		}
		if s2, err := client.State(context.Background()); err == nil {
			st.Nodes = append(st.Nodes, s2.Nodes...)
			pids = append(pids, s2.PID)
		}
	}
	// tern-lab down leaves nothing: no namespace, no process it started, and
	// the host's own links, routes and iptables rules as they were.
	if out, err := tl.Cmd("down").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("tern-lab down: %w\n%s", err, out)
	}
	for _, n := range st.Nodes {
		pids = append(pids, n.AgentPID)
	}
	for _, r := range st.Routers {
		pids = append(pids, r.PIDs...)
	}
	problems := tl.Leftovers(pids)
	if after := labtest.HostSnapshot(); after != before {
		problems = append(problems, "the host's namespace changed:\n--- before\n"+before+"\n--- after\n"+after)
	}
	if len(problems) > 0 {
		return 1, fmt.Errorf("after tern-lab down:\n%s", strings.Join(problems, "\n"))
	}
	fmt.Fprintln(os.Stderr, "e2e: tern-lab down left no namespace, process, link, route or rule")
	return code, nil
}

// crashAndRestart kills the lab daemon with SIGKILL and checks that `up`
// removes everything the dead lab left and brings up a new one.
func crashAndRestart(old lab.State) error {
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the lab daemon: %w", err)
	}
	// The daemon is dead (or a zombie) once SIGKILL has been delivered.
	for deadline := time.Now().Add(10 * time.Second); labtest.Alive(old.PID); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the lab daemon %d still runs 10 s after SIGKILL", old.PID)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, prefix+"-*")); len(left) == 0 {
		return fmt.Errorf("the killed lab left no namespaces: the crash test tests nothing")
	}
	t0 := time.Now()
	out, err := tl.Cmd("up", "--nodes", "2", "--router", "none").CombinedOutput()
	if err != nil {
		return fmt.Errorf("tern-lab up after a crash: %w\n%s", err, out)
	}
	for _, n := range old.Nodes {
		if n.AgentPID > 0 && labtest.Alive(n.AgentPID) {
			return fmt.Errorf("the crashed lab's agent %d (%s) still runs after up", n.AgentPID, n.Name)
		}
	}
	s, err := client.State(context.Background())
	if err != nil || len(s.Nodes) != 2 || len(s.Routers) != 0 {
		return fmt.Errorf("the new lab: %+v %v", s, err)
	}
	fmt.Fprintf(os.Stderr, "e2e: up after a crashed lab: cleaned and up again (2 nodes, mesh) in %s\n", time.Since(t0).Round(100*time.Millisecond))
	return nil
}
