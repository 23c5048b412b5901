package dataplane

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tern-net/tern/policy"
)

func TestNormalizeMember(t *testing.T) {
	tests := []struct {
		typ     string
		v6      bool
		in      string
		want    string
		nomatch bool
		err     bool
	}{
		{"hash:ip", false, "10.244.1.5", "10.244.1.5", false, false},
		{"hash:ip", true, "FD00:10:244:0:0::1", "fd00:10:244::1", false, false},
		{"hash:ip", false, "fd00:10:244::1", "", false, true}, // wrong family
		{"hash:ip", true, "10.244.1.5", "", false, true},
		{"hash:ip", false, "10.244.1.0/30", "", false, true}, // a range: not tern's form
		{"hash:ip", false, "10.244.1.5 nomatch", "", false, true},
		{"hash:ip", false, "", "", false, true},
		{"hash:net", false, "10.0.0.0/8", "10.0.0.0/8", false, false},
		{"hash:net", false, "10.30.2.7/16", "10.30.0.0/16", false, false},
		{"hash:net", false, "10.30.1.1/32", "10.30.1.1", false, false},
		{"hash:net", false, "10.30.1.1", "10.30.1.1", false, false},
		{"hash:net", false, "10.1.0.0/16 nomatch", "10.1.0.0/16", true, false},
		{"hash:net", true, "fd00:10:244::/56", "fd00:10:244::/56", false, false},
		{"hash:net", true, "fd00:10:244::5/128 nomatch", "fd00:10:244::5", true, false},
		{"hash:net", false, "0.0.0.0/0", "", false, true},
		{"hash:net", false, "10.1.0.0/16 timeout 5", "", false, true},
		{"hash:ip,port", false, "10.244.1.5,tcp:8080", "10.244.1.5,tcp:8080", false, false},
		{"hash:ip,port", false, "10.244.1.5,8080", "10.244.1.5,tcp:8080", false, false},
		{"hash:ip,port", false, "10.244.1.5,UDP:053", "10.244.1.5,udp:53", false, false},
		{"hash:ip,port", true, "fd00:10:244::1,sctp:9", "fd00:10:244::1,sctp:9", false, false},
		{"hash:ip,port", false, "10.244.1.5,tcp:http", "", false, true},
		{"hash:ip,port", false, "10.244.1.5,icmp:8", "", false, true},
		{"hash:ip,port", false, "10.244.1.5", "", false, true},
		{"hash:mac", false, "00:00:00:00:00:01", "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.typ+" "+tt.in, func(t *testing.T) {
			got, nomatch, err := normalizeMember(tt.typ, tt.v6, tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %t", err, tt.err)
			}
			if got != tt.want || nomatch != tt.nomatch {
				t.Errorf("= %q nomatch=%t, want %q nomatch=%t", got, nomatch, tt.want, tt.nomatch)
			}
			if err == nil {
				// What ipset save prints normalizes to itself.
				flag := ""
				if nomatch {
					flag = " nomatch"
				}
				again, nm2, err := normalizeMember(tt.typ, tt.v6, got+flag)
				if err != nil || again != got || nm2 != nomatch {
					t.Errorf("not idempotent: %q -> %q %t %v", got, again, nm2, err)
				}
			}
		})
	}
}

const sampleIPSetSave = `create KUBE-X hash:ip family inet hashsize 1024 maxelem 65536
add KUBE-X 10.244.9.9
create tern-a hash:ip family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0xfddf3a65
add tern-a 10.244.1.5
add tern-a 10.244.1.6
create tern-b hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x0c67cdad
add tern-b 10.30.1.1
add tern-b 10.244.1.0/24 nomatch
create tern-c hash:ip,port family inet6 hashsize 1024 maxelem 1048576
add tern-c fd00:10:244::1,tcp:8080
`

func TestParseIPSetSave(t *testing.T) {
	sets, err := parseIPSetSave([]byte(sampleIPSetSave))
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 3 || sets["KUBE-X"] != nil {
		t.Fatalf("sets = %v, want tern-a, tern-b, tern-c only", sets)
	}
	a, b, c := sets["tern-a"], sets["tern-b"], sets["tern-c"]
	if a.typ != "hash:ip" || a.v6 || a.maxelem != setMaxElem || len(a.members) != 2 || a.applied != nil {
		t.Errorf("tern-a = %+v", a)
	}
	if b.typ != "hash:net" || b.maxelem != 65536 || !b.members["10.244.1.0/24"] || b.members["10.30.1.1"] {
		t.Errorf("tern-b = %+v", b)
	}
	if c.typ != "hash:ip,port" || !c.v6 || len(c.members) != 1 {
		t.Errorf("tern-c = %+v", c)
	}
	if _, err := parseIPSetSave([]byte("add tern-z 10.0.0.1\n")); err == nil {
		t.Error("an add before its create parsed")
	}
}

func ruleset(sets []policy.Set, chains ...policy.Chain) policy.Ruleset {
	return policy.Ruleset{Sets: sets, Chains: chains}
}

func TestPlanSets(t *testing.T) {
	have, err := parseIPSetSave([]byte(sampleIPSetSave))
	if err != nil {
		t.Fatal(err)
	}
	want := []policy.Set{
		{Name: "tern-a", Type: "hash:ip", Members: []string{"10.244.1.5", "10.244.1.7"}},
		// Too small a capacity: refilled under a temporary name, swapped.
		{Name: "tern-b", Type: "hash:net", Members: []string{"10.30.1.1/32", "10.244.1.0/24"}},
		{Name: "tern-d", Type: "hash:net", IPv6: true, Members: []string{"fd00:10:244::/56", "fd00:10:244:1::/64 nomatch"}},
		// tern-c is stale.
	}
	p, err := planSets(have, want, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmp := tempSetName("tern-b", func(string) bool { return false })
	wantIn := "create " + tmp + " hash:net family inet hashsize 1024 maxelem 1048576\n" +
		"add " + tmp + " 10.244.1.0/24\n" +
		"add " + tmp + " 10.30.1.1\n" +
		"swap " + tmp + " tern-b\ndestroy " + tmp + "\n" +
		"create tern-d hash:net family inet6 hashsize 1024 maxelem 1048576\n" +
		"add tern-d fd00:10:244:1::/64 nomatch\n" +
		"add tern-d fd00:10:244::/56\n" +
		"add tern-a 10.244.1.7\n" +
		"del tern-a 10.244.1.6\n"
	if got := p.pre.String(); got != wantIn {
		t.Errorf("restore input:\n%s\nwant:\n%s", got, wantIn)
	}
	if !slices.Equal(p.stale, []string{"tern-c"}) || len(p.incompatible) != 0 {
		t.Errorf("stale %v incompatible %v", p.stale, p.incompatible)
	}
	if !p.narrows {
		t.Error("a plan that deletes members does not say it narrows")
	}
	if p.created != 2 || p.destroyed != 1 || p.added != 5 || p.deleted != 1 {
		t.Errorf("counts created=%d destroyed=%d added=%d deleted=%d", p.created, p.destroyed, p.added, p.deleted)
	}
	if string(p.destroyInput()) != "destroy tern-c\n" {
		t.Errorf("destroy input %q", p.destroyInput())
	}

	// Once written, the same sets plan nothing, without parsing members.
	p.applyNext(have)
	delete(have, "tern-c")
	p2, err := planSets(have, want, nil)
	if err != nil || p2.pre.Len() != 0 || len(p2.stale) != 0 || len(p2.next) != 0 {
		t.Fatalf("second plan: %q stale %v err %v", p2.pre.String(), p2.stale, err)
	}

	// Flags change by an add; the element is not deleted.
	want[2].Members = []string{"fd00:10:244::/56", "fd00:10:244:1::/64"}
	p3, err := planSets(have, want, nil)
	if err != nil || p3.pre.String() != "add tern-d fd00:10:244:1::/64\n" {
		t.Fatalf("flag change: %q %v", p3.pre.String(), err)
	}
	if p3.narrows {
		t.Error("clearing a nomatch flag widens, the plan says it narrows")
	}
	p3.applyNext(have)
	want[2].Members = []string{"fd00:10:244::/56", "fd00:10:244:1::/64 nomatch"}
	if p, _ := planSets(have, want, nil); !p.narrows {
		t.Error("adding a nomatch entry narrows, the plan says it does not")
	}
	want[2].Members = []string{"fd00:10:244::/56", "fd00:10:244:1::/64", "fd00:10:244:2::/64"}
	if p, _ := planSets(have, want, nil); p.narrows || p.added != 1 {
		t.Errorf("adding a member: narrows=%t added=%d", p.narrows, p.added)
	}
	if p, _ := planSets(have, want, map[string]bool{"tern-d": true}); !p.narrows {
		t.Error("adding to a negated set narrows, the plan says it does not")
	}
	want[2].Members = []string{"fd00:10:244::/56", "fd00:10:244:1::/64"}

	// Another type: not written, reported for the renaming pass.
	want[0].Type = "hash:net"
	p4, err := planSets(have, want, nil)
	if err != nil || !slices.Equal(p4.incompatible, []string{"tern-a"}) {
		t.Fatalf("incompatible: %v %v", p4.incompatible, err)
	}

	// A member tern cannot write is an error before anything is written.
	want[0] = policy.Set{Name: "tern-a", Type: "hash:ip", Members: []string{"10.244.1.0/24"}}
	if _, err := planSets(have, want, nil); err == nil {
		t.Error("a range in a hash:ip set planned")
	}
}

// A set read back with the members the ruleset wants is remembered as
// verified: the next plan compares slices only.
func TestPlanSetsVerifiesReadBack(t *testing.T) {
	have, _ := parseIPSetSave([]byte("create tern-a hash:ip family inet hashsize 1024 maxelem 1048576\nadd tern-a 10.244.1.5\n"))
	want := []policy.Set{{Name: "tern-a", Type: "hash:ip", Members: []string{"10.244.1.5"}}}
	p, err := planSets(have, want, nil)
	if err != nil || p.pre.Len() != 0 {
		t.Fatalf("%q %v", p.pre.String(), err)
	}
	if !slices.Equal(have["tern-a"].applied, want[0].Members) {
		t.Errorf("applied = %v", have["tern-a"].applied)
	}
}

func TestTempSetName(t *testing.T) {
	name := "tern-" + strings.Repeat("x", 26)
	first := tempSetName(name, func(string) bool { return false })
	second := tempSetName(name, func(n string) bool { return n == first })
	for _, n := range []string{first, second} {
		if !strings.HasPrefix(n, policy.SetPrefix) || len(n) > 31 {
			t.Errorf("temporary name %q", n)
		}
	}
	if first == second || first == name {
		t.Errorf("names %q %q", first, second)
	}
}

const sampleSave = `# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [5:300]
:KUBE-FORWARD - [0:0]
:TERN-FORWARD - [0:0]
:TERN-PA - [0:0]
:TERN-PB - [0:0]
:TERN-PEMPTY - [0:0]
:TERN-POLICY - [0:0]
-A FORWARD -j TERN-PA
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -j ACCEPT
-A TERN-FORWARD -m comment --comment tern:nIZ00W8O7Pfezn-j -i tern+ -j ACCEPT
-A TERN-PA -m comment --comment HASH_A1 -p tcp -j RETURN
-A TERN-PA -m comment --comment "HASH_A2" -j DROP
-A TERN-PB -j ACCEPT
-A TERN-POLICY -m comment --comment HASH_P1 -j TERN-PA
COMMIT
`

func chainWithHashes(name string, rules ...policy.Rule) (policy.Chain, string) {
	s := sampleSave
	for i, r := range rules {
		s = strings.ReplaceAll(s, fmt.Sprintf("HASH_%s%d", strings.TrimPrefix(name, "TERN-P")[:1], i+1), Rule(r.Args).Hash(name))
	}
	return policy.Chain{Name: name, Rules: rules}, s
}

func TestPlanChains(t *testing.T) {
	pa, save := chainWithHashes("TERN-PA", rule("-p", "tcp", "-j", "RETURN"), rule("-j", "DROP"))
	save = strings.ReplaceAll(save, "HASH_P1", Rule{"-j", "TERN-PA"}.Hash(policy.ChainPolicy))
	have := parsePolicyChains([]byte(save))
	if len(have) != 4 || have["TERN-FORWARD"] != nil || have["KUBE-FORWARD"] != nil {
		t.Fatalf("read back %v, want the four TERN-P chains", have)
	}
	if !slices.Equal(have["TERN-PB"].hashes, []string{"foreign"}) || len(have["TERN-PEMPTY"].hashes) != 0 {
		t.Errorf("TERN-PB %v TERN-PEMPTY %v", have["TERN-PB"].hashes, have["TERN-PEMPTY"].hashes)
	}
	pb := policy.Chain{Name: "TERN-PB", Rules: []policy.Rule{rule("-j", "ACCEPT")}}
	pc := policy.Chain{Name: "TERN-PC", Rules: []policy.Rule{rule("-j", "NFLOG", "--nflog-prefix", "two words")}}
	v6 := policy.Chain{Name: "TERN-PA", IPv6: true}
	// TERN-POLICY is not wanted: emptied, not deleted. TERN-PEMPTY is stale.
	p := planChains(have, []policy.Chain{pa, pb, pc, v6}, false)
	var names []string
	for _, c := range p.write {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"TERN-PB", "TERN-PC", "TERN-POLICY"}) || !slices.Equal(p.stale, []string{"TERN-PEMPTY"}) {
		t.Fatalf("write %v stale %v", names, p.stale)
	}
	if !have["TERN-PA"].known {
		t.Error("TERN-PA matched by hash but not remembered as known")
	}
	// A stable order for the input.
	slices.SortFunc(p.write, func(a, b policy.Chain) int { return strings.Compare(a.Name, b.Name) })
	wantIn := "*filter\n:TERN-PB - [0:0]\n:TERN-PC - [0:0]\n:TERN-POLICY - [0:0]\n" +
		"-A TERN-PB -m comment --comment " + Rule{"-j", "ACCEPT"}.Hash("TERN-PB") + " -j ACCEPT\n" +
		"-A TERN-PC -m comment --comment " + Rule(pc.Rules[0].Args).Hash("TERN-PC") + ` -j NFLOG --nflog-prefix "two words"` + "\n" +
		"-F TERN-PEMPTY\n-X TERN-PEMPTY\nCOMMIT\n"
	if got := string(p.input()); got != wantIn {
		t.Errorf("input:\n%s\nwant:\n%s", got, wantIn)
	}
	// An empty TERN-POLICY stays empty: nothing to write.
	have["TERN-POLICY"] = &chainState{known: true}
	delete(have, "TERN-PEMPTY")
	have["TERN-PB"] = &chainState{known: true, applied: pb.Rules}
	have["TERN-PC"] = &chainState{known: true, applied: pc.Rules}
	if p := planChains(have, []policy.Chain{pa, pb, pc, v6}, false); len(p.write)+len(p.stale) != 0 {
		t.Errorf("second plan writes %v deletes %v", p.write, p.stale)
	}
}

func TestQuoteArg(t *testing.T) {
	for in, want := range map[string]string{
		"ACCEPT":   "ACCEPT",
		"two word": `"two word"`,
		`a"b`:      `"a\"b"`,
		`a\b c`:    `"a\\b c"`,
		"":         `""`,
	} {
		if got := quoteArg(in); got != want {
			t.Errorf("quoteArg(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestValidateRuleset(t *testing.T) {
	set4 := policy.Set{Name: "tern-s4", Type: "hash:ip"}
	set6 := policy.Set{Name: "tern-s6", Type: "hash:ip", IPv6: true}
	entry := func(v6 bool, rules ...policy.Rule) policy.Chain {
		return policy.Chain{Name: policy.ChainPolicy, IPv6: v6, Rules: rules}
	}
	tests := []struct {
		name   string
		rs     policy.Ruleset
		haveV6 bool
		err    string
	}{
		{"ok", ruleset([]policy.Set{set4, set6},
			entry(false, rule("-m", "set", "--match-set", "tern-s4", "src", "-j", "TERN-PX"),
				rule("-m", "set", "!", "--match-set", "tern-s4", "dst", "-j", "DROP")),
			policy.Chain{Name: "TERN-PX"},
			entry(true, rule("-m", "set", "--match-set", "tern-s6", "src", "-j", "RETURN"))), true, ""},
		{"set of the other family", ruleset([]policy.Set{set4, set6},
			entry(false, rule("-m", "set", "--match-set", "tern-s6", "src", "-j", "RETURN"))), true, "not in the ruleset for its family"},
		{"missing set", ruleset(nil, entry(false, rule("-m", "set", "--match-set", "tern-zz", "dst"))), true, "tern-zz"},
		{"missing chain", ruleset(nil, entry(false, rule("-g", "TERN-PNONE"))), true, "TERN-PNONE"},
		{"chain of the other family", ruleset(nil, entry(false, rule("-j", "TERN-PX")), policy.Chain{Name: "TERN-PX", IPv6: true}), true, "TERN-PX"},
		{"no ip6tables", ruleset(nil, entry(true)), false, "ip6tables is not installed"},
		{"chain prefix", ruleset(nil, policy.Chain{Name: "TERN-FORWARD"}), true, "want prefix"},
		{"chain too long", ruleset(nil, policy.Chain{Name: "TERN-P" + strings.Repeat("x", 23)}), true, "at most 28"},
		{"set prefix", ruleset([]policy.Set{{Name: "kube-x", Type: "hash:ip"}}), true, "want prefix"},
		{"set too long", ruleset([]policy.Set{{Name: "tern-" + strings.Repeat("x", 27), Type: "hash:ip"}}), true, "at most 31"},
		{"set type", ruleset([]policy.Set{{Name: "tern-x", Type: "list:set"}}), true, "not supported"},
		{"set twice", ruleset([]policy.Set{set4, set4}), true, "twice"},
		{"chain twice", ruleset(nil, entry(false), entry(false)), true, "twice"},
		{"newline", ruleset(nil, entry(false, rule("-j", "DROP\n-A FORWARD -j ACCEPT"))), true, "argument"},
		{"empty", policy.Ruleset{}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			facts, err := validateRuleset(tt.rs, tt.haveV6)
			if tt.name == "ok" && (len(facts.narrowOnAdd) != 1 || !facts.narrowOnAdd["tern-s4"] || !facts.simple) {
				t.Errorf("facts %+v, want tern-s4 narrowing on add, simple", facts)
			}
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("err = %v, want %q", err, tt.err)
			}
		})
	}
}

// Which rulesets the cut pass may infer from that a change only allows
// more (rulesetFacts.simple), and the sets where a member narrows.
func TestValidateRulesetFacts(t *testing.T) {
	set := []policy.Set{{Name: "tern-s", Type: "hash:ip"}}
	entry := func(rules ...policy.Rule) policy.Chain { return policy.Chain{Name: policy.ChainPolicy, Rules: rules} }
	pod := policy.Chain{Name: "TERN-PI-A", Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-s", "src", "-j", "RETURN"), rule("-j", "DROP")}}
	for _, tt := range []struct {
		name   string
		rs     policy.Ruleset
		simple bool
		narrow bool // tern-s narrows on add
	}{
		{"compiled", ruleset(set, pod, entry(rule("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
			rule("-o", "terna", "-j", "TERN-PI-A"))), true, false},
		{"log and reject", ruleset(set, entry(rule("-m", "set", "--match-set", "tern-s", "src", "-j", "NFLOG", "--nflog-group", "5"),
			rule("-j", "REJECT"))), true, false},
		{"set in a drop rule", ruleset(set, entry(rule("-m", "set", "--match-set", "tern-s", "src", "-j", "DROP"))), true, true},
		{"negated set", ruleset(set, entry(rule("-m", "set", "!", "--match-set", "tern-s", "src", "-j", "RETURN"))), true, true},
		{"set in a jump", ruleset(set, pod, entry(rule("-m", "set", "--match-set", "tern-s", "src", "-j", "TERN-PI-A"))), true, true},
		{"accept", ruleset(set, entry(rule("-m", "set", "--match-set", "tern-s", "src", "-j", "ACCEPT"))), false, false},
		{"goto", ruleset(set, pod, entry(rule("-g", "TERN-PI-A"))), false, false},
		{"a pod chain going to its tail", ruleset(set, policy.Chain{Name: "TERN-PI-A", Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-s", "src", "-j", "DROP"), rule("-g", "TERN-PIT-A")}},
			policy.Chain{Name: "TERN-PIT-A", Rules: []policy.Rule{rule("-j", "DROP")}}, entry(rule("-o", "terna", "-j", "TERN-PI-A"))), true, true},
		{"a Pass rule", ruleset(set, policy.Chain{Name: "TERN-PI-A", Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-s", "src", "-g", "TERN-PIT-A"), rule("-j", "RETURN")}},
			policy.Chain{Name: "TERN-PIT-A", Rules: []policy.Rule{rule("-j", "DROP")}}, entry(rule("-o", "terna", "-j", "TERN-PI-A"))), false, true},
		{"dispatch to RETURN", ruleset(nil, entry(rule("-o", "lo", "-j", "RETURN"))), false, false},
		{"interface in a pod chain", ruleset(set, policy.Chain{Name: "TERN-PI-A", Rules: []policy.Rule{rule("-i", "ternb", "-j", "RETURN")}},
			entry(rule("-o", "terna", "-j", "TERN-PI-A"))), false, false},
		{"wildcard interface", ruleset(set, pod, entry(rule("-o", "tern+", "-j", "TERN-PI-A"))), true, false},
		{"dispatch tree", ruleset(set, pod, policy.Chain{Name: "TERN-PDT", Rules: []policy.Rule{rule("-o", "terna+", "-g", "TERN-PDT-a")}},
			policy.Chain{Name: "TERN-PDT-a", Rules: []policy.Rule{rule("-o", "terna1", "-g", "TERN-PI-A"), rule("-o", "terna2", "-j", "TERN-PI-A")}},
			entry(rule("-o", "tern+", "-j", "TERN-PDT"))), true, false},
		{"goto outside the dispatch", ruleset(set, pod, policy.Chain{Name: "TERN-PDT", Rules: []policy.Rule{rule("-o", "terna", "-g", "TERN-PI-A"), rule("-g", "TERN-PI-A")}},
			entry(rule("-o", "tern+", "-j", "TERN-PDT"))), false, false},
		{"interface in a chain that is not dispatch", ruleset(set, pod, policy.Chain{Name: "TERN-PDT", Rules: []policy.Rule{rule("-o", "terna", "-g", "TERN-PI-A"), rule("-j", "DROP")}},
			entry(rule("-o", "tern+", "-j", "TERN-PDT"))), false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			facts, err := validateRuleset(tt.rs, true)
			if err != nil {
				t.Fatal(err)
			}
			if facts.simple != tt.simple || facts.narrowOnAdd["tern-s"] != tt.narrow {
				t.Errorf("facts %+v, want simple %t, tern-s narrowing on add %t", facts, tt.simple, tt.narrow)
			}
		})
	}
}

func TestRenameSets(t *testing.T) {
	rs := ruleset([]policy.Set{{Name: "tern-a", Type: "hash:net"}, {Name: "tern-b", Type: "hash:ip"}},
		policy.Chain{Name: "TERN-PX", Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-a", "src", "-j", "RETURN"), rule("-j", "DROP")}},
		policy.Chain{Name: "TERN-PY", Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-b", "src", "-j", "RETURN")}})
	out := renameSets(rs, map[string]string{"tern-a": "tern-tmp-a"})
	if out.Sets[0].Name != "tern-tmp-a" || out.Chains[0].Rules[0].Sets[0].Name != "tern-tmp-a" || out.Chains[0].Rules[0].Args[3] != "tern-tmp-a" ||
		out.Chains[1].Rules[0].Sets[0].Name != "tern-b" || out.Chains[1].Rules[0].Args[3] != "tern-b" {
		t.Errorf("renamed: %+v", out)
	}
	if rs.Sets[0].Name != "tern-a" || rs.Chains[0].Rules[0].Sets[0].Name != "tern-a" || rs.Chains[0].Rules[0].Args[3] != "tern-a" {
		t.Errorf("the input was modified: %+v", rs)
	}
}

func TestParseVersionMode(t *testing.T) {
	for in, want := range map[string]string{
		"iptables v1.8.9 (nf_tables)\n": "nft",
		"iptables v1.8.9 (legacy)\n":    "legacy",
		"ip6tables v1.8.7 (legacy)":     "legacy",
		"iptables v1.6.1\n":             "legacy",
		"something else":                "",
	} {
		if got := parseVersionMode(in); got != want {
			t.Errorf("parseVersionMode(%q) = %q, want %q", in, got, want)
		}
	}
	if n := countRuleLines([]byte(sampleSave)); n != 7 {
		t.Errorf("countRuleLines = %d, want 7", n)
	}
}

func TestExcerpt(t *testing.T) {
	var b bytes.Buffer
	for i := 1; i <= 5000; i++ {
		fmt.Fprintf(&b, "add tern-a 10.%d.%d.1\n", i/256, i%256)
	}
	got := excerpt(b.Bytes(), "exit status 1: ipset v7.17: Error in line 2500: Syntax error")
	if !strings.Contains(got, "[lines 2490-2510 of 5001]") || !strings.Contains(got, "add tern-a 10.9.196.1") || len(got) > 1000 {
		t.Errorf("excerpt:\n%s", got)
	}
	if got := excerpt([]byte("add x\n"), "whatever"); got != "add x\n" {
		t.Errorf("short input: %q", got)
	}
}

// fakeRunner answers the read-back commands and records every command.
type fakeRunner struct {
	save   map[string]string // command name → output
	calls  []string
	inputs []string
	fail   string // a command name that fails
}

var _ runner = (*fakeRunner)(nil).run

func (f *fakeRunner) run(stdin []byte, name string, args ...string) ([]byte, error) {
	call := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, call)
	f.inputs = append(f.inputs, string(stdin))
	if name == f.fail {
		return []byte("boom"), fmt.Errorf("exit status 1")
	}
	return []byte(f.save[call]), nil
}

func fakeBackend() *Backend {
	return &Backend{Mode: "nft",
		v4: iptablesBins{"iptables", "iptables-save", "iptables-restore"},
		v6: iptablesBins{"ip6tables", "ip6tables-save", "ip6tables-restore"}}
}

// The order of writes, and what an incremental Apply runs: nothing but one
// ipset restore for a member change.
func TestPolicyApplyOrder(t *testing.T) {
	f := &fakeRunner{save: map[string]string{
		"ipset save": "create tern-old hash:ip family inet hashsize 1024 maxelem 1048576\n",
		"iptables-save -t filter": "*filter\n:TERN-POLICY - [0:0]\n:TERN-POLD - [0:0]\n" +
			"-A TERN-POLD -m set --match-set tern-old src -j RETURN\nCOMMIT\n",
	}}
	p := NewPolicy(slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.run, p.backend = f.run, fakeBackend()
	rs := ruleset([]policy.Set{{Name: "tern-new", Type: "hash:ip", Members: []string{"10.244.1.5"}}},
		policy.Chain{Name: policy.ChainPolicy, Rules: []policy.Rule{rule("-m", "set", "--match-set", "tern-new", "src", "-j", "RETURN")}})
	st, err := p.Apply(rs, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := []string{
		"ipset save", "iptables-save -t filter", "ip6tables-save -t filter", // read-back
		"ipset restore -exist",                 // create tern-new first
		"iptables-restore --noflush --wait 10", // then the rules that use it
		"ipset restore -exist",                 // then destroy tern-old
	}
	if !slices.Equal(f.calls, wantCalls) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(wantCalls, "\n"))
	}
	if !strings.Contains(f.inputs[4], "-X TERN-POLD") || f.inputs[5] != "destroy tern-old\n" {
		t.Errorf("inputs: %q", f.inputs)
	}
	want := PolicyStats{SetsCreated: 1, SetsDestroyed: 1, MembersAdded: 1, ChainsWritten: 1, ChainsDeleted: 1, Restores: 1, SetRestores: 2}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}

	f.calls, f.inputs = nil, nil
	if st, err := p.Apply(rs, nil); err != nil || st != (PolicyStats{}) || len(f.calls) != 0 {
		t.Fatalf("same ruleset: %+v %v %v", st, f.calls, err)
	}

	rs.Sets[0].Members = []string{"10.244.1.5", "10.244.1.6"}
	st, err = p.Apply(rs, nil)
	if err != nil || !slices.Equal(f.calls, []string{"ipset restore -exist"}) || f.inputs[0] != "add tern-new 10.244.1.6\n" {
		t.Fatalf("member change ran %v with %q: %v", f.calls, f.inputs, err)
	}
	if st != (PolicyStats{MembersAdded: 1, SetRestores: 1}) {
		t.Errorf("member change stats %+v", st)
	}

	// A failed write makes the next Apply read back.
	f.calls, f.fail = nil, "ipset"
	rs.Sets[0].Members = []string{"10.244.1.5"}
	if _, err := p.Apply(rs, nil); err == nil || !strings.Contains(err.Error(), "del tern-new 10.244.1.6") {
		t.Fatalf("failed restore: err %v does not carry the input", err)
	}
	f.calls, f.fail = nil, ""
	if _, err := p.Apply(rs, nil); err != nil || f.calls[0] != "ipset save" {
		t.Fatalf("after a failure: %v %v", f.calls, err)
	}
}

// rule makes a policy rule from iptables arguments of the shapes Compile
// renders: its values from the arguments, then its arguments rendered from
// the values (in Compile's order). Tests only: tern itself never parses a
// rule.
func rule(args ...string) policy.Rule {
	var r policy.Rule
	num := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			panic(fmt.Sprintf("rule %q: %v", args, err))
		}
		return n
	}
	negated := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			i++
			if i == len(args) {
				panic(fmt.Sprintf("rule %q: %s without its value", args, a))
			}
			return args[i]
		}
		switch a {
		case "-i":
			r.In = next()
		case "-o":
			r.Out = next()
		case "-p":
			r.Proto = next()
		case "--dport":
			lo, hi, isRange := strings.Cut(next(), ":")
			r.DPort = int32(num(lo))
			if isRange {
				r.DPortEnd = int32(num(hi))
			}
		case "-m":
			switch m := next(); m {
			case "set", "tcp", "udp", "sctp", "connmark", "conntrack", "limit":
			default:
				panic(fmt.Sprintf("rule %q: match %q", args, m))
			}
		case "!":
			negated = true
		case "--match-set":
			name := next()
			r.Sets = append(r.Sets, policy.SetMatch{Name: name, Flags: next(), Negated: negated})
			negated = false
		case "--mark":
			if v := next(); v != fmt.Sprintf("%#x/%#x", policy.CutMark, policy.CutMark) {
				panic(fmt.Sprintf("rule %q: mark %q", args, v))
			}
			r.CutMark = true
		case "--ctstate":
			if v := next(); v != "RELATED,ESTABLISHED" {
				panic(fmt.Sprintf("rule %q: ctstate %q", args, v))
			}
			r.Established = true
		case "--limit":
			r.Limit = next()
		case "--limit-burst":
			r.LimitBurst = num(next())
		case "-j", "-g":
			r.Target, r.Goto = next(), a == "-g"
		case "--nflog-group":
			r.LogGroup = num(next())
		case "--nflog-prefix":
			r.LogPrefix = next()
		default:
			panic(fmt.Sprintf("rule %q: argument %q", args, a))
		}
	}
	return r.Render()
}
