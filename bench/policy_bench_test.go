package bench

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/tern-net/tern/dataplane"
	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/policy"
	"github.com/tern-net/tern/policy/policytest"
)

// How much is measured. The cluster is policytest's: one node of 1,000
// local pods among 5,000, and 500 policies of ten shapes, ten in each of 50
// namespaces.
const (
	syncReps     = 9   // full syncs of each kind, rotating
	remoteAdds   = 200 // incremental: new pods on another node
	localAdds    = 120 // incremental: new pods on this node, a third each: empty conntrack table, one entry, no conntrack pass
	pktPairs     = 20  // per-packet: slices per node and measurement
	pktSlice     = 200 * time.Millisecond
	pktPodPrefix = "10.244.0.0/22" // node0's pods: 10.244.0.1 to 10.244.3.250
)

// BenchmarkPolicy measures NetworkPolicy enforcement at one node's scale
// (1,000 local pods of 5,000, 500 policies): a full sync from empty against
// the floor of applying the same sets and rules with one `ipset restore` and
// one iptables-restore; the same two for a dual-stack node (every pod with
// an IPv4 and an IPv6 address; the floor adds one ip6tables-restore); the
// latency of adding one pod, on an IPv4 and on a dual-stack node; the TCP
// cost of the installed rules between two pods routed through the node; and
// the memory the compiled state holds. All kernel work happens in network
// namespaces of its own. Results go to bench-out/policy.md.
func BenchmarkPolicy(b *testing.B) {
	if b.N > 1 {
		b.Skip("one measured run: use -benchtime 1x (make bench does)")
	}
	nodetest.RequireRoot(b)
	for _, bin := range []string{"ipset", "iptables", "ip", "sysctl", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			nodetest.RequirePath(b, bin, bin)
		}
	}
	var backend dataplane.Backend
	polInNS(b, clustertest.NewNS(b), func() error {
		var err error
		backend, err = dataplane.DetectBackend()
		return err
	})
	bins := polBinsFor(b, backend.Mode)

	var out strings.Builder
	fmt.Fprintf(&out, "# NetworkPolicy\n\nOne node: %d local pods of %d, %d policies of ten shapes in %d namespaces; iptables backend %s; same run (%s).\n",
		policytest.PerNode, policytest.Nodes*policytest.PerNode, policytest.Policies, policytest.Namespaces, backend.Mode, time.Now().UTC().Format(time.RFC3339))

	mem := measurePolicyMemory(b, backend)
	sync := measureFullSync(b, backend, bins, polCase{})
	sync6 := measureFullSync(b, backend, bins, polCase{dual: true})
	syncC := measureFullSync(b, backend, bins, polCase{cluster: true})
	inc := measureIncremental(b, backend, polCase{})
	inc6 := measureIncremental(b, backend, polCase{dual: true})
	incC := measureIncremental(b, backend, polCase{cluster: true})
	pkt := measurePerPacket(b, backend, bins)

	writeFullSync(&out, sync, sync6, syncC)
	writeIncremental(&out, inc, inc6, incC)
	pkt.write(&out)
	mem.write(&out)

	// Sub-benchmarks name the dual-stack node's results "...-dual-stack".
	for _, r := range []syncResult{sync, sync6, syncC} {
		b.Run("full-sync"+polSuffix(r.node), func(b *testing.B) {
			b.ReportMetric(ms(median(r.total)), "tern-ms")
			b.ReportMetric(ms(median(r.floor)), "floor-ms")
			b.ReportMetric(ms(median(r.total))/ms(median(r.floor)), "tern/floor-x")
			b.ReportMetric(ms(median(r.compile)), "compile-ms")
			b.ReportMetric(ms(median(r.noCut))/ms(median(r.floor)), "no-conntrack-pass/floor-x")
			b.ReportMetric(ms(median(r.withEntry))/ms(median(r.floor)), "conntrack-entry/floor-x")
		})
	}
	for _, r := range []incResult{inc, inc6, incC} {
		for _, k := range []incSeries{r.remote, r.local, r.localEntry, r.localNoCut} {
			b.Run("incremental"+polSuffix(r.node)+"/"+k.name, func(b *testing.B) {
				b.ReportMetric(ms(polQuantile(k.total, 0.50)), "p50-ms")
				b.ReportMetric(ms(polQuantile(k.total, 0.90)), "p90-ms")
				b.ReportMetric(ms(polQuantile(k.total, 0.99)), "p99-ms")
				b.ReportMetric(ms(polQuantile(k.compile, 0.50)), "compile-p50-ms")
			})
		}
	}
	b.Run("per-packet", func(b *testing.B) {
		b.ReportMetric(pkt.ratio(0), "rr-x")
		b.ReportMetric(pkt.ratio(1), "throughput-x")
		b.ReportMetric(pkt.ratio(2), "conn/s-x")
		b.ReportMetric(pkt.ratio(3), "conn/s-early-x")
		b.ReportMetric(pkt.total[2][0].rate(), "conn/s")
	})
	b.Run("memory", func(b *testing.B) {
		b.ReportMetric(mem.heapMB, "heap-MB")
		b.ReportMetric(mem.rssDeltaMB, "rss-delta-MB")
		b.ReportMetric(mem.peakDeltaMB, "rss-peak-delta-MB")
	})
	writePolicyOut(b, out.String())
}

// polQuietLog discards the drivers' logs.
var polQuietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// polInNS runs f in netns (commands it starts run there too) and fails b on error.
func polInNS(b *testing.B, netns ns.NetNS, f func() error) {
	b.Helper()
	if err := netns.Do(func(ns.NetNS) error { return f() }); err != nil {
		b.Fatal(err)
	}
}

// newPolicyDriver is the policy driver an agent holds, writing through backend.
func newPolicyDriver(backend dataplane.Backend) *dataplane.Policy {
	p := dataplane.NewPolicy(polQuietLog)
	p.UseBackend(backend)
	return p
}

// polDenied is the denied function an agent hands to Policy.Apply: the
// ruleset's own evaluator, built only when some flow is judged.
func polDenied(rs policy.Ruleset) func(dataplane.Flow) bool {
	var ev *policy.Evaluator
	return func(f dataplane.Flow) bool {
		if ev == nil {
			ev = rs.Evaluator()
		}
		ok, _ := ev.Allowed(policy.Flow{Src: f.Src, Dst: f.Dst, Protocol: corev1.Protocol(f.Protocol), DstPort: f.DstPort})
		return !ok
	}
}

// polSyncAt compiles in with comp (nil: policy.Compile, as an agent's
// first pass) and applies it with p in the calling thread's namespace: what
// an agent runs on a watch event, the agent keeping one policy.Compiler.
// With cut, Apply gets the denied function an agent gives it (so it judges
// the established flows when it must: a conntrack dump); without, none. It
// returns the compile time and the whole time.
func polSyncAt(p *dataplane.Policy, comp *policy.Compiler, in policy.Input, cut bool) (compile, total time.Duration, st dataplane.PolicyStats, err error) {
	t0 := time.Now()
	var rs policy.Ruleset
	if comp != nil {
		rs = comp.Compile(in)
	} else {
		rs = policy.Compile(in)
	}
	compile = time.Since(t0)
	var denied func(dataplane.Flow) bool
	if cut {
		denied = polDenied(rs)
	}
	st, err = p.Apply(rs, denied)
	return compile, time.Since(t0), st, err
}

// polConntrackEntry puts one conntrack entry (UDP between two addresses of
// no pod, for ten minutes) into the calling thread's namespace. A node's
// table is never empty, and reading it costs a walk of the kernel's whole
// hash table, shared by all namespaces, however few entries it holds; a
// fresh namespace's is empty, which Apply sees and reads nothing.
func polConntrackEntry() error {
	a, b := net.ParseIP("198.51.100.1").To4(), net.ParseIP("198.51.100.2").To4()
	return netlink.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, &netlink.ConntrackFlow{
		FamilyType: unix.AF_INET, TimeOut: 600,
		Forward: netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: a, DstIP: b, SrcPort: 1000, DstPort: 2000},
		Reverse: netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: b, DstIP: a, SrcPort: 2000, DstPort: 1000},
	})
}

// polBins are the commands of the floor, of the same backend as tern's.
type polBins struct{ save, save6, restore, restore6 string }

func polBinsFor(b *testing.B, mode string) polBins {
	look := func(names ...string) string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		b.Fatalf("none of %v installed", names)
		return ""
	}
	return polBins{
		save:     look("iptables-"+mode+"-save", "iptables-save"),
		save6:    look("ip6tables-"+mode+"-save", "ip6tables-save"),
		restore:  look("iptables-"+mode+"-restore", "iptables-restore"),
		restore6: look("ip6tables-"+mode+"-restore", "ip6tables-restore"),
	}
}

// polRun runs a command in the calling thread's namespace.
func polRun(stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %v: %w: %s", name, args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// policyDump is what of a namespace's ipsets and filter tables is the
// policy driver's, in restore syntax: rules6 is nil when ip6tables holds
// none of its chains.
type policyDump struct{ sets, rules, rules6 []byte }

// dumpPolicy reads tern's sets and the TERN-P chains of netns, of both
// families.
func dumpPolicy(b *testing.B, netns ns.NetNS, bins polBins) policyDump {
	var d policyDump
	polInNS(b, netns, func() error {
		sets, err := polRun(nil, "ipset", "save")
		if err != nil {
			return err
		}
		var s bytes.Buffer
		for _, l := range strings.Split(string(sets), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[1], policy.SetPrefix) {
				s.WriteString(l + "\n")
			}
		}
		d.sets = s.Bytes()
		if d.rules, err = dumpChains(bins.save); err != nil {
			return err
		}
		if d.rules6, err = dumpChains(bins.save6); err == nil && polCount(d.rules6, ":") == 0 {
			d.rules6 = nil
		}
		return err
	})
	return d
}

// dumpChains is the TERN-P chains of the filter table that the save
// command prints, in restore syntax.
func dumpChains(save string) ([]byte, error) {
	rules, err := polRun(nil, save, "-t", "filter")
	if err != nil {
		return nil, err
	}
	var r bytes.Buffer
	r.WriteString("*filter\n")
	for _, l := range strings.Split(string(rules), "\n") {
		if strings.HasPrefix(l, ":"+policy.ChainPrefix) || strings.HasPrefix(l, "-A "+policy.ChainPrefix) {
			r.WriteString(l + "\n")
		}
	}
	r.WriteString("COMMIT\n")
	return r.Bytes(), nil
}

// polCount counts the lines of text starting with prefix.
func polCount(text []byte, prefix string) int {
	n := 0
	for _, l := range bytes.Split(text, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(prefix)) {
			n++
		}
	}
	return n
}

// syncResult is the full sync from empty, tern against the floor.
type syncResult struct {
	node                  string // "IPv4", "dual-stack"
	compile, total, floor []time.Duration
	// noCut: tern's Compile + Apply without a denied function, so without
	// the conntrack pass.
	noCut []time.Duration
	// withEntry: tern's Compile + Apply with a denied function in a
	// namespace whose conntrack table holds one entry (polConntrackEntry),
	// so the first Apply reads it.
	withEntry  []time.Duration
	entryStats dataplane.PolicyStats
	// readBack: the commands of Apply's read-back, alone, in a fresh
	// namespace.
	readBack []time.Duration
	stats    dataplane.PolicyStats
	dump     policyDump
	dispatch int // rules of TERN-POLICY and the dispatch chains
}

// measureFullSync times, each in a fresh namespace and in rotating order,
// tern's Compile + Apply from empty (with a denied function, also with one
// conntrack entry in the namespace so that the pass reads the table, and
// without) and the floor: tern's resulting sets and chains, dumped, fed to
// one `ipset restore` and one iptables-restore --noflush, and with dual
// (every pod with an IPv4 and an IPv6 address, the node dual-stack: the
// agent sets Input.IPv6) one ip6tables-restore --noflush too.
func measureFullSync(b *testing.B, backend dataplane.Backend, bins polBins, pc polCase) syncResult {
	dual := pc.dual
	in := policytest.Cluster(policytest.Options{DualStack: dual, ResourceVersions: true, ClusterPolicies: pc.cluster})
	in.IPv6 = dual
	r := syncResult{node: pc.node()}
	ternOnce := func(cut, entry bool) {
		netns := clustertest.NewNS(b)
		p := newPolicyDriver(backend)
		var c, t time.Duration
		var st dataplane.PolicyStats
		polInNS(b, netns, func() error {
			if entry {
				if err := polConntrackEntry(); err != nil {
					return fmt.Errorf("conntrack entry: %w", err)
				}
			}
			var err error
			c, t, st, err = polSyncAt(p, nil, in, cut)
			return err
		})
		switch {
		case entry:
			r.withEntry, r.entryStats = append(r.withEntry, t), st
		case cut:
			r.compile, r.total, r.stats = append(r.compile, c), append(r.total, t), st
		default:
			r.noCut = append(r.noCut, t)
		}
		if r.dump.sets == nil {
			r.dump = dumpPolicy(b, netns, bins)
		}
	}
	floorOnce := func() ns.NetNS {
		netns := clustertest.NewNS(b)
		polInNS(b, netns, func() error {
			t0 := time.Now()
			if _, err := polRun(r.dump.sets, "ipset", "restore"); err != nil {
				return err
			}
			if _, err := polRun(r.dump.rules, bins.restore, "--noflush", "--wait", "10"); err != nil {
				return err
			}
			if r.dump.rules6 != nil {
				if _, err := polRun(r.dump.rules6, bins.restore6, "--noflush", "--wait", "10"); err != nil {
					return err
				}
			}
			r.floor = append(r.floor, time.Since(t0))
			return nil
		})
		return netns
	}
	// Untimed: one of each warms the binaries and the kernel modules, makes
	// the dumps, and checks that the floor installs what tern does.
	ternOnce(true, false)
	ternOnce(false, false)
	ternOnce(true, true)
	check := floorOnce()
	if got := dumpPolicy(b, check, bins); !bytes.Equal(got.sets, r.dump.sets) || !bytes.Equal(got.rules, r.dump.rules) || !bytes.Equal(got.rules6, r.dump.rules6) {
		b.Fatalf("the floor installs other content than tern: %d/%d bytes of sets, %d/%d bytes of IPv4 rules, %d/%d bytes of IPv6 rules",
			len(got.sets), len(r.dump.sets), len(got.rules), len(r.dump.rules), len(got.rules6), len(r.dump.rules6))
	}
	if dual && r.dump.rules6 == nil {
		b.Fatal("a dual-stack node's policy wrote no ip6tables chain")
	}
	r.compile, r.total, r.noCut, r.withEntry, r.floor = nil, nil, nil, nil, nil
	ops := []func(){func() { ternOnce(true, false) }, func() { ternOnce(false, false) }, func() { ternOnce(true, true) }, func() { floorOnce() }}
	for i := range syncReps {
		for k := range ops {
			ops[(i+k)%len(ops)]()
		}
	}
	for range syncReps {
		polInNS(b, clustertest.NewNS(b), func() error {
			t0 := time.Now()
			for _, cmd := range [][]string{{"ipset", "save"}, {bins.save, "-t", "filter"}, {bins.save6, "-t", "filter"}} {
				if _, err := polRun(nil, cmd[0], cmd[1:]...); err != nil {
					return err
				}
			}
			r.readBack = append(r.readBack, time.Since(t0))
			return nil
		})
	}
	for _, rules := range [][]byte{r.dump.rules, r.dump.rules6} {
		r.dispatch += polCount(rules, "-A "+policy.ChainPolicy+" ") + polCount(rules, "-A "+policy.ChainPrefix+"D")
	}
	return r
}

// polSuffix is the sub-benchmarks' suffix for a node: none for IPv4,
// "-dual-stack", "-cluster-policies".
func polSuffix(node string) string {
	switch node {
	case "IPv4":
		return ""
	case polClusterNode:
		return "-cluster-policies"
	}
	return "-" + node
}

// polCase is the node and cluster of a measurement: IPv4 or dual-stack,
// with or without the ClusterNetworkPolicies (on the IPv4 node).
type polCase struct{ dual, cluster bool }

// polClusterNode names the IPv4 node with the ClusterNetworkPolicies.
var polClusterNode = fmt.Sprintf("IPv4 + %d ClusterNetworkPolicies", policytest.ClusterPolicyCount)

// node names the node of a measurement.
func (c polCase) node() string {
	switch {
	case c.cluster:
		return polClusterNode
	case c.dual:
		return "dual-stack"
	}
	return "IPv4"
}

// writeFullSync writes the full syncs' table, rows per node (IPv4, then
// dual-stack), each against the floor of the same node.
func writeFullSync(w *strings.Builder, rs ...syncResult) {
	w.WriteString("\n## Full sync from empty\n\n")
	for _, r := range rs {
		fmt.Fprintf(w, "The %s ruleset: %d ipsets with %d members, %d IPv4 chains with %d rules, %d IPv6 chains with %d rules (%d rules in %s and the dispatch chains). ",
			r.node, polCount(r.dump.sets, "create "), polCount(r.dump.sets, "add "), polCount(r.dump.rules, ":"), polCount(r.dump.rules, "-A "),
			polCount(r.dump.rules6, ":"), polCount(r.dump.rules6, "-A "), r.dispatch, policy.ChainPolicy)
	}
	fmt.Fprintf(w, "The dual-stack node's pods each have an IPv4 and an IPv6 address (policy.Input.IPv6 set, as the agent sets it on a node with an IPv6 pool). "+
		"The last node has %d ClusterNetworkPolicies of ten shapes (policytest.ClusterPolicies: half Admin, half Baseline) on top of the same NetworkPolicies. "+
		"Each run in a fresh network namespace, %d of each in rotating order, after one untimed run each. "+
		"The floor's input is tern's result read back with `ipset save`, iptables-save and ip6tables-save (checked to install the same content); "+
		"the iptables backend was given to the driver, not detected.\n\n", policytest.ClusterPolicyCount, syncReps)
	w.WriteString("| node | | median ms | / floor | runs, ms |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		tm, nm, fm, em := median(r.total), median(r.noCut), median(r.floor), median(r.withEntry)
		fmt.Fprintf(w, "| %s | tern: policy.Compile + Policy.Apply, the agent's path (with a denied function), fresh namespace: empty conntrack table, not read | %.1f | **%.2fx** | %s |\n",
			r.node, ms(tm), ms(tm)/ms(fm), polMsList(r.total))
		fmt.Fprintf(w, "| %s | of which policy.Compile | %.1f | | %s |\n", r.node, ms(median(r.compile)), polMsList(r.compile))
		fmt.Fprintf(w, "| %s | tern, the same with one conntrack entry in the namespace (as on a node: the table is read, %d dump for both families) | %.1f | **%.2fx** | %s |\n",
			r.node, r.entryStats.ConntrackDumps, ms(em), ms(em)/ms(fm), polMsList(r.withEntry))
		fmt.Fprintf(w, "| %s | tern without the conntrack pass (denied nil) | %.1f | %.2fx | %s |\n", r.node, ms(nm), ms(nm)/ms(fm), polMsList(r.noCut))
		fmt.Fprintf(w, "| %s | Apply's read-back commands alone (`ipset save`, iptables-save, ip6tables-save), fresh namespace | %.1f | | %s |\n",
			r.node, ms(median(r.readBack)), polMsList(r.readBack))
		floor := "one `ipset restore` + one `iptables-restore --noflush`"
		if r.dump.rules6 != nil {
			floor += " + one `ip6tables-restore --noflush`"
		}
		fmt.Fprintf(w, "| %s | floor: %s of the same content | %.1f | 1 | %s |\n", r.node, floor, ms(fm), polMsList(r.floor))
	}
	w.WriteString("\nTarget: at most 1.2x the floor.")
	for _, r := range rs {
		fmt.Fprintf(w, " %s: Apply ran %d `ipset restore` and %d iptables-restore (both families) after its read-back.", r.node, r.stats.SetRestores, r.stats.Restores)
	}
	w.WriteString(" With a denied function its first Apply also judges every established flow of a local pod: it reads the conntrack table " +
		"(one dump, both families) unless the namespace holds no entry.\n")
}

// incSeries is one kind of incremental change, one sample per new pod.
type incSeries struct {
	name           string
	cut            bool // Apply gets a denied function (the agent's path)
	entry          bool // the namespace's conntrack table holds an entry
	compile, total []time.Duration
	dumps          int
	setRestores    int
	restores       int
	chainsWritten  int
}

type incResult struct {
	node                                  string // "IPv4", "dual-stack"
	remote, local, localEntry, localNoCut incSeries
}

// measureIncremental adds pods one at a time to a node holding the full
// ruleset and times Compile + Apply of each: first pods on another node
// (only set members change), then pods on this node (also a new pod chain
// and a leaf of each dispatch tree), in turn with an empty conntrack
// table, with one entry in it, and without a denied function. The agent
// keeps one policy.Compiler: so does this measurement, from the full sync on.
// With dual, the node and every pod, old and new, are dual-stack.
func measureIncremental(b *testing.B, backend dataplane.Backend, pc polCase) incResult {
	dual := pc.dual
	in := policytest.Cluster(policytest.Options{DualStack: dual, ResourceVersions: true, ClusterPolicies: pc.cluster})
	in.IPv6 = dual
	in.Pods = slices.Clip(in.Pods)
	netns := clustertest.NewNS(b)
	p := newPolicyDriver(backend)
	r := incResult{
		node:       pc.node(),
		remote:     incSeries{name: "remote-pod", cut: true},
		local:      incSeries{name: "local-pod", cut: true},
		localEntry: incSeries{name: "local-pod-conntrack-entry", cut: true, entry: true},
		localNoCut: incSeries{name: "local-pod-no-conntrack-pass"},
	}
	comp := &policy.Compiler{}
	next := policytest.Nodes * policytest.PerNode
	polInNS(b, netns, func() error {
		if _, _, _, err := polSyncAt(p, comp, in, true); err != nil {
			return err
		}
		add := func(s *incSeries, pod policy.Pod) error {
			if dual {
				pod.IPs = append(pod.IPs, policytest.PodIPv6(next))
			}
			in.Pods = append(in.Pods, pod)
			if s.entry {
				if err := polConntrackEntry(); err != nil {
					return fmt.Errorf("conntrack entry: %w", err)
				}
				defer func() { _ = netlink.ConntrackTableFlush(netlink.ConntrackTable) }()
			}
			c, t, st, err := polSyncAt(p, comp, in, s.cut)
			s.dumps += st.ConntrackDumps
			s.compile, s.total = append(s.compile, c), append(s.total, t)
			s.setRestores += st.SetRestores
			s.restores += st.Restores
			s.chainsWritten += st.ChainsWritten
			return err
		}
		for k := range remoteAdds {
			if err := add(&r.remote, policytest.Pod(next, 1, netip.AddrFrom4([4]byte{10, 244, byte(100 + k/250), byte(k%250 + 1)}))); err != nil {
				return err
			}
			next++
		}
		for k := range localAdds {
			s := []*incSeries{&r.local, &r.localEntry, &r.localNoCut}[k%3]
			if err := add(s, policytest.Pod(next, 0, netip.AddrFrom4([4]byte{10, 244, byte(200 + k/250), byte(k%250 + 1)}))); err != nil {
				return err
			}
			next++
		}
		return nil
	})
	return r
}

func polQuantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// writeIncremental writes the incremental changes' table, rows per node
// (IPv4, then dual-stack).
func writeIncremental(w *strings.Builder, rs ...incResult) {
	fmt.Fprintf(w, "\n## Incremental: one new pod matching existing selectors\n\n"+
		"With the full ruleset applied, pods are added one at a time to the snapshot and each time the whole "+
		"snapshot is compiled (by one policy.Compiler, kept from the full sync on, as the agent keeps one) and applied, "+
		"with the denied function an agent gives Apply (what the agent's reconcile "+
		"runs on a watch event; the rules are in force when Apply returns). The informer's delivery of the event is not "+
		"included. First %d pods on another node (only set members change), then %d on this node (a new pod chain and "+
		"a leaf of each dispatch tree under %s; its address must have its flows judged), in turn: in the fresh namespace "+
		"(empty conntrack table, not read), with one conntrack entry in it (as on a node: the table is read), and without a "+
		"denied function. On the dual-stack node every pod, old and new, has an IPv4 and an IPv6 address. ms:\n\n", remoteAdds, localAdds, policy.ChainPolicy)
	w.WriteString("| node | new pod | samples | p50 | p90 | p99 | compile p50 | apply p50 | ipset restores | iptables-restores | chains written | conntrack dumps |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		for _, s := range []incSeries{r.remote, r.local, r.localEntry, r.localNoCut} {
			apply := make([]time.Duration, len(s.total))
			for i := range s.total {
				apply[i] = s.total[i] - s.compile[i]
			}
			fmt.Fprintf(w, "| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %d | %d | %d | %d |\n", r.node, s.name, len(s.total),
				ms(polQuantile(s.total, .5)), ms(polQuantile(s.total, .9)), ms(polQuantile(s.total, .99)),
				ms(polQuantile(s.compile, .5)), ms(polQuantile(apply, .5)), s.setRestores, s.restores, s.chainsWritten, s.dumps)
		}
	}
	w.WriteString("\nTarget: p50 under 10 ms.\n")
}

// memResult is the memory the compiled state of one node holds.
type memResult struct {
	heapMB, rssBeforeMB, rssAfterMB, rssDeltaMB, peakDeltaMB float64
}

// measurePolicyMemory builds the snapshot, compiles it and applies it in a
// namespace of its own, and reports what this process holds for it
// afterwards: the Go heap in use after a collection, and the growth of the
// resident set (after returning freed memory to the OS) and of its peak.
func measurePolicyMemory(b *testing.B, backend dataplane.Backend) memResult {
	var m memResult
	var mst runtime.MemStats
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&mst)
	heap0 := mst.HeapInuse
	m.rssBeforeMB = procStatusMB(b, "VmRSS")
	// Reset the peak resident set to the current one.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatal(err)
	}

	in := policytest.Cluster(policytest.Options{ResourceVersions: true})
	netns := clustertest.NewNS(b)
	p := newPolicyDriver(backend)
	var rs policy.Ruleset
	polInNS(b, netns, func() error {
		rs = policy.Compile(in)
		_, err := p.Apply(rs, polDenied(rs))
		return err
	})
	peak := procStatusMB(b, "VmHWM")
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&mst)
	m.heapMB = float64(mst.HeapInuse-min(heap0, mst.HeapInuse)) / (1 << 20)
	m.rssAfterMB = procStatusMB(b, "VmRSS")
	m.rssDeltaMB = m.rssAfterMB - m.rssBeforeMB
	m.peakDeltaMB = peak - m.rssBeforeMB
	runtime.KeepAlive(in)
	runtime.KeepAlive(rs)
	runtime.KeepAlive(p)
	return m
}

func procStatusMB(b *testing.B, field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

func (m memResult) write(w *strings.Builder) {
	fmt.Fprintf(w, "\n## Memory (an indication, not the agent's RSS)\n\n"+
		"This benchmark's process holding the snapshot (%d pods as policy.Pod values, not the informers' API objects), "+
		"the compiled ruleset and the policy driver's state after a full sync:\n\n", policytest.Nodes*policytest.PerNode)
	w.WriteString("| | MB |\n|---|---|\n")
	fmt.Fprintf(w, "| Go heap in use, growth, after GC | %.1f |\n", m.heapMB)
	fmt.Fprintf(w, "| resident set, growth, after GC and returning freed memory | %.1f |\n", m.rssDeltaMB)
	fmt.Fprintf(w, "| resident set, growth of the peak during compile and apply | %.1f |\n", m.peakDeltaMB)
	fmt.Fprintf(w, "| resident set of the whole benchmark process afterwards | %.1f |\n", m.rssAfterMB)
	w.WriteString("\nThe agent's RSS at this scale (target under 100 MB) adds its informer caches of the API objects, " +
		"client-go, the BGP speaker and the rest: it is measured on the lab separately.\n")
}

func polMsList(d []time.Duration) string {
	var s []string
	for _, x := range d {
		s = append(s, fmt.Sprintf("%.0f", ms(x)))
	}
	return strings.Join(s, ", ")
}

// writePolicyOut writes bench-out/policy.md under the module root and logs it.
func writePolicyOut(b *testing.B, text string) {
	b.Log("\n" + text)
	root, err := nodetest.ModuleRoot()
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(root, "bench-out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.md"), []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
}
