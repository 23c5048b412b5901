// Package conformance runs Kubernetes' own e2e suite (e2e.test, built by
// `hack/kube-env.sh build e2e`) against a tern-lab with the ginkgo CLI, reads
// the JUnit report it writes, and renders the results as CONFORMANCE.md: what
// ran, what passed, and every spec left out with the reason.
//
// The selections are fixed here, not on a command line, so that what a
// report calls "[sig-network] Netpol" is the same set of specs in every run:
// a spec is left out only by a Skip that names why this machine cannot run
// it.
package conformance

import (
	"fmt"
	"regexp"
	"strings"
)

// Suite is a selection of the e2e specs: those whose text matches Focus,
// less those that a Skip names.
type Suite struct {
	Name  string // short, for file names and flags: "netpol"
	Title string // for the report
	Focus string // a regular expression over the spec's text (ginkgo --focus)
	Skips []Skip
}

// Skip leaves out the selected specs whose text matches Pattern, for Reason.
type Skip struct {
	Pattern string
	Reason  string
}

// The SCTP connectivity specs open SCTP sockets; the kernel of the machines
// tern is tested on has no SCTP (the sctp module is not built), so a socket()
// of IPPROTO_SCTP fails in the pods. The specs that only check that an SCTP
// policy does not open TCP are not tagged so and run.
var skipSCTP = Skip{
	Pattern: `\[Feature:SCTPConnectivity\]`,
	Reason:  "opens SCTP sockets; this machine's kernel has no SCTP (no sctp module)",
}

// Netpol is Kubernetes' NetworkPolicy suite in full, less SCTP connectivity.
var Netpol = Suite{
	Name:  "netpol",
	Title: "[sig-network] Netpol",
	Focus: `\[sig-network\] Netpol `,
	Skips: []Skip{skipSCTP},
}

// SigNetworkConformance is sig-network's share of the conformance suite.
var SigNetworkConformance = Suite{
	Name:  "sig-network-conformance",
	Title: "[sig-network] [Conformance]",
	Focus: `\[sig-network\].*\[Conformance\]`,
	Skips: []Skip{skipSCTP},
}

// Suites are the selections by name.
var Suites = map[string]Suite{Netpol.Name: Netpol, SigNetworkConformance.Name: SigNetworkConformance}

// Validate checks that the suite's expressions compile (ginkgo would only
// say so after starting), so a typo fails before a lab is used.
func (s Suite) Validate() error {
	if s.Name == "" || s.Focus == "" {
		return fmt.Errorf("suite %q: a name and a focus are required", s.Name)
	}
	if _, err := regexp.Compile(s.Focus); err != nil {
		return fmt.Errorf("suite %s: focus %q: %w", s.Name, s.Focus, err)
	}
	for _, k := range s.Skips {
		if k.Reason == "" {
			return fmt.Errorf("suite %s: skip %q gives no reason", s.Name, k.Pattern)
		}
		if _, err := regexp.Compile(k.Pattern); err != nil {
			return fmt.Errorf("suite %s: skip %q: %w", s.Name, k.Pattern, err)
		}
	}
	return nil
}

// SkipExpr is the one expression ginkgo's --skip takes: the skips' patterns
// as alternatives ("" when there are none).
func (s Suite) SkipExpr() string {
	ps := make([]string, len(s.Skips))
	for i, k := range s.Skips {
		ps[i] = "(?:" + k.Pattern + ")"
	}
	return strings.Join(ps, "|")
}

// Selected reports whether the spec named name (a JUnit test case's name:
// "[It] " and the spec's full text) is in the suite's focus, and when a
// skip leaves it out, that skip's reason.
func (s Suite) Selected(name string) (in bool, skipReason string) {
	return s.selector()(name)
}

// selector compiles the suite's expressions once, for the thousands of
// names of a report.
func (s Suite) selector() func(name string) (bool, string) {
	focus := regexp.MustCompile(s.Focus)
	skips := make([]*regexp.Regexp, len(s.Skips))
	for i, k := range s.Skips {
		skips[i] = regexp.MustCompile(k.Pattern)
	}
	return func(name string) (bool, string) {
		text := strings.TrimPrefix(name, "[It] ")
		if !focus.MatchString(text) {
			return false, ""
		}
		for i, re := range skips {
			if re.MatchString(text) {
				return true, s.Skips[i].Reason
			}
		}
		return true, ""
	}
}

// ParseSuites are the suites named in a comma-separated list, in order.
func ParseSuites(list string) ([]Suite, error) {
	var out []Suite
	for _, n := range strings.Split(list, ",") {
		s, ok := Suites[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("no suite %q; the suites are %s, %s", n, Netpol.Name, SigNetworkConformance.Name)
		}
		out = append(out, s)
	}
	return out, nil
}

// SkipReasons are the reasons of the suite's skips, in one line.
func (s Suite) SkipReasons() string {
	if len(s.Skips) == 0 {
		return "none skipped"
	}
	rs := make([]string, len(s.Skips))
	for i, k := range s.Skips {
		rs[i] = k.Reason
	}
	return strings.Join(rs, "; ")
}
