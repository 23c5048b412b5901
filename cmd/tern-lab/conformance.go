package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
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
	selected, err := conformance.ParseSuites(*suites)
	if err != nil {
		return fmt.Errorf("conformance: --suite: %w", err)
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
	rep.Command = "tern-lab conformance " + strings.Join(args, " ")
	runErr := conformance.RunAll(ctx, selected, *runs, o, &rep, func(line string) { fmt.Fprintln(out, line) })
	rep.Generated = time.Now()
	if *report != "" && len(rep.Runs) > 0 {
		if err := rep.Write(*report); err != nil {
			return err
		}
		fmt.Fprintf(out, "summary in %s\n", *report)
	}
	if runErr != nil {
		return runErr
	}
	if !rep.OK() {
		return errors.New("conformance: not every selected spec passed")
	}
	return nil
}

func suiteNames() []string {
	return []string{conformance.Netpol.Name, conformance.SigNetworkConformance.Name}
}
