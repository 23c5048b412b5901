package cniplugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tern-net/tern/internal/nodetest"
)

// execPlugin runs the built plugin binary as a runtime does and returns its
// stdout, stderr and exit code.
func execPlugin(t *testing.T, n *nodetest.Node, env map[string]string, stdin string) (string, string, int) {
	t.Helper()
	cmd := n.Command(filepath.Join(n.BinDir, "tern"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_PATH=" + n.BinDir}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestErrorsFollowTheSpec(t *testing.T) {
	n := nodetest.NewNode(t, "10.244.8.0/30") // two usable addresses
	podNS := n.NewPodNS()
	conf := func(extra string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tern","type":"tern","agentSocket":%q%s}`, n.Socket(), extra)
	}
	add := func(id string) map[string]string {
		return map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": id, "CNI_NETNS": podNS.Path(), "CNI_IFNAME": "eth0",
			"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + id}
	}
	with := func(env map[string]string, k, v string) map[string]string {
		env[k] = v
		return env
	}
	cases := []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
		msg   string
	}{
		{"not JSON", add("c1"), `{"cniVersion":`, types.ErrDecodingFailure, "unmarshal"},
		{"unsupported version", add("c1"), `{"cniVersion":"0.3.1","name":"tern","type":"tern"}`, types.ErrIncompatibleCNIVersion, "0.3.1"},
		{"ipam key", add("c1"), conf(`,"ipam":{"type":"host-local"}`), types.ErrInvalidNetworkConfig, `"ipam"`},
		{"mtu out of range", add("c1"), conf(`,"mtu":50`), types.ErrInvalidNetworkConfig, `"mtu" 50`},
		{"relative socket", add("c1"), `{"cniVersion":"1.0.0","name":"tern","type":"tern","agentSocket":"cni.sock"}`, types.ErrInvalidNetworkConfig, "absolute"},
		{"no name", add("c1"), `{"cniVersion":"1.0.0","type":"tern"}`, types.ErrInvalidNetworkConfig, "network name"},
		{"bad CNI_ARGS", with(add("c1"), "CNI_ARGS", "K8S_POD_NAME"), conf(""), types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"no netns", with(add("c1"), "CNI_NETNS", "/var/run/netns/not-there"), conf(""), types.ErrInvalidEnvironmentVariables, "not-there"},
		{"missing CNI_NETNS", with(add("c1"), "CNI_NETNS", ""), conf(""), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"agent unreachable", add("c1"), `{"cniVersion":"1.0.0","name":"tern","type":"tern","agentSocket":"/run/tern-test-nothing/cni.sock"}`, types.ErrTryAgainLater, "unreachable at /run/tern-test-nothing/cni.sock"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := execPlugin(t, n, c.env, c.stdin)
			if code == 0 {
				t.Fatalf("exit 0; stdout %q", stdout)
			}
			assertCNIError(t, stdout, stderr, c.code, c.msg)
		})
	}
	if allocs, _ := n.Client().List(context.Background()); len(allocs) != 0 {
		t.Fatalf("failed ADDs left allocations: %+v", allocs)
	}

	// A full pool: two pods fit in a /30, the third gets code 100 and leaves nothing.
	for _, id := range []string{"full1", "full2"} {
		pns := n.NewPodNS()
		env := with(add(id), "CNI_NETNS", pns.Path())
		if stdout, stderr, code := execPlugin(t, n, env, conf("")); code != 0 {
			t.Fatalf("ADD %s: %s %s", id, stdout, stderr)
		}
	}
	stdout, stderr, _ := execPlugin(t, n, add("full3"), conf(""))
	assertCNIError(t, stdout, stderr, 100, "pod CIDR is full")
	if allocs, _ := n.Client().List(context.Background()); len(allocs) != 2 {
		t.Fatalf("allocations after a refused ADD: %+v", allocs)
	}
	if links, _ := n.Output("ip", "-o", "link", "show", "type", "veth"); strings.Count(links, ": tern") != 2 {
		t.Fatalf("a refused ADD left a veth:\n%s", links)
	}
	// STATUS says the pool is exhausted.
	stdout, stderr, _ = execPlugin(t, n, map[string]string{"CNI_COMMAND": "STATUS"},
		strings.Replace(conf(""), `"1.0.0"`, `"1.1.0"`, 1))
	assertCNIError(t, stdout, stderr, types.ErrPluginNotAvailable, "full")

	// VERSION lists the spec versions.
	stdout, _, code := execPlugin(t, n, map[string]string{"CNI_COMMAND": "VERSION"}, `{"cniVersion":"1.1.0"}`)
	if code != 0 || !strings.Contains(stdout, `"1.1.0"`) || !strings.Contains(stdout, `"0.4.0"`) {
		t.Fatalf("VERSION: %d %s", code, stdout)
	}
}

// assertCNIError checks that stdout is exactly one CNI error object.
func assertCNIError(t *testing.T, stdout, stderr string, code uint, msg string) {
	t.Helper()
	var e types.Error
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("stdout is not one CNI error object: %v\nstdout: %q\nstderr: %q", err, stdout, stderr)
	}
	if dec.More() {
		t.Fatalf("stdout has more than the error: %q", stdout)
	}
	if e.Code != code || !strings.Contains(e.Msg+" "+e.Details, msg) {
		t.Fatalf("error %d %q (%q); want code %d and %q", e.Code, e.Msg, e.Details, code, msg)
	}
}
