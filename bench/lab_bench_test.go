package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/nodetest"
)

// labPrefix names the benchmark's lab namespaces, apart from `make lab`'s
// (ternlab) and the e2e tests' (tle2e).
const labPrefix = "tlbench"

// clkTck is USER_HZ, the unit of /proc/stat and /proc/PID/stat (100 on Linux).
const clkTck = 100

// BenchmarkLab: `tern-lab up --light --nodes N --route-reflectors 2` (BIRD, one rack)
// for 20 nodes, then 40 if memory allows: wall time to every agent ready and
// every pod CIDR in every node's kernel, where that time went (control plane,
// nodes, agents, routes, from the lab's timings and the agents' logs), the agents'
// memory (VmRSS and PSS, per agent and in total), BGP sessions per node, and
// what the machine did meanwhile (CPU busy, per component, load, memory).
// Then `tern-lab down`, which must leave no namespace and no process. The
// table goes to bench-out/lab.md.
func BenchmarkLab(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	nodetest.RequireRoot(b)
	nodetest.RequirePath(b, "/usr/sbin/bird", "BIRD")
	if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, labPrefix+"-*")); len(left) > 0 {
		b.Fatalf("namespaces of a previous %s lab are left (remove them with TERN_LAB_NAME=%s tern-lab down): %s", labPrefix, labPrefix, strings.Join(left, " "))
	}
	root, err := nodetest.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	tmp, err := os.MkdirTemp("", "tern-labbench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(tmp) })
	bin := filepath.Join(tmp, "bin")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin+"/", "./cmd/...")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}

	var runs []*labRun
	b.Cleanup(func() { writeLabTable(b, root, runs) })
	for _, n := range []int{20, 40} {
		if n > 20 {
			prev := runs[len(runs)-1]
			if prev.err != "" {
				runs = append(runs, &labRun{nodes: n, skipped: fmt.Sprintf("%d nodes did not come up", prev.nodes)})
				continue
			}
			// The lab's whole footprint per node (control plane included, so
			// an overestimate), twice the nodes, and 2 GiB to spare.
			perNode := max(prev.memAvailBefore-prev.memAvailReady, prev.labPSS) / float64(prev.nodes)
			need := perNode*float64(n) + 2048
			if avail := memAvailableMB(); avail < need {
				runs = append(runs, &labRun{nodes: n, skipped: fmt.Sprintf("memory: %d nodes need about %.0f MB, %.0f MB available", n, need, avail)})
				continue
			}
		}
		r := &labRun{nodes: n}
		runs = append(runs, r)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			runLab(b, r, root, bin, filepath.Join(tmp, fmt.Sprintf("lab%d", n)))
			if r.err != "" {
				b.Errorf("%d nodes: %s", n, r.err)
				return
			}
			b.ReportMetric(r.up.Seconds(), "up-s")
			b.ReportMetric(r.controlPlane.Seconds(), "control-plane-s")
			b.ReportMetric((r.up - r.controlPlane).Seconds(), "after-control-plane-s")
			b.ReportMetric(labSum(r.rss), "agent-rss-total-MB")
			b.ReportMetric(labSum(r.rss)/float64(len(r.rss)), "agent-rss-mean-MB")
			b.ReportMetric(slices.Max(r.rss), "agent-rss-max-MB")
			b.ReportMetric(labSum(r.pss), "agent-pss-total-MB")
			b.ReportMetric(100*r.cpuBusy, "cpu-busy-%")
			b.ReportMetric(r.loadPeak, "load1-peak")
			b.ReportMetric(float64(r.clientSessionsMin), "client-sessions-min")
			b.ReportMetric(float64(r.clientSessionsMax), "client-sessions-max")
		})
	}
}

// labRun is what one `tern-lab up` of a size measured.
type labRun struct {
	nodes   int
	skipped string // why this size did not run
	err     string // why it did not come up, or what was wrong once up

	up, controlPlane, kubeEnv     time.Duration // wall; the lab's timings: control plane up, kube-env.sh up alone
	nodesStarted, agentsReady     time.Duration // control plane up → last node started → last agent ready
	routes, tail                  time.Duration // last agent ready → lab ready → `up` returned
	agentReadyMed, agentReadyMax  time.Duration // per agent, process start → ready (its log)
	down                          time.Duration
	waits                         []labWait // the daemon's "waiting for" lines, longest first
	restarts                      int
	memAvailBefore, memAvailReady float64 // MB
	memAvailMin                   float64
	loadBefore, loadReady         string
	loadPeak                      float64
	runnablePeak                  int
	busyBefore                    float64 // fraction of all CPUs, 5 s before `up`
	cpuBusy, cpuSteal             float64 // fraction of all CPUs during `up`
	cpu                           []cpuShare
	idleBusy, idleAgents          float64 // fraction of all CPUs, 10 s with the lab up and idle
	agentsPeakRSS                 float64 // total, sampled during `up` (also when it fails)
	labPSS                        float64 // MB, every process of the lab (agents, control plane, BIRD, daemon)

	agents                               []agentFigures
	rss, pss                             []float64 // MB, per agent
	clientSessionsMin, clientSessionsMax int
	reflectorSessions                    []string
	routesMin                            int
	pids                                 map[int]string // the lab's processes (and start times): none may outlive `down`
	leftover                             []string
}

type labWait struct {
	what string
	took time.Duration
}

type cpuShare struct {
	who  string
	secs float64
}

type agentFigures struct {
	node        string
	reflector   bool
	rss, pss    float64 // MB
	anon        float64 // MB (RssAnon)
	established int
	peers       int
	routes      int
	ready       time.Duration // process start → ready
	cpu, cpuRun float64       // CPU seconds at ready: the agent's own; the programs it ran (iptables, ipset, ...)
	passes      float64       // reconcile passes (its /metrics)
	passSecs    float64       // their total duration
}

func runLab(b *testing.B, r *labRun, root, bin, dir string) {
	env := append(os.Environ(), "TERN_LAB_DIR="+dir, "TERN_LAB_NAME="+labPrefix, "TERN_ROOT="+root)
	labCmd := func(ctx context.Context, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, filepath.Join(bin, "tern-lab"), args...)
		c.Dir, c.Env = root, env
		return c
	}
	// Whatever happens, the lab goes, and nothing of it may stay.
	defer func() {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := labCmd(ctx, "down").CombinedOutput(); err != nil {
			r.leftover = append(r.leftover, fmt.Sprintf("tern-lab down: %v: %s", err, strings.TrimSpace(string(out))))
		}
		r.down = time.Since(t0)
		if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, labPrefix+"-*")); len(left) > 0 {
			r.leftover = append(r.leftover, "namespaces: "+strings.Join(left, " "))
		}
		for p, t := range snapshotProcs() {
			// Not a reused PID, nor a zombie (exited; its parent, the
			// machine's init for the control plane, reaps it in its time).
			if start, ok := r.pids[p]; ok && start == t.start && t.state != "Z" {
				r.leftover = append(r.leftover, fmt.Sprintf("process %d still running", p))
			}
		}
		if r.err == "" && len(r.leftover) > 0 {
			r.err = "after tern-lab down: " + strings.Join(r.leftover, "; ")
		}
	}()

	r.loadBefore = loadavg()
	r.memAvailBefore = memAvailableMB()
	s0 := readCPU()
	time.Sleep(5 * time.Second)
	s1 := readCPU()
	r.busyBefore = s1.busyFrac(s0)

	samp := startSampler(dir)
	procs0 := snapshotProcs()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, upErr := labCmd(ctx, "up", "--light", "--nodes", strconv.Itoa(r.nodes), "--route-reflectors", "2").CombinedOutput()
	r.up = time.Since(t0)
	s2 := readCPU()
	procs1 := snapshotProcs()
	samp.stop()
	r.loadPeak, r.runnablePeak, r.memAvailMin, r.agentsPeakRSS = samp.loadPeak, samp.runnablePeak, samp.memMin, samp.rssPeak
	r.cpuBusy, r.cpuSteal = s2.busyFrac(s1), s2.stealFrac(s1)
	r.loadReady = loadavg()
	r.memAvailReady = memAvailableMB()

	logText, _ := os.ReadFile(lab.LogPath(dir))
	ev := parseLabLog(string(logText))
	r.waits, r.restarts = ev.waits, ev.restarts
	if upErr != nil {
		r.err = fmt.Sprintf("tern-lab up after %s: %v: %s", r.up.Round(time.Second), upErr, labLastLines(string(out), 3))
		// Its log outlives the temporary directory, for the evidence.
		kept := filepath.Join(root, "bench-out", fmt.Sprintf("lab-%d-nodes-failed.log", r.nodes))
		if os.MkdirAll(filepath.Dir(kept), 0o755) == nil && os.WriteFile(kept, append(logText, out...), 0o644) == nil {
			r.err += " (lab log and up's output: " + kept + ")"
		}
		// The daemon tore the lab down; its last state and the agents'
		// logs stay.
		st, _ := lab.ReadState(dir)
		ph, _ := phasesOf(st.Timings, nil)
		r.controlPlane, r.kubeEnv = ph.controlPlane, ph.kubeEnv
		agentsFromLogs(r, dir, st.Timings)
		return
	}

	c := lab.NewClient(dir)
	st, err := c.State(ctx)
	if err != nil {
		r.err = fmt.Sprintf("lab state: %v", err)
		return
	}
	pids := append([]int{st.PID}, kubePIDs(st)...)
	for _, n := range st.Nodes {
		pids = append(pids, n.AgentPID)
	}
	for _, rt := range st.Routers {
		pids = append(pids, rt.PIDs...)
	}
	r.pids = map[int]string{}
	for p, t := range snapshotProcs() {
		if slices.Contains(pids, p) {
			r.pids[p] = t.start
		}
	}
	var names []string
	for _, n := range st.Nodes {
		names = append(names, n.Name)
	}
	ph, err := phasesOf(st.Timings, names)
	if err != nil {
		r.err = err.Error()
		return
	}
	r.controlPlane, r.kubeEnv = ph.controlPlane, ph.kubeEnv
	lastStarted := ph.lastStarted
	var lastReady time.Time
	var neverReady []string
	var readies []time.Duration
	for _, n := range st.Nodes {
		a := agentFigures{node: n.Name, reflector: n.Reflector}
		a.rss, a.anon = statusMB(n.AgentPID, "VmRSS:"), statusMB(n.AgentPID, "RssAnon:")
		a.pss = smapsMB(n.AgentPID, "Pss:")
		if t, ok := procs1[n.AgentPID]; ok {
			a.cpu, a.cpuRun = t.self, t.children
		}
		a.passes, a.passSecs = reconcilePasses(n.NetNS)
		start, ready := agentLogTimes(filepath.Join(n.Dir, "agent.log"))
		if t := procStart(n.AgentPID); !t.IsZero() {
			start = t // the exec, not the first log line
		}
		if ready.IsZero() {
			neverReady = append(neverReady, n.Name)
		} else {
			a.ready = ready.Sub(start)
			readies = append(readies, a.ready)
			lastReady = labLater(lastReady, ready)
		}
		r.agents = append(r.agents, a)
		r.rss, r.pss = append(r.rss, a.rss), append(r.pss, a.pss)
	}
	if len(neverReady) > 0 {
		// The lab says they are ready; their logs must say when.
		r.err = fmt.Sprintf("no %q in the log of the agents of %s", agentReadyMsg, strings.Join(neverReady, ", "))
		return
	}
	r.agentReadyMed, r.agentReadyMax = median(readies), slices.Max(readies)
	r.nodesStarted = lastStarted.Sub(st.Timings.ControlPlaneUp)
	r.agentsReady = lastReady.Sub(lastStarted)
	r.routes = st.Timings.Ready.Sub(lastReady)
	r.tail = t0.Add(r.up).Sub(st.Timings.Ready)

	// Where the CPU went during `up`, and what the lab holds in memory.
	r.cpu = cpuShares(st, procs0, procs1, s1, s2)
	r.labPSS = labSum(r.pss) + smapsMB(st.PID, "Pss:")
	for _, p := range kubePIDs(st) {
		r.labPSS += smapsMB(p, "Pss:")
	}
	for _, rt := range st.Routers {
		for _, p := range rt.PIDs {
			r.labPSS += smapsMB(p, "Pss:")
		}
	}

	// BGP: a client has its two reflectors; a reflector has the other
	// reflector, the clients and its ToR. Sessions may still be coming up
	// (a client needs one reflector for the routes): wait a little.
	labSessions(b, r, st)

	// 10 s of the lab up and idle: what it costs the machine at rest.
	var agentPIDs []int
	for _, n := range st.Nodes {
		agentPIDs = append(agentPIDs, n.AgentPID)
	}
	i0, a0 := readCPU(), sumCPU(agentPIDs)
	time.Sleep(10 * time.Second)
	i1, a1 := readCPU(), sumCPU(agentPIDs)
	r.idleBusy = i1.busyFrac(i0)
	if t := i1.totalTicks() - i0.totalTicks(); t > 0 {
		r.idleAgents = (a1 - a0) * clkTck / t
	}
	for _, n := range st.Nodes {
		if n.Restarts > 0 {
			r.err = fmt.Sprintf("the agent of %s restarted %d times", n.Name, n.Restarts)
		}
	}
}

// reconcilePasses reads the agent's reconcile count and total time from its
// /metrics (on 127.0.0.1:9099 in the node's namespace).
func reconcilePasses(netns string) (n, secs float64) {
	out, err := lab.NSCommand(netns, "curl", "-s", "--max-time", "3", "http://127.0.0.1:9099/metrics").Output()
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "tern_reconcile_duration_seconds_count":
			n, _ = strconv.ParseFloat(f[1], 64)
		case "tern_reconcile_duration_seconds_sum":
			secs, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return n, secs
}

// labSessions counts each node's established BGP sessions and installed routes.
func labSessions(b *testing.B, r *labRun, st lab.State) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.clientSessionsMin, r.clientSessionsMax, r.routesMin = 1<<30, 0, 1<<30
		r.reflectorSessions = nil
		var bad []string
		for i, n := range st.Nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			bgp, err := lab.NewAgentClient(n.Socket).BGP(ctx)
			cancel()
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", n.Name, err))
				continue
			}
			up := 0
			for _, p := range bgp.Peers {
				if p.State == "Established" {
					up++
				}
			}
			r.agents[i].established, r.agents[i].peers, r.agents[i].routes = up, len(bgp.Peers), len(bgp.Routes)
			r.routesMin = min(r.routesMin, len(bgp.Routes))
			if n.Reflector {
				r.reflectorSessions = append(r.reflectorSessions, fmt.Sprintf("%s %d/%d", n.Name, up, len(bgp.Peers)))
				continue
			}
			r.clientSessionsMin, r.clientSessionsMax = min(r.clientSessionsMin, up), max(r.clientSessionsMax, up)
			if up != 2 || len(bgp.Peers) != 2 {
				bad = append(bad, fmt.Sprintf("%s: %d of %d sessions established, want 2 of 2", n.Name, up, len(bgp.Peers)))
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.err = "BGP sessions: " + strings.Join(bad, "; ")
			b.Log(r.err)
			return
		}
		time.Sleep(time.Second)
	}
}

// agentsFromLogs fills the per-agent readiness of a lab that failed, from
// the agents' logs the teardown left.
func agentsFromLogs(r *labRun, dir string, tm lab.Timings) {
	logs, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "agent.log"))
	var readies []time.Duration
	var lastStarted time.Time
	for _, t := range tm.NodesStarted {
		lastStarted = labLater(lastStarted, t)
	}
	notReady := 0
	for _, l := range logs {
		start, ready := agentLogTimes(l)
		if ready.IsZero() {
			notReady++
			continue
		}
		readies = append(readies, ready.Sub(start))
	}
	if len(readies) > 0 {
		r.agentReadyMed, r.agentReadyMax = median(readies), slices.Max(readies)
	}
	if !tm.ControlPlaneUp.IsZero() && !lastStarted.IsZero() {
		r.nodesStarted = lastStarted.Sub(tm.ControlPlaneUp)
	}
	r.err += fmt.Sprintf(" [%d of %d nodes started, %d agents never ready]", len(tm.NodesStarted), r.nodes, notReady)
}

// cpuShares splits the machine's busy CPU time during `up` (between the
// snapshots) by component: the lab's processes (all started during `up`),
// the benchmark, kernel threads, interrupts, and every other process on the
// machine (other users' tests). A process's reaped children count with it.
func cpuShares(st lab.State, p0, p1 map[int]procTimes, s1, s2 cpuStat) []cpuShare {
	// A process that ended in between brought all its CPU time into the
	// children's time of an ancestor still running (its parent's, or the
	// parent's parent's if that ended too...); what it had used before the
	// window is not of the window.
	survived := func(pid int) bool { a, ok := p1[pid]; return ok && a.start == p0[pid].start }
	before := map[int]float64{}
	for pid, b := range p0 {
		if survived(pid) {
			continue
		}
		anc := b.ppid
		for i := 0; i < 64 && anc > 1 && !survived(anc); i++ {
			anc = p0[anc].ppid
		}
		before[anc] += b.self + b.children
	}
	delta := func(pid int) float64 {
		a, ok := p1[pid]
		if !ok || pid <= 0 {
			return 0
		}
		t := a.self + a.children - before[pid]
		if b, ok := p0[pid]; ok && b.start == a.start {
			t -= b.self + b.children
		}
		return t
	}
	seen := map[int]bool{}
	group := func(pids []int) float64 {
		t := 0.0
		for _, p := range pids {
			if !seen[p] {
				seen[p] = true
				t += delta(p)
			}
		}
		return t
	}
	var agents, birds []int
	for _, n := range st.Nodes {
		agents = append(agents, n.AgentPID)
	}
	for _, rt := range st.Routers {
		birds = append(birds, rt.PIDs...)
	}
	out := []cpuShare{{"tern-agent (all; iptables, ipset they ran)", group(agents)}}
	for i, pid := range kubePIDs(st) {
		out = append(out, cpuShare{kubeProcs[i], group([]int{pid})})
	}
	out = append(out,
		cpuShare{"lab daemon (kubelets; ip, nsenter, kubectl, kube-env.sh it ran)", group([]int{st.PID})},
		cpuShare{"BIRD", group(birds)},
		cpuShare{"benchmark and tern-lab up", group([]int{os.Getpid()})})
	var kthreads, others []int
	for pid, t := range p1 {
		if seen[pid] {
			continue
		}
		if pid == 2 || t.ppid == 2 {
			kthreads = append(kthreads, pid)
		} else {
			others = append(others, pid)
		}
	}
	out = append(out,
		cpuShare{"kernel threads", group(kthreads)},
		cpuShare{"irq and softirq", (s2[5] + s2[6] - s1[5] - s1[6]) / clkTck},
		cpuShare{"**other processes, not the lab's**", group(others)})
	known := 0.0
	for _, s := range out {
		known += s.secs
	}
	return append(out, cpuShare{"unattributed (exited unreaped, tick rounding)", (s2.busyTicks()-s1.busyTicks())/clkTck - known})
}

// procTimes is one process's CPU seconds, and what tells a reused PID apart.
type procTimes struct {
	start          string // starttime, field 22
	state          string
	ppid           int
	self, children float64
}

// snapshotProcs reads every process's CPU times.
func snapshotProcs() map[int]procTimes {
	out := map[int]procTimes{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])) // f[0] is field 3
		if len(f) < 20 {
			continue
		}
		v := func(i int) float64 { x, _ := strconv.ParseFloat(f[i], 64); return x / clkTck }
		ppid, _ := strconv.Atoi(f[1])
		out[pid] = procTimes{start: f[19], state: f[0], ppid: ppid, self: v(11) + v(12), children: v(13) + v(14)}
	}
	return out
}

var kubeProcs = []string{"kube-apiserver", "etcd", "kube-controller-manager"}

// kubePIDs are the PIDs of the lab's control plane (kubeProcs), from the
// files hack/kube-env.sh writes (0 when missing).
func kubePIDs(st lab.State) []int {
	var out []int
	for _, p := range kubeProcs {
		out = append(out, kubePID(st, p))
	}
	return out
}

// kubePID is the PID of the lab's control-plane process name, from its file
// hack/kube-env.sh writes (0 when missing).
func kubePID(st lab.State, name string) int {
	b, err := os.ReadFile(filepath.Join(st.KubeDir, name+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// labLog is what the daemon's log says about the run besides its timings:
// what it waited for, and how often a process had to be restarted.
type labLog struct {
	waits    []labWait
	restarts int
}

// labPhases are the figures of one `up` taken from the lab's timings.
type labPhases struct {
	controlPlane, kubeEnv time.Duration
	lastStarted           time.Time // the last of nodes' agents started
}

// phasesOf computes the phases from the lab's timings of an `up` that came
// through, with nodes started; it fails naming every milestone missing, so
// that a figure is never a silent zero.
func phasesOf(tm lab.Timings, nodes []string) (labPhases, error) {
	var ph labPhases
	var missing []string
	if tm.Up.IsZero() {
		missing = append(missing, "up")
	}
	if tm.KubeEnvUp <= 0 {
		missing = append(missing, "kubeEnvUp")
	}
	if tm.ControlPlaneUp.IsZero() {
		missing = append(missing, "controlPlaneUp")
	}
	if tm.Ready.IsZero() {
		missing = append(missing, "ready")
	}
	for _, n := range nodes {
		t, ok := tm.NodesStarted[n]
		if !ok {
			missing = append(missing, "nodesStarted["+n+"]")
		}
		ph.lastStarted = labLater(ph.lastStarted, t)
	}
	ph.kubeEnv = tm.KubeEnvUp
	if !tm.Up.IsZero() && !tm.ControlPlaneUp.IsZero() {
		ph.controlPlane = tm.ControlPlaneUp.Sub(tm.Up)
	}
	if len(missing) > 0 {
		return ph, fmt.Errorf("the lab's timings lack %s", strings.Join(missing, ", "))
	}
	return ph, nil
}

func parseLabLog(text string) labLog {
	var ev labLog
	var lastWait string
	var lastAt time.Time
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		kv := logfmt(sc.Text())
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil {
			continue
		}
		if lastWait != "" && kv["msg"] != "" {
			// A wait lasts until the next line the daemon logs.
			ev.waits = append(ev.waits, labWait{lastWait, at.Sub(lastAt)})
			lastWait = ""
		}
		switch kv["msg"] {
		case "waiting":
			lastWait, lastAt = kv["for"], at
		case "process exited; restarting in 1 s":
			ev.restarts++
		}
	}
	if lastWait != "" {
		ev.waits = append(ev.waits, labWait{lastWait + " (never came)", 0})
	}
	slices.SortStableFunc(ev.waits, func(a, b labWait) int { return int(b.took - a.took) })
	return ev
}

// agentReadyMsg is what an agent logs once ready.
const agentReadyMsg = "node dataplane programmed; ready"

// agentLogTimes: when an agent's process logged its start, and its readiness
// (the last run's, should it have restarted).
func agentLogTimes(path string) (start, ready time.Time) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		kv := logfmt(l)
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil {
			continue
		}
		switch kv["msg"] {
		case "tern-agent started":
			start, ready = at, time.Time{}
		case agentReadyMsg:
			ready = at
		}
	}
	return
}

// logfmt splits a log/slog text line into its keys and values.
func logfmt(line string) map[string]string {
	kv := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsRune(s[:eq], ' ') {
			return kv
		}
		key, s2 := s[:eq], s[eq+1:]
		if strings.HasPrefix(s2, `"`) {
			end := 1
			for end < len(s2) && s2[end] != '"' {
				if s2[end] == '\\' {
					end++
				}
				end++
			}
			v, err := strconv.Unquote(s2[:min(end+1, len(s2))])
			if err != nil {
				v = s2[1:min(end, len(s2))]
			}
			kv[key], s = v, s2[min(end+1, len(s2)):]
			continue
		}
		v, rest, _ := strings.Cut(s2, " ")
		kv[key], s = v, rest
	}
	return kv
}

// sampler watches the machine once a second while `up` runs.
type sampler struct {
	loadPeak, memMin, rssPeak float64
	runnablePeak              int
	done                      chan struct{}
	wg                        sync.WaitGroup
}

func startSampler(dir string) *sampler {
	s := &sampler{memMin: memAvailableMB(), done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			f := strings.Fields(loadavg())
			if len(f) >= 4 {
				l, _ := strconv.ParseFloat(f[0], 64)
				run, _, _ := strings.Cut(f[3], "/")
				n, _ := strconv.Atoi(run)
				s.loadPeak, s.runnablePeak = max(s.loadPeak, l), max(s.runnablePeak, n)
			}
			s.memMin = min(s.memMin, memAvailableMB())
			var st lab.State
			if b, err := os.ReadFile(lab.StatePath(dir)); err == nil && json.Unmarshal(b, &st) == nil {
				total := 0.0
				for _, n := range st.Nodes {
					total += statusMB(n.AgentPID, "VmRSS:")
				}
				s.rssPeak = max(s.rssPeak, total)
			}
			select {
			case <-s.done:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return s
}

func (s *sampler) stop() { close(s.done); s.wg.Wait() }

// cpuStat is the "cpu" line of /proc/stat, in USER_HZ ticks.
type cpuStat []float64 // user nice system idle iowait irq softirq steal

func readCPU() cpuStat {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	out := make(cpuStat, 8)
	for i := range out {
		if i+1 < len(f) {
			out[i], _ = strconv.ParseFloat(f[i+1], 64)
		}
	}
	return out
}

func (c cpuStat) totalTicks() float64 { return labSum(c) }
func (c cpuStat) busyTicks() float64  { return labSum(c) - c[3] - c[4] }

func (c cpuStat) busyFrac(before cpuStat) float64 {
	if t := c.totalTicks() - before.totalTicks(); t > 0 {
		return (c.busyTicks() - before.busyTicks()) / t
	}
	return 0
}

func (c cpuStat) stealFrac(before cpuStat) float64 {
	if t := c.totalTicks() - before.totalTicks(); t > 0 {
		return (c[7] - before[7]) / t
	}
	return 0
}

// procCPU is a process's CPU seconds (user and system), with its reaped
// children's when children.
func procCPU(pid int, children bool) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0
	}
	n := 2
	if children {
		n = 4
	}
	t := 0.0
	for _, s := range f[11 : 11+n] { // utime stime cutime cstime
		v, _ := strconv.ParseFloat(s, 64)
		t += v
	}
	return t / clkTck
}

// procStart is when a process started: its starttime (ticks since boot)
// against /proc/uptime, both to 10 ms.
func procStart(pid int) time.Time {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || pid <= 0 {
		return time.Time{}
	}
	now := time.Now()
	up, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u := strings.Fields(string(up))
	if len(f) < 20 || len(u) < 1 {
		return time.Time{}
	}
	ticks, _ := strconv.ParseFloat(f[19], 64) // field 22
	uptime, _ := strconv.ParseFloat(u[0], 64)
	return now.Add(-time.Duration((uptime - ticks/clkTck) * float64(time.Second)))
}

func sumCPU(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += procCPU(p, false)
	}
	return t
}

// statusMB reads a kB field of /proc/PID/status in MB (0 when gone).
func statusMB(pid int, field string) float64 {
	return procFieldMB(fmt.Sprintf("/proc/%d/status", pid), field)
}

// smapsMB reads a kB field of /proc/PID/smaps_rollup in MB.
func smapsMB(pid int, field string) float64 {
	return procFieldMB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), field)
}

func procFieldMB(path, field string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func memAvailableMB() float64 { return procFieldMB("/proc/meminfo", "MemAvailable:") }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func labSum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}

func labLater(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func labLastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], " | ")
}

func labSecs(d time.Duration) string { return fmt.Sprintf("%.1f", d.Seconds()) }

// writeLabTable writes bench-out/lab.md: one column per lab size.
func writeLabTable(b *testing.B, root string, runs []*labRun) {
	if len(runs) == 0 {
		return
	}
	var s strings.Builder
	uname, _ := exec.Command("uname", "-r").Output()
	fmt.Fprintf(&s, "tern-lab up --nodes N --route-reflectors 2 (BIRD, 1 rack), %s; machine: %d CPUs, %.0f MB RAM, kernel %s\n\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), procFieldMB("/proc/meminfo", "MemTotal:"), strings.TrimSpace(string(uname)))
	s.WriteString("| |")
	for _, r := range runs {
		fmt.Fprintf(&s, " %d nodes |", r.nodes)
	}
	s.WriteString("\n|---|")
	for range runs {
		s.WriteString("---|")
	}
	s.WriteString("\n")
	row := func(name string, f func(r *labRun) string) {
		fmt.Fprintf(&s, "| %s |", name)
		for _, r := range runs {
			v := "-"
			switch {
			case r.skipped != "":
				v = "not run: " + r.skipped
			default:
				v = f(r)
			}
			fmt.Fprintf(&s, " %s |", v)
		}
		s.WriteString("\n")
	}
	ok := func(f func(r *labRun) string) func(r *labRun) string {
		return func(r *labRun) string {
			if len(r.rss) == 0 {
				return "-"
			}
			return f(r)
		}
	}
	row("result", func(r *labRun) string {
		if r.err != "" {
			return "**FAILED**: " + strings.ReplaceAll(r.err, "|", "/")
		}
		return "up, converged, down clean"
	})
	row("`tern-lab up` wall, s", func(r *labRun) string { return labSecs(r.up) })
	row("of which control plane (daemon's took=), s", func(r *labRun) string {
		return fmt.Sprintf("%s (kube-env.sh alone %s)", labSecs(r.controlPlane), labSecs(r.kubeEnv))
	})
	row("of which after the control plane, s", func(r *labRun) string { return labSecs(r.up - r.controlPlane) })
	row("&nbsp;&nbsp;control plane up → last node started, s", func(r *labRun) string { return labSecs(r.nodesStarted) })
	row("&nbsp;&nbsp;last node started → last agent ready, s", ok(func(r *labRun) string { return labSecs(r.agentsReady) }))
	row("&nbsp;&nbsp;last agent ready → every pod CIDR everywhere (lab ready), s", ok(func(r *labRun) string { return labSecs(r.routes) }))
	row("&nbsp;&nbsp;lab ready → `up` returned, s", ok(func(r *labRun) string { return labSecs(r.tail) }))
	row("agent process start → ready, median / max, s", func(r *labRun) string {
		return fmt.Sprintf("%s / %s", labSecs(r.agentReadyMed), labSecs(r.agentReadyMax))
	})
	row("longest waits of the daemon, s", func(r *labRun) string {
		var w []string
		for _, x := range r.waits[:min(3, len(r.waits))] {
			w = append(w, fmt.Sprintf("%s: %s", x.what, labSecs(x.took)))
		}
		return strings.Join(w, "; ")
	})
	row("agents' CPU at ready: their own / programs they ran, s", ok(func(r *labRun) string {
		var own, ran float64
		for _, a := range r.agents {
			own, ran = own+a.cpu, ran+a.cpuRun
		}
		return fmt.Sprintf("%.1f / %.1f (per agent %.2f / %.2f)", own, ran, own/float64(len(r.agents)), ran/float64(len(r.agents)))
	}))
	row("reconcile passes per agent, mean / max (their time, mean s)", ok(func(r *labRun) string {
		var n, mx, t float64
		for _, a := range r.agents {
			n, mx, t = n+a.passes, max(mx, a.passes), t+a.passSecs
		}
		k := float64(len(r.agents))
		return fmt.Sprintf("%.1f / %.0f (%.2f)", n/k, mx, t/k)
	}))
	row("agent VmRSS total / mean / max, MB", ok(func(r *labRun) string {
		return fmt.Sprintf("%.0f / %.1f / %.1f", labSum(r.rss), labSum(r.rss)/float64(len(r.rss)), slices.Max(r.rss))
	}))
	row("agent PSS total / mean, MB (binary pages shared)", ok(func(r *labRun) string {
		return fmt.Sprintf("%.0f / %.1f", labSum(r.pss), labSum(r.pss)/float64(len(r.pss)))
	}))
	row("agent RssAnon mean, MB", ok(func(r *labRun) string {
		t := 0.0
		for _, a := range r.agents {
			t += a.anon
		}
		return fmt.Sprintf("%.1f", t/float64(len(r.agents)))
	}))
	row("agent VmRSS total, peak sampled during up, MB", func(r *labRun) string { return fmt.Sprintf("%.0f", r.agentsPeakRSS) })
	row("BGP sessions established per client node, min / max (want 2)", ok(func(r *labRun) string {
		return fmt.Sprintf("%d / %d", r.clientSessionsMin, r.clientSessionsMax)
	}))
	row("BGP sessions of the reflectors, established/configured", ok(func(r *labRun) string { return strings.Join(r.reflectorSessions, ", ") }))
	row("BGP routes installed per node, min (want ≥ N-1)", ok(func(r *labRun) string { return fmt.Sprint(r.routesMin) }))
	row("agent restarts (lab log)", func(r *labRun) string { return fmt.Sprint(r.restarts) })
	row("MemAvailable before / at ready / min during up, MB", func(r *labRun) string {
		return fmt.Sprintf("%.0f / %.0f / %.0f", r.memAvailBefore, r.memAvailReady, r.memAvailMin)
	})
	row("whole lab's memory: PSS of its processes / MemAvailable drop (others' work included), MB", ok(func(r *labRun) string {
		return fmt.Sprintf("%.0f / %.0f", r.labPSS, r.memAvailBefore-r.memAvailReady)
	}))
	row("load before (/proc/loadavg)", func(r *labRun) string { return r.loadBefore })
	row("CPU busy 5 s before up, % of all CPUs", func(r *labRun) string { return fmt.Sprintf("%.0f", 100*r.busyBefore) })
	row("CPU busy during up (steal), % of all CPUs", func(r *labRun) string {
		return fmt.Sprintf("%.0f (%.1f)", 100*r.cpuBusy, 100*r.cpuSteal)
	})
	row("load peak 1-min / runnable peak during up", func(r *labRun) string { return fmt.Sprintf("%.2f / %d", r.loadPeak, r.runnablePeak) })
	row("load at ready", func(r *labRun) string { return r.loadReady })
	row("CPU seconds during up, by component", ok(func(r *labRun) string {
		var w []string
		for _, c := range r.cpu {
			w = append(w, fmt.Sprintf("%s %.1f", c.who, c.secs))
		}
		return strings.Join(w, "; ")
	}))
	row("lab idle 10 s: CPU busy / agents, % of all CPUs", ok(func(r *labRun) string {
		return fmt.Sprintf("%.0f / %.1f", 100*r.idleBusy, 100*r.idleAgents)
	}))
	row("`tern-lab down`, s", func(r *labRun) string { return labSecs(r.down) })

	for _, r := range runs {
		if len(r.agents) == 0 {
			continue
		}
		fmt.Fprintf(&s, "\nPer agent, %d nodes (RR: route reflector):\n\n| node | VmRSS MB | PSS MB | RssAnon MB | sessions up/configured | routes | start → ready s | CPU s own / ran | reconcile passes |\n|---|---|---|---|---|---|---|---|---|\n", r.nodes)
		for _, a := range r.agents {
			name := a.node
			if a.reflector {
				name += " (RR)"
			}
			fmt.Fprintf(&s, "| %s | %.1f | %.1f | %.1f | %d/%d | %d | %s | %.2f / %.2f | %.0f |\n", name, a.rss, a.pss, a.anon, a.established, a.peers, a.routes, labSecs(a.ready), a.cpu, a.cpuRun, a.passes)
		}
	}
	b.Log("\n" + s.String())
	dir := filepath.Join(root, "bench-out")
	_ = os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "lab.md"), []byte(s.String()), 0o644); err != nil {
		b.Error(err)
	}
}
