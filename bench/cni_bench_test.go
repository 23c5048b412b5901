// Package bench measures tern side by side with the reference implementations
// named in its issues, in the same run, and reports ratios. Run with `make bench`.
package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/agentapi"
	"github.com/tern-net/tern/internal/nodetest"
)

const (
	podCIDR = "10.244.0.0/24"
	pods    = 200
	rounds  = 2 // per plugin and concurrency, pooled
)

// latencies summarises one phase of a run.
type latencies struct {
	p50, p99 time.Duration
	perSec   float64
}

func summarize(d []time.Duration, wall time.Duration) latencies {
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	return latencies{p50: q(0.50), p99: q(0.99), perSec: float64(len(d)) / wall.Seconds()}
}

// phase runs op for every pod with `workers` concurrent callers and returns
// each call's latency and the wall time of the whole phase.
func phase(b *testing.B, podNS []ns.NetNS, workers int, op func(i int, rt *libcni.RuntimeConf) error) ([]time.Duration, time.Duration) {
	d := make([]time.Duration, len(podNS))
	next := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Once
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				rt := nodetest.RuntimeConf(fmt.Sprintf("bench%03d", i), podNS[i])
				t0 := time.Now()
				if err := op(i, rt); err != nil {
					failed.Do(func() { b.Errorf("pod %d: %v", i, err) })
				}
				d[i] = time.Since(t0)
			}
		}()
	}
	for i := range podNS {
		next <- i
	}
	close(next)
	wg.Wait()
	return d, time.Since(start)
}

// pooled collects the rounds of one plugin and one concurrency.
type pooled struct {
	add, del         []time.Duration
	addWall, delWall time.Duration
}

func (p *pooled) run(b *testing.B, pl plugin, podNS []ns.NetNS, workers int) {
	d, w := phase(b, podNS, workers, pl.add)
	p.add, p.addWall = append(p.add, d...), p.addWall+w
	d, w = phase(b, podNS, workers, pl.del)
	p.del, p.delWall = append(p.del, d...), p.delWall+w
}

// plugin is one way to attach pods: a CNI plugin through libcni, or the
// kernel floor.
type plugin struct {
	name     string
	add, del func(i int, rt *libcni.RuntimeConf) error
}

func cniPlugin(name string, n *nodetest.Node, list *libcni.NetworkConfigList) plugin {
	return plugin{name: name,
		add: func(_ int, rt *libcni.RuntimeConf) error { _, err := n.Add(list, rt); return err },
		del: func(_ int, rt *libcni.RuntimeConf) error { return n.Del(list, rt) },
	}
}

type row struct {
	plugin   string
	workers  int
	add, del latencies
}

// BenchmarkCNI measures CNI ADD and DEL latency (p50, p99) and pods per second
// for tern, for Debian's ptp + host-local (the CNI project's reference
// plugins) and for the kernel floor (the same veth, addresses, routes and
// neighbour entries made by one process with netlink: floor), with 1 and 10
// concurrent callers over 200 pods, in the same run.
func BenchmarkCNI(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	nodetest.RequirePath(b, filepath.Join(nodetest.DebianCNIDir, "ptp"), "Debian ptp plugin")
	tern := nodetest.NewNode(b, podCIDR)
	ternList := tern.ConfList("1.0.0")

	ref := nodetest.NewNode(b, "10.245.0.0/24") // its agent is idle; ptp uses host-local
	ptpConf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ptp","plugins":[{"type":"ptp","ipMasq":false,
		"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}]}`,
		podCIDR, filepath.Join(ref.Dir, "host-local"))
	ptpList, err := libcni.NetworkConfFromBytes([]byte(ptpConf))
	if err != nil {
		b.Fatal(err)
	}

	podNS := make([]ns.NetNS, pods)
	for i := range podNS {
		podNS[i] = tern.NewPodNS()
	}
	fl := &floor{node: nodetest.NewNodeNS(b).NS, podNS: podNS}
	plugins := []plugin{cniPlugin("tern", tern, ternList), cniPlugin("ptp+host-local", ref, ptpList),
		{name: "floor (netlink only)", add: func(i int, _ *libcni.RuntimeConf) error { return fl.add(i) },
			del: func(i int, _ *libcni.RuntimeConf) error { return fl.del(i) }}}
	for _, p := range plugins {
		// Warm the page cache and the binaries once, untimed.
		if err := p.add(0, nodetest.RuntimeConf("warm", podNS[0])); err != nil {
			b.Fatalf("%s warm-up: %v", p.name, err)
		}
		if err := p.del(0, nodetest.RuntimeConf("warm", podNS[0])); err != nil {
			b.Fatalf("%s warm-up: %v", p.name, err)
		}
	}
	var rows []row
	for _, workers := range []int{1, 10} {
		// Two rounds each, in alternating order, pooled: both plugins see the
		// same machine, whatever else it does meanwhile.
		res := make([]pooled, len(plugins))
		for round := range rounds {
			for k := range plugins {
				i := (k + round) % len(plugins)
				res[i].run(b, plugins[i], podNS, workers)
			}
		}
		for i, p := range plugins {
			add := summarize(res[i].add, res[i].addWall)
			del := summarize(res[i].del, res[i].delWall)
			rows = append(rows, row{p.name, workers, add, del})
			b.Run(fmt.Sprintf("%s/callers=%d", p.name, workers), func(b *testing.B) {
				b.ReportMetric(ms(add.p50), "add-p50-ms")
				b.ReportMetric(ms(add.p99), "add-p99-ms")
				b.ReportMetric(ms(del.p50), "del-p50-ms")
				b.ReportMetric(ms(del.p99), "del-p99-ms")
				b.ReportMetric(add.perSec, "attach/s")
			})
		}
	}
	for i := 0; i+2 < len(rows); i += 3 {
		t, r, f := rows[i], rows[i+1], rows[i+2]
		b.Run(fmt.Sprintf("ratio-tern-over-ptp/callers=%d", t.workers), func(b *testing.B) {
			b.ReportMetric(ms(t.add.p50)/ms(r.add.p50), "add-p50-x")
			b.ReportMetric(ms(t.del.p50)/ms(r.del.p50), "del-p50-x")
			b.ReportMetric(t.add.perSec/r.add.perSec, "attach/s-x")
		})
		b.Run(fmt.Sprintf("ratio-tern-over-floor/callers=%d", t.workers), func(b *testing.B) {
			b.ReportMetric(ms(t.add.p50)/ms(f.add.p50), "add-p50-x")
			b.ReportMetric(ms(t.del.p50)/ms(f.del.p50), "del-p50-x")
		})
	}
	writeTable(b, rows)
}

// BenchmarkAgentRSS reports the agent's resident memory holding 1,000
// allocations (made through its socket API, as the CNI plugin makes them).
func BenchmarkAgentRSS(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	n := nodetest.NewNode(b, "10.246.0.0/20")
	c := n.Client()
	for i := range 1000 {
		_, err := c.Allocate(context.Background(), agentapi.AllocateRequest{
			Attachment: agentapi.Attachment{ContainerID: fmt.Sprintf("rss-%04d", i), IfName: "eth0"},
			Namespace:  "default", Pod: fmt.Sprintf("pod-%04d", i), HostIf: fmt.Sprintf("tern%011d", i),
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	rss := rssMB(b, n.AgentPID())
	b.ReportMetric(rss, "agent-rss-MB")
	b.ReportMetric(rss/40, "of-40MB-target-x")
	appendOut(b, fmt.Sprintf("\nAgent RSS with 1,000 allocations: %.1f MB (target < 40 MB)\n", rss))
}

func rssMB(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func writeTable(b *testing.B, rows []row) {
	var s strings.Builder
	fmt.Fprintf(&s, "CNI ADD/DEL of %d pods, %d rounds per row, plugins alternating, same run (%s); ms\n\n", pods, rounds, time.Now().UTC().Format(time.RFC3339))
	s.WriteString("| plugin | callers | ADD p50 | ADD p99 | DEL p50 | DEL p99 | attached/s |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&s, "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.0f |\n", r.plugin, r.workers,
			ms(r.add.p50), ms(r.add.p99), ms(r.del.p50), ms(r.del.p99), r.add.perSec)
	}
	s.WriteString("\n| callers | ADD p50 tern/ptp | DEL p50 tern/ptp | attached/s tern/ptp | ADD p50 tern/floor | DEL p50 tern/floor |\n|---|---|---|---|---|---|\n")
	for i := 0; i+2 < len(rows); i += 3 {
		t, r, f := rows[i], rows[i+1], rows[i+2]
		fmt.Fprintf(&s, "| %d | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx |\n", t.workers, ms(t.add.p50)/ms(r.add.p50), ms(t.del.p50)/ms(r.del.p50),
			t.add.perSec/r.add.perSec, ms(t.add.p50)/ms(f.add.p50), ms(t.del.p50)/ms(f.del.p50))
	}
	appendOut(b, s.String())
}

// appendOut adds to bench-out/cni.md under the module root and logs it.
func appendOut(b *testing.B, text string) { appendOutTo(b, "cni.md", text) }

// appendOutTo adds to bench-out/name under the module root and logs it.
func appendOutTo(b *testing.B, name, text string) {
	b.Log("\n" + text)
	root, err := nodetest.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(root, "bench-out")
	_ = os.MkdirAll(dir, 0o755)
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	_, _ = f.WriteString(text)
}
