package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tern-net/tern/internal/lab"
	"github.com/tern-net/tern/internal/labtest"
	"github.com/tern-net/tern/internal/nodetest"
)

const (
	realLabPrefix = "tlreal" // apart from make lab's, e2e's and BenchmarkLab's
	startupPods   = 50       // created at once
	// sequentialPods are created one at a time, each once the one before
	// runs: the latency of one pod on a machine not saturated by the others.
	sequentialPods = 20
	// ptpRange holds the reference's addresses: node i gets 10.245.i.0/24,
	// apart from tern's pod CIDRs (10.244.0.0/16).
	ptpRange = "10.245.0.0/16"
)

// BenchmarkRealLab: a lab of real nodes as `make lab` makes it (4 nodes in 2
// racks behind BIRD and FRR; kubelet, containerd, kube-proxy on every node;
// tern installed by its DaemonSet): `tern-lab up`'s wall time, the lab's
// memory per component, and pod startup latency (pod created → seen Running
// with its IP, through a watch) of 50 pods created at once and placed by the
// scheduler, first on tern, then on the same lab with Debian's ptp +
// host-local as every node's conflist, in the same run. The table goes to
// bench-out/reallab.md.
func BenchmarkRealLab(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	nodetest.RequireRoot(b)
	for _, p := range []string{"/usr/sbin/bird", "/usr/lib/frr/bgpd", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local"} {
		nodetest.RequirePath(b, p, p)
	}
	if left, _ := filepath.Glob(filepath.Join(lab.NetNSDir, realLabPrefix+"-*")); len(left) > 0 {
		b.Fatalf("namespaces of a previous %s lab are left (TERN_LAB_NAME=%s tern-lab down removes them): %s", realLabPrefix, realLabPrefix, strings.Join(left, " "))
	}
	tmp, err := os.MkdirTemp("", "tern-reallab-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(tmp) })
	l, err := labtest.Build(tmp, realLabPrefix, true)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	// IPv4, as the ptp reference it is measured against (host-local gives
	// one IPv4 address per pod).
	out, err := l.Cmd("up", "--nodes", "4", "--racks", "2", "--router", "mixed", "--ip-family", "ipv4").CombinedOutput()
	up := time.Since(t0)
	b.Cleanup(func() {
		if out, err := l.Cmd("down").CombinedOutput(); err != nil {
			b.Errorf("tern-lab down: %v\n%s", err, out)
		}
	})
	if err != nil {
		b.Fatalf("tern-lab up: %v\n%s", err, out)
	}
	st, err := l.Client.State(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	mem := labMemory(st)

	ternNet, ptpNet := netip.MustParsePrefix(lab.ClusterCIDR), netip.MustParsePrefix(ptpRange)
	tern := podStartup(b, client, st, "startup-tern", ternNet, startupPods, false)
	ternSeq := podStartup(b, client, st, "startup-tern-seq", ternNet, sequentialPods, true)
	usePTP(b, st)
	ptp := podStartup(b, client, st, "startup-ptp", ptpNet, startupPods, false)
	ptpSeq := podStartup(b, client, st, "startup-ptp-seq", ptpNet, sequentialPods, true)

	b.ReportMetric(up.Seconds(), "up-s")
	b.ReportMetric(ms(tern.p50), "tern-p50-ms")
	b.ReportMetric(ms(tern.p99), "tern-p99-ms")
	b.ReportMetric(ms(ptp.p50), "ptp-p50-ms")
	b.ReportMetric(ms(ptp.p99), "ptp-p99-ms")
	b.ReportMetric(ms(ternSeq.p50), "tern-seq-p50-ms")
	b.ReportMetric(ms(ptpSeq.p50), "ptp-seq-p50-ms")
	writeRealLabTable(b, up, mem, [][2]startup{{tern, ptp}, {ternSeq, ptpSeq}})
}

// startup is one round's pod startup latencies.
type startup struct {
	p50, p99, max, wall time.Duration
	perNode             map[string]int
}

// podStartup creates startupPods pods in namespace ns at once (10 callers,
// as a controller would), each pod's clock starting just before its create,
// and stops it when a watch sees the pod Running with an address; every
// address must be in want (the conflist in force). Then it deletes the
// namespace and waits until it is gone. Before the round, one pod pinned to
// each node must come up with an address in want: the nodes' runtime uses
// the conflist measured, the image is unpacked, and the first sandbox on
// each node is not counted.
func podStartup(b *testing.B, client kubernetes.Interface, st lab.State, ns string, want netip.Prefix, n int, oneAtATime bool) startup {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	defer removeNamespaces(b, client, []string{ns})
	pod := func(name, node string) *corev1.Pod {
		zero := int64(0)
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"bench": "startup"}},
			Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: &zero, Containers: []corev1.Container{{
				Name: "serve", Image: lab.ServerImage,
				Env: []corev1.EnvVar{
					{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				},
			}}},
		}
	}
	// A watch that resumes where it was when the API server or the
	// connection ends it: once, a plain watch ended during the 50 pods'
	// start (load average near 100) and the round waited its 6 minutes
	// with every pod Running.
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, podWatcher{client, ns})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	// running: pod name → when the watch saw it Running with an address in
	// want (an address outside want fails the round).
	var mu sync.Mutex
	running := map[string]time.Time{}
	var wrong []string
	var watchErrs []string
	watched := make(chan struct{}, 1)
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				mu.Lock()
				watchErrs = append(watchErrs, fmt.Sprintf("%v", ev.Object))
				mu.Unlock()
				continue
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				continue
			}
			now := time.Now()
			mu.Lock()
			if _, seen := running[p.Name]; !seen {
				running[p.Name] = now
				if a, err := netip.ParseAddr(p.Status.PodIP); err != nil || !want.Contains(a) {
					wrong = append(wrong, fmt.Sprintf("%s on %s: %s", p.Name, p.Spec.NodeName, p.Status.PodIP))
				}
				select {
				case watched <- struct{}{}:
				default:
				}
			}
			mu.Unlock()
		}
	}()
	waitRunning := func(names []string, what string) {
		b.Helper()
		for {
			mu.Lock()
			n := 0
			for _, name := range names {
				if _, ok := running[name]; ok {
					n++
				}
			}
			bad := slices.Clone(wrong)
			mu.Unlock()
			if len(bad) > 0 {
				b.Fatalf("%s: pods with an address outside %s (not the conflist measured): %s", ns, want, strings.Join(bad, ", "))
			}
			if n == len(names) {
				return
			}
			select {
			case <-watched:
			case <-ctx.Done():
				mu.Lock()
				errs := strings.Join(watchErrs, "; ")
				mu.Unlock()
				b.Fatalf("%s: %s: %d of %d pods Running with an address after 6 min (watch errors: %q)\n%s", ns, what, n, len(names), errs, podsReport(client, ns))
			}
		}
	}
	var warm []string
	for _, n := range st.Nodes {
		name := "warm-" + n.Name
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod(name, n.Name), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		warm = append(warm, name)
	}
	waitRunning(warm, "warm-up pods")

	created := make([]time.Time, n)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("p%02d", i)
	}
	create := func(i int) error {
		created[i] = time.Now()
		_, err := client.CoreV1().Pods(ns).Create(ctx, pod(names[i], ""), metav1.CreateOptions{})
		return err
	}
	t0 := time.Now()
	if oneAtATime {
		for i := range n {
			if err := create(i); err != nil {
				b.Fatal(err)
			}
			waitRunning(names[i:i+1], "pod "+names[i])
		}
	} else {
		parallelN(b, 10, n, create)
		waitRunning(names, "the measured pods")
	}
	wall := time.Since(t0)
	mu.Lock()
	lat := make([]time.Duration, n)
	for i, name := range names {
		lat[i] = running[name].Sub(created[i])
	}
	mu.Unlock()
	slices.Sort(lat)
	r := startup{p50: lat[len(lat)/2], p99: lat[(len(lat)*99+99)/100-1], max: lat[len(lat)-1], wall: wall, perNode: map[string]int{}}
	list, err = client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "bench=startup"})
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range list.Items {
		if !strings.HasPrefix(p.Name, "warm-") {
			r.perNode[p.Spec.NodeName]++
		}
	}
	return r
}

// podWatcher watches the pods of one namespace, for a RetryWatcher.
type podWatcher struct {
	client kubernetes.Interface
	ns     string
}

func (p podWatcher) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return p.client.CoreV1().Pods(p.ns).Watch(ctx, o)
}

// podsReport tells what the pods of ns are waiting for: each pod's phase,
// node and conditions, and the namespace's last events.
func podsReport(client kubernetes.Interface, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s strings.Builder
	if list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, p := range list.Items {
			fmt.Fprintf(&s, "pod %s: %s on %q IP %q", p.Name, p.Status.Phase, p.Spec.NodeName, p.Status.PodIP)
			for _, c := range p.Status.Conditions {
				if c.Status != corev1.ConditionTrue {
					fmt.Fprintf(&s, "; %s=%s %s %s", c.Type, c.Status, c.Reason, c.Message)
				}
			}
			s.WriteString("\n")
		}
	}
	if evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		items := evs.Items
		slices.SortFunc(items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
		for _, e := range items[max(0, len(items)-20):] {
			fmt.Fprintf(&s, "event %s %s: %s %s\n", e.InvolvedObject.Name, e.Type, e.Reason, e.Message)
		}
	}
	return s.String()
}

// parallelN runs f(0..n-1) on workers goroutines and fails b with the first
// error.
func parallelN(b *testing.B, workers, n int, f func(i int) error) {
	b.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					once.Do(func() { first = fmt.Errorf("item %d: %w", i, err) })
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// usePTP makes Debian's ptp + host-local every node's network: the plugins
// into the node's /opt/cni/bin and a conflist that sorts before tern's into
// its /etc/cni/net.d, where containerd picks the first (the warm-up pods of
// the next round prove that it did). Each node gets its own /24 of ptpRange,
// host-local's state in the node's own /var/lib/tern.
func usePTP(b *testing.B, st lab.State) {
	b.Helper()
	for i, n := range st.Nodes {
		root := filepath.Join(n.Dir, "node", "root")
		for _, p := range []string{"ptp", "host-local"} {
			if out, err := exec.Command("cp", "/usr/lib/cni/"+p, filepath.Join(root, "opt/cni/bin", p)).CombinedOutput(); err != nil {
				b.Fatalf("%s: copy %s: %v %s", n.Name, p, err, out)
			}
		}
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "ptp-bench", "plugins": [{"type": "ptp", "ipMasq": false,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.%d.0/24"}]], "dataDir": "/var/lib/tern/ptp-bench-ipam"}}]}
`, i+1)
		// Written aside and renamed: containerd never reads half a file.
		dir := filepath.Join(root, "etc/cni/net.d")
		if err := os.WriteFile(filepath.Join(dir, ".00-ptp-bench.tmp"), []byte(conf), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, ".00-ptp-bench.tmp"), filepath.Join(dir, "00-ptp-bench.conflist")); err != nil {
			b.Fatal(err)
		}
	}
}

// component is the lab's processes of one program.
type component struct {
	name  string
	procs int
	rssMB float64
}

// labMemory sums VmRSS per program over the lab's processes: the lab
// daemon's descendants (routers, the nodes' containerd, kubelet and
// kube-proxy), every process in a mount namespace of those (containerd's
// shims, which leave the daemon's tree) and its descendants (the
// containers: agents, pause), and the control plane (hack/kube-env.sh's PID
// files). Pages shared between processes count in each.
func labMemory(st lab.State) []component {
	procs := snapshotProcs()
	children := map[int][]int{}
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	mine := map[int]bool{}
	var walk func(int)
	walk = func(pid int) {
		if mine[pid] {
			return
		}
		mine[pid] = true
		for _, c := range children[pid] {
			walk(c)
		}
	}
	walk(st.PID)
	mntOf := func(pid int) string { l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); return l }
	host := mntOf(os.Getpid())
	nodeMnt := map[string]bool{}
	for pid := range mine {
		if m := mntOf(pid); m != "" && m != host {
			nodeMnt[m] = true
		}
	}
	for pid := range procs {
		if nodeMnt[mntOf(pid)] {
			walk(pid)
		}
	}
	for _, pid := range append(kubePIDs(st), kubePID(st, "kube-scheduler")) {
		if pid > 0 {
			walk(pid)
		}
	}
	byName := map[string]*component{}
	for pid := range mine {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if name == "bash" || name == "sh" || name == "sleep" {
			continue // kube-env's watchdog and the like
		}
		c := byName[name]
		if c == nil {
			c = &component{name: name}
			byName[name] = c
		}
		c.procs++
		c.rssMB += statusMB(pid, "VmRSS:")
	}
	var out []component
	for _, c := range byName {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b component) int { return int(b.rssMB - a.rssMB) })
	return out
}

func writeRealLabTable(b *testing.B, up time.Duration, mem []component, rounds [][2]startup) {
	var s strings.Builder
	fmt.Fprintf(&s, "Real-node lab: 4 nodes in 2 racks (BIRD, FRR), tern installed by its DaemonSet (%s)\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "`tern-lab up` to every agent Ready: %.1f s\n\n", up.Seconds())
	s.WriteString("Pod startup, pod created → Running with its IP (seen by a watch), placed by the scheduler, same lab, same run; ms:\n\n")
	s.WriteString("| pods | network | p50 | p99 | max | all Running, s | pods per node |\n|---|---|---|---|---|---|---|\n")
	what := []string{fmt.Sprintf("%d at once (10 callers)", startupPods), fmt.Sprintf("%d one at a time", sequentialPods)}
	for i, pair := range rounds {
		for j, r := range pair {
			var nodes []string
			for n, c := range r.perNode {
				nodes = append(nodes, fmt.Sprintf("%s %d", n, c))
			}
			slices.Sort(nodes)
			fmt.Fprintf(&s, "| %s | %s | %.0f | %.0f | %.0f | %.1f | %s |\n", what[i], []string{"tern", "ptp+host-local"}[j],
				ms(r.p50), ms(r.p99), ms(r.max), r.wall.Seconds(), strings.Join(nodes, ", "))
		}
	}
	s.WriteString("\n| pods | p50 tern/ptp | p99 tern/ptp | all Running tern/ptp |\n|---|---|---|---|\n")
	for i, pair := range rounds {
		t, p := pair[0], pair[1]
		fmt.Fprintf(&s, "| %s | %.2fx | %.2fx | %.2fx |\n", what[i], ms(t.p50)/ms(p.p50), ms(t.p99)/ms(p.p99), t.wall.Seconds()/p.wall.Seconds())
	}
	s.WriteString("\n")
	s.WriteString("Memory of the lab once up (VmRSS summed per program; pages shared between processes count in each):\n\n| program | processes | MB |\n|---|---|---|\n")
	total := 0.0
	for _, c := range mem {
		fmt.Fprintf(&s, "| %s | %d | %.0f |\n", c.name, c.procs, c.rssMB)
		total += c.rssMB
	}
	fmt.Fprintf(&s, "| **all** | | %.0f |\n", total)
	b.Log("\n" + s.String())
	root, err := nodetest.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	_ = os.MkdirAll(filepath.Join(root, "bench-out"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "bench-out", "reallab.md"), []byte(s.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}
