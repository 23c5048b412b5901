package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/ipam"
)

// offlineEnv carries the parameters of TestReconcileWithoutAPIServer's
// child: the same test, run again inside the node namespace.
const offlineEnv = "TERN_TEST_OFFLINE_CHILD"

type offlineParams struct {
	Kubeconfig, Node, Dir string
	PodCIDR               netip.Prefix
}

// passBound: a pass with the API server silent must end well within this.
// Without a network wait a pass takes milliseconds; with one, seconds.
const passBound = 300 * time.Millisecond

// TestReconcileWithoutAPIServer: once the caches are in, a reconcile pass
// never waits for the API server. The agent's caches sync through a link that
// then goes silent (no answer, no refusal: a dead network); the passes that
// follow, with a BGP peer whose password comes from a Secret, a pod gone that
// only the API server can confirm, and a NetworkUnavailable condition to set,
// each end in milliseconds.
//
// The agent runs in-process, in a child test process that lives in the node
// namespace: its dataplane writes and BGP sockets stay there.
func TestReconcileWithoutAPIServer(t *testing.T) {
	if p := os.Getenv(offlineEnv); p != "" {
		offlineChild(t, p)
		return
	}
	c := clustertest.NewCluster(t)
	nodetest.RequireRoot(t)
	netns := clustertest.NewNS(t)
	name, dir := filepath.Base(netns.Path()), t.TempDir()
	clustertest.Run(t, netns, "ip", "addr", "add", "10.36.0.1/32", "dev", "lo")
	ctx := context.Background()
	secrets := c.Env.Client.CoreV1().Secrets("tern-system")
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp-offline"},
		StringData: map[string]string{"password": "offline-pass"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secrets.Delete(context.Background(), "bgp-offline", metav1.DeleteOptions{}) })
	// The peer's address is routed nowhere in the node namespace: its
	// session never comes up, and nothing leaves.
	c.Apply(`apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: offline-tor}
spec: {peerIP: 10.36.0.254, asNumber: 65001, node: ` + name + `, passwordSecretRef: {name: bgp-offline, key: password}}
`)
	nodes := c.Env.Client.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Annotations: map[string]string{k8s.AddressAnnotation: "10.36.0.1"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nodes.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	var podCIDR string
	if err := kubetest.Eventually(30*time.Second, func(ctx context.Context) (bool, error) {
		nd, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			podCIDR = nd.Spec.PodCIDR
		}
		return podCIDR != "", err
	}); err != nil {
		t.Fatalf("node %s has no podCIDR: %v", name, err)
	}
	api, err := url.Parse(c.Env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	fwd := nodetest.Forward(t, netns, api.Host, true)
	token := c.Env.ServiceAccountConfig(t, "tern-system", "tern-agent").BearerToken
	kubeconfig := clustertest.KubeconfigVia(t, c.Env, token, "https://"+fwd.Addr, dir)
	p, err := json.Marshal(offlineParams{Kubeconfig: kubeconfig, Node: name, Dir: dir, PodCIDR: netip.MustParsePrefix(podCIDR)})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+netns.Path(), "--", os.Args[0],
		"-test.run=^TestReconcileWithoutAPIServer$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), offlineEnv+"="+string(p))
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "pass ") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if err != nil {
		t.Fatalf("the agent in the node namespace: %v\n%s", err, nodetest.Tail(string(out), 6000))
	}
}

// offlineChild is TestReconcileWithoutAPIServer inside the node namespace.
func offlineChild(t *testing.T, param string) {
	var p offlineParams
	if err := json.Unmarshal([]byte(param), &p); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rc, err := k8s.Config(p.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(rc.Host)
	if err != nil {
		t.Fatal(err)
	}
	link := newSilencer(t, api.Host)
	rc.Host = "https://" + link.addr
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// An allocation whose pod is gone: the cache says so, the API server
	// has the last word.
	gone := podAlloc("c-gone", "default", "gone-pod", "u-gone", p.PodCIDR.Addr().Next().Next().String(), time.Hour)
	alloc, err := ipam.New(ipam.NewMemStore(gone), []netip.Prefix{p.PodCIDR})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := k8s.NewWatcher(client, dyn, p.Node, "tern-system", log)
	a := newAgent(Config{NodeName: p.Node, StateDir: p.Dir + "/state", RunDir: p.Dir + "/run", Resync: time.Second,
		PodReleaseGrace: time.Minute, BGP: true, NetworkPolicy: true}, w, alloc, log)
	a.runCtx = ctx
	if err := w.Start(ctx, a.Trigger); err != nil {
		t.Fatal(err)
	}

	// The link is up: passes until the dataplane is programmed, the node
	// condition set, and BGP has its peer (with its password: without one
	// the peer is left out).
	peered := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, pr := range a.bgpView.Peers {
			if pr.Address == netip.MustParseAddr("10.36.0.254") {
				return true
			}
		}
		return false
	}
	var lastErr error
	if err := kubetest.Eventually(60*time.Second, func(context.Context) (bool, error) {
		lastErr = a.reconcile(ctx, false)
		return lastErr == nil && a.networkAvailable && a.routing.speaker != nil && peered(), nil
	}); err != nil {
		t.Fatalf("the passes with the API server reachable: %v (last pass: %v; available %v; BGP %+v)", err, lastErr, a.networkAvailable, a.bgpView)
	}
	if len(a.missing) != 1 || len(a.ipam.List()) != 1 {
		t.Fatalf("the gone pod's allocation: missing %v, allocations %v", a.missing, a.ipam.List())
	}
	// The Node's condition goes back to True (a re-created Node, say): the
	// next pass wants to set it.
	cond := map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "Test"}}}}
	patch, _ := json.Marshal(cond)
	if _, err := client.CoreV1().Nodes().Patch(ctx, p.Node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(10*time.Second, func(context.Context) (bool, error) {
		nd, err := w.LocalNode()
		return err == nil && !nd.NetworkAvailable, nil
	}); err != nil {
		t.Fatalf("the cache does not see the condition: %v", err)
	}

	link.silence()
	// The gone pod has been missing for longer than the grace period: the
	// next pass asks the API server.
	for k := range a.missing {
		a.missing[k] = time.Now().Add(-2 * a.cfg.PodReleaseGrace)
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	for i := range 3 {
		t0 := time.Now()
		err := a.reconcile(pctx, false)
		d := time.Since(t0)
		t.Logf("pass %d with the API server silent: %v (error: %v)", i, d.Round(time.Microsecond), err)
		if d > passBound {
			t.Errorf("pass %d took %v with the API server silent (bound %v)", i, d, passBound)
		}
	}
	if !a.api.patching || !a.api.checking {
		t.Errorf("the passes did not ask the API server (patch in flight %v, pod check in flight %v)", a.api.patching, a.api.checking)
	}
	if !peered() || len(a.ipam.List()) != 1 {
		t.Errorf("BGP peer kept %v, allocations %v", peered(), a.ipam.List())
	}
}

// silencer forwards connections to target until silenced; then it forwards
// nothing, either way, and closes nothing: the API server is neither refused
// nor reset but silent, as behind a dead link.
type silencer struct {
	addr   string
	target string
	mu     sync.Mutex
	silent atomic.Bool
	ups    []net.Conn
}

func newSilencer(t *testing.T, target string) *silencer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &silencer{addr: ln.Addr().String(), target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if s.silent.Load() {
				go func() { _, _ = io.Copy(io.Discard, c) }()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.ups = append(s.ups, up)
			if s.silent.Load() {
				up.Close()
			}
			s.mu.Unlock()
			go func() {
				_, _ = io.Copy(up, c)
				_, _ = io.Copy(io.Discard, c) // silenced: what the client sends goes nowhere
			}()
			go func() { _, _ = io.Copy(c, up) }() // silenced: c stays open, and mute
		}
	}()
	return s
}

// silence cuts every connection off from the API server, without a word to
// the client.
func (s *silencer) silence() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent.Store(true)
	for _, up := range s.ups {
		up.Close()
	}
}
