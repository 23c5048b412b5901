package conformance

import (
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// The parts of ginkgo v2's JUnit report (reporters.JUnitTestSuites) read here.
type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Cases []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
	} `xml:"error"`
}

// Spec states in a Result.
const (
	Passed  = "passed"
	Failed  = "failed"  // failed, timed out, panicked, aborted, interrupted
	Skipped = "skipped" // left out by one of the suite's Skips, for its reason
	// SkippedAtRun is a selected spec that skipped itself when it ran
	// (e2eskipper: "requires at least 2 nodes", "only supported for
	// providers ..."): something the lab lacks, which a report must show.
	SkippedAtRun = "skipped at run"
	// NotRun is a selected spec that the report does not show run (the
	// run was cut short).
	NotRun = "not run"
)

// Spec is one selected spec's outcome.
type Spec struct {
	Name    string // the spec's full text
	State   string // Passed, Failed, Skipped, SkippedAtRun
	Message string // the failure, or the reason it was skipped
	Time    time.Duration
}

// Result is one run of a suite.
type Result struct {
	Suite Suite
	// Family is the IP family of the lab it ran on: ipv4, ipv6 or dual.
	Family  string `json:",omitempty"`
	Started time.Time
	Wall    time.Duration
	Specs   []Spec // the selected specs, by name
	// Setup are failures outside any spec (the suite's BeforeSuite and
	// AfterSuite nodes): when one fails, no spec's result can be trusted.
	Setup []Spec
}

// Count is how many of the run's specs are in state.
func (r Result) Count(state string) int {
	n := 0
	for _, s := range r.Specs {
		if s.State == state {
			n++
		}
	}
	return n
}

// Summary is the run in a line: the counts, each skip's reason, the time.
func (r Result) Summary() string {
	skipped := fmt.Sprintf("%d skipped", r.Count(Skipped))
	if r.Count(Skipped) > 0 {
		skipped += " (" + r.Suite.SkipReasons() + ")"
	}
	return fmt.Sprintf("%d specs: %d passed, %d failed, %s, %d skipped at run, in %s", len(r.Specs), r.Count(Passed),
		r.Count(Failed)+r.Count(NotRun)+len(r.Setup), skipped, r.Count(SkippedAtRun), r.Wall.Round(time.Second))
}

// OK reports whether every selected spec passed or was left out by a skip
// with a reason, and the suite's setup did not fail.
func (r Result) OK() bool {
	if len(r.Setup) > 0 || len(r.Specs) == 0 {
		return false
	}
	for _, s := range r.Specs {
		if s.State != Passed && s.State != Skipped {
			return false
		}
	}
	return true
}

// ParseJUnit reads ginkgo's JUnit report of a run of suite s: the suite's
// selected specs (ginkgo reports every spec of e2e.test, most of them as
// skipped by the focus) with their outcome, and any failed setup node.
func ParseJUnit(r io.Reader, s Suite) (Result, error) {
	if err := s.Validate(); err != nil {
		return Result{}, err
	}
	var doc junitSuites
	if err := xml.NewDecoder(r).Decode(&doc); err != nil {
		return Result{}, fmt.Errorf("JUnit report: %w", err)
	}
	res := Result{Suite: s}
	selected := s.selector()
	seen := map[string]bool{}
	for _, ts := range doc.Suites {
		for _, c := range ts.Cases {
			st := caseState(c)
			if !strings.HasPrefix(c.Name, "[It] ") {
				// BeforeSuite, AfterSuite, ReportAfterSuite...
				if st == Failed {
					res.Setup = append(res.Setup, Spec{Name: c.Name, State: Failed, Message: caseMessage(c)})
				}
				continue
			}
			in, reason := selected(c.Name)
			if !in {
				continue
			}
			name := specText(c.Name)
			if seen[name] {
				return Result{}, fmt.Errorf("JUnit report: spec %q appears twice", name)
			}
			seen[name] = true
			sp := Spec{Name: name, State: st, Message: caseMessage(c), Time: time.Duration(c.Time * float64(time.Second))}
			switch {
			case reason != "" && st == Skipped:
				sp.Message = reason
			case reason != "":
				// ginkgo ran a spec the skip names: the selection is wrong.
				return Result{}, fmt.Errorf("JUnit report: %q ran (%s) although the suite skips it", name, st)
			case st == Skipped && strings.HasPrefix(sp.Message, "skipped - "):
				sp.State, sp.Message = SkippedAtRun, strings.TrimPrefix(sp.Message, "skipped - ")
			case st == Skipped:
				// In the focus, not skipped by us, yet not run: the run
				// stopped early (ginkgo's --fail-fast, an interrupt).
				sp.State = NotRun
			}
			res.Specs = append(res.Specs, sp)
		}
	}
	sort.Slice(res.Specs, func(i, j int) bool { return res.Specs[i].Name < res.Specs[j].Name })
	return res, nil
}

// specText is a test case's name as the spec's text: without ginkgo's
// "[It] " and without the list of the spec's labels that ginkgo appends
// (" [sig-network, Conformance]"), which Kubernetes' specs also carry as
// tags in their text.
func specText(name string) string {
	name = strings.TrimPrefix(name, "[It] ")
	i := strings.LastIndex(name, " [")
	if i < 0 || !strings.HasSuffix(name, "]") {
		return name
	}
	rest := name[:i]
	for _, l := range strings.Split(name[i+2:len(name)-1], ", ") {
		if !strings.Contains(rest, "["+l+"]") {
			return name
		}
	}
	return rest
}

func caseState(c junitCase) string {
	switch c.Status {
	case "passed":
		return Passed
	case "skipped", "pending":
		return Skipped
	}
	return Failed
}

func caseMessage(c junitCase) string {
	switch {
	case c.Failure != nil:
		return firstLine(c.Failure.Message)
	case c.Error != nil:
		return firstLine(c.Error.Message)
	case c.Skipped != nil:
		return c.Skipped.Message
	}
	return ""
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
