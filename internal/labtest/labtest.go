// Package labtest is the harness of the end-to-end tests that run on a
// tern-lab: it builds this tree's binaries (and image), brings a lab up and
// down with the real tern-lab command, and snapshots what a lab must leave
// on the host as it found it.
package labtest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/kubenode"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/nodetest"
)

// Lab is a lab of the tests: its state directory, namespace prefix and the
// binaries it runs.
type Lab struct {
	Dir, Prefix, BinDir, Root string
	Client                    *lab.Client
}

// Build builds this tree's commands into a new directory under tmp, and with
// image its image as `make image` does without a container engine
// (bin/tern-image.tar, named ghcr.io/tern-net/tern:e2e), for a lab of prefix
// whose state lives under tmp.
func Build(tmp, prefix string, image bool) (*Lab, error) {
	root, err := nodetest.ModuleRoot()
	if err != nil {
		return nil, err
	}
	l := &Lab{Dir: filepath.Join(tmp, "lab"), Prefix: prefix, BinDir: filepath.Join(tmp, "bin"), Root: root}
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", l.BinDir+"/", "./cmd/...")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w\n%s", err, out)
	}
	if image {
		img := exec.Command("bash", "hack/image.sh", "tern", filepath.Join(l.BinDir, "tern-image.tar"), "ghcr.io/tern-net/tern:e2e")
		img.Dir, img.Env = root, append(os.Environ(), "TERN_BIN_DIR="+l.BinDir, "TERN_IMAGE_ENGINE=none")
		if out, err := img.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("hack/image.sh tern: %w\n%s", err, out)
		}
	}
	l.Client = lab.NewClient(l.Dir)
	return l, nil
}

// Cmd is the tern-lab command of this lab.
func (l *Lab) Cmd(args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(l.BinDir, "tern-lab"), args...)
	c.Env = append(os.Environ(), "TERN_LAB_DIR="+l.Dir, "TERN_LAB_NAME="+l.Prefix)
	c.Dir = l.Root
	return c
}

// Leftovers lists what is left of the lab after `down`: its namespaces,
// cgroups, and the processes of pids that still run (those of the state it
// had) or that run in one of its cgroups.
func (l *Lab) Leftovers(pids []int) []string {
	var problems []string
	if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, l.Prefix+"-*")); len(left) > 0 {
		problems = append(problems, "namespaces left: "+strings.Join(left, " "))
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/" + l.Prefix + "-*"); len(left) > 0 {
		problems = append(problems, "cgroups left: "+strings.Join(left, " "))
	}
	for _, p := range pids {
		if p > 0 && Alive(p) {
			problems = append(problems, fmt.Sprintf("process %d still running", p))
		}
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err == nil && strings.Contains(string(b), ":/"+l.Prefix+"-") {
			cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			problems = append(problems, fmt.Sprintf("process %s in a lab cgroup: %s", e.Name(), strings.ReplaceAll(string(cmd), "\x00", " ")))
		}
	}
	return problems
}

// Alive reports whether pid runs (a zombie does not).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return !(i > 0 && i+2 < len(b) && b[i+2] == 'Z')
}

// HostSnapshot is what a lab must leave as it found it: the host
// namespace's links, routes and iptables rules (without counters), its
// mounts (network namespaces in /run/netns aside: other tests make theirs),
// the standard node paths a lab of real nodes binds, and the kernel tunables
// the kubelet sets.
func HostSnapshot() string {
	var b strings.Builder
	for _, args := range [][]string{{"ip", "-o", "link", "show"}, {"ip", "route", "show", "table", "all"}, {"iptables-save"}, {"ip6tables-save"}} {
		out, _ := exec.Command(args[0], args[1:]...).Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
				l = l[:i] // a chain's policy line with counters
			}
			b.WriteString(l + "\n")
		}
	}
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) > 4 && !strings.HasPrefix(fs[4], "/run/netns/") {
				b.WriteString("mount " + fs[3] + " " + fs[4] + "\n")
			}
		}
		f.Close()
	}
	for _, p := range kubenode.MountPoints {
		_, err := os.Stat(p)
		fmt.Fprintf(&b, "path %s exists=%v\n", p, err == nil)
	}
	tun, _ := kubenode.ReadKernelTunables()
	for _, k := range kubenode.KernelTunables {
		fmt.Fprintf(&b, "sysctl %s=%s\n", k, tun[k])
	}
	return b.String()
}

// Ctx is a context for one call of a test on the lab, cancelled at the
// test's end.
func Ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

// State is the lab's state, as its daemon reports it.
func (l *Lab) State(t testing.TB) lab.State {
	t.Helper()
	s, err := l.Client.State(Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// KubectlPath is the control plane's kubectl.
func (l *Lab) KubectlPath() string {
	out, _ := exec.Command("bash", filepath.Join(l.Root, "hack", "kube-env.sh"), "bindir").Output()
	return filepath.Join(strings.TrimSpace(string(out)), "kubectl")
}

// KubectlErr runs kubectl on the lab with stdin as "-".
func (l *Lab) KubectlErr(t testing.TB, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(l.KubectlPath(), append([]string{"--kubeconfig", l.State(t).Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Kubectl is KubectlErr that fails the test on error.
func (l *Lab) Kubectl(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, err := l.KubectlErr(t, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// WaitPods waits until the lab runs every pod ("ns/name") with an address,
// and returns what it reports of them.
func (l *Lab) WaitPods(t testing.TB, ids ...string) map[string]lab.PodInfo {
	t.Helper()
	var got map[string]lab.PodInfo
	err := kubetest.EventuallyErr(90*time.Second, func() error {
		pods, err := l.Client.Pods(Ctx(t))
		if err != nil {
			return err
		}
		got = map[string]lab.PodInfo{}
		for _, p := range pods {
			if len(p.IPs) > 0 {
				got[p.Namespace+"/"+p.Name] = p
			}
		}
		var missing []string
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not running: %v", missing)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pods: %v", err)
	}
	return got
}

// Setup is the lab a test binary shares between its tests.
type Setup struct {
	Name   string   // the package, in messages
	Prefix string   // of the lab's namespaces
	Image  bool     // build tern's image first (a lab of real nodes)
	Up     []string // tern-lab up's arguments
	// AfterTests, when the tests passed, runs on the lab before its down
	// and returns the states of any lab it brought up since (their
	// processes must be gone after down too).
	AfterTests func(l *Lab, st lab.State) ([]lab.State, error)
}

// Main builds the commands, brings the lab up, runs the tests, brings the
// lab down and checks that it left nothing: no namespace, cgroup or process
// it started, and the host's links, routes, rules, mounts and sysctls as they
// were. It exits with the tests' code, or 1 when the lab failed. Without
// root it runs nothing (and fails under CI, which runs as root).
func Main(m *testing.M, s Setup, shared **Lab) {
	code, err := s.run(m, shared)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", s.Name, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func (s Setup) run(m *testing.M, shared **Lab) (int, error) {
	if os.Geteuid() != 0 {
		if nodetest.InCI() {
			return 1, fmt.Errorf("the end-to-end tests need root (CI runs as root)")
		}
		fmt.Fprintf(os.Stderr, "%s: not root: the end-to-end tests did not run\n", s.Name)
		return 0, nil
	}
	tmp, err := os.MkdirTemp("", "tern-"+strings.ReplaceAll(s.Name, "/", "-")+"-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)
	l, err := Build(tmp, s.Prefix, s.Image)
	if err != nil {
		return 1, err
	}
	*shared = l
	before := HostSnapshot()
	t0 := time.Now()
	if out, err := l.Cmd(append([]string{"up"}, s.Up...)...).CombinedOutput(); err != nil {
		l.Cmd("down").Run()
		return 1, fmt.Errorf("tern-lab up %s: %w\n%s", strings.Join(s.Up, " "), err, out)
	}
	fmt.Fprintf(os.Stderr, "%s: lab up in %s\n", s.Name, time.Since(t0).Round(100*time.Millisecond))
	st, err := l.Client.State(context.Background())
	if err != nil {
		l.Cmd("down").Run()
		return 1, err
	}
	states := []lab.State{st}
	code := m.Run()
	if code != 0 {
		log, _ := os.ReadFile(lab.LogPath(l.Dir))
		fmt.Fprintf(os.Stderr, "%s: lab log (tail):\n%s\n", s.Name, nodetest.Tail(string(log), 4000))
	}
	if code == 0 && s.AfterTests != nil {
		more, err := s.AfterTests(l, st)
		states = append(states, more...)
		if err != nil {
			l.Cmd("down").Run()
			return 1, err
		}
	}
	if out, err := l.Cmd("down").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("tern-lab down: %w\n%s", err, out)
	}
	var pids []int
	for _, st := range states {
		pids = append(pids, st.PID)
		for _, n := range st.Nodes {
			pids = append(pids, n.AgentPID)
		}
		for _, r := range st.Routers {
			pids = append(pids, r.PIDs...)
		}
	}
	problems := l.Leftovers(pids)
	if after := HostSnapshot(); after != before {
		problems = append(problems, "the host's namespace changed:\n--- before\n"+before+"\n--- after\n"+after)
	}
	if len(problems) > 0 {
		return 1, fmt.Errorf("after tern-lab down:\n%s", strings.Join(problems, "\n"))
	}
	fmt.Fprintf(os.Stderr, "%s: tern-lab down left no namespace, cgroup, process, link, route, rule, mount or sysctl changed\n", s.Name)
	return code, nil
}
