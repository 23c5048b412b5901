package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a stand-in lab daemon: run as
// `.../tern-lab daemon CONFIG` with TERN_LAB_FAKE_DAEMON set, it waits to be
// stopped.
func TestMain(m *testing.M) {
	if os.Getenv("TERN_LAB_FAKE_DAEMON") != "" {
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A daemon of the same lab name is found whatever its directory (a killed
// test binary leaves one, which would restart its routers into the next
// lab's namespaces); one of another name is not.
func TestLabDaemons(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tern-lab")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	start := func(prefix string) *exec.Cmd {
		cmd := exec.Command(bin, "daemon", `{"dir":"/elsewhere","prefix":"`+prefix+`"}`)
		cmd.Env = append(os.Environ(), "TERN_LAB_FAKE_DAEMON=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd
	}
	ours, other := start("tlabdaemons"), start("tlabdaemons-other")
	if got := labDaemons("tlabdaemons"); !slices.Equal(got, []int{ours.Process.Pid}) {
		t.Fatalf("lab daemons of tlabdaemons: %v, want [%d] (not %d)", got, ours.Process.Pid, other.Process.Pid)
	}
	// Cleanup stops it (by its PID) and leaves the other one running.
	Cleanup(t.TempDir(), "tlabdaemons", nil)
	if err := ours.Wait(); err == nil {
		t.Fatal("the stale daemon was not stopped")
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the daemon of another lab was stopped: %v", err)
	}
}

// A process is restarted only into the namespace it was started in.
func TestNSIdentity(t *testing.T) {
	self := nsIdentity("/proc/self/ns/net")
	if self == "" || self != nsIdentity("/proc/self/ns/net") {
		t.Fatalf("this process's namespace: %q", self)
	}
	if id := nsIdentity("tern-no-such-namespace"); id != "" {
		t.Fatalf("a missing namespace has identity %q", id)
	}
	if nsIdentity("/proc/1/ns/mnt") == self {
		t.Fatal("two namespaces with one identity")
	}
}
