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

	"github.com/tern-net/tern/policy"
)

// echoServer accepts connections on addr inside netns and echoes lines.
func echoServer(t *testing.T, netns ns.NetNS, addr string) {
	t.Helper()
	var ln net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
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

// An established connection that a new ruleset denies is cut in both
// directions; one it allows goes on; once allowed again, it resumes.
func TestPolicyCutsDeniedFlows(t *testing.T) {
	for mode, b := range backends(t) {
		t.Run(mode, func(t *testing.T) {
			node, podA, podB := newTestNS(t, b), newTestNS(t, b), newTestNS(t, b)
			for _, x := range []struct {
				pod          *testNS
				hostIf, host string
				addr, gw     string
			}{{podA, "terna", "10.244.1.1/24", "10.244.1.2/24", "10.244.1.1"}, {podB, "ternb", "10.244.2.1/24", "10.244.2.2/24", "10.244.2.1"}} {
				node.sh("ip", "link", "add", x.hostIf, "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(x.pod.ns.Path()))
				node.sh("ip", "addr", "add", x.host, "dev", x.hostIf)
				node.sh("ip", "link", "set", x.hostIf, "up")
				x.pod.sh("ip", "addr", "add", x.addr, "dev", "eth0")
				x.pod.sh("ip", "link", "set", "eth0", "up")
				x.pod.sh("ip", "route", "add", "default", "via", x.gw)
			}
			ipA, ipB := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.2.2")
			cut := fmt.Sprintf("%#x/%#x", policy.CutMark, policy.CutMark)
			entry := policy.Chain{Name: policy.ChainPolicy, Rules: []policy.Rule{
				{"-m", "connmark", "--mark", cut, "-j", "DROP"},
				{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"},
			}}
			pods := map[string]policy.PodPolicy{
				"default/a": {HostIf: "terna", IPs: []netip.Addr{ipA}},
				"default/b": {HostIf: "ternb", IPs: []netip.Addr{ipB}},
			}
			open := policy.Ruleset{Chains: []policy.Chain{entry}, Pods: pods}
			// b accepts 9090 only, from pods in tern-pods-a.
			isolated := policy.Ruleset{
				Sets: []policy.Set{{Name: "tern-pods-a", Type: "hash:ip", Members: []string{ipA.String()}}},
				Chains: []policy.Chain{
					{Name: "TERN-PI-B", Rules: []policy.Rule{
						{"-p", "tcp", "--dport", "9090", "-m", "set", "--match-set", "tern-pods-a", "src", "-j", "RETURN"},
						{"-j", "DROP"},
					}},
					{Name: policy.ChainPolicy, Rules: append(slices.Clone(entry.Rules), policy.Rule{"-o", "ternb", "-j", "TERN-PI-B"})},
				},
				Pods: pods,
			}
			var judged []Flow
			denied := func(f Flow) bool {
				judged = append(judged, f)
				return f.Dst == ipB && f.Protocol == "TCP" && f.DstPort != 9090
			}
			allowAll := func(Flow) bool { return false }

			p := node.newPolicy()
			nd := NewNode(slog.New(slog.NewTextHandler(io.Discard, nil)))
			nd.UseBackend(b)
			node.apply(p, open, allowAll)
			if err := node.ns.Do(func(ns.NetNS) error {
				_, err := nd.Apply(PlanNode(NodeConfig{PodCIDRs: prefixes("10.244.0.0/16"), Policy: true}))
				return err
			}); err != nil {
				t.Fatal(err)
			}

			echoServer(t, podB.ns, "10.244.2.2:8080")
			echoServer(t, podB.ns, "10.244.2.2:9090")
			c8080, err := dialIn(podA.ns, "10.244.2.2:8080")
			if err != nil {
				t.Fatal(err)
			}
			defer c8080.c.Close()
			c9090, err := dialIn(podA.ns, "10.244.2.2:9090")
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
			if st.FlowsCut != 1 || st.FlowsRestored != 0 {
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
			if _, err := dialIn(podA.ns, "10.244.2.2:8080"); err == nil {
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

			// With no flow marked, adding members only widens: no dump, no
			// judging. Deleting one may deny: judged again.
			judging := func(Flow) bool { judged = append(judged, Flow{}); return false }
			for i, members := range [][]string{{ipA.String()}, {ipA.String(), "10.244.1.3"}, {"10.244.1.3"}} {
				judged = nil
				rs := open
				rs.Sets = []policy.Set{{Name: "tern-extra", Type: "hash:ip", Members: members}}
				node.apply(p, rs, judging)
				if wantJudged := i == 2; (len(judged) > 0) != wantJudged {
					t.Errorf("members %v: judged %d flows, want judging %t", members, len(judged), wantJudged)
				}
			}
		})
	}
}
