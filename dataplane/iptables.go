package dataplane

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/tern-net/tern/policy"
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

// newIPTablesDriver returns the driver of one family, writing through the
// binaries of backend b (the same ones the policy driver uses).
func newIPTablesDriver(v6 bool, b Backend) (*iptablesDriver, error) {
	bins := b.bins(v6)
	if !bins.has() {
		return nil, fmt.Errorf("%s backend, %s: %w", b.Mode, family(v6), errNoBinaries)
	}
	proto := iptables.ProtocolIPv4
	if v6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10), iptables.Path(bins.cmd))
	if err != nil {
		return nil, fmt.Errorf("iptables (%s): %w", bins.cmd, err)
	}
	return &iptablesDriver{ipt: ipt, restore: bins.restore, v6: v6}, nil
}

// family names the iptables command of a family, for messages.
func family(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
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
		writeChainRules(&b, c.Name, c.Rules)
	}
	b.WriteString("COMMIT\n")
	return runRestore(execRun, d.restore, "table "+table, b.Bytes())
}

// writeChainRules writes the rules of chain as iptables-restore lines, each
// marked with its hash comment. Arguments with blanks or quotes are quoted.
func writeChainRules(b *bytes.Buffer, chain string, rules []Rule) {
	for _, r := range rules {
		writeRule(b, chain, r)
	}
}

// writePolicyRules is writeChainRules for a policy chain's rules.
func writePolicyRules(b *bytes.Buffer, chain string, rules []policy.Rule) {
	for _, r := range rules {
		writeRule(b, chain, r.Args)
	}
}

// writeRule writes one rule's arguments as an iptables-restore line.
func writeRule(b *bytes.Buffer, chain string, args []string) {
	fmt.Fprintf(b, "-A %s -m comment --comment %s", chain, Rule(args).Hash(chain))
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(quoteArg(a))
	}
	b.WriteByte('\n')
}

// quoteArg quotes an iptables-restore argument that would otherwise split.
func quoteArg(a string) string {
	if a != "" && !strings.ContainsAny(a, " \t\"'\\") {
		return a
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
}

// runRestore feeds input to an iptables-restore binary in one transaction,
// without flushing the tables, waiting for the xtables lock. The error
// carries the binary's output and the whole input.
func runRestore(run runner, bin, what string, input []byte) error {
	if out, err := run(input, bin, "--noflush", "--wait", "10"); err != nil {
		return fmt.Errorf("%s --noflush (%s): %w: %s\ninput:\n%s", bin, what, err, bytes.TrimSpace(out), input)
	}
	return nil
}

// runner runs a command with stdin (nil for none) and returns its standard
// output; on failure the error includes its standard error. Drivers hold one
// so tests can count and inspect what they run.
type runner func(stdin []byte, name string, args ...string) ([]byte, error)

func execRun(stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
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
// looked at, and the policy driver's chains (policy.ChainPrefix) are left to
// it.
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
			if strings.HasPrefix(c, "TERN-") && !strings.HasPrefix(c, policy.ChainPrefix) && !want[table+"/"+c] {
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
				if !strings.HasPrefix(target, "TERN-") || strings.HasPrefix(target, policy.ChainPrefix) {
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
		if err := runRestore(execRun, d.restore, "remove stale, table "+table, []byte(in)); err != nil {
			return removed, err
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
