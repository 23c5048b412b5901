package dataplane

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tern-net/tern/internal/route"
	"github.com/tern-net/tern/policy"
)

var update = flag.Bool("update", false, "rewrite golden files")

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// renderPlan writes a plan as text: routes as ip-route would show them, chains
// as iptables-restore input (what restoreTable writes), jumps as iptables -I.
func renderPlan(p Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "families: ipv4=%t ipv6=%t\n", p.IPv4, p.IPv6)
	b.WriteString("\n# routes (protocol 96)\n")
	for _, r := range p.Routes {
		kind := "unicast"
		if r.Blackhole {
			kind = "blackhole"
		}
		fmt.Fprintf(&b, "%s %s proto %d\n", kind, r.Dst, route.Protocol)
	}
	for _, c := range p.Chains {
		fmt.Fprintf(&b, "\n# %s *%s\n:%s - [0:0]\n", family(c.IPv6), c.Table, c.Name)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "-A %s -m comment --comment %s %s\n", c.Name, r.Hash(c.Name), strings.Join(r, " "))
		}
	}
	b.WriteString("\n# jumps\n")
	for _, j := range p.Jumps {
		spec := slices.Clone(j.Spec())
		for i, s := range spec {
			if strings.Contains(s, " ") {
				spec[i] = fmt.Sprintf("%q", s)
			}
		}
		fmt.Fprintf(&b, "%s -t %s -I %s 1 %s\n", family(j.IPv6), j.Table, j.From, strings.Join(spec, " "))
	}
	return b.String()
}

func TestPlanNodeGolden(t *testing.T) {
	tests := []struct {
		name string
		cfg  NodeConfig
	}{
		{
			name: "v4_only",
			cfg:  NodeConfig{PodCIDRs: prefixes("10.244.1.0/24"), NATOutgoing: true},
		},
		{
			name: "dual_stack",
			// IPv6 first, to show that routes come out sorted. IPv6 is not
			// masqueraded by default.
			cfg: NodeConfig{PodCIDRs: prefixes("fd00:10:244:1::/64", "10.244.1.0/24"), NATOutgoing: true},
		},
		{
			name: "dual_stack_nat_ipv6",
			cfg:  NodeConfig{PodCIDRs: prefixes("fd00:10:244:1::/64", "10.244.1.0/24"), NATOutgoing: true, NATOutgoingIPv6: true},
		},
		{
			name: "nat_ipv6_only",
			cfg:  NodeConfig{PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64"), NATOutgoingIPv6: true},
		},
		{
			name: "nat_off",
			cfg:  NodeConfig{PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64"), NATOutgoing: false},
		},
		{
			name: "cluster_cidrs_given",
			cfg: NodeConfig{
				PodCIDRs:        prefixes("10.244.1.0/24", "fd00:10:244:1::/64"),
				ClusterCIDRs:    prefixes("10.244.0.0/16", "fd00:10:244::/56", "100.64.0.0/16"),
				NATOutgoing:     true,
				NATOutgoingIPv6: true,
			},
		},
		{
			name: "cluster_cidrs_ignored_without_nat",
			cfg: NodeConfig{
				PodCIDRs:     prefixes("10.244.1.0/24"),
				ClusterCIDRs: prefixes("10.244.0.0/16"),
				NATOutgoing:  false,
			},
		},
		{
			name: "host_bits_cleared",
			cfg: NodeConfig{
				PodCIDRs:        prefixes("10.244.1.7/24", "fd00:10:244:1::7/64"),
				ClusterCIDRs:    prefixes("10.244.3.3/16", "fd00:10:244:5::1/56"),
				NATOutgoing:     true,
				NATOutgoingIPv6: true,
			},
		},
		{
			// --nat-outgoing alone masquerades no IPv6.
			name: "v6_only",
			cfg:  NodeConfig{PodCIDRs: prefixes("fd00:10:244:1::/64"), NATOutgoing: true},
		},
		{
			name: "v6_only_nat_ipv6",
			cfg:  NodeConfig{PodCIDRs: prefixes("fd00:10:244:1::/64"), NATOutgoingIPv6: true},
		},
		{
			name: "empty",
			cfg:  NodeConfig{NATOutgoing: true},
		},
		{
			name: "policy",
			cfg:  NodeConfig{PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64"), NATOutgoing: true, Policy: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := renderPlan(PlanNode(tt.cfg))
			path := filepath.Join("testdata", "plan_"+tt.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create it): %v", err)
			}
			if got != string(want) {
				t.Errorf("PlanNode(%+v) differs from %s (run with -update if intended)\n--- got\n%s--- want\n%s", tt.cfg, path, got, want)
			}
			// Same input, same plan: the reconcile loop relies on it.
			if again := renderPlan(PlanNode(tt.cfg)); again != got {
				t.Errorf("PlanNode is not deterministic:\n%s\nthen\n%s", got, again)
			}
		})
	}
}

// TestPlanNodeInvariants checks, independently of the golden files, the shape
// every plan must have.
func TestPlanNodeInvariants(t *testing.T) {
	cfgs := []NodeConfig{
		{PodCIDRs: prefixes("10.244.1.0/24"), NATOutgoing: true},
		{PodCIDRs: prefixes("10.244.1.0/24", "fd74:6572:6e00::/64"), NATOutgoing: true},
		{PodCIDRs: prefixes("10.244.1.0/24", "fd74:6572:6e00::/64"), NATOutgoing: false},
		{PodCIDRs: prefixes("fd74:6572:6e00::/64", "10.244.1.0/24"), ClusterCIDRs: prefixes("10.0.0.0/8", "fd74:6572:6e00::/48"), NATOutgoing: true},
		{PodCIDRs: prefixes("10.244.1.0/24", "fd74:6572:6e00::/64"), NATOutgoing: true, Policy: true},
		{PodCIDRs: prefixes("fd74:6572:6e00::/64"), Policy: true},
		{PodCIDRs: prefixes("10.244.1.0/24", "fd10:244:1::/64"), NATOutgoing: true, NATOutgoingIPv6: true},
		{PodCIDRs: prefixes("10.244.1.0/24", "fd10:244:1::/64"), NATOutgoingIPv6: true, Policy: true},
		{PodCIDRs: prefixes("fd10:244:1::/64"), ClusterCIDRs: prefixes("fd10:244::/48"), NATOutgoingIPv6: true},
	}
	for _, cfg := range cfgs {
		t.Run(fmt.Sprint(cfg.PodCIDRs, cfg.ClusterCIDRs, cfg.NATOutgoing, cfg.NATOutgoingIPv6, cfg.Policy), func(t *testing.T) {
			p := PlanNode(cfg)
			cluster := cfg.ClusterCIDRs
			if len(cluster) == 0 {
				cluster = cfg.PodCIDRs
			}
			if len(p.Routes) != len(cfg.PodCIDRs) {
				t.Errorf("routes = %v, want one per pod CIDR %v", p.Routes, cfg.PodCIDRs)
			}
			for _, c := range cfg.PodCIDRs {
				if !slices.Contains(p.Routes, Route{Dst: c.Masked(), Blackhole: true}) {
					t.Errorf("no blackhole route for pod CIDR %s in %v", c, p.Routes)
				}
			}
			for _, v6 := range []bool{false, true} {
				var pods, clus []netip.Prefix
				for _, c := range cfg.PodCIDRs {
					if c.Addr().Is6() == v6 {
						pods = append(pods, c)
					}
				}
				for _, c := range cluster {
					if c.Addr().Is6() == v6 {
						clus = append(clus, c)
					}
				}
				fwd, hasFwd := findChain(p, v6, "filter", ChainForward)
				nat, hasNAT := findChain(p, v6, "nat", ChainNATOutgoing)
				if len(pods) == 0 {
					if hasFwd || hasNAT {
						t.Errorf("%s: chains planned for a family without pod CIDRs", family(v6))
					}
					continue
				}
				if !hasFwd {
					t.Fatalf("%s: no %s chain", family(v6), ChainForward)
				}
				wantFwd := []Rule{{"-i", "tern+", "-j", "ACCEPT"}, {"-o", "tern+", "-j", "ACCEPT"}}
				if cfg.Policy {
					// Policy first: nothing in TERN-FORWARD accepts pod
					// traffic before policy has seen it.
					wantFwd = append([]Rule{{"-j", policy.ChainPolicy}}, wantFwd...)
				}
				if !slices.EqualFunc(fwd.Rules, wantFwd, slices.Equal) {
					t.Errorf("%s %s = %v, want %v", family(v6), ChainForward, fwd.Rules, wantFwd)
				}
				if !hasJump(p, v6, "filter", "FORWARD", ChainForward) {
					t.Errorf("%s: no jump FORWARD -> %s", family(v6), ChainForward)
				}
				// Each family's masquerade has a setting of its own.
				natOn := cfg.NATOutgoing
				if v6 {
					natOn = cfg.NATOutgoingIPv6
				}
				if hasNAT != natOn || hasJump(p, v6, "nat", "POSTROUTING", ChainNATOutgoing) != natOn {
					t.Errorf("%s: NAT chain/jump present = %t/%t, want %t", family(v6), hasNAT,
						hasJump(p, v6, "nat", "POSTROUTING", ChainNATOutgoing), natOn)
				}
				if !hasNAT {
					continue
				}
				var want []Rule
				for _, c := range clus {
					want = append(want, Rule{"-d", c.Masked().String(), "-j", "RETURN"})
				}
				for _, c := range pods {
					want = append(want, Rule{"-s", c.Masked().String(), "-j", "MASQUERADE"})
				}
				if !slices.EqualFunc(nat.Rules, want, slices.Equal) {
					t.Errorf("%s %s = %v, want %v", family(v6), ChainNATOutgoing, nat.Rules, want)
				}
			}
			for _, c := range p.Chains {
				if !strings.HasPrefix(c.Name, "TERN-") {
					t.Errorf("chain %q does not start with TERN-", c.Name)
				}
			}
			for _, j := range p.Jumps {
				if len(j.Comment) == 0 || len(j.Comment) > maxCommentLen {
					t.Errorf("jump comment %q: length %d, want 1..%d", j.Comment, len(j.Comment), maxCommentLen)
				}
			}
		})
	}
}

func findChain(p Plan, v6 bool, table, name string) (Chain, bool) {
	for _, c := range p.Chains {
		if c.IPv6 == v6 && c.Table == table && c.Name == name {
			return c, true
		}
	}
	return Chain{}, false
}

func hasJump(p Plan, v6 bool, table, from, to string) bool {
	for _, j := range p.Jumps {
		if j.IPv6 == v6 && j.Table == table && j.From == from && j.To == to {
			return true
		}
	}
	return false
}

func TestJumpSpec(t *testing.T) {
	j := Jump{Table: "nat", From: "POSTROUTING", To: ChainNATOutgoing, Comment: "tern: x y"}
	want := []string{"-m", "comment", "--comment", "tern: x y", "-j", ChainNATOutgoing}
	if got := j.Spec(); !slices.Equal(got, want) {
		t.Errorf("Spec() = %q, want %q", got, want)
	}
}

// maxCommentLen is the longest comment the xt_comment match accepts
// (XT_MAX_COMMENT_LEN is 256, including the terminating NUL).
const maxCommentLen = 255

func TestRuleHash(t *testing.T) {
	base := Rule{"-s", "10.244.1.0/24", "-j", "MASQUERADE"}
	tests := []struct {
		name      string
		chainA    string
		ruleA     Rule
		chainB    string
		ruleB     Rule
		wantEqual bool
	}{
		{"same chain and rule", ChainNATOutgoing, base, ChainNATOutgoing, slices.Clone(base), true},
		{"other chain", ChainNATOutgoing, base, ChainForward, base, false},
		{"other argument", ChainNATOutgoing, base, ChainNATOutgoing, Rule{"-s", "10.244.2.0/24", "-j", "MASQUERADE"}, false},
		{"other target", ChainNATOutgoing, base, ChainNATOutgoing, Rule{"-s", "10.244.1.0/24", "-j", "RETURN"}, false},
		{"argument order", ChainForward, Rule{"-i", "tern+", "-j", "ACCEPT"}, ChainForward, Rule{"-j", "ACCEPT", "-i", "tern+"}, false},
		{"word boundaries", ChainForward, Rule{"-i", "tern+"}, ChainForward, Rule{"-i tern+"}, false},
		{"chain/rule boundary", "TERN-A", Rule{"B"}, "TERN-AB", Rule{}, false},
		{"extra argument", ChainForward, Rule{"-j", "ACCEPT"}, ChainForward, Rule{"-j", "ACCEPT", ""}, false},
		{"empty rule in two chains", ChainForward, Rule{}, ChainNATOutgoing, Rule{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := tt.ruleA.Hash(tt.chainA), tt.ruleB.Hash(tt.chainB)
			for _, h := range []string{a, b} {
				if !strings.HasPrefix(h, "tern:") {
					t.Errorf("hash %q does not start with tern:", h)
				}
				if len(h) != len("tern:")+16 {
					t.Errorf("hash %q has length %d, want %d", h, len(h), len("tern:")+16)
				}
				if m := hashComment.FindStringSubmatch("-A X -m comment --comment " + h + " -j ACCEPT"); m == nil || m[1] != h {
					t.Errorf("the driver's read-back pattern does not recover %q: %q", h, m)
				}
				if m := hashComment.FindStringSubmatch(`-A X -m comment --comment "` + h + `" -j ACCEPT`); m == nil || m[1] != h {
					t.Errorf("the driver's read-back pattern does not recover quoted %q: %q", h, m)
				}
				if len(h) > maxCommentLen {
					t.Errorf("hash %q is longer than an iptables comment may be (%d)", h, maxCommentLen)
				}
			}
			if (a == b) != tt.wantEqual {
				t.Errorf("Hash(%q, %q) = %s, Hash(%q, %q) = %s; want equal = %t", tt.chainA, tt.ruleA, a, tt.chainB, tt.ruleB, b, tt.wantEqual)
			}
			if again := tt.ruleA.Hash(tt.chainA); again != a {
				t.Errorf("Hash is not stable: %s then %s", a, again)
			}
		})
	}
}

func TestRuleHashIsPinned(t *testing.T) {
	// The hash is what the driver compares with what is installed: a change to
	// it rewrites every chain on every node once. Pin it so that is deliberate
	// (the golden files change with it).
	tests := []struct {
		chain string
		rule  Rule
		want  string
	}{
		{ChainForward, Rule{"-i", "tern+", "-j", "ACCEPT"}, "tern:nIZ00W8O7Pfezn-j"},
		{ChainForward, Rule{"-o", "tern+", "-j", "ACCEPT"}, "tern:7cPyqoth1SryyL-8"},
		{ChainNATOutgoing, Rule{"-s", "10.244.1.0/24", "-j", "MASQUERADE"}, "tern:GdfKeywUicI78Faj"},
	}
	for _, tt := range tests {
		if got := tt.rule.Hash(tt.chain); got != tt.want {
			t.Errorf("Hash(%s, %q) = %s, want %s", tt.chain, tt.rule, got, tt.want)
		}
	}
}

func TestDiffRoutes(t *testing.T) {
	r := func(s string) Route { return Route{Dst: netip.MustParsePrefix(s), Blackhole: true} }
	a, b, c, d := r("10.244.1.0/24"), r("10.244.2.0/24"), r("fd00:1::/64"), r("10.244.3.0/24")
	tests := []struct {
		name               string
		desired, installed []Route
		add, del           []Route
	}{
		{name: "empty/empty"},
		{name: "nil desired, empty installed", desired: nil, installed: []Route{}},
		{name: "in sync", desired: []Route{a, c}, installed: []Route{c, a}},
		{name: "add only", desired: []Route{a, c}, add: []Route{a, c}},
		{name: "add missing one", desired: []Route{a, b, c}, installed: []Route{a, c}, add: []Route{b}},
		{name: "delete only", installed: []Route{a, c}, del: []Route{a, c}},
		{name: "delete stale one", desired: []Route{a}, installed: []Route{a, d}, del: []Route{d}},
		{name: "both", desired: []Route{a, b}, installed: []Route{b, d, c}, add: []Route{a}, del: []Route{d, c}},
		{
			name:    "blackhole flag is part of the route",
			desired: []Route{a}, installed: []Route{{Dst: a.Dst}},
			add: []Route{a}, del: []Route{{Dst: a.Dst}},
		},
		{name: "same prefix length, other family", desired: []Route{r("::/24")}, installed: []Route{r("0.0.0.0/24")},
			add: []Route{r("::/24")}, del: []Route{r("0.0.0.0/24")}},
		{name: "duplicates installed and desired", desired: []Route{a, a}, installed: []Route{a, a}},
		{name: "duplicate desired already installed", desired: []Route{a, a, b}, installed: []Route{a, b}},
		{name: "duplicate installed still desired", desired: []Route{a}, installed: []Route{a, a}},
		// Two kernel routes with the same value (e.g. different metrics) are two deletions.
		{name: "duplicate installed not desired", desired: []Route{b}, installed: []Route{a, b, a}, del: []Route{a, a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, del := DiffRoutes(tt.desired, tt.installed)
			if !slices.Equal(add, tt.add) {
				t.Errorf("add = %v, want %v", add, tt.add)
			}
			if !slices.Equal(del, tt.del) {
				t.Errorf("del = %v, want %v", del, tt.del)
			}
			// Applying the diff to installed yields exactly the set desired.
			have := map[Route]bool{}
			for _, r := range tt.installed {
				have[r] = true
			}
			for _, r := range del {
				delete(have, r)
			}
			for _, r := range add {
				have[r] = true
			}
			want := map[Route]bool{}
			for _, r := range tt.desired {
				want[r] = true
			}
			if len(have) != len(want) {
				t.Errorf("after the diff: %v, want %v", have, want)
			}
			for r := range want {
				if !have[r] {
					t.Errorf("after the diff %v is missing", r)
				}
			}
		})
	}
}

func TestDiffRoutesAddsADuplicatedDesiredRouteOnce(t *testing.T) {
	r := Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), Blackhole: true}
	add, del := DiffRoutes([]Route{r, r}, nil)
	if len(add) != 1 || len(del) != 0 {
		t.Fatalf("add %v del %v; want one add", add, del)
	}
	if p := PlanNode(NodeConfig{PodCIDRs: prefixes("10.0.0.0/24", "10.0.0.5/24")}); len(p.Routes) != 1 {
		t.Fatalf("two spellings of one CIDR planned %d routes", len(p.Routes))
	}
}

// Cluster CIDRs of one family only: the other family falls back to the node's
// pod CIDRs, so its pod-to-pod traffic is not masqueraded.
func TestClusterCIDRsDefaultPerFamily(t *testing.T) {
	p := PlanNode(NodeConfig{
		PodCIDRs:        prefixes("10.244.1.0/24", "fd00:10:244:1::/64"),
		ClusterCIDRs:    prefixes("10.244.0.0/16"),
		NATOutgoing:     true,
		NATOutgoingIPv6: true,
	})
	c, ok := findChain(p, true, "nat", ChainNATOutgoing)
	if !ok || len(c.Rules) != 2 || strings.Join(c.Rules[0], " ") != "-d fd00:10:244:1::/64 -j RETURN" {
		t.Fatalf("IPv6 NAT chain: %+v", c)
	}
}

func TestFilterImport(t *testing.T) {
	r := func(p string) LearnedRoute {
		return LearnedRoute{Dst: netip.MustParsePrefix(p), Gateways: []netip.Addr{netip.MustParseAddr("10.210.0.2")}}
	}
	allowed := prefixes("10.244.0.0/16", "10.96.0.0/12")
	local := prefixes("10.244.5.0/24")
	keep, dropped := FilterImport([]LearnedRoute{
		r("10.244.6.0/24"),                            // another node's pod CIDR
		r("10.96.0.0/12"),                             // the service range
		r("10.210.0.0/30"),                            // a router's connected subnet
		r("10.244.5.0/24"),                            // our own CIDR reflected back
		r("10.244.0.0/15"),                            // wider than the cluster range
		r("10.244.5.128/25"),                          // inside our own CIDR
		{Dst: netip.MustParsePrefix("10.244.7.0/24")}, // no next hop
	}, allowed, local)
	var k []string
	for _, x := range keep {
		k = append(k, x.Dst.String())
	}
	if strings.Join(k, ",") != "10.244.6.0/24,10.96.0.0/12" || len(dropped) != 5 {
		t.Fatalf("keep %v dropped %v", k, dropped)
	}

	// IPv6, from a ToR: another node's pod CIDR comes in; a default route,
	// a foreign prefix, one wider than the cluster's range and the node's
	// own CIDR do not.
	r6 := func(p string) LearnedRoute {
		return LearnedRoute{Dst: netip.MustParsePrefix(p), Gateways: []netip.Addr{netip.MustParseAddr("fd20:0:0:1::1")}}
	}
	keep, dropped = FilterImport([]LearnedRoute{
		r6("fd10:244:0:6::/64"), r6("::/0"), r6("2001:db8::/32"), r6("fd10:244::/47"), r6("fd10:244:0:5::/64"),
		r("10.244.6.0/24"),
	}, prefixes("10.244.0.0/16", "fd10:244::/48"), prefixes("10.244.5.0/24", "fd10:244:0:5::/64"))
	k = nil
	for _, x := range keep {
		k = append(k, x.Dst.String())
	}
	if strings.Join(k, ",") != "fd10:244:0:6::/64,10.244.6.0/24" || len(dropped) != 4 {
		t.Fatalf("IPv6: keep %v dropped %v", k, dropped)
	}
}
