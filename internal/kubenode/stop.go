package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a process the node started, reaped by its own goroutine.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped
}

func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL when the process is still there after
// grace, and returns once it has exited.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Stop stops the node and removes what it made: the kubelet first (so that
// nothing restarts a pod), then every pod through containerd's CRI (so the
// CNI plugin's DEL runs while the node's network agent may still answer),
// containerd, whatever process is left in the node's cgroups or mount
// namespace (container processes and their shims), the mount namespace
// (its mounts go with it), and the cgroup root. The node's directory stays,
// with its logs. Stop returns once all of it is gone, or says what is not.
func (n *Node) Stop() error {
	var errs []error
	n.proxy.stop(5 * time.Second)
	n.kubelet.stop(10 * time.Second)
	if n.containerd != nil {
		select {
		case <-n.containerd.done:
		default:
			if err := n.removePods(); err != nil {
				n.log.Warn("removing pods", "error", err)
			}
		}
	}
	n.containerd.stop(10 * time.Second)
	if err := n.killLeftovers(); err != nil {
		errs = append(errs, err)
	}
	n.holder.stop(time.Second)
	if n.cgroupRoot != "" {
		if err := removeCgroupRoot(n.cgroupRoot, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removePods stops and removes every pod sandbox with crictl, within 60 s.
func (n *Node) removePods() error {
	crictl := n.bin("crictl")
	if _, err := os.Stat(crictl); err != nil {
		return nil
	}
	cmd := exec.Command(crictl, "--runtime-endpoint", "unix://"+n.HostPath("/run/containerd/containerd.sock"),
		"--timeout", "60s", "rmp", "--all", "--force")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("crictl rmp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// killLeftovers SIGKILLs every process in the node's cgroups or mount
// namespace but the holder, and waits until they are gone (10 s at most).
func (n *Node) killLeftovers() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := n.leftovers()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of node %s still running after SIGKILL: %v", n.cfg.Name, pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leftovers are the PIDs (zombies excluded) in the node's cgroups or its
// mount namespace, the holder's excepted.
func (n *Node) leftovers() []int {
	var pids []int
	if n.cgroupRoot != "" {
		pids = cgroupPIDs(n.cgroupRoot)
	}
	if n.mntNS != "" {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == n.mntNS {
				pids = append(pids, pid)
			}
		}
	}
	if n.holder != nil {
		holder := n.holder.cmd.Process.Pid
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == holder })
	}
	pids = slices.DeleteFunc(pids, zombie)
	slices.Sort(pids)
	return slices.Compact(pids)
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// cgroupV1 is where the cgroup v1 hierarchies are mounted.
const cgroupV1 = "/sys/fs/cgroup"

// hierarchies are the cgroup hierarchies of this machine: the v1 ones (cpu,
// memory, ..., the named systemd one) and, on a hybrid machine, the unified
// (v2) one, where the kubelet makes its cgroups too.
func hierarchies() []string {
	entries, _ := os.ReadDir(cgroupV1)
	var hs []string
	for _, e := range entries {
		p := filepath.Join(cgroupV1, e.Name())
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			hs = append(hs, p)
		}
	}
	return hs
}

// makeCgroupRoot creates root in every hierarchy; in cpuset, with the
// parent's CPUs and memory nodes (a new cpuset has none, and no task may
// join it).
func makeCgroupRoot(root string) error {
	for _, h := range hierarchies() {
		dir := filepath.Join(h, root)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if filepath.Base(h) != "cpuset" {
			continue
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
			}
		}
	}
	return nil
}

// cgroupPIDs are the processes in root or below it, in any hierarchy.
func cgroupPIDs(root string) []int {
	var pids []int
	for _, h := range hierarchies() {
		filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoot removes root and every cgroup below it in every
// hierarchy, deepest first, retrying while a cgroup is still busy (its last
// tasks exiting) for up to timeout.
func removeCgroupRoot(root string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, h := range hierarchies() {
			var dirs []string
			filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
					left = append(left, dirs[i])
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups not removed: %s", strings.Join(left, " "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// EnsureMountPoints creates the MountPoints (and the lock file) the host
// does not have, and returns those it created, for RemoveMountPoints.
func EnsureMountPoints() ([]string, error) {
	var created []string
	for _, p := range MountPoints {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		// Record the topmost directory that MkdirAll creates.
		top := p
		for parent := filepath.Dir(top); ; parent = filepath.Dir(top) {
			if _, err := os.Stat(parent); err == nil {
				break
			}
			top = parent
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return created, err
		}
		created = append(created, p)
		if top != p {
			created = append(created, top)
		}
	}
	if _, err := os.Stat(lockFile); err != nil {
		f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return created, err
		}
		f.Close()
		created = append(created, lockFile)
	}
	return created, nil
}

// RemoveMountPoints removes what EnsureMountPoints created, once no node
// uses it: directories only when empty (and the parents it created, in the
// order recorded: deepest first).
func RemoveMountPoints(created []string) error {
	var errs []error
	for _, p := range created {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// KernelTunables are the global sysctls the kubelet sets at start
// (kubelet's container manager, with protectKernelDefaults false): they are
// not a network namespace's, so a lab on a development machine must put the
// host's values back.
var KernelTunables = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// SaveKernelTunables reads the KernelTunables and returns a function that
// writes back those that changed.
func SaveKernelTunables() (restore func() error, err error) {
	saved, err := ReadKernelTunables()
	if err != nil {
		return nil, err
	}
	return func() error { return WriteKernelTunables(saved) }, nil
}

// ReadKernelTunables reads the KernelTunables' values.
func ReadKernelTunables() (map[string]string, error) {
	saved := map[string]string{}
	for _, t := range KernelTunables {
		b, err := os.ReadFile(filepath.Join("/proc/sys", t))
		if err != nil {
			return nil, err
		}
		saved[t] = strings.TrimSpace(string(b))
	}
	return saved, nil
}

// WriteKernelTunables writes back the values in saved that differ (as read
// by ReadKernelTunables, perhaps by a process that has crashed since).
func WriteKernelTunables(saved map[string]string) error {
	var errs []error
	for _, t := range KernelTunables {
		v, ok := saved[t]
		if !ok {
			continue
		}
		p := filepath.Join("/proc/sys", t)
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == v {
			continue
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// CleanCgroups stops every process in the cgroup roots that match pattern
// (a glob of /name, such as /ternlab-*) in any hierarchy and removes those
// cgroups: what a node whose owner crashed left behind.
func CleanCgroups(pattern string) error {
	roots := map[string]bool{}
	for _, h := range hierarchies() {
		matches, _ := filepath.Glob(filepath.Join(h, pattern))
		for _, m := range matches {
			roots["/"+filepath.Base(m)] = true
		}
	}
	var errs []error
	for root := range roots {
		deadline := time.Now().Add(10 * time.Second)
		for pids := cgroupPIDs(root); len(pids) > 0 && time.Now().Before(deadline); pids = slices.DeleteFunc(cgroupPIDs(root), zombie) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := removeCgroupRoot(root, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
