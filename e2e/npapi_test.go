package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The network-policy-api conformance tests (profile ClusterNetworkPolicy)
// that need SCTP sockets, which this machine's kernel lacks: the SCTP ones,
// and those whose cases poke TCP, UDP and SCTP servers in one step (gress,
// port ranges, the CIDR peers).
var npapiSCTPTests = []string{
	"CNPAdminTierEgressSCTP", "CNPAdminTierIngressSCTP", "CNPAdminTierGress", "CNPAdminTierPortRange", "CNPAdminTierEgressInlineCIDRPeers",
	"CNPBaselineTierEgressSCTP", "CNPBaselineTierIngressSCTP", "CNPBaselineTierGress", "CNPBaselineTierPortRange", "CNPBaselineTierEgressInlineCIDRPeers",
}

// npapiSubset is what make test runs of the suite: the three tiers
// together (Admin Pass to NetworkPolicy, Baseline under it); the whole
// suite takes 9 minutes, past make test's 30.
const npapiSubset = "CNPAdminTierIntegration"

// TestClusterNetworkPolicyConformance runs sigs.k8s.io/network-policy-api's
// conformance suite (profile ClusterNetworkPolicy, standard features;
// hack/npapi.sh builds it) against the lab: the tests TERN_NPAPI_TESTS
// names (comma-separated; "all": every one), by default a subset, and never
// those that need SCTP. TERN_NPAPI_REPORT is where its report goes.
func TestClusterNetworkPolicyConformance(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(root, "hack/npapi.sh"), "bin").Output()
	if err != nil {
		t.Fatalf("hack/npapi.sh bin: %v", err)
	}
	bin := strings.TrimSpace(string(out))
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the network-policy-api conformance suite is not built (make npapi-suite): %v", err)
	}
	report := cmp.Or(os.Getenv("TERN_NPAPI_REPORT"), filepath.Join(t.TempDir(), "report.yaml"))
	only := cmp.Or(os.Getenv("TERN_NPAPI_TESTS"), npapiSubset)
	if only == "all" {
		only = ""
	}
	version := "unknown"
	if v, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(v))
	}
	args := []string{"-test.v", "-test.timeout", "50m", "-test.run", "^TestConformanceProfiles$",
		"-conformance-profiles", "ClusterNetworkPolicy", "-supported-features", "ClusterNetworkPolicy",
		"-organization", "tern-net", "-project", "tern", "-url", "https://github.com/tern-net/tern",
		"-version", version, "-contact", "https://github.com/tern-net/tern/issues",
		"-additional-info", "tern-lab: 4 real nodes (kubelet, containerd, kube-proxy) in 2 racks behind BIRD and FRR; make conformance",
		"-skip-tests", strings.Join(npapiSCTPTests, ","), "-report-output", report}
	if only != "" {
		args = append(args, "-only-tests", only)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+tl.State(t).Kubeconfig)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	t0 := time.Now()
	err = cmd.Run()
	text := buf.String()
	if err != nil {
		t.Fatalf("the suite failed after %s: %v\n%s", time.Since(t0).Round(time.Second), err, tail(text, 20000))
	}
	if !strings.Contains(text, "--- PASS: TestConformanceProfiles") {
		t.Fatalf("the suite passed nothing:\n%s", tail(text, 20000))
	}
	rep, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	// Each test's outcome and time, as the suite's -test.v printed them.
	var results []string
	for _, l := range strings.Split(text, "\n") {
		if f := strings.TrimSpace(l); strings.HasPrefix(f, "--- ") && strings.Count(f, "/") == 1 {
			results = append(results, f)
		}
	}
	t.Logf("network-policy-api conformance passed in %s (tests %q, SCTP ones skipped):\n%s\nreport in %s:\n%s",
		time.Since(t0).Round(time.Second), cmp.Or(only, "all"), strings.Join(results, "\n"), report, rep)
	var r struct {
		Version  string `json:"networkPolicyBundleVersion"`
		Profiles []struct {
			Name     string `json:"name"`
			Standard struct {
				Statistics struct{ Passed, Failed, Skipped int } `json:"statistics"`
			} `json:"standard"`
		} `json:"profiles"`
	}
	if err := yaml.Unmarshal(rep, &r); err != nil || len(r.Profiles) == 0 {
		t.Fatalf("the suite's report: %v\n%s", err, rep)
	}
	st := r.Profiles[0].Standard.Statistics
	if st.Failed != 0 || st.Passed == 0 {
		t.Fatalf("the suite's report counts %d passed and %d failed:\n%s", st.Passed, st.Failed, rep)
	}
	if os.Getenv("TERN_NPAPI_REPORT") != "" {
		npapiSummary = fmt.Sprintf("network-policy-api %s conformance suite, profile %s, standard features (e2e/npapi_test.go): %d passed, %d failed, %d skipped "+
			"(the 10 that need SCTP sockets: %s), in %s; its report is %s.", r.Version, r.Profiles[0].Name, st.Passed, st.Failed, st.Skipped,
			strings.Join(npapiSCTPTests, ", "), time.Since(t0).Round(time.Second), filepath.Join("conformance", filepath.Base(report)))
	}
}

// npapiSummary is what TestClusterNetworkPolicyConformance passed, for the
// conformance report (TestUpstreamSuites runs after it).
var npapiSummary string

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
