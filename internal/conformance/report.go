package conformance

import (
	"fmt"
	"io"
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

	b.WriteString("\n## Runs\n\n| Suite | Run | Started (UTC) | Specs | Passed | Failed | Skipped (reason below) | Skipped at run | Wall time |\n|---|---|---|---|---|---|---|---|---|\n")
	runNo := map[string]int{}
	for _, x := range r.Runs {
		runNo[x.Suite.Name]++
		fmt.Fprintf(&b, "| %s | %d | %s | %d | %d | %d | %d | %d | %s |\n", cell(x.Suite.Title), runNo[x.Suite.Name],
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
		runNo[x.Suite.Name]++
		for _, s := range append(append([]Spec{}, x.Setup...), x.Specs...) {
			if s.State == Failed || s.State == NotRun || s.State == SkippedAtRun {
				fmt.Fprintf(&fails, "| %s | %d | %s | %s |\n", cell(x.Suite.Title), runNo[x.Suite.Name], cell(s.Name), cell(s.Message))
			}
		}
	}
	if fails.Len() > 0 {
		b.WriteString("\n## Failures (and specs that skipped themselves)\n\n| Suite | Run | Spec | Message |\n|---|---|---|---|\n")
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
