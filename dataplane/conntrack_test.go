package dataplane

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/tern-net/tern/hostveth"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tern-net/tern/policy"
)

// ctMessage is a ctnetlink entry as the kernel sends it in a dump.
func ctMessage(family uint8, proto uint8, src, dst, rsrc, rdst string, sport, dport, rsport, rdport uint16, extra ...*nl.RtAttr) []byte {
	srcT, dstT := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if family == unix.AF_INET6 {
		srcT, dstT = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	tuple := func(typ int, src, dst string, sport, dport uint16) *nl.RtAttr {
		t := nl.NewRtAttr(unix.NLA_F_NESTED|typ, nil)
		ip := t.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
		ip.AddRtAttr(srcT, netip.MustParseAddr(src).AsSlice())
		ip.AddRtAttr(dstT, netip.MustParseAddr(dst).AsSlice())
		p := t.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
		p.AddRtAttr(nl.CTA_PROTO_NUM, []byte{proto})
		p.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(sport))
		p.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(dport))
		return t
	}
	msg := []byte{family, nl.NFNETLINK_V0, 0, 0}
	attrs := append([]*nl.RtAttr{tuple(nl.CTA_TUPLE_ORIG, src, dst, sport, dport), tuple(nl.CTA_TUPLE_REPLY, rsrc, rdst, rsport, rdport),
		nl.NewRtAttr(nl.CTA_STATUS, nl.BEUint32Attr(0x18e))}, extra...)
	for _, a := range attrs {
		msg = append(msg, a.Serialize()...)
	}
	return msg
}

func TestParseCtEntry(t *testing.T) {
	// A client pod to a Service address, DNATed to a backend pod.
	msg := ctMessage(unix.AF_INET, unix.IPPROTO_TCP, "10.244.1.2", "10.96.0.10", "10.244.2.7", "10.244.1.2", 40000, 80, 8080, 40000,
		nl.NewRtAttr(nl.CTA_TIMEOUT, nl.BEUint32Attr(431999)), nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(0x1004000)),
		nl.NewRtAttr(nl.CTA_ZONE, nl.BEUint16Attr(0)))
	var e ctEntry
	if !parseCtEntry(msg, &e) {
		t.Fatal("not parsed")
	}
	want := ctEntry{family: unix.AF_INET, proto: unix.IPPROTO_TCP,
		src: netip.MustParseAddr("10.244.1.2"), dst: netip.MustParseAddr("10.96.0.10"), sport: 40000, dport: 80,
		replySrc: netip.MustParseAddr("10.244.2.7"), replySport: 8080, mark: 0x1004000, timeout: 431999}
	if e != want {
		t.Errorf("parsed %+v\nwant %+v", e, want)
	}
	f, ok := e.flow()
	if wantF := (Flow{Src: want.src, Dst: want.replySrc, Protocol: "TCP", DstPort: 8080}); !ok || f != wantF {
		t.Errorf("flow = %+v %t, want %+v", f, ok, wantF)
	}
	if n := testing.AllocsPerRun(100, func() { parseCtEntry(msg, &e) }); n != 0 {
		t.Errorf("parsing an entry allocates %v times", n)
	}

	// SCTP carries ports too; IPv6; another zone.
	msg = ctMessage(unix.AF_INET6, unix.IPPROTO_SCTP, "fd10:244:1::2", "fd10:244:2::7", "fd10:244:2::7", "fd10:244:1::2", 5000, 3868, 3868, 5000,
		nl.NewRtAttr(nl.CTA_ZONE, nl.BEUint16Attr(7)))
	if !parseCtEntry(msg, &e) || e.zone != 7 || e.family != unix.AF_INET6 {
		t.Fatalf("IPv6 SCTP: %+v", e)
	}
	if f, ok := e.flow(); !ok || f != (Flow{Src: netip.MustParseAddr("fd10:244:1::2"), Dst: netip.MustParseAddr("fd10:244:2::7"), Protocol: "SCTP", DstPort: 3868}) {
		t.Errorf("IPv6 SCTP flow: %+v %t", f, ok)
	}
	// ICMP is not judged; a truncated message is no entry.
	msg = ctMessage(unix.AF_INET, unix.IPPROTO_ICMP, "10.244.1.2", "10.244.2.7", "10.244.2.7", "10.244.1.2", 0, 0, 0, 0)
	if !parseCtEntry(msg, &e) {
		t.Fatal("ICMP entry not parsed")
	}
	if _, ok := e.flow(); ok {
		t.Error("an ICMP flow is judged")
	}
	if parseCtEntry(msg[:3], &e) || parseCtEntry(msg[:9], &e) {
		t.Error("a truncated message parsed")
	}
}

// fakeConntrack is a conntrack table in memory.
type fakeConntrack struct {
	entries []ctEntry
	dumps   int
	noCount bool // count cannot be read
}

var _ conntrackTable = (*fakeConntrack)(nil)

func (f *fakeConntrack) count() (int, bool) { return len(f.entries), !f.noCount }

func (f *fakeConntrack) dump(fn func(*ctEntry)) error {
	f.dumps++
	for _, e := range f.entries {
		fn(&e)
	}
	return nil
}

func (f *fakeConntrack) setCut(e *ctEntry, cut bool) error {
	for i := range f.entries {
		x := &f.entries[i]
		if x.proto == e.proto && x.src == e.src && x.dst == e.dst && x.sport == e.sport && x.dport == e.dport {
			if cut {
				x.mark |= policy.CutMark
			} else {
				x.mark &^= policy.CutMark
			}
			return nil
		}
	}
	return unix.ENOENT
}

// cut lists the flows carrying the mark.
func (f *fakeConntrack) cut() []string {
	var out []string
	for _, e := range f.entries {
		if e.mark&policy.CutMark != 0 {
			fl, _ := e.flow()
			out = append(out, flowString(fl))
		}
	}
	return out
}

// tcpEntry is an established TCP flow from src to dst:port.
func tcpEntry(src, dst string, sport, port uint16) ctEntry {
	return ctEntry{family: unix.AF_INET, proto: unix.IPPROTO_TCP, src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst),
		sport: sport, dport: port, replySrc: netip.MustParseAddr(dst), replySport: port, timeout: 3600}
}

// testPod is a local pod of podRuleset: pod "default/x" on interface
// "ternx" with address 10.244.1.n, its ingress chain TERN-PI-X allowing TCP
// 80 from the set tern-peers and port from everywhere.
type testPod struct {
	name string
	n    int
	// isolated: ingress policed; port is what it allows besides.
	isolated bool
	port     int
}

func (p testPod) ip() netip.Addr { return netip.AddrFrom4([4]byte{10, 244, 1, byte(p.n)}) }

// podRuleset is the ruleset of the pods, in the shape policy.Compile
// gives it (ChainPolicy enters the dispatch tree TERN-PDT, whose rules go to
// the pod chains), with extra rules at the end of ChainPolicy and peers in
// tern-peers.
func podRuleset(pods []testPod, peers []string, extra ...policy.Rule) policy.Ruleset {
	rs := policy.Ruleset{Pods: map[string]policy.PodPolicy{}}
	rs.Sets = []policy.Set{{Name: "tern-peers", Type: "hash:ip", Members: peers}}
	entry := policy.Chain{Name: policy.ChainPolicy, Rules: []policy.Rule{
		rule("-m", "connmark", "--mark", "0x1000000/0x1000000", "-j", "DROP"),
		rule("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
	}}
	tree := policy.Chain{Name: "TERN-PDT"}
	for _, p := range pods {
		pp := policy.PodPolicy{HostIf: hostveth.Prefix + p.name, IPs: []netip.Addr{p.ip()}}
		if p.isolated {
			pp.Ingress, pp.IngressChain = []string{"default/deny"}, "TERN-PI-"+p.name
			rules := []policy.Rule{rule("-p", "tcp", "--dport", "80", "-m", "set", "--match-set", "tern-peers", "src", "-j", "RETURN")}
			if p.port != 0 {
				rules = append(rules, rule("-p", "tcp", "--dport", fmt.Sprint(p.port), "-j", "RETURN"))
			}
			rs.Chains = append(rs.Chains, policy.Chain{Name: pp.IngressChain, Rules: append(rules, rule("-j", "DROP"))})
			tree.Rules = append(tree.Rules, rule("-o", pp.HostIf, "-g", pp.IngressChain))
		}
		rs.Pods["default/"+p.name] = pp
	}
	if len(tree.Rules) > 0 {
		entry.Rules = append(entry.Rules, rule("-o", "tern+", "-j", tree.Name))
		rs.Chains = append(rs.Chains, tree)
	}
	entry.Rules = append(entry.Rules, extra...)
	rs.Chains = append(rs.Chains, entry)
	slices.SortFunc(rs.Chains, func(a, b policy.Chain) int { return compareStrings(a.Name, b.Name) })
	return rs
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// podDenied judges a flow by pods as podRuleset polices them: to an
// isolated pod, TCP 80 from a peer or its own port only.
func podDenied(pods []testPod, peers []string) func(Flow) bool {
	return func(f Flow) bool {
		for _, p := range pods {
			if p.ip() == f.Dst && p.isolated {
				return !(f.DstPort == 80 && slices.Contains(peers, f.Src.String()) || f.DstPort == int32(p.port))
			}
		}
		return false
	}
}

// newFakePolicy is a driver over a fake runner (nothing installed) and ct.
func newFakePolicy(ct *fakeConntrack) *Policy {
	p := NewPolicy(slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.run, p.backend, p.ct = (&fakeRunner{}).run, fakeBackend(), ct
	return p
}

// recorder wraps denied and records the flows it is asked about.
type recorder struct {
	denied func(Flow) bool
	asked  []string
}

func (r *recorder) judge(f Flow) bool {
	r.asked = append(r.asked, flowString(f))
	return r.denied(f)
}

// The cut pass reads the table only when some flow's verdict may have
// changed: not for members added to a set used to allow, nor for a new pod
// no policy selects, nor when the namespace holds no entry.
func TestPolicyPassOnlyWhenNeeded(t *testing.T) {
	a := testPod{name: "a", n: 2, isolated: true}
	b := testPod{name: "b", n: 3}
	ct := &fakeConntrack{entries: []ctEntry{
		tcpEntry("10.244.9.1", "10.244.1.2", 40000, 80), // from a peer to a: allowed
		tcpEntry("10.244.9.2", "10.244.1.2", 40001, 80), // from another: denied
		tcpEntry("10.244.9.2", "10.244.1.3", 40002, 22), // to b, open
	}}
	p := newFakePolicy(ct)
	pods, peers := []testPod{a, b}, []string{"10.244.9.1"}
	apply := func(what string, wantDumps int) *recorder {
		t.Helper()
		r := &recorder{denied: podDenied(pods, peers)}
		st, err := p.Apply(podRuleset(pods, peers), r.judge)
		if err != nil {
			t.Fatal(err)
		}
		if st.ConntrackDumps != wantDumps || ct.dumps != wantDumps || st.FlowsJudged != len(r.asked) {
			t.Errorf("%s: %d dumps (stats %+v), want %d; judged %v", what, ct.dumps, st, wantDumps, r.asked)
		}
		ct.dumps = 0
		return r
	}

	// The first Apply judges every local pod's flow: they were judged by no
	// rules of this driver's.
	if r := apply("first Apply", 1); len(r.asked) != 3 {
		t.Errorf("first Apply judged %v, want every flow", r.asked)
	}
	if got := ct.cut(); !slices.Equal(got, []string{"TCP 10.244.9.2 -> 10.244.1.2:80"}) {
		t.Errorf("cut %v", got)
	}
	apply("the same ruleset", 0)
	pods = append(pods, testPod{name: "c", n: 4})
	apply("a new local pod no policy selects", 0)

	// A member added to a set used to allow, while a flow of a pod whose
	// chain uses it is cut: that pod's flows are judged (the cut one could
	// be allowed now), not b's.
	aFlows := []string{"TCP 10.244.9.1 -> 10.244.1.2:80", "TCP 10.244.9.2 -> 10.244.1.2:80"}
	peers = append(peers, "10.244.9.3")
	if r := apply("a peer added while a flow is cut", 1); !slices.Equal(r.asked, aFlows) {
		t.Errorf("judged %v, want a's flows", r.asked)
	}
	peers = append(peers, "10.244.9.2")
	if r := apply("the cut flow's peer added", 1); !slices.Equal(r.asked, aFlows) {
		t.Errorf("judged %v, want a's flows", r.asked)
	}
	if got := ct.cut(); len(got) != 0 {
		t.Errorf("still cut: %v", got)
	}
	// Nothing is cut any more: members added are no reason to read.
	peers = append(peers, "10.244.9.4")
	apply("a member added to a set used to allow, nothing cut", 0)

	// A new isolated pod: its address may carry flows from before its
	// rules (a previous owner's, or its own while no policy selected it).
	ct.entries = append(ct.entries, tcpEntry("10.244.9.9", "10.244.1.5", 40003, 443))
	pods = append(pods, testPod{name: "d", n: 5, isolated: true})
	if r := apply("a new isolated pod", 1); !slices.Equal(r.asked, []string{"TCP 10.244.9.9 -> 10.244.1.5:443"}) {
		t.Errorf("judged %v, want d's flow only", r.asked)
	}

	// Without entries, nothing to read.
	saved := ct.entries
	ct.entries = nil
	pods = append(pods, testPod{name: "e", n: 6, isolated: true})
	apply("a new isolated pod, empty table", 0)
	ct.entries, ct.noCount = saved, true
	pods = append(pods, testPod{name: "f", n: 7, isolated: true})
	apply("a new isolated pod, count unknown", 1)
}

// A change that narrows one pod's policing judges that pod's flows only,
// whatever denied would say of the others'.
func TestPolicyJudgesOnlyChangedPods(t *testing.T) {
	a := testPod{name: "a", n: 2, isolated: true, port: 8080}
	b := testPod{name: "b", n: 3, isolated: true, port: 8080}
	ct := &fakeConntrack{entries: []ctEntry{
		tcpEntry("10.244.9.1", "10.244.1.2", 40000, 8080),
		tcpEntry("10.244.1.2", "10.244.1.3", 40001, 8080), // a to b
		tcpEntry("10.244.9.1", "10.244.1.3", 40002, 8080),
	}}
	p := newFakePolicy(ct)
	peers := []string{"10.244.9.1"}
	if _, err := p.Apply(podRuleset([]testPod{a, b}, peers), podDenied([]testPod{a, b}, peers)); err != nil {
		t.Fatal(err)
	}
	if got := ct.cut(); len(got) != 0 {
		t.Fatalf("cut %v", got)
	}

	// a no longer allows 8080: a's flows are judged, with a denied that
	// would deny everything; b's are not asked about.
	a.port = 0
	r := &recorder{denied: func(Flow) bool { return true }}
	st, err := p.Apply(podRuleset([]testPod{a, b}, peers), r.judge)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"TCP 10.244.9.1 -> 10.244.1.2:8080", "TCP 10.244.1.2 -> 10.244.1.3:8080"}
	if !slices.Equal(r.asked, want) || st.FlowsCut != 2 || st.ConntrackDumps != 1 {
		t.Errorf("judged %v (%+v), want %v", r.asked, st, want)
	}
	if got := ct.cut(); !slices.Equal(got, want) {
		t.Errorf("cut %v, want %v", got, want)
	}

	// Without a denied function the pass waits: the next Apply that has
	// one judges what changed meanwhile, and the cut flows (b's 8080 goes).
	b.port = 0
	if st, err := p.Apply(podRuleset([]testPod{a, b}, peers), nil); err != nil || st.ConntrackDumps != 0 {
		t.Fatalf("without denied: %+v %v", st, err)
	}
	r = &recorder{denied: podDenied([]testPod{a, b}, peers)}
	if _, err := p.Apply(podRuleset([]testPod{a, b}, peers), r.judge); err != nil {
		t.Fatal(err)
	}
	if len(r.asked) != 3 {
		t.Errorf("after a pass without denied: judged %v, want b's flows and a's cut ones", r.asked)
	}

	// A change of ChainPolicy's other rules concerns every flow.
	r = &recorder{denied: podDenied([]testPod{a, b}, peers)}
	if _, err := p.Apply(podRuleset([]testPod{a, b}, peers, rule("-p", "udp", "-j", "DROP")), r.judge); err != nil {
		t.Fatal(err)
	}
	if len(r.asked) != 3 {
		t.Errorf("a global rule added: judged %v, want every flow", r.asked)
	}
	// After a failed write, every flow again.
	f := &fakeRunner{fail: "iptables-restore"}
	p.run = f.run
	if _, err := p.Apply(podRuleset([]testPod{a, b}, peers), nil); err == nil {
		t.Fatal("a failed restore did not fail")
	}
	p.run = (&fakeRunner{}).run
	r = &recorder{denied: podDenied([]testPod{a, b}, peers)}
	if _, err := p.Apply(podRuleset([]testPod{a, b}, peers), r.judge); err != nil {
		t.Fatal(err)
	}
	if len(r.asked) != 3 {
		t.Errorf("after a failure: judged %v, want every flow", r.asked)
	}
}

func TestScopeOf(t *testing.T) {
	a := testPod{name: "a", n: 2, isolated: true}
	b := testPod{name: "b", n: 3, isolated: true}
	c := testPod{name: "c", n: 4}
	peers := []string{"10.244.9.1"}
	base := podRuleset([]testPod{a, b, c}, peers)
	addrs := func(ps ...testPod) []netip.Addr {
		var out []netip.Addr
		for _, p := range ps {
			out = append(out, p.ip())
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	withGlobal := func(peers ...string) policy.Ruleset {
		return podRuleset([]testPod{a, b, c}, peers, rule("-m", "set", "--match-set", "tern-peers", "src", "-j", "RETURN"))
	}
	tests := []struct {
		name             string
		from             *policy.Ruleset // base if nil
		rs               policy.Ruleset
		oldUnknown       bool // ChainPolicy and TERN-PDT were read back (hashes only)
		notSimple        bool // the rules before or after are not simple
		all, widenedAll  bool
		narrowed, widend []netip.Addr
	}{
		{name: "nothing", rs: base},
		{name: "a's chain", rs: podRuleset([]testPod{{name: "a", n: 2, isolated: true, port: 1}, b, c}, peers), narrowed: addrs(a)},
		{name: "c isolated", rs: podRuleset([]testPod{a, b, {name: "c", n: 4, isolated: true}}, peers), narrowed: addrs(c)},
		{name: "b open", rs: podRuleset([]testPod{a, {name: "b", n: 3}, c}, peers), widend: addrs(b)},
		{name: "b gone", rs: podRuleset([]testPod{a, c}, peers), widend: addrs(b)},
		{name: "peer added", rs: podRuleset([]testPod{a, b, c}, append(peers, "10.244.9.2")), widend: addrs(a, b)},
		{name: "peer removed", rs: podRuleset([]testPod{a, b, c}, nil), narrowed: addrs(a, b)},
		{name: "new open pod", rs: podRuleset([]testPod{a, b, c, {name: "d", n: 5}}, peers), widend: addrs(testPod{n: 5})},
		{name: "new isolated pod", rs: podRuleset([]testPod{a, b, c, {name: "d", n: 5, isolated: true}}, peers), narrowed: addrs(testPod{n: 5})},
		{name: "a moved to c's address", rs: podRuleset([]testPod{{name: "a", n: 4, isolated: true}, b}, peers), narrowed: addrs(c), widend: addrs(a)},
		{name: "global rule", rs: podRuleset([]testPod{a, b, c}, peers, rule("-p", "udp", "-j", "DROP")), all: true},
		{name: "global rule uses a widened set", from: ptr(withGlobal("10.244.9.1")), rs: withGlobal("10.244.9.1", "10.244.9.2"),
			widenedAll: true, widend: addrs(a, b)},
		{name: "global rule uses a narrowed set", from: ptr(withGlobal("10.244.9.1")), rs: withGlobal(), all: true},
		{name: "b open, not simple", rs: podRuleset([]testPod{a, {name: "b", n: 3}, c}, peers), notSimple: true, narrowed: addrs(b)},
		{name: "peer added, not simple", rs: podRuleset([]testPod{a, b, c}, append(peers, "10.244.9.2")), notSimple: true, narrowed: addrs(a, b)},
		{name: "global rule uses a widened set, not simple", from: ptr(withGlobal("10.244.9.1")), rs: withGlobal("10.244.9.1", "10.244.9.2"),
			notSimple: true, all: true},
		{name: "unknown ChainPolicy rewritten", rs: podRuleset([]testPod{a, {name: "b", n: 3}, c}, peers), oldUnknown: true, all: true},
		{name: "unknown ChainPolicy unchanged", rs: podRuleset([]testPod{{name: "a", n: 2, isolated: true, port: 1}, b, c}, peers), oldUnknown: true, narrowed: addrs(a)},
		// The order of the exact rules of a dispatch chain changes no pod's
		// way; that of ChainPolicy's own rules may change every flow's.
		{name: "dispatch order", rs: reorder(podRuleset([]testPod{a, b, c}, peers), "TERN-PDT", 0, 1)},
		{name: "own rule order", rs: reorder(podRuleset([]testPod{a, b, c}, peers), policy.ChainPolicy, 0, 1), all: true},
		{name: "dispatch to the pod chain direct", rs: func() policy.Ruleset {
			rs := podRuleset([]testPod{a, b, c}, peers)
			e := &rs.Chains[slices.IndexFunc(rs.Chains, func(c policy.Chain) bool { return c.Name == policy.ChainPolicy })]
			e.Rules = append(slices.Clone(e.Rules[:2]), rule("-o", "terna", "-j", "TERN-PI-a"), rule("-o", "ternb", "-j", "TERN-PI-b"))
			return rs
		}()},
		{name: "b's dispatch to a's chain", rs: func() policy.Ruleset {
			rs := podRuleset([]testPod{a, b, c}, peers)
			t := &rs.Chains[slices.IndexFunc(rs.Chains, func(c policy.Chain) bool { return c.Name == "TERN-PDT" })]
			t.Rules = slices.Clone(t.Rules)
			t.Rules[1] = rule("-o", "ternb", "-g", "TERN-PI-a")
			return rs
		}(), narrowed: addrs(b)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := base
			if tt.from != nil {
				from = *tt.from
			}
			p := newFakePolicy(&fakeConntrack{})
			if _, err := p.Apply(from, nil); err != nil {
				t.Fatal(err)
			}
			if tt.oldUnknown {
				// As read back: hashes only, of ChainPolicy and the
				// dispatch tree.
				for _, c := range from.Chains {
					if c.Name != policy.ChainPolicy && c.Name != "TERN-PDT" {
						continue
					}
					st := p.chains[0][c.Name]
					st.hashes = nil
					for _, r := range c.Rules {
						st.hashes = append(st.hashes, Rule(r.Args).Hash(c.Name))
					}
					st.known, st.applied = false, nil
				}
			}
			ch := newRuleChange()
			if err := p.apply(tt.rs, map[string]bool{}, &PolicyStats{}, ch); err != nil {
				t.Fatal(err)
			}
			sc := scopeOf(ch, tt.rs, podIfs(from.Pods), podIfs(tt.rs.Pods), !tt.notSimple)
			sorted := func(m map[netip.Addr]bool) []netip.Addr {
				return slices.SortedFunc(maps.Keys(m), netip.Addr.Compare)
			}
			if sc.all != tt.all || sc.widenedAll != tt.widenedAll {
				t.Errorf("all %t widenedAll %t, want %t %t", sc.all, sc.widenedAll, tt.all, tt.widenedAll)
			}
			if tt.all {
				return
			}
			if got := sorted(sc.narrowed); !slices.Equal(got, tt.narrowed) {
				t.Errorf("narrowed %v, want %v", got, tt.narrowed)
			}
			if got := sorted(sc.widened); !slices.Equal(got, tt.widend) {
				t.Errorf("widened %v, want %v", got, tt.widend)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// reorder returns rs with rules i and j of chain name swapped.
func reorder(rs policy.Ruleset, name string, i, j int) policy.Ruleset {
	c := &rs.Chains[slices.IndexFunc(rs.Chains, func(c policy.Chain) bool { return c.Name == name })]
	c.Rules = slices.Clone(c.Rules)
	c.Rules[i], c.Rules[j] = c.Rules[j], c.Rules[i]
	return rs
}
