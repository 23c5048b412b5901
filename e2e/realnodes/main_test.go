// Package realnodes runs tern end to end on a lab of real nodes (tern-lab up
// --real): the real kubelet, containerd, runc and kube-proxy on every node,
// kube-scheduler, tern installed by `kubectl apply -k` with the image built
// from this tree, pods that are real agnhost containers. Everything is done
// as a user would: kubectl, kubectl exec, kubectl logs. It needs root; `make
// test` runs it.
package realnodes

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

// The lab every test here shares: 4 real nodes in 2 racks, rack 1 behind
// BIRD and rack 2 behind FRR.
var (
	tl     *labtest.Lab
	client *lab.Client
)

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnodes:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	if os.Geteuid() != 0 {
		if nodetest.InCI() {
			return 1, fmt.Errorf("the real-node tests need root (CI runs as root)")
		}
		fmt.Fprintln(os.Stderr, "realnodes: not root: the real-node tests did not run")
		return 0, nil
	}
	tmp, err := os.MkdirTemp("", "tern-realnodes-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)
	// This tree's binaries, and its image as `make image` builds it.
	if tl, err = labtest.Build(tmp, "tlreal", true); err != nil {
		return 1, err
	}
	client = tl.Client
	before := labtest.HostSnapshot()
	t0 := time.Now()
	if out, err := tl.Cmd("up", "--nodes", "4", "--racks", "2", "--router", "mixed").CombinedOutput(); err != nil {
		tl.Cmd("down").Run()
		return 1, fmt.Errorf("tern-lab up: %w\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "realnodes: lab of 4 real nodes up in %s\n", time.Since(t0).Round(100*time.Millisecond))
	st, err := client.State(context.Background())
	if err != nil {
		tl.Cmd("down").Run()
		return 1, err
	}
	code := m.Run()
	if code != 0 {
		log, _ := os.ReadFile(lab.LogPath(tl.Dir))
		fmt.Fprintf(os.Stderr, "realnodes: lab log (tail):\n%s\n", nodetest.Tail(string(log), 4000))
	}
	if out, err := tl.Cmd("down").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("tern-lab down: %w\n%s", err, out)
	}
	pids := []int{st.PID}
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
	fmt.Fprintln(os.Stderr, "realnodes: tern-lab down left no namespace, process, cgroup, mount, link, route, rule or changed kernel tunable")
	return code, nil
}
