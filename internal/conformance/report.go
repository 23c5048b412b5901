package conformance

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Report is what CONFORMANCE.md shows: the versions and the lab that ran
// the suites, then every run.
type Report struct {
	Generated time.Time
	Command   string      // how to reproduce it: "make conformance"
	Versions  [][2]string // name, version; in order
	Lab       string      // the topology, in words
	Notes     []string    // findings worth a reader's time (flakes and their causes)
	Runs      []Result
}

// OK reports whether every run passed.
func (r Report) OK() bool {
	if len(r.Runs) == 0 {
		return false
	}
	for _, x := range r.Runs {
		if !x.OK() {
			return false
		}
	}
	return true
}

// Markdown writes the report.
func (r Report) Markdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# Conformance: Kubernetes' own network tests on tern\n\n")
	fmt.Fprintf(&b, "Written by `%s` on %s. Do not edit: run it again.\n\n", r.Command, r.Generated.UTC().Format("2006-01-02 15:04 MST"))
	verdict := "**Every selected spec passed in every run.**"
	if !r.OK() {
		verdict = "**Not every selected spec passed: see the failures below.**"
	}
	b.WriteString(verdict + "\n\n")

	b.WriteString("## Versions\n\n| Component | Version |\n|---|---|\n")
	for _, v := range r.Versions {
		fmt.Fprintf(&b, "| %s | %s |\n", v[0], cell(v[1]))
	}
	if r.Lab != "" {
		fmt.Fprintf(&b, "\n## The lab\n\n%s\n", r.Lab)
	}

	if fams := r.families(); len(fams) > 0 {
		b.WriteString("\n## By IP family\n\n| Suite |")
		for _, f := range fams {
			fmt.Fprintf(&b, " %s |", FamilyTitle(f))
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(fams)) + "\n")
		for _, s := range r.suites() {
			fmt.Fprintf(&b, "| %s |", cell(s.Title))
			for _, f := range fams {
				fmt.Fprintf(&b, " %s |", r.summary(s.Name, f))
			}
			b.WriteString("\n")
		}
	}

	b.WriteString("\n## Runs\n\n| Suite | Family | Run | Started (UTC) | Specs | Passed | Failed | Skipped (reason below) | Skipped at run | Wall time |\n|---|---|---|---|---|---|---|---|---|---|\n")
	runNo := map[string]int{}
	for _, x := range r.Runs {
		runNo[x.Suite.Name+"/"+x.Family]++
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %d | %d | %d | %d | %d | %s |\n", cell(x.Suite.Title), FamilyTitle(x.Family), runNo[x.Suite.Name+"/"+x.Family],
			x.Started.UTC().Format("2006-01-02 15:04"), len(x.Specs), x.Count(Passed),
			x.Count(Failed)+x.Count(NotRun)+len(x.Setup), x.Count(Skipped), x.Count(SkippedAtRun), minSec(x.Wall))
	}

	b.WriteString("\n## Specs left out, and why\n\n")
	skipped := map[string]string{}
	var order []string
	for _, x := range r.Runs {
		for _, s := range x.Specs {
			if s.State != Skipped && s.State != SkippedAtRun {
				continue
			}
			if _, ok := skipped[s.Name]; !ok {
				order = append(order, s.Name)
			}
			reason := s.Message
			if s.State == SkippedAtRun {
				reason = "skipped itself when run: " + reason
			}
			skipped[s.Name] = reason
		}
	}
	if len(order) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| Spec | Reason |\n|---|---|\n")
		for _, n := range order {
			fmt.Fprintf(&b, "| %s | %s |\n", cell(n), cell(skipped[n]))
		}
	}

	var fails strings.Builder
	runNo = map[string]int{}
	for _, x := range r.Runs {
		runNo[x.Suite.Name+"/"+x.Family]++
		for _, s := range append(append([]Spec{}, x.Setup...), x.Specs...) {
			if s.State == Failed || s.State == NotRun || s.State == SkippedAtRun {
				fmt.Fprintf(&fails, "| %s | %s | %d | %s | %s |\n", cell(x.Suite.Title), FamilyTitle(x.Family), runNo[x.Suite.Name+"/"+x.Family], cell(s.Name), cell(s.Message))
			}
		}
	}
	if fails.Len() > 0 {
		b.WriteString("\n## Failures (and specs that skipped themselves)\n\n| Suite | Family | Run | Spec | Message |\n|---|---|---|---|---|\n")
		b.WriteString(fails.String())
	}

	if len(r.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}

	// The specs of each suite's last run, so that a reader sees exactly
	// what "the suite" was.
	last := map[string]Result{}
	var names []string
	for _, x := range r.Runs {
		if _, ok := last[x.Suite.Name]; !ok {
			names = append(names, x.Suite.Name)
		}
		last[x.Suite.Name] = x
	}
	for _, n := range names {
		x := last[n]
		fmt.Fprintf(&b, "\n## %s: the specs (last run)\n\n| Spec | Result | Time |\n|---|---|---|\n", x.Suite.Title)
		for _, s := range x.Specs {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", cell(s.Name), s.State, s.Time.Round(100*time.Millisecond))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FamilyTitle names a lab's IP family for a reader.
func FamilyTitle(f string) string {
	switch f {
	case "ipv6":
		return "IPv6-only"
	case "dual":
		return "dual-stack"
	case "ipv4", "":
		return "IPv4"
	}
	return f
}

// families are the IP families of the runs, in the order they first ran.
func (r Report) families() []string {
	var out []string
	for _, x := range r.Runs {
		if !slices.Contains(out, x.Family) {
			out = append(out, x.Family)
		}
	}
	return out
}

// suites are the suites of the runs, in the order they first ran.
func (r Report) suites() []Suite {
	var out []Suite
	for _, x := range r.Runs {
		if !slices.ContainsFunc(out, func(s Suite) bool { return s.Name == x.Suite.Name }) {
			out = append(out, x.Suite)
		}
	}
	return out
}

// summary is one cell of the table by family: how suite's runs on a lab of
// family went.
func (r Report) summary(suite, family string) string {
	runs, failed, passed, specs, skipped := 0, 0, 0, 0, 0
	for _, x := range r.Runs {
		if x.Suite.Name != suite || x.Family != family {
			continue
		}
		runs++
		if !x.OK() {
			failed++
		}
		passed, specs, skipped = x.Count(Passed), len(x.Specs), x.Count(Skipped)
	}
	switch {
	case runs == 0:
		return "not run"
	case failed > 0:
		return fmt.Sprintf("**failed in %d of %d runs**", failed, runs)
	}
	s := fmt.Sprintf("%d of %d passed", passed, specs-skipped)
	if skipped > 0 {
		s += fmt.Sprintf(" (%d skipped)", skipped)
	}
	if runs > 1 {
		s += fmt.Sprintf(", each of %d runs", runs)
	}
	return s
}

// cell makes s safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}

func minSec(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Minute {
		return d.String()
	}
	return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
}
