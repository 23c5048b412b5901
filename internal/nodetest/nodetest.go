// Package nodetest runs a real tern node for tests and benchmarks: a network
// namespace the test creates, the built tern-agent inside it, and the built CNI
// plugin called through libcni exactly as a container runtime calls it.
package nodetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/prereq"
)

// InCI reports whether missing prerequisites must fail rather than skip.
func InCI() bool { return prereq.InCI() }

// RequireRoot skips the test when not root, or fails it under CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	prereq.RequireRoot(t)
}

// RequirePath skips the test when path is missing, or fails it under CI=true.
func RequirePath(t testing.TB, path, what string) {
	t.Helper()
	prereq.RequirePath(t, path, what)
}

// DebianCNIDir holds Debian's containernetworking-plugins.
const DebianCNIDir = "/usr/lib/cni"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds tern-agent, the CNI plugin (as "tern") and ternctl once per
// test binary and returns their directory.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tern-bin-")
		if buildErr != nil {
			return
		}
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		for _, b := range [][2]string{{"./cmd/tern-agent", "tern-agent"}, {"./cmd/tern-cni", "tern"}, {"./cmd/ternctl", "ternctl"}} {
			// Built as `make build` builds them: static (no dynamic loader at
			// every exec of the plugin), stripped.
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(buildDir, b[1]), b[0])
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %w\n%s", b[0], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return buildDir
}

// ModuleRoot is the directory of tern's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Node is a "node": a network namespace with tern-agent running in it.
type Node struct {
	t        testing.TB
	Name     string
	NS       ns.NetNS
	Dir      string
	BinDir   string
	PodCIDRs string
	Args     []string // extra agent flags
	CNI      *libcni.CNIConfig

	agentMu sync.Mutex
	agent   *exec.Cmd
	exited  chan struct{}
}

// NewNode creates the node namespace and starts the agent in it, standalone
// with podCIDRs.
func NewNode(t testing.TB, podCIDRs string, agentArgs ...string) *Node {
	t.Helper()
	n := NewNodeNS(t)
	n.PodCIDRs, n.Args = podCIDRs, agentArgs
	n.StartAgent()
	return n
}

// NewNodeNS creates the node namespace with a libcni configuration, and
// starts no agent: set PodCIDRs or Args, then StartAgent or StartAgentNoWait.
func NewNodeNS(t testing.TB) *Node {
	t.Helper()
	RequireRoot(t)
	RequirePath(t, DebianCNIDir+"/portmap", "Debian containernetworking-plugins")
	bin := Binaries(t)
	nodeNS, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create node netns: %v", err)
	}
	n := &Node{t: t, Name: filepath.Base(nodeNS.Path()), NS: nodeNS, Dir: t.TempDir(), BinDir: bin}
	t.Cleanup(func() {
		n.StopAgent()
		nodeNS.Close()
		_ = testutils.UnmountNS(nodeNS)
	})
	if err := n.Exec("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	// The plugins' stderr (their logs) goes to a file, not the test's output.
	pluginLog, err := os.OpenFile(filepath.Join(n.Dir, "plugins.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatalf("plugin log: %v", err)
	}
	t.Cleanup(func() { pluginLog.Close() })
	n.CNI = libcni.NewCNIConfigWithCacheDir([]string{bin, DebianCNIDir}, filepath.Join(n.Dir, "cni-cache"), &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: pluginLog}})
	return n
}

// Socket is the agent's CNI socket.
func (n *Node) Socket() string { return filepath.Join(n.Dir, "run", "cni.sock") }

// Client returns an agent API client.
func (n *Node) Client() *agentapi.Client { return agentapi.NewClient(n.Socket(), 10*time.Second) }

// Exec runs a command in the node namespace.
func (n *Node) Exec(name string, args ...string) error {
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// Output runs a command in the node namespace and returns its stdout.
func (n *Node) Output(name string, args ...string) (string, error) {
	cmd := n.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// Command prepares a command that runs in the node namespace.
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.NS.Path(), "--", name}, args...)...)
}

// StartAgent starts tern-agent in the node namespace and waits until it is ready.
func (n *Node) StartAgent() {
	n.t.Helper()
	n.StartAgentNoWait()
	n.WaitReady(15 * time.Second)
}

// StartAgentNoWait starts tern-agent in the node namespace: standalone with
// n.PodCIDRs when set, else as n.Args say (--kubeconfig ...).
func (n *Node) StartAgentNoWait() {
	n.t.Helper()
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	args := []string{"--net=" + n.NS.Path(), "--", filepath.Join(n.BinDir, "tern-agent"),
		"--node-name", n.Name, "--state-dir", filepath.Join(n.Dir, "state"), "--run-dir", filepath.Join(n.Dir, "run"),
		"--health-addr", "127.0.0.1:9099"}
	if n.PodCIDRs != "" {
		args = append(args, "--pod-cidr", n.PodCIDRs)
	}
	cmd := exec.Command("nsenter", append(args, n.Args...)...)
	logf, err := os.OpenFile(filepath.Join(n.Dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.t.Fatalf("agent log: %v", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start agent: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	n.agent, n.exited = cmd, exited
}

// WaitReady waits until the agent says it is ready on its socket.
func (n *Node) WaitReady(timeout time.Duration) {
	n.t.Helper()
	n.agentMu.Lock()
	exited := n.exited
	n.agentMu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := n.Client().Status(ctx)
		cancel()
		if err == nil && st.Ready {
			return
		}
		select {
		case <-exited:
			n.t.Fatalf("tern-agent exited:\n%s", n.AgentLog())
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("tern-agent not ready after %s (last: %v %+v):\n%s", timeout, err, st, n.AgentLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Health GETs a path of the agent's health endpoint (127.0.0.1:9099 in the
// node namespace) and returns the status code and body.
func (n *Node) Health(path string) (int, string, error) {
	// The transport dials from goroutines of its own: each dial enters the
	// node namespace itself.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.InNode(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:9099" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// AgentPID is the agent's process ID (nsenter execs the agent in place).
func (n *Node) AgentPID() int {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.agent == nil {
		return 0
	}
	return n.agent.Process.Pid
}

// KillAgent kills the agent with SIGKILL and waits for it to be gone.
func (n *Node) KillAgent() { n.signalAgent(syscall.SIGKILL) }

// StopAgent stops the agent with SIGTERM (if it runs) and waits.
func (n *Node) StopAgent() { n.signalAgent(syscall.SIGTERM) }

func (n *Node) signalAgent(sig syscall.Signal) {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.agent == nil {
		return
	}
	_ = n.agent.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		_ = n.agent.Process.Kill()
		<-n.exited
	}
	n.agent = nil
}

// PluginLog returns what the CNI plugins logged on stderr.
func (n *Node) PluginLog() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "plugins.log"))
	return string(b)
}

// AgentLog returns what the agent logged.
func (n *Node) AgentLog() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "agent.log"))
	return string(b)
}

// Tail is the last n bytes of a log, for a failure message.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// ConfList returns a conflist with tern first, then the given chained plugins.
func (n *Node) ConfList(cniVersion string, chained ...map[string]any) *libcni.NetworkConfigList {
	n.t.Helper()
	plugins := []map[string]any{{"type": "tern", "agentSocket": n.Socket()}}
	plugins = append(plugins, chained...)
	raw, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": "tern", "plugins": plugins})
	if err != nil {
		n.t.Fatalf("marshal conflist: %v", err)
	}
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		n.t.Fatalf("parse conflist: %v\n%s", err, raw)
	}
	return list
}

// Pod is an attached pod.
type Pod struct {
	Name   string
	NS     ns.NetNS
	Result *current.Result
	RT     *libcni.RuntimeConf
}

// IPs returns the pod's addresses from its result.
func (p *Pod) IPs() []netip.Addr {
	var out []netip.Addr
	for _, ipc := range p.Result.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		out = append(out, a.Unmap())
	}
	return out
}

// NewPodNS creates a pod network namespace, removed at cleanup.
func (n *Node) NewPodNS() ns.NetNS {
	n.t.Helper()
	podNS, err := testutils.NewNS()
	if err != nil {
		n.t.Fatalf("create pod netns: %v", err)
	}
	n.t.Cleanup(func() { podNS.Close(); _ = testutils.UnmountNS(podNS) })
	return podNS
}

// RuntimeConf is what a runtime passes for pod name (namespace "default") in podNS.
func RuntimeConf(name string, podNS ns.NetNS) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "ctr-" + name,
		NetNS:       podNS.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}},
	}
}

// Add runs ADD through libcni from inside the node namespace.
func (n *Node) Add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	var res *current.Result
	err := n.InNode(func() error {
		r, err := n.CNI.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	return res, err
}

// Del runs DEL through libcni from inside the node namespace.
func (n *Node) Del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.InNode(func() error { return n.CNI.DelNetworkList(context.Background(), list, rt) })
}

// Check runs CHECK through libcni from inside the node namespace.
func (n *Node) Check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.InNode(func() error { return n.CNI.CheckNetworkList(context.Background(), list, rt) })
}

// InNode runs f on an OS thread in the node namespace; processes it starts
// (the CNI plugins) inherit that namespace.
func (n *Node) InNode(f func() error) error {
	return n.NS.Do(func(ns.NetNS) error { return f() })
}

// MustAdd creates a pod namespace and attaches pod name to it.
func (n *Node) MustAdd(list *libcni.NetworkConfigList, name string) *Pod {
	n.t.Helper()
	return n.MustAddPod(list, name, "")
}

// MustAddPod is MustAdd for the pod with uid (K8S_POD_UID; none when "").
func (n *Node) MustAddPod(list *libcni.NetworkConfigList, name, uid string) *Pod {
	n.t.Helper()
	podNS := n.NewPodNS()
	rt := RuntimeConf(name, podNS)
	if uid != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_UID", uid})
	}
	res, err := n.Add(list, rt)
	if err != nil {
		n.t.Fatalf("ADD %s: %v\nagent log:\n%s\nplugin log:\n%s", name, err, n.AgentLog(), n.PluginLog())
	}
	return &Pod{Name: name, NS: podNS, Result: res, RT: rt}
}
