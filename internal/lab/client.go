package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/kubenode"
)

// Client talks to a running lab's daemon.
type Client struct {
	Dir  string
	http *http.Client
}

// NewClient returns a client for the lab in dir.
func NewClient(dir string) *Client {
	return &Client{Dir: dir, http: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", SocketPath(dir))
		}}}}
}

// ErrNoLab: no lab daemon answers in the directory.
var ErrNoLab = errors.New("no lab is running (start one with `tern-lab up`)")

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://lab"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if _, serr := os.Stat(SocketPath(c.Dir)); serr != nil {
			return ErrNoLab
		}
		return fmt.Errorf("lab daemon (%s): %w", SocketPath(c.Dir), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("lab daemon: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

// State returns the running lab's state.
func (c *Client) State(ctx context.Context) (State, error) {
	var s State
	return s, c.do(ctx, http.MethodGet, "/state", &s)
}

// Pods lists the pods the lab runs.
func (c *Client) Pods(ctx context.Context) ([]PodInfo, error) {
	var p []PodInfo
	return p, c.do(ctx, http.MethodGet, "/pods", &p)
}

// AddNode adds a node (rack 0: the next rack in turn).
func (c *Client) AddNode(ctx context.Context, rack int) (Node, error) {
	var n Node
	return n, c.do(ctx, http.MethodPost, "/nodes?rack="+strconv.Itoa(rack), &n)
}

// RemoveNode removes a node.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/nodes/"+name, nil)
}

// Up cleans whatever a previous lab in cfg.Dir left, starts the daemon
// (tern-lab's own executable with the hidden "daemon" command) detached, and
// waits until the lab is ready. progress gets the daemon's log as it grows.
func Up(ctx context.Context, cfg Config, self string, progress io.Writer) (State, error) {
	if err := cfg.Validate(); err != nil {
		return State{}, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return State{}, err
	}
	Cleanup(cfg.Dir, cfg.Prefix, progress)
	logf, err := os.OpenFile(LogPath(cfg.Dir), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return State{}, err
	}
	defer logf.Close()
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(self, "daemon", string(js))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return State{}, fmt.Errorf("start the lab daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := NewClient(cfg.Dir)
	var shown int64
	for {
		if progress != nil {
			shown = copyFrom(LogPath(cfg.Dir), shown, progress)
		}
		select {
		case err := <-exited:
			if progress != nil {
				copyFrom(LogPath(cfg.Dir), shown, progress)
			}
			return State{}, fmt.Errorf("the lab daemon exited (%v); its log is %s", err, LogPath(cfg.Dir))
		case <-ctx.Done():
			return State{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		s, err := c.State(ctx)
		if err != nil {
			continue
		}
		switch s.Phase {
		case PhaseReady:
			if progress != nil {
				copyFrom(LogPath(cfg.Dir), shown, progress)
			}
			return s, nil
		case PhaseFailed:
			return s, fmt.Errorf("the lab did not come up: %s (log: %s)", s.Error, LogPath(cfg.Dir))
		}
	}
}

func copyFrom(path string, off int64, w io.Writer) int64 {
	f, err := os.Open(path)
	if err != nil {
		return off
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return off
	}
	n, _ := io.Copy(w, f)
	return off + n
}

// Down stops a running lab and removes everything it made, then removes any
// leftovers of a crashed one.
func Down(ctx context.Context, dir, prefix string, progress io.Writer) error {
	var pid int
	if s, err := ReadState(dir); err == nil {
		pid = s.PID
	}
	c := NewClient(dir)
	if err := c.do(ctx, http.MethodPost, "/down", nil); err == nil && pid > 0 {
		deadline := time.Now().Add(90 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	Cleanup(dir, prefix, progress)
	if left := labNamespaces(prefix); len(left) > 0 {
		return fmt.Errorf("namespaces left behind: %s", strings.Join(left, " "))
	}
	return nil
}

// ReadState reads the state the daemon of the lab in dir wrote last; it
// stays after a failed `up`.
func ReadState(dir string) (State, error) {
	var s State
	b, err := os.ReadFile(StatePath(dir))
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil && !zombie(pid) }

// Cleanup removes what a lab in dir with prefix left behind: its daemon (if
// still running, by the PID it recorded), every process in its namespaces
// (by PID), the namespaces, and its control plane.
func Cleanup(dir, prefix string, progress io.Writer) {
	say := func(format string, a ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", a...)
		}
	}
	var daemons []int
	s, err := ReadState(dir)
	if err == nil && alive(s.PID) && isLabDaemon(s.PID) {
		daemons = append(daemons, s.PID)
	}
	// A daemon of the same name from another directory (a test binary
	// killed while its lab came up leaves one behind): it supervises the
	// namespaces of that name, and would restart its routers and agents
	// into this lab's.
	for _, pid := range labDaemons(prefix) {
		if !slices.Contains(daemons, pid) {
			daemons = append(daemons, pid)
		}
	}
	for _, pid := range daemons {
		say("stopping the previous lab daemon (PID %d)", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(60 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Real nodes' containers (in namespaces of their own) by their cgroups.
	if err := kubenode.CleanCgroups("/" + prefix + "-*"); err != nil {
		say("%v", err)
	}
	left := labNamespaces(prefix)
	if len(left) > 0 {
		say("removing %d namespaces left by a previous lab", len(left))
	}
	for _, n := range left {
		if err := delNS(n); err != nil {
			say("%v", err)
		}
	}
	kube := filepath.Join(dir, "kube")
	if _, err := os.Stat(filepath.Join(kube, "kube-apiserver.pid")); err == nil && s.Config.Root != "" {
		out, err := exec.Command("bash", filepath.Join(s.Config.Root, "hack", "kube-env.sh"), "down", kube).CombinedOutput()
		if err != nil {
			say("control plane down: %v: %s", err, out)
		}
	}
	if err := kubenode.CleanCgroups("/" + prefix + "-*"); err != nil {
		say("%v", err)
	}
	if len(s.MountPoints) > 0 {
		if err := kubenode.RemoveMountPoints(s.MountPoints); err != nil {
			say("%v", err)
		}
	}
	if err := kubenode.WriteKernelTunables(s.Tunables); err != nil {
		say("%v", err)
	}
	_ = os.Remove(StatePath(dir))
	_ = os.Remove(SocketPath(dir))
	// The nodes' state (IPAM databases, logs) and the control plane's data
	// belong to the lab that is gone; the daemon's log stays for reading.
	for _, sub := range []string{"nodes", "kube", "cni-bin", "kubeconfig"} {
		_ = os.RemoveAll(filepath.Join(dir, sub))
	}
	frr, _ := filepath.Glob(filepath.Join(frrRoot, prefix+"-tor*"))
	tors, _ := filepath.Glob(filepath.Join(dir, "tor*"))
	for _, p := range append(frr, tors...) {
		_ = os.RemoveAll(p)
	}
}

// labDaemons are the running lab daemons (other than this process) of the
// lab named prefix, found by their command lines (`tern-lab daemon CONFIG`,
// CONFIG the JSON of the lab's Config).
func labDaemons(prefix string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		args, ok := daemonArgs(pid)
		var c struct{ Prefix string }
		if ok && len(args) > 2 && alive(pid) && json.Unmarshal([]byte(args[2]), &c) == nil && c.Prefix == prefix {
			out = append(out, pid)
		}
	}
	return out
}

func isLabDaemon(pid int) bool {
	_, ok := daemonArgs(pid)
	return ok
}

// daemonArgs is pid's command line if it is a lab daemon's.
func daemonArgs(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return args, len(args) > 1 && strings.HasSuffix(args[0], "tern-lab") && args[1] == "daemon"
}

// Resolve finds the namespace of NODE (a node name) or NS/POD.
func (c *Client) Resolve(ctx context.Context, target string) (string, error) {
	if strings.Contains(target, "/") {
		p, err := c.Pod(ctx, target)
		if err != nil {
			return "", err
		}
		return p.NetNS, nil
	}
	s, err := c.State(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range s.Nodes {
		if n.Name == target {
			return n.NetNS, nil
		}
	}
	for _, r := range s.Routers {
		if ClientName(r.Rack) == target && r.ClientNetNS != "" {
			return r.ClientNetNS, nil
		}
	}
	return "", fmt.Errorf("no node or client %q in the lab (nodes: %s; clients behind the routers: client1 to client%d)", target, nodeNames(s), len(s.Routers))
}

func nodeNames(s State) string {
	var names []string
	for _, n := range s.Nodes {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

// Pod finds a running pod by "namespace/name".
func (c *Client) Pod(ctx context.Context, id string) (PodInfo, error) {
	ns, name, ok := strings.Cut(id, "/")
	if !ok || ns == "" || name == "" {
		return PodInfo{}, fmt.Errorf("%q: want NAMESPACE/POD", id)
	}
	pods, err := c.Pods(ctx)
	if err != nil {
		return PodInfo{}, err
	}
	for _, p := range pods {
		if p.Namespace == ns && p.Name == name {
			return p, nil
		}
	}
	return PodInfo{}, fmt.Errorf("pod %s is not running in the lab", id)
}

// ParseTarget parses NS/POD:PORT[/PROTO] (protocol TCP by default).
func ParseTarget(s string) (pod string, port uint16, proto string, err error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", 0, "", fmt.Errorf("%q: want NAMESPACE/POD:PORT[/tcp|udp]", s)
	}
	pod, rest := s[:i], s[i+1:]
	proto = "TCP"
	if p, pr, ok := strings.Cut(rest, "/"); ok {
		rest, proto = p, strings.ToUpper(pr)
	}
	if proto != "TCP" && proto != "UDP" {
		return "", 0, "", fmt.Errorf("%q: protocol %q: want tcp or udp", s, proto)
	}
	n, err := strconv.ParseUint(rest, 10, 16)
	if err != nil || n == 0 {
		return "", 0, "", fmt.Errorf("%q: port %q: want 1 to 65535", s, rest)
	}
	return pod, uint16(n), proto, nil
}

// ProbePods connects from pod src to dst ("NS/POD:PORT[/PROTO]").
func (c *Client) ProbePods(ctx context.Context, src, dst string, timeout time.Duration) (string, error) {
	from, err := c.Pod(ctx, src)
	if err != nil {
		return "", err
	}
	pod, port, proto, err := ParseTarget(dst)
	if err != nil {
		return "", err
	}
	to, err := c.Pod(ctx, pod)
	if err != nil {
		return "", err
	}
	if len(to.IPs) == 0 {
		return "", fmt.Errorf("pod %s has no address", pod)
	}
	return Probe(ctx, from.NetNS, netip.AddrPortFrom(to.IPs[0], port), proto, timeout)
}

// NewAgentClient is a client of a lab node's agent (NodeState.Socket).
func NewAgentClient(socket string) *agentapi.Client { return agentapi.NewClient(socket, 5*time.Second) }
