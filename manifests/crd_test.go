package manifests

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite "+cnpCRDFile+" from the module")

// The ClusterNetworkPolicy CRD is upstream's, standard channel, from the
// sigs.k8s.io/network-policy-api module at the version go.mod pins: never
// edited here. `go test ./manifests -run TestClusterNetworkPolicyCRD
// -update` takes it again after go.mod moves.
const (
	cnpCRDFile   = "01-crds-network-policy-api.yaml"
	cnpModule    = "sigs.k8s.io/network-policy-api"
	cnpModuleCRD = "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"
)

func cnpCRDHeader(version string) string {
	return "# ClusterNetworkPolicy (policy.networking.k8s.io), standard channel, as\n" +
		"# " + cnpModule + " " + version + " ships it in " + cnpModuleCRD + ",\n" +
		"# unchanged (go test ./manifests -run TestClusterNetworkPolicyCRD -update\n" +
		"# takes it again from the version go.mod names).\n"
}

// TestClusterNetworkPolicyCRD: the committed CRD is the module's, byte for
// byte after the header naming where it comes from.
func TestClusterNetworkPolicyCRD(t *testing.T) {
	out, err := exec.Command("go", "mod", "download", "-json", cnpModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", cnpModule, err)
	}
	var mod struct{ Version, Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s\n%s", cnpModule, err, mod.Error, out)
	}
	upstream, err := os.ReadFile(filepath.Join(mod.Dir, cnpModuleCRD))
	if err != nil {
		t.Fatal(err)
	}
	want := cnpCRDHeader(mod.Version) + string(upstream)
	if *update {
		if err := os.WriteFile(cnpCRDFile, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(cnpCRDFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is not %s %s's %s (go test ./manifests -run TestClusterNetworkPolicyCRD -update)", cnpCRDFile, cnpModule, mod.Version, cnpModuleCRD)
	}
	if !strings.Contains(want, "policy.networking.k8s.io/channel: standard") {
		t.Errorf("%s: not the standard channel", cnpCRDFile)
	}
}
