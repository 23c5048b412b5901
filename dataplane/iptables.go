package dataplane

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// iptablesDriver writes tern's chains of one address family. It reads back only
// the hash comments of its own chains and rewrites a chain, atomically with
// iptables-restore --noflush, only when they differ from the plan. Chains and
// rules that are not tern's are never touched.
type iptablesDriver struct {
	ipt     *iptables.IPTables
	restore string // iptables-restore binary of the same backend
	v6      bool
}

func newIPTablesDriver(v6 bool) (*iptablesDriver, error) {
	proto := iptables.ProtocolIPv4
	if v6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	name := "iptables"
	if v6 {
		name = "ip6tables"
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	restore := filepath.Join(filepath.Dir(bin), name+"-restore")
	return &iptablesDriver{ipt: ipt, restore: restore, v6: v6}, nil
}

var hashComment = regexp.MustCompile(`--comment "?(tern:[A-Za-z0-9_-]+)"?`)

// installedHashes returns the hash comments of chain's rules in order, and
// whether the chain exists.
func (d *iptablesDriver) installedHashes(table, chain string) ([]string, bool, error) {
	ok, err := d.ipt.ChainExists(table, chain)
	if err != nil || !ok {
		return nil, false, err
	}
	lines, err := d.ipt.List(table, chain)
	if err != nil {
		return nil, false, fmt.Errorf("list %s/%s: %w", table, chain, err)
	}
	var out []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		m := hashComment.FindStringSubmatch(l)
		if m == nil {
			out = append(out, "foreign")
			continue
		}
		out = append(out, m[1])
	}
	return out, true, nil
}

// syncChains brings the given chains of this family to their planned content
// and returns how many chains it rewrote.
func (d *iptablesDriver) syncChains(chains []Chain) (int, error) {
	byTable := map[string][]Chain{}
	var tables []string
	for _, c := range chains {
		if c.IPv6 != d.v6 {
			continue
		}
		have, exists, err := d.installedHashes(c.Table, c.Name)
		if err != nil {
			return 0, err
		}
		want := make([]string, len(c.Rules))
		for i, r := range c.Rules {
			want[i] = r.Hash(c.Name)
		}
		if exists && slices.Equal(have, want) {
			continue
		}
		if _, seen := byTable[c.Table]; !seen {
			tables = append(tables, c.Table)
		}
		byTable[c.Table] = append(byTable[c.Table], c)
	}
	n := 0
	for _, t := range tables {
		if err := d.restoreTable(t, byTable[t]); err != nil {
			return n, err
		}
		n += len(byTable[t])
	}
	return n, nil
}

// restoreTable rewrites whole chains of one table in one atomic transaction.
func (d *iptablesDriver) restoreTable(table string, chains []Chain) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
	}
	for _, c := range chains {
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "-A %s -m comment --comment %s %s\n", c.Name, r.Hash(c.Name), strings.Join(r, " "))
		}
	}
	b.WriteString("COMMIT\n")
	cmd := exec.Command(d.restore, "--noflush", "--wait", "10")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s --noflush (table %s): %w: %s\ninput:\n%s", d.restore, table, err, bytes.TrimSpace(out), b.String())
	}
	return nil
}

// ensureJumps inserts each jump at the top of its built-in chain unless present.
func (d *iptablesDriver) ensureJumps(jumps []Jump) (int, error) {
	n := 0
	for _, j := range jumps {
		if j.IPv6 != d.v6 {
			continue
		}
		ok, err := d.ipt.Exists(j.Table, j.From, j.Spec()...)
		if err != nil {
			return n, fmt.Errorf("check jump %s/%s -> %s: %w", j.Table, j.From, j.To, err)
		}
		if ok {
			continue
		}
		if err := d.ipt.Insert(j.Table, j.From, 1, j.Spec()...); err != nil {
			return n, fmt.Errorf("insert jump %s/%s -> %s: %w", j.Table, j.From, j.To, err)
		}
		n++
	}
	return n, nil
}

// builtinChains are the built-in chains of the tables tern uses.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// removeStale deletes tern's chains of this family that the plan no longer
// has (after a flag change, or a pod CIDR family that went), with the jumps
// to them, and duplicate jumps to chains it keeps. It returns how many chains
// and jumps it removed. Nothing that is not a TERN- chain or a jump to one is
// looked at.
func (d *iptablesDriver) removeStale(plan Plan) (int, error) {
	want := map[string]bool{}
	for _, c := range plan.Chains {
		if c.IPv6 == d.v6 {
			want[c.Table+"/"+c.Name] = true
		}
	}
	removed := 0
	for _, table := range []string{"filter", "nat"} {
		chains, err := d.ipt.ListChains(table)
		if err != nil {
			return removed, fmt.Errorf("list chains of %s: %w", table, err)
		}
		var stale []string
		for _, c := range chains {
			if strings.HasPrefix(c, "TERN-") && !want[table+"/"+c] {
				stale = append(stale, c)
			}
		}
		var b bytes.Buffer
		for _, from := range builtinChains[table] {
			rules, err := d.ipt.List(table, from)
			if err != nil {
				return removed, fmt.Errorf("list %s/%s: %w", table, from, err)
			}
			seen := map[string]bool{}
			for _, r := range rules {
				target := jumpTarget(r)
				if !strings.HasPrefix(target, "TERN-") {
					continue
				}
				if slices.Contains(stale, target) || seen[target] {
					// -S prints rules in iptables-restore syntax: -A becomes -D.
					fmt.Fprintf(&b, "-D%s\n", strings.TrimPrefix(r, "-A"))
					removed++
				}
				seen[target] = true
			}
		}
		for _, c := range stale {
			fmt.Fprintf(&b, "-F %s\n-X %s\n", c, c)
			removed++
		}
		if b.Len() == 0 {
			continue
		}
		in := "*" + table + "\n" + b.String() + "COMMIT\n"
		cmd := exec.Command(d.restore, "--noflush", "--wait", "10")
		cmd.Stdin = strings.NewReader(in)
		if out, err := cmd.CombinedOutput(); err != nil {
			return removed, fmt.Errorf("%s --noflush (remove stale, table %s): %w: %s\ninput:\n%s", d.restore, table, err, bytes.TrimSpace(out), in)
		}
	}
	return removed, nil
}

// jumpTarget is the chain a rule of `iptables -S` output jumps to, if any.
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}
