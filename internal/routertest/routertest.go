// Package routertest runs real BGP routers for tests: BIRD 2 and FRR (Debian
// packages bird2 and frr), each inside a network namespace the test made,
// stopped by PID when the test ends.
package routertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/nodetest"
)

// Start runs name in netns until the test ends (SIGTERM, then SIGKILL, by PID)
// with its output in logPath.
func Start(t testing.TB, netns ns.NetNS, logPath string, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	c := exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--", name}, args...)...)
	c.Env = append(os.Environ(), env...)
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
		f.Close()
	})
	return c
}

// BIRD is a running BIRD 2.
type BIRD struct {
	t       testing.TB
	netns   ns.NetNS
	Sock    string
	LogPath string
}

// StartBIRD runs BIRD with conf in netns. A conf needs "protocol device" for
// BGP to come up; "error wait time 1, 5" keeps retries short.
func StartBIRD(t testing.TB, netns ns.NetNS, conf string) *BIRD {
	t.Helper()
	nodetest.RequirePath(t, "/usr/sbin/bird", "BIRD 2 (Debian package bird2)")
	dir := t.TempDir()
	path := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &BIRD{t: t, netns: netns, Sock: filepath.Join(dir, "bird.ctl"), LogPath: filepath.Join(dir, "bird.log")}
	Start(t, netns, b.LogPath, nil, "bird", "-f", "-c", path, "-s", b.Sock, "-P", filepath.Join(dir, "bird.pid"))
	return b
}

// Birdc runs a birdc command and returns its output.
func (b *BIRD) Birdc(args ...string) string {
	out, _ := exec.Command("birdc", append([]string{"-s", b.Sock}, args...)...).CombinedOutput()
	return string(out)
}

// Log returns what BIRD printed.
func (b *BIRD) Log() string { return readFile(b.LogPath) }

// FRR is a running FRR: zebra, staticd and bgpd.
type FRR struct {
	Vty   string
	netns ns.NetNS
	logs  []string
}

// StartFRR runs FRR with conf (an integrated frr.conf) in netns. A BGP conf
// needs "no bgp ebgp-requires-policy", or eBGP sessions exchange nothing.
func StartFRR(t testing.TB, netns ns.NetNS, conf string) *FRR {
	t.Helper()
	nodetest.RequirePath(t, "/usr/lib/frr/bgpd", "FRR (Debian package frr)")
	// FRR drops to user frr, which must reach its directory: the test's own
	// temporary directory is mode 0700.
	dir, err := os.MkdirTemp("", "tern-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "frr.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "-R", "frr:frr", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	f := &FRR{Vty: dir, netns: netns}
	for _, d := range []string{"zebra", "staticd", "bgpd"} {
		log := filepath.Join(dir, d+".log")
		f.logs = append(f.logs, log)
		Start(t, netns, log, nil, "/usr/lib/frr/"+d, "-f", path, "-i", filepath.Join(dir, d+".pid"),
			"-z", filepath.Join(dir, "zserv.api"), "--vty_socket", dir, "-u", "frr", "-g", "frr")
		if d == "zebra" {
			// The others connect to zebra's socket: wait for it.
			sock := filepath.Join(dir, "zserv.api")
			deadline := time.Now().Add(10 * time.Second)
			for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
				if time.Now().After(deadline) {
					t.Fatalf("zebra has not opened %s after 10 s:\n%s", sock, readFile(log))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return f
}

// Vtysh runs a vtysh command in the router's namespace.
func (f *FRR) Vtysh(cmd string) string {
	out, _ := exec.Command("nsenter", "--net="+f.netns.Path(), "--", "vtysh", "--vty_socket", f.Vty, "-c", cmd).CombinedOutput()
	return string(out)
}

// Log returns what FRR's daemons printed.
func (f *FRR) Log() string {
	s := ""
	for _, l := range f.logs {
		s += readFile(l)
	}
	return s
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
