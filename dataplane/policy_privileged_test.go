package dataplane

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/tern-net/tern/internal/prereq"
	"github.com/tern-net/tern/policy"
)

// testNS is a network namespace of the test's own, with lo up.
type testNS struct {
	t  testing.TB
	ns ns.NetNS
	b  Backend
}

func newTestNS(t testing.TB, b Backend) *testNS {
	t.Helper()
	prereq.RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); _ = testutils.UnmountNS(n) })
	tn := &testNS{t: t, ns: n, b: b}
	tn.sh("ip", "link", "set", "lo", "up")
	return tn
}

// backends returns each backend installed here, as a subtest name and value.
func backends(t *testing.T) map[string]Backend {
	out := map[string]Backend{}
	for _, m := range []string{"nft", "legacy"} {
		b, err := BackendFor(m)
		if err != nil {
			t.Logf("backend %s: %v", m, err)
			continue
		}
		out[m] = b
	}
	if len(out) == 0 {
		prereq.Missing(t, "iptables-nft or iptables-legacy (Debian's iptables; run `make deps`)")
	}
	return out
}

// sh runs a command in the namespace and returns its output.
func (n *testNS) sh(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.ns.Path(), "--"}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// ipt runs the backend's iptables (ip6tables for v6).
func (n *testNS) ipt(v6 bool, args ...string) string {
	n.t.Helper()
	return n.sh(append([]string{n.b.bins(v6).cmd, "-w"}, args...)...)
}

// save is the filter table with counters, without the comment lines that
// carry dates.
func (n *testNS) save(v6 bool) string {
	n.t.Helper()
	var keep []string
	for _, l := range strings.Split(n.sh(n.b.bins(v6).save, "-c", "-t", "filter"), "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// foreign is what of the filter tables and ipsets is not the policy
// driver's: lines that do not name a TERN-P chain or a tern- set, with rule
// counters. The counters of built-in chains' policies are left out: any
// legacy iptables-restore --noflush resets them (libiptc rewrites the whole
// table), kube-proxy's too.
func (n *testNS) foreign() string {
	n.t.Helper()
	var keep []string
	for _, l := range strings.Split(n.save(false)+"\n--\n"+n.save(true)+"\n--\n"+n.sh("ipset", "save"), "\n") {
		if !strings.Contains(l, policy.ChainPrefix) && !strings.Contains(l, policy.SetPrefix) {
			keep = append(keep, builtinCounters.ReplaceAllString(l, "$1"))
		}
	}
	return strings.Join(keep, "\n")
}

var builtinCounters = regexp.MustCompile(`^(:(INPUT|FORWARD|OUTPUT) [A-Z]+) \[[0-9]+:[0-9]+\]$`)

func (n *testNS) newPolicy() *Policy {
	p := NewPolicy(slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.UseBackend(n.b)
	return p
}

// apply runs p.Apply inside the namespace and fails the test on error.
func (n *testNS) apply(p *Policy, rs policy.Ruleset, denied func(Flow) bool) PolicyStats {
	n.t.Helper()
	st, err := n.tryApply(p, rs, denied)
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

func (n *testNS) tryApply(p *Policy, rs policy.Ruleset, denied func(Flow) bool) (st PolicyStats, err error) {
	_ = n.ns.Do(func(ns.NetNS) error {
		st, err = p.Apply(rs, denied)
		return nil
	})
	return st, err
}

// countRuns makes p record the commands it runs.
func countRuns(p *Policy) *[]string {
	var calls []string
	run := p.run
	p.run = func(stdin []byte, name string, args ...string) ([]byte, error) {
		calls = append(calls, filepath.Base(name)+" "+strings.Join(args, " "))
		return run(stdin, name, args...)
	}
	return &calls
}

// lifecycleRuleset is a small ruleset of both families and every set type.
// extra members are added to tern-peers-a.
func lifecycleRuleset(extra ...string) policy.Ruleset {
	cut := fmt.Sprintf("%#x/%#x", policy.CutMark, policy.CutMark)
	return policy.Ruleset{
		Sets: []policy.Set{
			{Name: "tern-net-b", Type: "hash:net", Members: []string{"10.30.0.0/16", "10.30.1.0/24 nomatch"}},
			{Name: "tern-peers-a", Type: "hash:ip", Members: append([]string{"10.244.1.2", "10.244.1.3"}, extra...)},
			{Name: "tern-peers-a6", Type: "hash:ip", IPv6: true, Members: []string{"fd10:244:1::2"}},
			{Name: "tern-port-c", Type: "hash:ip,port", Members: []string{"10.244.1.2,tcp:8080"}},
		},
		Chains: []policy.Chain{
			{Name: "TERN-PE-A", Rules: []policy.Rule{rule("-j", "RETURN")}},
			{Name: "TERN-PI-A", Rules: []policy.Rule{
				rule("-p", "tcp", "--dport", "80", "-m", "set", "--match-set", "tern-peers-a", "src", "-j", "RETURN"),
				rule("-m", "set", "--match-set", "tern-net-b", "src", "-j", "RETURN"),
				rule("-m", "set", "--match-set", "tern-port-c", "dst,dst", "-j", "RETURN"),
				rule("-j", "DROP"),
			}},
			{Name: policy.ChainPolicy, Rules: []policy.Rule{
				rule("-m", "connmark", "--mark", cut, "-j", "DROP"),
				rule("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
				rule("-o", "lo", "-j", "RETURN"),
				rule("-o", "ternaaaa", "-j", "TERN-PI-A"),
				rule("-i", "ternaaaa", "-j", "TERN-PE-A"),
			}},
			{Name: "TERN-PI-A", IPv6: true, Rules: []policy.Rule{
				rule("-m", "set", "--match-set", "tern-peers-a6", "src", "-j", "RETURN"),
				rule("-j", "DROP"),
			}},
			{Name: policy.ChainPolicy, IPv6: true, Rules: []policy.Rule{
				rule("-m", "connmark", "--mark", cut, "-j", "DROP"),
				rule("-o", "lo", "-j", "RETURN"),
				rule("-o", "ternaaaa", "-j", "TERN-PI-A"),
			}},
		},
	}
}

// addForeign installs rules, a chain and a set as kube-proxy and others
// would: nothing the policy driver may touch.
func (n *testNS) addForeign() {
	for _, v6 := range []bool{false, true} {
		n.ipt(v6, "-N", "KUBE-FORWARD")
		n.ipt(v6, "-A", "KUBE-FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "ACCEPT")
		n.ipt(v6, "-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
		n.ipt(v6, "-A", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD")
		n.ipt(v6, "-N", "TERN-FORWARD") // the node driver's, not the policy driver's
		n.ipt(v6, "-A", "TERN-FORWARD", "-i", "tern+", "-j", "ACCEPT")
	}
	n.ipt(false, "-A", "FORWARD", "-s", "10.30.9.0/24", "-j", "DROP")
	// A rule that counts what poke sends: its counters must survive.
	for _, v6 := range []bool{false, true} {
		n.ipt(v6, "-A", "OUTPUT", "-o", "lo", "-m", "comment", "--comment", "foreign counter")
	}
	n.sh("ipset", "create", "KUBE-LOOP", "hash:ip")
	n.sh("ipset", "add", "KUBE-LOOP", "10.244.9.9")
	n.sh("ipset", "create", "terniary", "hash:ip") // no "tern-" prefix
}

// poke sends UDP datagrams out of lo, through OUTPUT.
func (n *testNS) poke(v6 bool) {
	n.t.Helper()
	addr := "127.0.0.1:9"
	if v6 {
		addr = "[::1]:9"
	}
	err := n.ns.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			_, _ = c.Write([]byte("x"))
		}
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
}

// sameTables compares two -save outputs, counters included, but for the
// built-in chains' policy counters (see foreign).
func sameTables(a, b string) bool {
	norm := func(s string) string {
		lines := strings.Split(s, "\n")
		for i, l := range lines {
			lines[i] = builtinCounters.ReplaceAllString(l, "$1")
		}
		return strings.Join(lines, "\n")
	}
	return norm(a) == norm(b)
}

// counted matches a TERN-POLICY rule that has seen packets.
var counted = regexp.MustCompile(`(?m)^\[[1-9][0-9]*:[0-9]+\] -A TERN-POLICY -o lo .*-j RETURN$`)

func TestPolicyLifecycle(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			n.addForeign()
			foreign := n.foreign()
			p := n.newPolicy()
			rs := lifecycleRuleset()

			st := n.apply(p, rs, nil)
			want := PolicyStats{SetsCreated: 4, MembersAdded: 6, ChainsWritten: 5, Restores: 2, SetRestores: 1}
			if st != want {
				t.Fatalf("first Apply: %+v, want %+v", st, want)
			}
			for _, s := range rs.Sets {
				out := n.sh("ipset", "list", s.Name)
				if !strings.Contains(out, "maxelem 1048576") || !strings.Contains(out, "Number of entries: "+fmt.Sprint(len(s.Members))) {
					t.Errorf("set %s:\n%s", s.Name, out)
				}
			}
			if got := n.save(false); !strings.Contains(got, "--match-set tern-port-c dst,dst") || !strings.Contains(got, "-j TERN-PI-A") {
				t.Fatalf("IPv4 filter table:\n%s", got)
			}
			if got := n.foreign(); got != foreign {
				t.Fatalf("foreign state changed:\n%s\nwas:\n%s", got, foreign)
			}

			// Traffic through OUTPUT counts on TERN-POLICY's "-o lo" rule:
			// the counters survive only if nothing is rewritten.
			for _, v6 := range []bool{false, true} {
				n.ipt(v6, "-A", "OUTPUT", "-o", "lo", "-j", policy.ChainPolicy)
				n.poke(v6)
			}
			before4, before6 := n.save(false), n.save(true)
			if !counted.MatchString(before4) || !counted.MatchString(before6) {
				t.Fatalf("no counters to watch:\n%s\n%s", before4, before6)
			}
			foreign = n.foreign()

			calls := countRuns(p)
			if st := n.apply(p, rs, nil); st != (PolicyStats{}) || len(*calls) != 0 {
				t.Fatalf("same ruleset again: %+v, ran %v", st, *calls)
			}
			if !sameTables(n.save(false), before4) || !sameTables(n.save(true), before6) {
				t.Fatalf("second Apply changed the tables:\n%s\nwas:\n%s", n.save(false), before4)
			}

			// Members only: one ipset restore, no iptables at all.
			rs = lifecycleRuleset("10.244.1.9")
			st = n.apply(p, rs, nil)
			if st != (PolicyStats{MembersAdded: 1, SetRestores: 1}) || !slices.Equal(*calls, []string{"ipset restore -exist"}) {
				t.Fatalf("member added: %+v, ran %v", st, *calls)
			}
			n.sh("ipset", "test", "tern-peers-a", "10.244.1.9")
			*calls = nil
			rs = lifecycleRuleset()
			if st := n.apply(p, rs, nil); st != (PolicyStats{MembersDeleted: 1, SetRestores: 1}) || len(*calls) != 1 {
				t.Fatalf("member deleted: %+v, ran %v", st, *calls)
			}
			if !sameTables(n.save(false), before4) || !sameTables(n.save(true), before6) {
				t.Fatal("a member change touched iptables")
			}

			// A restarted agent: a fresh Policy keeps everything, reads back
			// once, writes nothing.
			p2 := n.newPolicy()
			calls2 := countRuns(p2)
			if st := n.apply(p2, rs, nil); st != (PolicyStats{}) {
				t.Fatalf("fresh Policy, same ruleset: %+v", st)
			}
			if len(*calls2) != 3 || !strings.HasPrefix((*calls2)[0], "ipset save") {
				t.Errorf("fresh Policy ran %v, want the three read-backs only", *calls2)
			}
			if !sameTables(n.save(false), before4) || !sameTables(n.save(true), before6) {
				t.Fatal("a fresh Policy rewrote chains")
			}

			// A chain and a set go: the chain before the set.
			rs = lifecycleRuleset()
			rs.Sets = slices.DeleteFunc(rs.Sets, func(s policy.Set) bool { return s.Name == "tern-port-c" })
			rs.Chains = slices.DeleteFunc(rs.Chains, func(c policy.Chain) bool { return c.Name == "TERN-PE-A" })
			rs.Chains[0].Rules = slices.Delete(slices.Clone(rs.Chains[0].Rules), 2, 3) // TERN-PI-A: tern-port-c
			rs.Chains[1].Rules = slices.Delete(slices.Clone(rs.Chains[1].Rules), 4, 5) // TERN-POLICY: TERN-PE-A
			st = n.apply(p2, rs, nil)
			want = PolicyStats{SetsDestroyed: 1, ChainsWritten: 2, ChainsDeleted: 1, Restores: 1, SetRestores: 1}
			if st != want {
				t.Fatalf("chain and set removed: %+v, want %+v", st, want)
			}
			if s := n.save(false); strings.Contains(s, "TERN-PE-A") || strings.Contains(s, "tern-port-c") {
				t.Fatalf("stale chain left:\n%s", s)
			}
			if out := n.sh("ipset", "list", "-n"); strings.Contains(out, "tern-port-c") {
				t.Fatalf("stale set left: %s", out)
			}
			if !sameTables(n.save(true), before6) {
				t.Error("IPv6 chains were rewritten though unchanged")
			}
			if got := n.foreign(); got != foreign {
				t.Fatalf("foreign state changed:\n%s\nwas:\n%s", got, foreign)
			}

			// Nothing left: every policy chain and set goes, TERN-POLICY
			// stays, empty, since something may still jump to it.
			st = n.apply(p2, policy.Ruleset{}, nil)
			if st.ChainsDeleted != 2 || st.SetsDestroyed != 3 || st.ChainsWritten != 2 {
				t.Fatalf("empty ruleset: %+v", st)
			}
			for _, v6 := range []bool{false, true} {
				var mine []string
				for _, l := range strings.Split(n.save(v6), "\n") {
					if strings.Contains(l, policy.ChainPrefix) && !strings.HasPrefix(l, "[") {
						mine = append(mine, l)
					}
				}
				if !slices.Equal(mine, []string{":" + policy.ChainPolicy + " - [0:0]"}) {
					t.Errorf("%s left: %q", family(v6), mine)
				}
			}
			if out := n.sh("ipset", "list", "-n"); strings.TrimSpace(out) != "KUBE-LOOP\nterniary" {
				t.Errorf("sets left: %q", out)
			}
			if got := n.foreign(); got != foreign {
				t.Fatalf("foreign state changed:\n%s\nwas:\n%s", got, foreign)
			}
			if st := n.apply(p2, policy.Ruleset{}, nil); st != (PolicyStats{}) {
				t.Fatalf("empty ruleset again: %+v", st)
			}
		})
	}
}

// A stale chain that a rule of someone else's still jumps to cannot be
// deleted; the new content of the other chains lands all the same, and the
// chain goes once the rule has.
func TestPolicyStaleChainHeldByForeignRule(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			p := n.newPolicy()
			n.apply(p, lifecycleRuleset(), nil)
			n.ipt(false, "-A", "OUTPUT", "-o", "lo", "-j", "TERN-PE-A")
			rs := lifecycleRuleset()
			rs.Chains = slices.DeleteFunc(rs.Chains, func(c policy.Chain) bool { return c.Name == "TERN-PE-A" })
			rs.Chains[1].Rules = slices.Delete(slices.Clone(rs.Chains[1].Rules), 4, 5) // TERN-POLICY: TERN-PE-A
			st, err := n.tryApply(p, rs, nil)
			if err == nil || !strings.Contains(err.Error(), "TERN-PE-A") {
				t.Fatalf("err = %v, want the stale chain reported", err)
			}
			if st.ChainsWritten != 1 || st.ChainsDeleted != 0 || st.Restores != 2 {
				t.Errorf("stats %+v", st)
			}
			// Only the foreign jump is left to TERN-PE-A, which still exists.
			if s := n.save(false); strings.Count(s, "-j TERN-PE-A") != 1 || !strings.Contains(s, ":TERN-PE-A") {
				t.Fatalf("TERN-POLICY not rewritten, or TERN-PE-A gone:\n%s", s)
			}
			n.ipt(false, "-D", "OUTPUT", "-o", "lo", "-j", "TERN-PE-A")
			st = n.apply(p, rs, nil)
			if st != (PolicyStats{ChainsDeleted: 1, Restores: 1}) {
				t.Fatalf("once free: %+v", st)
			}
		})
	}
}

// Drift behind the driver's back is repaired after Resync, not before: an
// incremental Apply trusts its cache.
func TestPolicyResyncRepairsDrift(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			p := n.newPolicy()
			rs := lifecycleRuleset()
			n.apply(p, rs, nil)
			n.sh("ipset", "del", "tern-peers-a", "10.244.1.2")
			n.sh("ipset", "create", "tern-stray", "hash:ip")
			n.ipt(false, "-F", "TERN-PI-A")
			n.ipt(false, "-A", "TERN-PI-A", "-j", "ACCEPT")
			n.ipt(true, "-N", "TERN-PSTRAY")
			if st := n.apply(p, rs, nil); st != (PolicyStats{}) {
				t.Fatalf("before Resync: %+v", st)
			}
			p.Resync()
			st := n.apply(p, rs, nil)
			want := PolicyStats{MembersAdded: 1, SetsDestroyed: 1, ChainsWritten: 1, ChainsDeleted: 1, Restores: 2, SetRestores: 2}
			if st != want {
				t.Fatalf("after Resync: %+v, want %+v", st, want)
			}
			if s := n.save(false); strings.Contains(s, "-j ACCEPT") || !strings.Contains(s, "--match-set tern-net-b") {
				t.Fatalf("TERN-PI-A not repaired:\n%s", s)
			}
			n.sh("ipset", "test", "tern-peers-a", "10.244.1.2")
			if st := n.apply(p, rs, nil); st != (PolicyStats{}) {
				t.Fatalf("after repair: %+v", st)
			}
		})
	}
}

// A set whose type changes under a rule that uses it (neither swap nor
// destroy is possible then), and a set of too small a capacity (swapped).
func TestPolicySetReplaced(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			// As an older tern would have left it: small, with a stale
			// member, referred to by a policy chain.
			n.sh("ipset", "create", "tern-peers-a", "hash:ip", "maxelem", "65536")
			n.sh("ipset", "add", "tern-peers-a", "10.244.1.99")
			n.ipt(false, "-N", "TERN-PI-A")
			n.ipt(false, "-A", "TERN-PI-A", "-m", "set", "--match-set", "tern-peers-a", "src", "-j", "RETURN")
			p := n.newPolicy()
			rs := lifecycleRuleset()
			st := n.apply(p, rs, nil)
			if st.SetRestores != 1 || st.SetsCreated != 4 || st.SetsDestroyed != 1 {
				t.Fatalf("capacity swap: %+v", st)
			}
			out := n.sh("ipset", "list", "tern-peers-a")
			if !strings.Contains(out, "maxelem 1048576") || strings.Contains(out, "10.244.1.99") || !strings.Contains(out, "10.244.1.3") {
				t.Fatalf("after the swap:\n%s", out)
			}

			// hash:ip → hash:net under the same name.
			rs.Sets[1] = policy.Set{Name: "tern-peers-a", Type: "hash:net", Members: []string{"10.244.1.0/24", "10.244.1.128/25 nomatch"}}
			st = n.apply(p, rs, nil)
			if st.Restores != 2 || st.ChainsWritten != 2 {
				t.Errorf("type change: %+v, want the chain written twice (temporary name, then its own)", st)
			}
			out = n.sh("ipset", "list", "-t", "tern-peers-a")
			if !strings.Contains(out, "Type: hash:net") {
				t.Fatalf("after the type change:\n%s", out)
			}
			if names := n.sh("ipset", "list", "-n"); strings.Contains(names, "tmp") {
				t.Fatalf("temporary set left: %s", names)
			}
			if s := n.save(false); !strings.Contains(s, "--match-set tern-peers-a src") || strings.Contains(s, "tmp") {
				t.Fatalf("rules after the type change:\n%s", s)
			}
			if st := n.apply(n.newPolicy(), rs, nil); st != (PolicyStats{}) {
				t.Fatalf("converged state rewritten by a fresh Policy: %+v", st)
			}
		})
	}
}

// The node driver and the policy driver together: the jump to TERN-POLICY
// comes first in TERN-FORWARD, and the node leaves the policy chains alone.
func TestNodeJumpsToPolicy(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			node := NewNode(slog.New(slog.NewTextHandler(io.Discard, nil)))
			node.UseBackend(b)
			plan := PlanNode(NodeConfig{PodCIDRs: prefixes("10.244.1.0/24", "fd10:244:1::/64"), Policy: true})
			nodeApply := func() (ApplyStats, error) {
				var st ApplyStats
				var err error
				_ = n.ns.Do(func(ns.NetNS) error { st, err = node.Apply(plan); return nil })
				return st, err
			}
			// Before the policy driver created TERN-POLICY the jump cannot
			// be written, and TERN-FORWARD is not half-written either.
			if _, err := nodeApply(); err == nil {
				t.Fatal("node Apply with the policy jump succeeded before TERN-POLICY existed")
			}
			n.apply(n.newPolicy(), lifecycleRuleset(), nil)
			if _, err := nodeApply(); err != nil {
				t.Fatal(err)
			}
			for _, v6 := range []bool{false, true} {
				rules := n.ipt(v6, "-S", ChainForward)
				lines := strings.Split(strings.TrimSpace(rules), "\n")
				if len(lines) != 4 || !strings.HasSuffix(lines[1], "-j "+policy.ChainPolicy) {
					t.Fatalf("%s %s:\n%s", family(v6), ChainForward, rules)
				}
			}
			st, err := nodeApply()
			if err != nil || st.ChainsWritten != 0 || st.StaleRemoved != 0 {
				t.Fatalf("second node Apply: %+v %v", st, err)
			}
			if s := n.save(false); !strings.Contains(s, ":TERN-PI-A") || !strings.Contains(s, ":TERN-PE-A") {
				t.Fatalf("the node removed policy chains:\n%s", s)
			}
			// Between resyncs an unchanged plan costs no read-back; drift
			// (a rule deleted by hand) is repaired by the next resync.
			n.ipt(false, "-D", ChainForward, "1")
			if st, err := nodeApply(); err != nil || st != (ApplyStats{}) {
				t.Fatalf("unchanged plan without resync: %+v %v (want no work)", st, err)
			}
			node.Resync()
			if st, err := nodeApply(); err != nil || st.ChainsWritten != 1 {
				t.Fatalf("resync after drift: %+v %v (want TERN-FORWARD rewritten)", st, err)
			}
			if rules := n.ipt(false, "-S", ChainForward); !strings.Contains(rules, "-j "+policy.ChainPolicy) {
				t.Fatalf("drift not repaired:\n%s", rules)
			}
			// Everything went through the chosen backend: the other one
			// holds none of it.
			other := "legacy"
			if mode == "legacy" {
				other = "nft"
			}
			if ob, err := BackendFor(other); err == nil {
				if out := n.sh(ob.v4.save, "-t", "filter"); strings.Contains(out, "TERN-") {
					t.Errorf("%s holds tern's chains:\n%s", other, out)
				}
			}
		})
	}
}

func TestDetectBackend(t *testing.T) {
	bs := backends(t)
	if len(bs) < 2 {
		prereq.Missing(t, "both iptables-nft and iptables-legacy (Debian's iptables; run `make deps`)")
	}
	n := newTestNS(t, bs["nft"])
	detect := func() string {
		t.Helper()
		var b Backend
		var err error
		_ = n.ns.Do(func(ns.NetNS) error { b, err = DetectBackend(); return nil })
		if err != nil {
			t.Fatal(err)
		}
		return b.Mode
	}
	t.Setenv(BackendEnv, "")
	if got, want := detect(), versionMode("iptables"); got != want {
		t.Errorf("no rules anywhere: %s, want what iptables is (%s)", got, want)
	}
	for range 3 {
		n.sh(bs["legacy"].v4.cmd, "-w", "-A", "FORWARD", "-j", "ACCEPT")
	}
	if got := detect(); got != "legacy" {
		t.Errorf("rules in legacy only: %s", got)
	}
	for range 4 {
		n.sh(bs["nft"].v6.cmd, "-w", "-A", "FORWARD", "-j", "ACCEPT")
	}
	if got := detect(); got != "nft" {
		t.Errorf("more rules in nft: %s", got)
	}
	t.Setenv(BackendEnv, "legacy")
	if got := detect(); got != "legacy" {
		t.Errorf("%s=legacy: %s", BackendEnv, got)
	}
	t.Setenv(BackendEnv, "iptables")
	if _, err := DetectBackend(); err == nil {
		t.Errorf("%s=iptables accepted", BackendEnv)
	}
}

// manyPodsRuleset is what a node with pods local pods, each isolated for
// ingress, might compile to: a chain per pod, fifty peer sets, extra members
// in the first.
func manyPodsRuleset(pods int, extra ...string) policy.Ruleset {
	var rs policy.Ruleset
	for s := range 50 {
		set := policy.Set{Name: fmt.Sprintf("tern-peers-%02d", s), Type: "hash:ip"}
		for m := range 20 {
			set.Members = append(set.Members, fmt.Sprintf("10.244.%d.%d", s, m+1))
		}
		if s == 0 {
			set.Members = append(set.Members, extra...)
		}
		rs.Sets = append(rs.Sets, set)
	}
	entry := policy.Chain{Name: policy.ChainPolicy, Rules: []policy.Rule{
		rule("-m", "connmark", "--mark", "0x1000000/0x1000000", "-j", "DROP"),
		rule("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
	}}
	for i := range pods {
		name := fmt.Sprintf("TERN-PI-%06d", i)
		entry.Rules = append(entry.Rules, rule("-o", fmt.Sprintf("tern%011x", i), "-j", name))
		rs.Chains = append(rs.Chains, policy.Chain{Name: name, Rules: []policy.Rule{
			rule("-p", "tcp", "--dport", "80", "-m", "set", "--match-set", rs.Sets[i%50].Name, "src", "-j", "RETURN"),
			rule("-p", "tcp", "--dport", "443", "-m", "set", "--match-set", rs.Sets[(i+1)%50].Name, "src", "-j", "RETURN"),
			rule("-j", "DROP"),
		}})
	}
	rs.Chains = append(rs.Chains, entry)
	sort.Slice(rs.Chains, func(i, j int) bool { return rs.Chains[i].Name < rs.Chains[j].Name })
	return rs
}

// TestPolicyIncrementalWritesOneMember: with a thousand pods' chains
// installed, an Apply whose only change is one member of one set runs one
// ipset restore and nothing else: no chain is read back or rewritten. How long
// that takes is a figure for make bench (bench/policy_bench_test.go), not a
// pass mark here.
func TestPolicyIncrementalWritesOneMember(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			n := newTestNS(t, b)
			p := n.newPolicy()
			base, plus := manyPodsRuleset(1000), manyPodsRuleset(1000, "10.244.200.1")
			n.apply(p, base, nil)
			calls := countRuns(p)
			for i := range 6 {
				rs, want := base, false
				if i%2 == 0 {
					rs, want = plus, true
				}
				*calls = nil
				st := n.apply(p, rs, nil)
				if st.SetRestores != 1 || st.Restores != 0 || st.MembersAdded+st.MembersDeleted != 1 {
					t.Fatalf("incremental Apply %d: %+v", i, st)
				}
				if len(*calls) != 1 || !strings.HasPrefix((*calls)[0], "ipset restore") {
					t.Fatalf("incremental Apply %d ran %q; want one ipset restore", i, *calls)
				}
				if got := strings.Contains(n.sh("ipset", "list", "tern-peers-00"), "10.244.200.1"); got != want {
					t.Fatalf("incremental Apply %d: 10.244.200.1 in tern-peers-00: %v, want %v", i, got, want)
				}
			}
		})
	}
}

func BenchmarkPolicyIncremental(b *testing.B) {
	be, err := BackendFor("nft")
	if err != nil {
		prereq.Missing(b, err.Error())
	}
	n := newTestNS(b, be)
	p := n.newPolicy()
	base, plus := manyPodsRuleset(1000), manyPodsRuleset(1000, "10.244.200.1")
	n.apply(p, base, nil)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rs := base
		if i%2 == 0 {
			rs = plus
		}
		n.apply(p, rs, nil)
	}
}
