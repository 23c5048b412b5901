package cniplugin_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tern-net/tern/internal/nodetest"
)

// cnitoolVersion is the upstream cnitool the test drives tern with.
const cnitoolVersion = "v1.3.1"

// cnitool returns cnitool from PATH (make tools puts it in bin/), or installs it
// from the Go module proxy into a temporary directory.
func cnitool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@"+cnitoolVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install cnitool %s: %v\n%s", cnitoolVersion, err, out)
	}
	return filepath.Join(dir, "cnitool")
}

func TestCnitoolAddCheckDel(t *testing.T) {
	n := nodetest.NewNode(t, "10.244.10.0/24")
	tool := cnitool(t)
	confDir := t.TempDir()
	conflist := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ternnet","plugins":[{"type":"tern","agentSocket":%q}]}`, n.Socket())
	if err := os.WriteFile(filepath.Join(confDir, "10-tern.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	podNS := n.NewPodNS()
	run := func(verb string) (string, error) {
		cmd := n.Command(tool, verb, "ternnet", podNS.Path())
		cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+n.BinDir,
			"CNI_ARGS=K8S_POD_NAMESPACE=tools;K8S_POD_NAME=cnitool", "CNI_IFNAME=eth0")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("add")
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	if !strings.HasPrefix(res.IPs[0].Address.String(), "10.244.10.") || res.IPs[0].Address.Mask.String() != "ffffffff" {
		t.Fatalf("address %s, want a /32 in 10.244.10.0/24", res.IPs[0].Address.String())
	}
	if out, err := run("check"); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	if out, err := run("status"); err != nil {
		t.Fatalf("cnitool status: %v\n%s", err, out)
	}
	if out, err := run("del"); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if out, err := run("check"); err == nil {
		t.Fatalf("cnitool check after del passed:\n%s", out)
	}
	if out, err := run("del"); err != nil {
		t.Fatalf("second cnitool del: %v\n%s", err, out)
	}
}
