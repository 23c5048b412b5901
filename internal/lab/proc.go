package lab

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// proc is a process the lab started in a namespace, optionally restarted when
// it dies (as kubelet restarts a crashed container).
type proc struct {
	log     *slog.Logger
	name    string
	netns   string
	logPath string
	argv    []string
	restart bool

	mu       sync.Mutex
	cmd      *exec.Cmd
	stopping bool
	exited   chan struct{} // of the current run
	done     chan struct{} // closed when supervision ends
	restarts int
	nsID     string // nsIdentity of netns when first started
}

func startProc(log *slog.Logger, name, netns, logPath string, restart bool, argv ...string) (*proc, error) {
	p := &proc{log: log, name: name, netns: netns, logPath: logPath, argv: argv, restart: restart, done: make(chan struct{})}
	p.nsID = nsIdentity(netns)
	if err := p.start(); err != nil {
		return nil, err
	}
	go p.supervise()
	return p, nil
}

func (p *proc) start() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("%s: log: %w", p.name, err)
	}
	cmd := NSCommand(p.netns, p.argv...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a Ctrl-C at the terminal that ran `up` reaches
	// only the daemon, which stops everything in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	return nil
}

func (p *proc) supervise() {
	defer close(p.done)
	for {
		p.mu.Lock()
		exited, cmd := p.exited, p.cmd
		p.mu.Unlock()
		<-exited
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		if stopping || !p.restart {
			if !stopping {
				p.log.Warn("process exited", "name", p.name, "state", cmd.ProcessState.String())
			}
			return
		}
		p.log.Warn("process exited; restarting in 1 s", "name", p.name, "state", cmd.ProcessState.String(), "log", p.logPath)
		time.Sleep(time.Second)
		p.mu.Lock()
		if p.stopping {
			p.mu.Unlock()
			return
		}
		p.restarts++
		p.mu.Unlock()
		// Only into the namespace it was started in: a namespace of that
		// name made since is another lab's (this daemon's lab was torn down
		// around it), and a process restarted there would fight that lab's.
		if id := nsIdentity(p.netns); id != p.nsID {
			p.log.Error("not restarting: its network namespace is gone or is another one now", "name", p.name, "netns", p.netns)
			return
		}
		if err := p.start(); err != nil {
			p.log.Error("restart failed", "name", p.name, "err", err)
			return
		}
	}
}

// PID is the current process's PID (0 when not running).
func (p *proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return 0
	default:
	}
	return p.cmd.Process.Pid
}

// stop ends supervision and the process: SIGTERM, SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	p.stopping = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-exited
	}
	<-p.done
}

// startRouter starts the router r's daemons in netns with the configuration
// for nodes; it returns the processes and the runtime directory.
func startRouter(log *slog.Logger, r Router, all []Router, nodes []Node, netns, dir string) ([]*proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if r.Kind == RouterBIRD {
		conf := filepath.Join(dir, "bird.conf")
		if err := os.WriteFile(conf, []byte(BIRDConfig(r, all, nodes)), 0o644); err != nil {
			return nil, err
		}
		p, err := startProc(log, fmt.Sprintf("bird (rack %d)", r.Rack), netns, filepath.Join(dir, "bird.log"), true,
			"bird", "-f", "-c", conf, "-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
		if err != nil {
			return nil, err
		}
		return []*proc{p}, nil
	}
	// FRR drops to user frr, which must reach its directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "frr.conf")
	if err := os.WriteFile(conf, []byte(FRRConfig(r, all, nodes)), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.Command("chown", "-R", "frr:frr", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("chown %s to frr: %w: %s", dir, err, out)
	}
	var procs []*proc
	for _, d := range []string{"zebra", "staticd", "bgpd"} {
		p, err := startProc(log, fmt.Sprintf("%s (rack %d)", d, r.Rack), netns, filepath.Join(dir, d+".log"), true,
			"/usr/lib/frr/"+d, "-f", conf, "-i", filepath.Join(dir, d+".pid"), "-z", filepath.Join(dir, "zserv.api"),
			"--vty_socket", dir, "-u", "frr", "-g", "frr")
		if err != nil {
			for _, q := range procs {
				q.stop(time.Second)
			}
			return nil, err
		}
		procs = append(procs, p)
		if d == "zebra" {
			waitFile(filepath.Join(dir, "zserv.api"), 3*time.Second)
		}
	}
	return procs, nil
}

func waitFile(path string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reconfigureRouter makes a running router's sessions those of nodes.
func reconfigureRouter(r Router, all []Router, nodes, before []Node, netns, dir string) error {
	if r.Kind == RouterBIRD {
		conf := filepath.Join(dir, "bird.conf")
		if err := os.WriteFile(conf, []byte(BIRDConfig(r, all, nodes)), 0o644); err != nil {
			return err
		}
		out, err := exec.Command("birdc", "-s", filepath.Join(dir, "bird.ctl"), "configure").CombinedOutput()
		if err != nil {
			return fmt.Errorf("birdc configure (rack %d): %w: %s", r.Rack, err, out)
		}
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "frr.conf"), []byte(FRRConfig(r, all, nodes)), 0o644); err != nil {
		return err
	}
	args := []string{"vtysh", "--vty_socket", dir, "-c", "configure terminal", "-c", fmt.Sprintf("router bgp %d", r.AS)}
	keep := map[string]bool{}
	for _, n := range nodes {
		keep[n.Name] = true
	}
	for _, n := range before {
		if !keep[n.Name] {
			for _, a := range n.Addresses() {
				args = append(args, "-c", fmt.Sprintf("no neighbor %s", a))
			}
		}
	}
	lines, v6 := frrNeighborLines(r, nil, nodes)
	for _, l := range lines {
		args = append(args, "-c", l)
	}
	if len(v6) > 0 {
		args = append(args, "-c", "address-family ipv4 unicast")
		for _, a := range v6 {
			args = append(args, "-c", fmt.Sprintf("no neighbor %s activate", a))
		}
		args = append(args, "-c", "exit-address-family", "-c", "address-family ipv6 unicast")
		for _, a := range v6 {
			args = append(args, "-c", fmt.Sprintf("neighbor %s activate", a))
		}
		args = append(args, "-c", "exit-address-family")
	}
	if out, err := inNS(netns, args...); err != nil {
		return fmt.Errorf("vtysh (rack %d): %w: %s", r.Rack, err, out)
	}
	return nil
}

// nsIdentity identifies the network namespace at netns (a name under
// NetNSDir or a path): its device and inode, "" when there is none.
func nsIdentity(netns string) string {
	fi, err := os.Stat(NSPath(netns))
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
