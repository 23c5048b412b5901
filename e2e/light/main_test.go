// Package light runs tern's NetworkPolicy conformance cases on a light lab
// (tern-lab up --light): the real control plane, the real tern-agent in each
// node's namespace, real BIRD and FRR top-of-rack routers, and pods that are
// network namespaces attached by the real CNI plugin, served in process by
// the lab (hundreds of probes a second). It also keeps the light mode, which
// the 20- and 40-node benchmarks use, tested. It needs root; `make e2e` runs
// it, `make test` with everything else.
package light

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
	"github.com/tern-net/tern/internal/nodetest"
)

// The lab every test here shares: 4 light nodes in 2 racks, rack 1 behind
// BIRD and rack 2 behind FRR.
var tl *labtest.Lab

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/light:", err)
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
		fmt.Fprintln(os.Stderr, "e2e/light: not root: the end-to-end tests did not run")
		return 0, nil
	}
	tmp, err := os.MkdirTemp("", "tern-e2e-light-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)
	if tl, err = labtest.Build(tmp, "tllight", false); err != nil {
		return 1, err
	}
	before := labtest.HostSnapshot()
	t0 := time.Now()
	if out, err := tl.Cmd("up", "--light", "--nodes", "4", "--racks", "2", "--router", "mixed").CombinedOutput(); err != nil {
		tl.Cmd("down").Run()
		return 1, fmt.Errorf("tern-lab up --light: %w\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "e2e/light: lab up in %s\n", time.Since(t0).Round(100*time.Millisecond))
	st, err := tl.Client.State(context.Background())
	if err != nil {
		tl.Cmd("down").Run()
		return 1, err
	}
	code := m.Run()
	if code != 0 {
		log, _ := os.ReadFile(lab.LogPath(tl.Dir))
		fmt.Fprintf(os.Stderr, "e2e/light: lab log (tail):\n%s\n", nodetest.Tail(string(log), 4000))
	}
	if out, err := tl.Cmd("down").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("tern-lab down: %w\n%s", err, out)
	}
	pids := []int{st.PID}
	for _, n := range st.Nodes {
		pids = append(pids, n.AgentPID)
	}
	for _, r := range st.Routers {
		pids = append(pids, r.PIDs...)
	}
	problems := tl.Leftovers(pids)
	if after := labtest.HostSnapshot(); after != before {
		problems = append(problems, "the host changed:\n--- before\n"+before+"\n--- after\n"+after)
	}
	if len(problems) > 0 {
		return 1, fmt.Errorf("after tern-lab down:\n%s", strings.Join(problems, "\n"))
	}
	return code, nil
}

// The lab's helpers (internal/labtest), as this package calls them.
func ctx(t *testing.T) context.Context                            { return labtest.Ctx(t) }
func state(t *testing.T) lab.State                                { return tl.State(t) }
func kubectl(t *testing.T, stdin string, args ...string) string   { return tl.Kubectl(t, stdin, args...) }
func waitPods(t *testing.T, ids ...string) map[string]lab.PodInfo { return tl.WaitPods(t, ids...) }
