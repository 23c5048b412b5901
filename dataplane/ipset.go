package dataplane

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/tern-net/tern/policy"
)

// setMaxElem is the capacity tern gives every set: a cluster's pods fit in
// one set several times over.
const setMaxElem = 1 << 20

// ipsetState is what one of tern's sets holds in the kernel, as tern last
// read or wrote it.
type ipsetState struct {
	typ     string
	v6      bool
	maxelem int
	// members maps each element, in the form `ipset save` prints it, to its
	// nomatch flag.
	members map[string]bool
	// applied is Set.Members as last written or verified: an Apply whose
	// members are equal to it needs no parsing. Nil after a read-back.
	applied []string
}

func ipsetFamily(v6 bool) string {
	if v6 {
		return "inet6"
	}
	return "inet"
}

// parseIPSetSave reads `ipset save` output and returns tern's sets (names
// starting with policy.SetPrefix); every other set is ignored.
func parseIPSetSave(out []byte) (map[string]*ipsetState, error) {
	sets := map[string]*ipsetState{}
	for ln, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[1], policy.SetPrefix) {
			continue
		}
		switch f[0] {
		case "create":
			s := &ipsetState{typ: f[2], members: map[string]bool{}}
			for i := 3; i+1 < len(f); i++ {
				switch f[i] {
				case "family":
					s.v6 = f[i+1] == "inet6"
				case "maxelem":
					s.maxelem, _ = strconv.Atoi(f[i+1])
				}
			}
			sets[f[1]] = s
		case "add":
			s := sets[f[1]]
			if s == nil {
				return nil, fmt.Errorf("ipset save line %d: add to %s before its create", ln+1, f[1])
			}
			elem, nomatch, err := normalizeMember(s.typ, s.v6, strings.Join(f[2:], " "))
			if err != nil {
				// Not a form tern writes: keep it verbatim, so it is deleted.
				elem, nomatch = f[2], false
			}
			s.members[elem] = nomatch
		}
	}
	return sets, nil
}

// normalizeMember parses a member in `ipset add` syntax for a set of type
// typ and returns its element as `ipset save` prints it, and its nomatch
// flag: addresses in canonical form, hash:net prefixes masked and without a
// full-length suffix, hash:ip,port with its protocol.
func normalizeMember(typ string, v6 bool, m string) (string, bool, error) {
	f := strings.Fields(m)
	if len(f) == 0 {
		return "", false, fmt.Errorf("empty member")
	}
	nomatch := false
	for _, flag := range f[1:] {
		if flag != "nomatch" || typ != "hash:net" {
			return "", false, fmt.Errorf("member %q: option %q not supported for %s", m, flag, typ)
		}
		nomatch = true
	}
	addr := func(s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return a, err
		}
		if a.Is6() != v6 || a.Is4In6() || a.Zone() != "" {
			return a, fmt.Errorf("address %s is not of family %s", s, ipsetFamily(v6))
		}
		return a, nil
	}
	e := f[0]
	switch typ {
	case "hash:ip":
		a, err := addr(e)
		if err != nil {
			return "", false, fmt.Errorf("member %q: %w", m, err)
		}
		return a.String(), false, nil
	case "hash:net":
		if !strings.Contains(e, "/") {
			a, err := addr(e)
			if err != nil {
				return "", false, fmt.Errorf("member %q: %w", m, err)
			}
			return a.String(), nomatch, nil
		}
		p, err := netip.ParsePrefix(e)
		if err == nil {
			_, err = addr(p.Addr().String())
		}
		if err != nil {
			return "", false, fmt.Errorf("member %q: %w", m, err)
		}
		if p.Bits() == 0 {
			return "", false, fmt.Errorf("member %q: hash:net cannot hold a /0", m)
		}
		if p.IsSingleIP() {
			return p.Addr().String(), nomatch, nil
		}
		return p.Masked().String(), nomatch, nil
	case "hash:ip,port":
		ip, port, ok := strings.Cut(e, ",")
		if !ok {
			return "", false, fmt.Errorf("member %q: want address,protocol:port", m)
		}
		a, err := addr(ip)
		if err != nil {
			return "", false, fmt.Errorf("member %q: %w", m, err)
		}
		proto, num, ok := strings.Cut(port, ":")
		if !ok {
			proto, num = "tcp", port
		}
		proto = strings.ToLower(proto)
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || (proto != "tcp" && proto != "udp" && proto != "sctp" && proto != "udplite") {
			return "", false, fmt.Errorf("member %q: want a tcp, udp or sctp port number", m)
		}
		return a.String() + "," + proto + ":" + strconv.FormatUint(n, 10), false, nil
	}
	return "", false, fmt.Errorf("set type %q not supported", typ)
}

// setPlan is what one Apply writes to tern's sets.
type setPlan struct {
	// pre is `ipset restore` input that runs before iptables: it creates
	// missing sets, refills sets of too small a capacity (under a temporary
	// name, then swapped in), adds members, then deletes members.
	pre bytes.Buffer
	// stale are sets to destroy once iptables no longer refers to them.
	stale []string
	// next are the states of the sets pre changes, once it has run.
	next                               map[string]*ipsetState
	created, destroyed, added, deleted int
	// narrows says the plan may take away what the installed rules allow:
	// it deletes members, adds nomatch entries, adds to a negated set, or
	// refills a set.
	narrows bool
	// incompatible are wanted sets that exist with another type or family:
	// a set referred to by a rule can be neither swapped with one of another
	// type nor destroyed, so the caller renames them for one pass.
	incompatible []string
}

// planSets computes the writes that bring tern's sets from have (what is
// installed) to want. Sets not in want are stale; negated are the sets rules
// use negated. It does no I/O; it records in have the members of sets it
// found already right, so that the next plan compares them without parsing.
func planSets(have map[string]*ipsetState, want []policy.Set, negated map[string]bool) (*setPlan, error) {
	p := &setPlan{next: map[string]*ipsetState{}}
	var adds, dels bytes.Buffer
	wanted := make(map[string]bool, len(want))
	for i := range want {
		s := &want[i]
		wanted[s.Name] = true
		st := have[s.Name]
		if st != nil && (st.typ != s.Type || st.v6 != s.IPv6) {
			p.incompatible = append(p.incompatible, s.Name)
			continue
		}
		if st != nil && st.applied != nil && st.maxelem >= setMaxElem && slices.Equal(st.applied, s.Members) {
			continue
		}
		members := make(map[string]bool, len(s.Members))
		for _, m := range s.Members {
			elem, nomatch, err := normalizeMember(s.Type, s.IPv6, m)
			if err != nil {
				return nil, fmt.Errorf("set %s: %w", s.Name, err)
			}
			members[elem] = nomatch
		}
		next := &ipsetState{typ: s.Type, v6: s.IPv6, maxelem: setMaxElem, members: members, applied: slices.Clone(s.Members)}
		switch {
		case st == nil:
			writeCreate(&p.pre, s.Name, s, len(members))
			p.added += writeAdds(&p.pre, s.Name, members, nil)
			p.created++
		case st.maxelem < setMaxElem:
			// Same type, too small: fill a new set and swap it in, which
			// rules referring to the name follow.
			tmp := tempSetName(s.Name, func(n string) bool { return have[n] != nil || wanted[n] })
			writeCreate(&p.pre, tmp, s, len(members))
			p.added += writeAdds(&p.pre, tmp, members, nil)
			fmt.Fprintf(&p.pre, "swap %s %s\ndestroy %s\n", tmp, s.Name, tmp)
			p.created++
			p.destroyed++
			p.narrows = true
		default:
			n := writeAdds(&adds, s.Name, members, st.members)
			var gone []string
			for elem := range st.members {
				if _, ok := members[elem]; !ok {
					gone = append(gone, elem)
				}
			}
			slices.Sort(gone)
			for _, elem := range gone {
				fmt.Fprintf(&dels, "del %s %s\n", s.Name, elem)
			}
			if n == 0 && len(gone) == 0 {
				st.applied = next.applied
				continue
			}
			if len(gone) > 0 || negated[s.Name] || addsNomatch(members, st.members) {
				p.narrows = true
			}
			p.added += n
			p.deleted += len(gone)
		}
		p.next[s.Name] = next
	}
	p.pre.Write(adds.Bytes())
	p.pre.Write(dels.Bytes())
	for name := range have {
		if !wanted[name] {
			p.stale = append(p.stale, name)
		}
	}
	slices.Sort(p.stale)
	return p, nil
}

func writeCreate(b *bytes.Buffer, name string, s *policy.Set, n int) {
	hashsize := 1024
	for hashsize < n/4 && hashsize < setMaxElem/4 {
		hashsize *= 2
	}
	fmt.Fprintf(b, "create %s %s family %s hashsize %d maxelem %d\n", name, s.Type, ipsetFamily(s.IPv6), hashsize, setMaxElem)
}

// writeAdds writes an add line for each element of want that have lacks or
// holds with the other nomatch flag (an add with -exist sets the flag), in
// order, and returns how many it wrote.
func writeAdds(b *bytes.Buffer, name string, want, have map[string]bool) int {
	var elems []string
	for elem, nomatch := range want {
		if old, ok := have[elem]; !ok || old != nomatch {
			elems = append(elems, elem)
		}
	}
	slices.Sort(elems)
	for _, elem := range elems {
		if want[elem] {
			fmt.Fprintf(b, "add %s %s nomatch\n", name, elem)
		} else {
			fmt.Fprintf(b, "add %s %s\n", name, elem)
		}
	}
	return len(elems)
}

// addsNomatch reports whether want has a nomatch entry that have lacks.
func addsNomatch(want, have map[string]bool) bool {
	for elem, nomatch := range want {
		if nomatch && !have[elem] {
			return true
		}
	}
	return false
}

// tempSetName is the name a set is built under before it takes name's place:
// tern's prefix (so a crash leaves nothing that is not swept) and a hash of
// name, at most 31 characters, not taken.
func tempSetName(name string, taken func(string) bool) string {
	for i := 0; ; i++ {
		h := sha256.Sum256([]byte(name + "\x00" + strconv.Itoa(i)))
		t := policy.SetPrefix + "tmp-" + strings.ToLower(base32.StdEncoding.EncodeToString(h[:]))[:22]
		if !taken(t) {
			return t
		}
	}
}

// applyNext records in have what a successful pre restore wrote.
func (p *setPlan) applyNext(have map[string]*ipsetState) {
	for name, st := range p.next {
		have[name] = st
	}
}

// destroyInput is the `ipset restore` input that destroys the stale sets.
func (p *setPlan) destroyInput() []byte {
	var b bytes.Buffer
	for _, name := range p.stale {
		fmt.Fprintf(&b, "destroy %s\n", name)
	}
	return b.Bytes()
}

// runIPSetRestore runs one `ipset restore -exist`; the error carries ipset's
// message and the input, or the lines around the one ipset complains about
// when the input is long.
func runIPSetRestore(run runner, input []byte) error {
	if out, err := run(input, "ipset", "restore", "-exist"); err != nil {
		return fmt.Errorf("ipset restore: %w: %s\ninput:\n%s", err, bytes.TrimSpace(out), excerpt(input, err.Error()))
	}
	return nil
}

// excerpt returns input whole when it is short, else the lines around the
// one msg names ("Error in line N") and the number of lines left out.
func excerpt(input []byte, msg string) string {
	const limit = 16 << 10
	if len(input) <= limit {
		return string(input)
	}
	lines := strings.Split(string(input), "\n")
	n := 1
	if _, after, ok := strings.Cut(msg, "in line "); ok {
		end := strings.IndexFunc(after, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(after)
		}
		n, _ = strconv.Atoi(after[:end])
	}
	lo, hi := max(n-10, 1), min(n+10, len(lines))
	return fmt.Sprintf("[lines %d-%d of %d]\n%s", lo, hi, len(lines), strings.Join(lines[lo-1:hi], "\n"))
}
