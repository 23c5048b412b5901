package cniplugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

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
		{"agent unreachable", add("c1"), `{"cniVersion":"1.0.0","name":"tern","type":"tern","agentSocket":"/run/tern-test-nothing/cni.sock","agentTimeoutSeconds":1}`, types.ErrTryAgainLater, "unreachable at /run/tern-test-nothing/cni.sock"},
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

// An ADD that comes while the agent starts waits for it, within
// agentTimeoutSeconds: sent before the agent runs, it succeeds once the agent
// is ready. An agent that stays not ready gets code 11 at the bound.
func TestAddWaitsForStartingAgent(t *testing.T) {
	n := nodetest.NewNodeNS(t)
	n.PodCIDRs = "10.244.7.0/24"
	list := n.ConfList("1.0.0")
	podNS := n.NewPodNS()
	type added struct {
		res *current.Result
		err error
	}
	done := make(chan added, 1)
	go func() {
		res, err := n.Add(list, nodetest.RuntimeConf("early", podNS))
		done <- added{res, err}
	}()
	time.Sleep(300 * time.Millisecond) // the scenario: the agent starts 300 ms after the ADD
	select {
	case a := <-done:
		t.Fatalf("ADD with no agent running ended at once: %+v %v", a.res, a.err)
	default:
	}
	n.StartAgentNoWait()
	select {
	case a := <-done:
		if a.err != nil {
			t.Fatalf("ADD sent before the agent started: %v\n%s", a.err, n.PluginLog())
		}
		if got := podAddr(t, podNS); !netip.MustParsePrefix(n.PodCIDRs).Contains(got) {
			t.Fatalf("pod address %s", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ADD did not return within agentTimeoutSeconds (30 s)\n%s", n.AgentLog())
	}

	// A fake agent that never gets ready.
	sock := filepath.Join(n.Dir, "not-ready.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"code":"NotReady","message":"waiting for the Kubernetes caches"}`))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "late", "CNI_NETNS": n.NewPodNS().Path(), "CNI_IFNAME": "eth0",
		"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=late"}
	t0 := time.Now()
	stdout, stderr, code := execPlugin(t, n, env, fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tern","type":"tern","agentSocket":%q,"agentTimeoutSeconds":1}`, sock))
	took := time.Since(t0)
	if code == 0 {
		t.Fatalf("ADD succeeded against an agent that is never ready: %s", stdout)
	}
	assertCNIError(t, stdout, stderr, types.ErrTryAgainLater, "not ready")
	if took < 800*time.Millisecond || requests.Load() < 3 {
		t.Fatalf("code 11 after %v and %d requests; want it at agentTimeoutSeconds (1 s), after several tries", took, requests.Load())
	}
}
