package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// NetNSDir is where named network namespaces live (iproute2's convention, so
// `ip netns exec NAME` works on every namespace the lab makes).
const NetNSDir = "/run/netns"

// NSPath is the path of the named network namespace.
func NSPath(name string) string {
	if filepath.IsAbs(name) {
		return name // a path already, such as a real pod's /proc/PID/ns/net
	}
	return filepath.Join(NetNSDir, name)
}

// ip runs `ip ARGS` (in the namespace netns unless empty) and says what failed.
func ip(netns string, args ...string) error {
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNS runs a command in a named namespace and returns its combined output.
func inNS(netns string, args ...string) (string, error) {
	out, err := NSCommand(netns, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s (in %s): %w: %s", strings.Join(args, " "), netns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// NSCommand prepares a command that runs in the named namespace.
func NSCommand(netns string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + NSPath(netns), "--"}, args...)...)
}

// addNS creates a named namespace with lo up.
func addNS(name string) error {
	if err := ip("", "netns", "add", name); err != nil {
		return err
	}
	return ip(name, "link", "set", "lo", "up")
}

// delNS stops every process still in the namespace (found by its namespace,
// stopped by PID) and deletes it. A namespace that is not there is no error.
func delNS(name string) error {
	if _, err := os.Stat(NSPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killIn(name)
	return ip("", "netns", "del", name)
}

// killIn stops, by PID, the processes whose network namespace is the named one:
// SIGTERM, then SIGKILL after 3 s.
func killIn(name string) {
	pids := pidsIn(name)
	if len(pids) == 0 {
		return
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		alive := false
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil && !zombie(p) {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// pidsIn lists the processes in the named namespace (by the namespace's inode).
func pidsIn(name string) []int {
	var want syscall.Stat_t
	if err := syscall.Stat(NSPath(name), &want); err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			out = append(out, pid)
		}
	}
	return out
}

// labNamespaces lists the named namespaces of the lab called prefix.
func labNamespaces(prefix string) []string {
	entries, _ := os.ReadDir(NetNSDir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// veth creates a veth pair: a in netns nsA, b in nsB.
func veth(nsA, a, nsB, b string) error {
	return ip(nsA, "link", "add", a, "type", "veth", "peer", "name", b, "netns", nsB)
}

// addrStep is the `ip` step that puts a on eth0 with its segment's prefix
// length (/24, /64), IPv6 without duplicate address detection (a lab
// segment has no duplicates, and a tentative address cannot be used).
func addrStep(a netip.Addr) []string { return addrStepOn(a, "eth0") }

func addrStepOn(a netip.Addr, dev string) []string {
	if a.Is6() {
		return []string{"-6", "addr", "add", netip.PrefixFrom(a, 64).String(), "dev", dev, "nodad"}
	}
	return []string{"addr", "add", netip.PrefixFrom(a, 24).String(), "dev", dev}
}

// defaultRouteStep is the `ip` step of a default route via gw on dev.
func defaultRouteStep(gw netip.Addr, dev string) []string {
	if gw.Is6() {
		return []string{"-6", "route", "add", "default", "via", gw.String(), "dev", dev}
	}
	return []string{"route", "add", "default", "via", gw.String(), "dev", dev, "onlink"}
}
