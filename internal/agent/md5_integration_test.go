package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// TestBGPPasswordMD5: a BGPPeer's TCP MD5 password comes from a Secret in
// tern-system. The right one brings the session up; a wrong one keeps it down,
// with a log line that names the password and a metric at 0.
func TestBGPPasswordMD5(t *testing.T) {
	c := clustertest.NewCluster(t)
	ctx := context.Background()
	secrets := c.Env.Client.CoreV1().Secrets("tern-system")
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp-md5"},
		StringData: map[string]string{"password": "right-pass"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secrets.Delete(context.Background(), "bgp-md5", metav1.DeleteOptions{}) })
	manifest := `apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: tor-md5}
spec: {peerIP: 10.34.0.254, asNumber: 65001, passwordSecretRef: {name: bgp-md5, key: password}}
`
	c.Apply(manifest)

	fab := clustertest.NewFabric(t)
	tor := clustertest.NewRouter(t)
	fab.JoinNS(tor, "tor", "10.34.0.254/24")
	bird := routertest.StartBIRD(t, tor, `router id 10.34.0.254;
protocol device { scan time 1; }
protocol bgp node { local 10.34.0.254 as 65001; neighbor 10.34.0.1 as 64512; password "right-pass";
  connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
`)
	n := nodetest.NewNodeNS(t)
	fab.Join(n, "n0", "10.34.0.1/24")
	c.Start(n, "10.34.0.1", nil, nil)
	n.WaitReady(30 * time.Second)
	state := func() string {
		b, err := n.Client().BGP(ctx)
		if err != nil || len(b.Peers) != 1 {
			return ""
		}
		return b.Peers[0].State
	}
	if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) { return state() == "Established", nil }); err != nil {
		t.Fatalf("with the right password: %q %v\nBIRD: %s\n%s", state(), err, bird.Birdc("show", "protocols", "all", "node"), nodetest.Tail(n.AgentLog(), 2000))
	}

	// The Secret changes to a wrong password: the session goes, and says why.
	s, err := secrets.Get(ctx, "bgp-md5", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["password"] = []byte("wrong-pass")
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(30*time.Second, func(context.Context) (bool, error) {
		return state() != "Established" && strings.Contains(n.AgentLog(), "MD5 password"), nil
	}); err != nil {
		t.Fatalf("with a wrong password: state %q, %v\n%s", state(), err, nodetest.Tail(n.AgentLog(), 3000))
	}
	if _, metrics, _ := n.Health("/metrics"); !strings.Contains(metrics, `tern_bgp_session_up{family="ipv4",kind="peer",peer="10.34.0.254"} 0`) {
		t.Fatalf("metrics:\n%s", metrics)
	}
}
