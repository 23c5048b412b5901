package e2e

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
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
	// make test runs the NetworkPolicy suite (about 8 minutes on the
	// dual-stack lab); with sig-network's Conformance specs too (about 5
	// more) make test took 31 minutes, over its 30. make conformance runs
	// both, on a lab of each family.
	suites := []conformance.Suite{conformance.Netpol}
	if s := os.Getenv("TERN_CONFORMANCE_SUITES"); s != "" {
		var err error
		if suites, err = conformance.ParseSuites(s); err != nil {
			t.Fatalf("TERN_CONFORMANCE_SUITES: %v", err)
		}
	}
	runs := envCount(t, "TERN_CONFORMANCE_RUNS", 1)
	reportPath := os.Getenv("TERN_CONFORMANCE_REPORT")
	out, outRoot := t.TempDir(), ""
	if o := os.Getenv("TERN_CONFORMANCE_OUT"); o != "" {
		// Kept: the JUnit files, ginkgo's output, the suite's artifacts,
		// the report's runs (report.json), in a directory per IP family:
		// the report takes in the runs of the other families found there
		// (make conformance runs a lab of each, one after the other).
		outRoot, out = o, filepath.Join(o, ipFamily)
		if err := os.RemoveAll(out); err != nil {
			t.Fatal(err)
		}
	}
	// Each run is bounded by ginkgo's --timeout, all of them by the test
	// binary's deadline, less what ginkgo needs to stop and write its
	// report (ctx(t) is minutes, for one call to the lab).
	runCtx, cancel := context.Background(), func() {}
	if d, ok := t.Deadline(); ok {
		runCtx, cancel = context.WithDeadline(runCtx, d.Add(-4*time.Minute))
	}
	defer cancel()
	o, rep, err := lab.Conformance(runCtx, state(t), out, 2)
	if err != nil {
		t.Fatal(err)
	}
	o.Timeout = 40 * time.Minute
	// What wrote the report, for its reader to run again (make conformance
	// by default; a run of make e2e that writes one says so).
	rep.Command = cmp.Or(os.Getenv("TERN_CONFORMANCE_COMMAND"), "make conformance")
	runErr := conformance.RunAll(runCtx, suites, runs, o, &rep, func(line string) { t.Log(line) })
	if reportPath != "" && len(rep.Runs) > 0 {
		rep.Generated = time.Now()
		if generated != "" {
			rep.Notes = append(rep.Notes, "Besides the suites, on the "+conformance.FamilyTitle(ipFamily)+" lab: "+generated+", each checked against a reference model of the API (internal/netpolgen).")
		}
		if npapiSummary != "" {
			rep.Notes = append(rep.Notes, "On the "+conformance.FamilyTitle(ipFamily)+" lab: "+npapiSummary)
		}
		all := rep
		if outRoot != "" {
			if err := rep.WriteJSON(filepath.Join(out, "report.json")); err != nil {
				t.Error(err)
			}
			others, _ := filepath.Glob(filepath.Join(outRoot, "*", "report.json"))
			for _, p := range others {
				if filepath.Dir(p) == out {
					continue
				}
				o, err := conformance.ReadJSON(p)
				if err != nil {
					t.Error(err)
					continue
				}
				all = all.Merge(o)
				t.Logf("the report takes in the runs in %s", p)
			}
		}
		if err := all.Write(reportPath); err != nil {
			t.Error(err)
		}
		t.Logf("report in %s, JUnit and logs in %s", reportPath, out)
	}
	if runErr != nil {
		t.Fatalf("%v\n%s", runErr, logTails(out))
	}
	for _, r := range rep.Runs {
		if !r.OK() {
			t.Errorf("%s: not every spec passed (see above); ginkgo's output is in %s\n%s", r.Suite.Title, out, logTails(out))
			break
		}
	}
}

// logTails are the ends of ginkgo's outputs under dir, where its summary
// of failures is.
func logTails(dir string) string {
	logs, _ := filepath.Glob(filepath.Join(dir, "run*", "ginkgo-*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			b.WriteString(err.Error() + "\n")
			continue
		}
		const n = 6000
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "== %s (end)\n%s\n", l, data)
	}
	return b.String()
}
