package dataplane

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/policy"
)

// echoServer accepts connections on addr inside netns and echoes lines.
func echoServer(t *testing.T, netns ns.NetNS, addr string) {
	t.Helper()
	nodetest.ServeConn(t, netns, addr, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialIn(netns ns.NetNS, addr string) (*echoConn, error) {
	var c net.Conn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &echoConn{c: c, r: bufio.NewReader(c)}, nil
}

// echo writes a line (unless empty) and waits up to d for a line back.
func (e *echoConn) echo(line string, d time.Duration) (string, error) {
	if line != "" {
		if _, err := e.c.Write([]byte(line + "\n")); err != nil {
			return "", err
		}
	}
	_ = e.c.SetReadDeadline(time.Now().Add(d))
	got, err := e.r.ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

// cutLab is a node namespace with two pods behind the veths terna and
// ternb, as tern's CNI plugin attaches them but with addresses on the host
// side: a is 10.244.1.2, b 10.244.2.2, and with ip6tables also
// fd10:244:1::2 and fd10:244:2::2.
type cutLab struct {
	node, a, b *testNS
	v6         bool
	podsV4     map[string]policy.PodPolicy // pods with their IPv4 addresses
	podsDual   map[string]policy.PodPolicy // and IPv6 ones
}

var (
	ipA, ipB   = netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.2.2")
	ip6A, ip6B = netip.MustParseAddr("fd10:244:1::2"), netip.MustParseAddr("fd10:244:2::2")
)

func newCutLab(t *testing.T, b Backend) *cutLab {
	l := &cutLab{node: newTestNS(t, b), a: newTestNS(t, b), b: newTestNS(t, b), v6: b.v6.has()}
	for _, x := range []struct {
		pod                   *testNS
		hostIf, host, addr    string
		gw, host6, addr6, gw6 string
	}{
		{l.a, "terna", "10.244.1.1/24", "10.244.1.2/24", "10.244.1.1", "fd10:244:1::1/64", "fd10:244:1::2/64", "fd10:244:1::1"},
		{l.b, "ternb", "10.244.2.1/24", "10.244.2.2/24", "10.244.2.1", "fd10:244:2::1/64", "fd10:244:2::2/64", "fd10:244:2::1"},
	} {
		l.node.sh("ip", "link", "add", x.hostIf, "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(x.pod.ns.Path()))
		l.node.sh("ip", "addr", "add", x.host, "dev", x.hostIf)
		l.node.sh("ip", "link", "set", x.hostIf, "up")
		x.pod.sh("ip", "addr", "add", x.addr, "dev", "eth0")
		x.pod.sh("ip", "link", "set", "eth0", "up")
		x.pod.sh("ip", "route", "add", "default", "via", x.gw)
		if l.v6 {
			l.node.sh("ip", "addr", "add", x.host6, "dev", x.hostIf, "nodad")
			x.pod.sh("ip", "addr", "add", x.addr6, "dev", "eth0", "nodad")
			x.pod.sh("ip", "-6", "route", "add", "default", "via", x.gw6)
		}
	}
	l.podsV4 = map[string]policy.PodPolicy{
		"default/a": {HostIf: "terna", IPs: []netip.Addr{ipA}},
		"default/b": {HostIf: "ternb", IPs: []netip.Addr{ipB}},
	}
	l.podsDual = map[string]policy.PodPolicy{
		"default/a": {HostIf: "terna", IPs: []netip.Addr{ipA, ip6A}},
		"default/b": {HostIf: "ternb", IPs: []netip.Addr{ipB, ip6B}},
	}
	return l
}

// nodeApply writes the node's own chains: forwarding for the pods, the
// masquerade (which makes conntrack track the namespace's flows, as
// kube-proxy's rules do on a node) and, with policy, the jump to
// ChainPolicy; IPv6 too with v6.
func (l *cutLab) nodeApply(t *testing.T, withPolicy, v6 bool) {
	t.Helper()
	nd := NewNode(slog.New(slog.NewTextHandler(io.Discard, nil)))
	nd.UseBackend(l.node.b)
	cidrs := prefixes("10.244.0.0/16")
	if v6 {
		cidrs = append(cidrs, prefixes("fd10:244::/48")...)
	}
	if err := l.node.ns.Do(func(ns.NetNS) error {
		_, err := nd.Apply(PlanNode(NodeConfig{PodCIDRs: cidrs, NATOutgoing: true, NATOutgoingIPv6: v6, Policy: withPolicy}))
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// entryRules are ChainPolicy's first rules, as Compile writes them.
func entryRules() []policy.Rule {
	cut := fmt.Sprintf("%#x/%#x", policy.CutMark, policy.CutMark)
	return []policy.Rule{
		rule("-m", "connmark", "--mark", cut, "-j", "DROP"),
		rule("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
	}
}

// isolateB is a ruleset where b accepts TCP 9090 from a (the set tern-pods-a
// and its IPv6 twin when v6), and TCP 8080 from the members of tern-extra.
func isolateB(pods map[string]policy.PodPolicy, v6 bool, extra ...string) policy.Ruleset {
	rs := policy.Ruleset{Pods: pods}
	for _, fam := range []bool{false, true} {
		if fam && !v6 {
			break
		}
		suffix, a := "", ipA
		if fam {
			suffix, a = "6", ip6A
		}
		var members []string
		for _, m := range extra {
			if netip.MustParseAddr(m).Is6() == fam {
				members = append(members, m)
			}
		}
		rs.Sets = append(rs.Sets,
			policy.Set{Name: "tern-extra" + suffix, Type: "hash:ip", IPv6: fam, Members: members},
			policy.Set{Name: "tern-pods-a" + suffix, Type: "hash:ip", IPv6: fam, Members: []string{a.String()}})
		rs.Chains = append(rs.Chains,
			policy.Chain{Name: "TERN-PI-B", IPv6: fam, Rules: []policy.Rule{
				rule("-p", "tcp", "--dport", "9090", "-m", "set", "--match-set", "tern-pods-a"+suffix, "src", "-j", "RETURN"),
				rule("-p", "tcp", "--dport", "8080", "-m", "set", "--match-set", "tern-extra"+suffix, "src", "-j", "RETURN"),
				rule("-j", "DROP"),
			}},
			policy.Chain{Name: policy.ChainPolicy, IPv6: fam, Rules: append(entryRules(), rule("-o", "ternb", "-j", "TERN-PI-B"))},
		)
	}
	slices.SortFunc(rs.Sets, func(x, y policy.Set) int { return strings.Compare(x.Name, y.Name) })
	return rs
}

// deniedToB judges as isolateB(extra...) does.
func deniedToB(judged *[]Flow, extra ...string) func(Flow) bool {
	return func(f Flow) bool {
		*judged = append(*judged, f)
		if (f.Dst != ipB && f.Dst != ip6B) || f.Protocol != "TCP" {
			return false
		}
		return f.DstPort != 9090 && !(f.DstPort == 8080 && slices.Contains(extra, f.Src.String()))
	}
}

// An established connection that a new ruleset denies is cut in both
// directions; one it allows goes on; once allowed again, it resumes.
func TestPolicyCutsDeniedFlows(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			l := newCutLab(t, b)
			node := l.node
			pods := l.podsV4
			open := policy.Ruleset{Chains: []policy.Chain{{Name: policy.ChainPolicy, Rules: entryRules()}}, Pods: pods}
			// b accepts 9090 only, from pods in tern-pods-a.
			isolated := isolateB(pods, false)
			var judged []Flow
			denied := deniedToB(&judged)
			allowAll := func(Flow) bool { return false }

			p := node.newPolicy()
			node.apply(p, open, allowAll)
			l.nodeApply(t, true, false)

			echoServer(t, l.b.ns, "10.244.2.2:8080")
			echoServer(t, l.b.ns, "10.244.2.2:9090")
			c8080, err := dialIn(l.a.ns, "10.244.2.2:8080")
			if err != nil {
				t.Fatal(err)
			}
			defer c8080.c.Close()
			c9090, err := dialIn(l.a.ns, "10.244.2.2:9090")
			if err != nil {
				t.Fatal(err)
			}
			defer c9090.c.Close()
			for _, c := range []*echoConn{c8080, c9090} {
				if got, err := c.echo("hello", 2*time.Second); err != nil || got != "hello" {
					t.Fatalf("before the policy: %q %v", got, err)
				}
			}

			st := node.apply(p, isolated, denied)
			if st.FlowsCut != 1 || st.FlowsRestored != 0 || st.ConntrackDumps != 1 {
				t.Fatalf("isolating b: %+v (judged %+v)", st, judged)
			}
			if !slices.ContainsFunc(judged, func(f Flow) bool { return f.Src == ipA && f.DstPort == 9090 }) {
				t.Errorf("the 9090 flow was not judged: %+v", judged)
			}
			if ct := node.sh("conntrack", "-L", "-p", "tcp", "--dport", "8080"); !strings.Contains(ct, "mark=16777216") {
				t.Errorf("conntrack entry of the cut flow:\n%s", ct)
			}
			if got, err := c8080.echo("cut", time.Second); err == nil {
				t.Fatalf("the denied connection still echoes: %q", got)
			}
			if got, err := c9090.echo("still", 2*time.Second); err != nil || got != "still" {
				t.Fatalf("the allowed connection broke: %q %v", got, err)
			}
			if _, err := dialIn(l.a.ns, "10.244.2.2:8080"); err == nil {
				t.Fatal("a new connection to 8080 was let through")
			}

			// Nothing changed: flows are not judged again.
			judged = nil
			if st := node.apply(p, isolated, denied); st != (PolicyStats{}) || len(judged) != 0 {
				t.Fatalf("same ruleset: %+v, judged %v", st, judged)
			}

			// Open again: the mark goes, the retransmitted line gets through.
			st = node.apply(p, open, allowAll)
			if st.FlowsRestored != 1 {
				t.Fatalf("opening b: %+v", st)
			}
			if got, err := c8080.echo("", 15*time.Second); err != nil || got != "cut" {
				t.Fatalf("the connection did not resume: %q %v", got, err)
			}

			// With no flow cut, members added to a set b's chain uses to
			// allow are no reason to read the table; deleting one is, and
			// cuts again.
			for i, step := range []struct {
				extra    []string
				dumps    int
				cut      int
				wantEcho bool
			}{
				{[]string{ipA.String()}, 1, 0, true},               // b isolated again: its flows judged
				{[]string{ipA.String(), "10.244.1.3"}, 0, 0, true}, // a member added
				{[]string{"10.244.1.3"}, 1, 1, false},              // a's member deleted
			} {
				judged = nil
				st := node.apply(p, isolateB(pods, false, step.extra...), deniedToB(&judged, step.extra...))
				if st.ConntrackDumps != step.dumps || st.FlowsCut != step.cut || st.FlowsJudged != len(judged) {
					t.Errorf("step %d, tern-extra %v: %+v, judged %v", i, step.extra, st, judged)
				}
				if got, err := c8080.echo(fmt.Sprint("step", i), time.Second); (err == nil) != step.wantEcho {
					t.Errorf("step %d: echo %q %v", i, got, err)
				}
			}
		})
	}
}

// The first Apply of a driver cuts the flows that its rules deny but that
// were established before any of tern's rules existed.
func TestPolicyFirstApplyCutsOlderFlows(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			l := newCutLab(t, b)
			l.nodeApply(t, false, l.v6)
			addrs := []string{"10.244.2.2"}
			if l.v6 {
				addrs = append(addrs, "[fd10:244:2::2]")
			} else {
				t.Log("no ip6tables: IPv4 only")
			}
			var denied, allowed []*echoConn
			for _, a := range addrs {
				echoServer(t, l.b.ns, a+":8080")
				echoServer(t, l.b.ns, a+":9090")
				for port, list := range map[string]*[]*echoConn{"8080": &denied, "9090": &allowed} {
					// The first IPv6 neighbour solicitations may go
					// unanswered while the links settle.
					var c *echoConn
					var err error
					for try := 0; try < 5 && (c == nil || err != nil); try++ {
						c, err = dialIn(l.a.ns, a+":"+port)
					}
					if err != nil {
						t.Fatal(err)
					}
					defer c.c.Close()
					if got, err := c.echo("hello", 2*time.Second); err != nil || got != "hello" {
						t.Fatalf("%s:%s before any rule: %q %v", a, port, got, err)
					}
					*list = append(*list, c)
				}
			}
			if ct := l.node.sh("conntrack", "-L", "-p", "tcp", "--dport", "8080"); !strings.Contains(ct, "10.244.2.2") {
				t.Fatalf("the node does not track the flows:\n%s", ct)
			}

			var judged []Flow
			p := l.node.newPolicy()
			st := l.node.apply(p, isolateB(l.podsDual, l.v6), deniedToB(&judged))
			l.nodeApply(t, true, l.v6)
			// One dump, both families (an unanswered IPv6 attempt may have
			// left entries of its own).
			to8080, families := 0, map[bool]bool{}
			for _, f := range judged {
				families[f.Src.Is6()] = true
				if f.DstPort == 8080 {
					to8080++
				}
			}
			if st.ConntrackDumps != 1 || st.FlowsCut != to8080 || st.FlowsJudged != len(judged) || len(families) != len(addrs) {
				t.Fatalf("first Apply: %+v, judged %+v", st, judged)
			}
			for i, c := range denied {
				if got, err := c.echo("cut", time.Second); err == nil {
					t.Errorf("denied connection %d still echoes: %q", i, got)
				}
			}
			for i, c := range allowed {
				if got, err := c.echo("still", 2*time.Second); err != nil || got != "still" {
					t.Errorf("allowed connection %d broke: %q %v", i, got, err)
				}
			}
		})
	}
}
