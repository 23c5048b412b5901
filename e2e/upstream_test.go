package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/conformance"
	"github.com/tern-net/tern/internal/lab"
)

// TestUpstreamSuites runs Kubernetes' own e2e suites (e2e.test at the
// control plane's version, with the ginkgo CLI it pins) on the lab:
// `[sig-network] Netpol` in full but for the SCTP connectivity specs, which
// need SCTP sockets this machine's kernel lacks, and sig-network's
// `[Conformance]` specs. Every other spec must pass.
//
// `make conformance` sets TERN_CONFORMANCE_REPORT (where CONFORMANCE.md
// goes), TERN_CONFORMANCE_OUT (JUnit and logs), TERN_CONFORMANCE_SUITES
// (default: both) and TERN_CONFORMANCE_RUNS (default 1): every run of every
// suite must pass, and the report is written whether they do or not.
func TestUpstreamSuites(t *testing.T) {
	suites := []conformance.Suite{conformance.Netpol, conformance.SigNetworkConformance}
	if s := os.Getenv("TERN_CONFORMANCE_SUITES"); s != "" {
		suites = nil
		for _, n := range strings.Split(s, ",") {
			su, ok := conformance.Suites[n]
			if !ok {
				t.Fatalf("TERN_CONFORMANCE_SUITES: no suite %q", n)
			}
			suites = append(suites, su)
		}
	}
	runs := envCount(t, "TERN_CONFORMANCE_RUNS", 1)
	reportPath := os.Getenv("TERN_CONFORMANCE_REPORT")
	out := t.TempDir()
	if o := os.Getenv("TERN_CONFORMANCE_OUT"); o != "" {
		// Kept: the JUnit files, ginkgo's output, the suite's artifacts.
		out = o
		if err := os.RemoveAll(out); err != nil {
			t.Fatal(err)
		}
	}
	o, rep, err := lab.Conformance(ctx(t), state(t), out, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Each run is bounded by ginkgo's --timeout, all of them by the test
	// binary's deadline (ctx(t) is minutes: for one lab call).
	o.Timeout = 40 * time.Minute
	runCtx, cancel := context.Background(), func() {}
	if d, ok := t.Deadline(); ok {
		runCtx, cancel = context.WithDeadline(runCtx, d.Add(-time.Minute))
	}
	defer cancel()
	rep.Command = "make conformance"
	for i := 1; i <= runs; i++ {
		for _, s := range suites {
			ro := o
			ro.OutDir = out + "/run" + strconv.Itoa(i)
			res, err := conformance.Run(runCtx, s, ro)
			if err != nil {
				t.Fatalf("%s, run %d: %v\n%s", s.Title, i, err, logTail(ro.OutDir, s))
			}
			rep.Runs = append(rep.Runs, res)
			t.Logf("%s, run %d: %s", s.Title, i, res.Summary())
			if !res.OK() {
				for _, sp := range append(res.Setup, res.Specs...) {
					if sp.State != conformance.Passed && sp.State != conformance.Skipped {
						t.Errorf("%s, run %d: %s: %s\n    %s", s.Title, i, sp.State, sp.Name, sp.Message)
					}
				}
				t.Logf("ginkgo's output: %s\n%s", ro.OutDir, logTail(ro.OutDir, s))
			}
		}
	}
	if reportPath != "" {
		rep.Generated = time.Now()
		if generated != "" {
			rep.Notes = append(rep.Notes, "Besides the suites: "+generated+", each checked against a reference model of the API (internal/netpolgen).")
		}
		f, err := os.Create(reportPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := rep.Markdown(f); err != nil {
			t.Fatal(err)
		}
		t.Logf("report in %s, JUnit and logs in %s", reportPath, out)
	}
}

// logTail is the end of ginkgo's output of a run, where its summary of
// failures is.
func logTail(dir string, s conformance.Suite) string {
	b, err := os.ReadFile(dir + "/ginkgo-" + s.Name + ".log")
	if err != nil {
		return err.Error()
	}
	const n = 12000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
