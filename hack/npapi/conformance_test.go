package npapi

import (
	"flag"
	"os"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/flags"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
	"sigs.k8s.io/yaml"
)

// skipTests names tests (by ShortName) to skip: they are reported as
// skipped, where the upstream test main, filtered with -test.run or
// -test.skip, reports a test that never ran as passed.
var (
	skipTests = flag.String("skip-tests", "", "comma-separated ShortNames of the tests to skip (reported as skipped)")
	onlyTests = flag.String("only-tests", "", "comma-separated ShortNames of the tests to run (the others are skipped); empty: all")
)

// TestConformanceProfiles runs network-policy-api's conformance tests
// (tests.ConformanceTests, unchanged) for the conformance profiles given,
// as the module's own conformance_profile_test.go does, with the tests of
// -skip-tests skipped, and writes the report to -report-output.
func TestConformanceProfiles(t *testing.T) {
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	clientSet, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme()); err != nil {
		t.Fatal(err)
	}
	implementation, err := suite.ParseImplementation(*flags.ImplementationOrganization, *flags.ImplementationProject,
		*flags.ImplementationURL, *flags.ImplementationVersion, *flags.ImplementationContact, *flags.ImplementationAdditionalInformation)
	if err != nil {
		t.Fatalf("implementation: %v", err)
	}
	var skip []string
	if *skipTests != "" {
		skip = strings.Split(*skipTests, ",")
	}
	if *onlyTests != "" {
		only := strings.Split(*onlyTests, ",")
		known := map[string]bool{}
		for _, ct := range tests.ConformanceTests {
			known[ct.ShortName] = true
			if !slices.Contains(only, ct.ShortName) {
				skip = append(skip, ct.ShortName)
			}
		}
		for _, name := range only {
			if !known[name] {
				t.Fatalf("-only-tests: no test %q", name)
			}
		}
	}
	cSuite, err := suite.NewConformanceProfileTestSuite(suite.ConformanceProfileOptions{
		Options: suite.Options{
			Client: c, ClientSet: clientSet, KubeConfig: *cfg,
			Debug:                      *flags.ShowDebug,
			CleanupBaseResources:       *flags.CleanupBaseResources,
			SupportedFeatures:          suite.ParseSupportedFeatures(*flags.SupportedFeatures),
			ExemptFeatures:             suite.ParseSupportedFeatures(*flags.ExemptFeatures),
			EnableAllSupportedFeatures: *flags.EnableAllSupportedFeatures,
			SkipTests:                  skip,
		},
		Implementation:      *implementation,
		ConformanceProfiles: suite.ParseConformanceProfiles(*flags.ConformanceProfiles),
	})
	if err != nil {
		t.Fatalf("suite: %v", err)
	}
	cSuite.Setup(t)
	cSuite.Run(t, tests.ConformanceTests)
	report, err := cSuite.Report()
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	raw, err := yaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	if *flags.ReportOutput != "" {
		if err := os.WriteFile(*flags.ReportOutput, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("conformance report:\n%s", raw)
}
