package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tern-net/tern/internal/conformance"
	"github.com/tern-net/tern/internal/lab"
)

// runConformance: tern-lab conformance [--suite S,...] [--runs N] [--procs P]
// [--out DIR] [--report FILE]: Kubernetes' e2e suites on the running lab.
func runConformance(ctx context.Context, c *lab.Client, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	suites := fs.String("suite", conformance.Netpol.Name+","+conformance.SigNetworkConformance.Name, "the suites to run, in order: "+strings.Join(suiteNames(), ", "))
	runs := fs.Int("runs", 1, "run each suite this many times in a row; every run must pass")
	procs := fs.Int("procs", 2, "ginkgo's parallel processes")
	outDir := fs.String("out", "conformance-out", "JUnit reports, ginkgo's output and artifacts")
	report := fs.String("report", "", "also write the summary (Markdown) to this file, e.g. CONFORMANCE.md")
	timeout := fs.Duration("timeout", time.Hour, "bound on each run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("conformance: unexpected %q", fs.Args())
	}
	if *runs < 1 || *procs < 1 {
		return errors.New("conformance: --runs and --procs must be at least 1")
	}
	var selected []conformance.Suite
	for _, n := range strings.Split(*suites, ",") {
		s, ok := conformance.Suites[strings.TrimSpace(n)]
		if !ok {
			return fmt.Errorf("conformance: no suite %q; the suites are %s", n, strings.Join(suiteNames(), ", "))
		}
		selected = append(selected, s)
	}
	st, err := c.State(ctx)
	if err != nil {
		return fmt.Errorf("conformance: no lab running (tern-lab up first): %w", err)
	}
	abs, err := filepath.Abs(*outDir)
	if err != nil {
		return err
	}
	o, rep, err := lab.Conformance(ctx, st, abs, *procs)
	if err != nil {
		return err
	}
	o.Timeout = *timeout
	rep.Command = "make conformance"
	for i := 1; i <= *runs; i++ {
		for _, s := range selected {
			fmt.Fprintf(out, "== %s, run %d of %d (%d processes), output in %s\n", s.Title, i, *runs, *procs, abs)
			ro := o
			ro.OutDir = filepath.Join(abs, fmt.Sprintf("run%d", i))
			res, err := conformance.Run(ctx, s, ro)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, res)
			fmt.Fprintf(out, "   %s\n", res.Summary())
			for _, sp := range append(res.Setup, res.Specs...) {
				if sp.State != conformance.Passed && sp.State != conformance.Skipped {
					fmt.Fprintf(out, "   %s: %s\n     %s\n", strings.ToUpper(sp.State), sp.Name, sp.Message)
				}
			}
		}
	}
	rep.Generated = time.Now()
	if *report != "" {
		f, err := os.Create(*report)
		if err != nil {
			return err
		}
		if err := rep.Markdown(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(out, "summary in %s\n", *report)
	}
	if !rep.OK() {
		return errors.New("conformance: not every selected spec passed")
	}
	return nil
}

func suiteNames() []string {
	return []string{conformance.Netpol.Name, conformance.SigNetworkConformance.Name}
}
