package conformance

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A report in the shape ginkgo v2.32's JUnit reporter writes for e2e.test:
// every spec of the binary, those outside the focus as plain "skipped".
const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="4" errors="0" failures="1" time="93.2">
  <testsuite name="Kubernetes e2e suite" package="/" tests="7" disabled="0" skipped="4" errors="0" failures="1" time="93.2">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.1"></testcase>
    <testcase name="[It] [sig-network] Netpol NetworkPolicy between server and client should support a &#39;default-deny-ingress&#39; policy [Feature:NetworkPolicy] [sig-network, Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="passed" time="41.5"></testcase>
    <testcase name="[It] [sig-network] Netpol [Feature:SCTPConnectivity] should support a policy with SCTP" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-network] Netpol NetworkPolicy between server and client should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="failed" time="50.6"><failure message="Validation of x/a -&gt; y/b FAILED&#xA;more" type="failed">stack</failure></testcase>
    <testcase name="[It] [sig-network] Netpol API should support creating NetworkPolicy API operations" classname="Kubernetes e2e suite" status="skipped" time="0.2"><skipped message="skipped - Requires at least 2 nodes"></skipped></testcase>
    <testcase name="[It] [sig-storage] CSI Volumes should do something" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[SynchronizedAfterSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1"></testcase>
  </testsuite>
</testsuites>`

func TestParseJUnit(t *testing.T) {
	res, err := ParseJUnit(strings.NewReader(report), Netpol)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"[sig-network] Netpol API should support creating NetworkPolicy API operations": SkippedAtRun,
		"[sig-network] Netpol NetworkPolicy between server and client should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy]": Failed,
		"[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]":                                                                                Passed,
		"[sig-network] Netpol [Feature:SCTPConnectivity] should support a policy with SCTP":                                                                                                                                  Skipped,
	}
	if len(res.Specs) != len(want) {
		t.Fatalf("got %d specs, want %d (the storage spec is outside the focus): %+v", len(res.Specs), len(want), res.Specs)
	}
	for _, s := range res.Specs {
		if want[s.Name] != s.State {
			t.Errorf("%q: state %q, want %q", s.Name, s.State, want[s.Name])
		}
		switch s.State {
		case Skipped:
			if s.Message != skipSCTP.Reason {
				t.Errorf("skipped spec's message %q, want the skip's reason", s.Message)
			}
		case SkippedAtRun:
			if s.Message != "Requires at least 2 nodes" {
				t.Errorf("skipped-at-run message %q", s.Message)
			}
		case Failed:
			if s.Message != "Validation of x/a -> y/b FAILED" {
				t.Errorf("failure message %q, want its first line", s.Message)
			}
		case Passed:
			if s.Time != 41500*time.Millisecond {
				t.Errorf("time %s", s.Time)
			}
		}
	}
	if res.OK() {
		t.Error("a run with a failed spec is OK")
	}
}

func TestSpecText(t *testing.T) {
	for in, want := range map[string]string{
		"[It] [sig-network] Services should x [Conformance] [sig-network, Conformance]": "[sig-network] Services should x [Conformance]",
		"[It] [sig-network] Netpol API should y [sig-network]":                          "[sig-network] Netpol API should y",
		// A bracket at the end that is not the label list stays.
		"[It] [sig-network] Netpol should z [Feature:NetworkPolicy]": "[sig-network] Netpol should z [Feature:NetworkPolicy]",
		"[It] [sig-network] a [b]":                                   "[sig-network] a [b]",
	} {
		if got := specText(in); got != want {
			t.Errorf("specText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseJUnitRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"not XML":  "no",
		"skip ran": strings.Replace(report, `status="skipped" time="0"><skipped message="skipped"></skipped></testcase>`, `status="passed" time="0"></testcase>`, 1),
		"twice":    strings.Replace(report, "</testsuite>", `<testcase name="[It] [sig-network] Netpol API should support creating NetworkPolicy API operations" status="passed"></testcase></testsuite>`, 1),
	} {
		if _, err := ParseJUnit(strings.NewReader(doc), Netpol); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestSetupFailureFailsTheRun(t *testing.T) {
	doc := strings.Replace(report, `name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.1"></testcase>`,
		`name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="failed" time="1.1"><failure message="nodes not ready" type="failed"></failure></testcase>`, 1)
	doc = strings.Replace(doc, `status="failed" time="50.6"><failure message="Validation of x/a -&gt; y/b FAILED&#xA;more" type="failed">stack</failure>`, `status="passed" time="50.6">`, 1)
	doc = strings.Replace(doc, `status="skipped" time="0.2"><skipped message="skipped - Requires at least 2 nodes"></skipped>`, `status="passed" time="0.2">`, 1)
	res, err := ParseJUnit(strings.NewReader(doc), Netpol)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Setup) != 1 || res.OK() {
		t.Fatalf("setup %+v, OK %v: a failed BeforeSuite must fail the run", res.Setup, res.OK())
	}
	res.Setup = nil
	if !res.OK() {
		t.Fatalf("passed and SCTP-skipped specs only, yet not OK: %+v", res.Specs)
	}
}

func TestSuites(t *testing.T) {
	for _, s := range Suites {
		if err := s.Validate(); err != nil {
			t.Error(err)
		}
	}
	if err := (Suite{Name: "x", Focus: "a", Skips: []Skip{{Pattern: "b"}}}).Validate(); err == nil {
		t.Error("a skip without a reason is valid")
	}
	if err := (Suite{Name: "x", Focus: "("}).Validate(); err == nil {
		t.Error("a focus that does not compile is valid")
	}
	in, reason := Netpol.Selected("[It] [sig-network] Netpol [Feature:SCTPConnectivity] should x")
	if !in || reason == "" {
		t.Errorf("SCTP connectivity: in %v, reason %q", in, reason)
	}
	// The specs that check an SCTP policy does not open TCP run.
	if in, reason := Netpol.Selected("[It] [sig-network] Netpol NetworkPolicy between server and client should not allow access by TCP when a policy specifies only SCTP [Feature:NetworkPolicy]"); !in || reason != "" {
		t.Errorf("SCTP-only policy over TCP: in %v, reason %q", in, reason)
	}
	if in, _ := Netpol.Selected("[It] [sig-network] NetpolX"); in {
		t.Error("the focus matches a longer word")
	}
}

func TestCommand(t *testing.T) {
	argv, err := Command(Netpol, Options{E2ETest: "/b/e2e.test", Ginkgo: "/b/ginkgo", Kubeconfig: "/k", OutDir: "/o", NetNS: "/run/netns/x-cp", Procs: 2})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(argv, " ")
	for _, w := range []string{"nsenter --net=/run/netns/x-cp -- /b/ginkgo ", "--procs=2", `--skip=(?:\[Feature:SCTPConnectivity\])`,
		"--junit-report=junit-netpol.xml", " /b/e2e.test -- --kubeconfig=/k", "--provider=skeleton"} {
		if !strings.Contains(got, w) {
			t.Errorf("command %q lacks %q", got, w)
		}
	}
	if _, err := Command(Netpol, Options{E2ETest: "/b/e2e.test"}); err == nil {
		t.Error("no error without ginkgo, kubeconfig and output")
	}
}

func TestMarkdown(t *testing.T) {
	res, err := ParseJUnit(strings.NewReader(report), Netpol)
	if err != nil {
		t.Fatal(err)
	}
	res.Wall = 93 * time.Second
	var b bytes.Buffer
	r := Report{Command: "make conformance", Versions: [][2]string{{"Kubernetes", "v1.37.2"}}, Runs: []Result{res}}
	if err := r.Markdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, w := range []string{"| Kubernetes | v1.37.2 |", "| [sig-network] Netpol | IPv4 | 1 |", "| 4 | 1 | 1 | 1 | 1 | 1 min 33 s |",
		skipSCTP.Reason, "skipped itself when run: Requires at least 2 nodes", "## Failures", "Not every selected spec passed"} {
		if !strings.Contains(md, w) {
			t.Errorf("report lacks %q:\n%s", w, md)
		}
	}
}

func TestParseSuites(t *testing.T) {
	got, err := ParseSuites("netpol, sig-network-conformance")
	if err != nil || len(got) != 2 || got[0].Name != Netpol.Name || got[1].Name != SigNetworkConformance.Name {
		t.Fatalf("ParseSuites: %v, %v", got, err)
	}
	if _, err := ParseSuites("netpol,nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("an unknown suite: %v", err)
	}
}

// The reports of a dual-stack and an IPv6-only lab, saved and read back,
// make one report with a column per family.
func TestMergeFamilies(t *testing.T) {
	failed, err := ParseJUnit(strings.NewReader(report), Netpol)
	if err != nil {
		t.Fatal(err)
	}
	passed := failed
	passed.Specs = slices.DeleteFunc(slices.Clone(failed.Specs), func(s Spec) bool { return s.State == Failed || s.State == SkippedAtRun })
	passed.Setup = nil
	dual := Report{Command: "make conformance", Lab: "dual lab", Runs: []Result{passed, passed}}
	for i := range dual.Runs {
		dual.Runs[i].Family = "dual"
	}
	v6 := Report{Lab: "IPv6-only lab", Notes: []string{"v6 note"}, Runs: []Result{failed}}
	v6.Runs[0].Family = "ipv6"
	path := filepath.Join(t.TempDir(), "report.json")
	if err := v6.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := dual.Merge(back).Markdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, w := range []string{"## By IP family", "| Suite | dual-stack | IPv6-only |",
		"| [sig-network] Netpol | 1 of 1 passed (1 skipped), each of 2 runs | **failed in 1 of 1 runs** |",
		"| [sig-network] Netpol | dual-stack | 2 |", "| [sig-network] Netpol | IPv6-only | 1 |", "dual lab\n\nIPv6-only lab", "- v6 note"} {
		if !strings.Contains(md, w) {
			t.Errorf("merged report lacks %q:\n%s", w, md)
		}
	}
	if _, err := ReadJSON(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("no error reading a missing report")
	}
}
