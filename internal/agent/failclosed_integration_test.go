package agent_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	cnins "github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

// TestAddBeforePodKnown: a pod whose CNI ADD comes while the agent's cache
// does not have it yet (the watch lags: here the API server is cut off from
// the node after the pod was created) is refused with "try again later"
// (code 11), leaving no veth, route or address, so it carries no traffic;
// once the cache has it, the runtime's next ADD attaches it, and it is
// reachable exactly as its policy says: from the allowed client, not from
// another pod.
func TestAddBeforePodKnown(t *testing.T) {
	c := clustertest.NewCluster(t)
	env := c.Env
	ctx := context.Background()
	n := nodetest.NewNodeNS(t)
	fwd, kubeconfig := c.Connect(n, true)
	n.Args = []string{"--kubeconfig", kubeconfig, "--resync=1s", "--bgp=false", "--cluster-cidr=10.244.0.0/16"}
	if _, err := env.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}) })
	n.StartAgentNoWait()
	n.WaitReady(60 * time.Second)

	ns := env.NewNamespace(t)
	createPod := func(name string, labels map[string]string) *corev1.Pod {
		t.Helper()
		p, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The plugin's bound is past the agent's wait for the cache (5 s), so the
	// agent's answer, not the plugin's timeout, ends a refused ADD.
	list, err := libcni.NetworkConfFromBytes([]byte(`{"cniVersion": "1.0.0", "name": "tern", "plugins": [` +
		`{"type": "tern", "agentSocket": "` + n.Socket() + `", "agentTimeoutSeconds": 12}]}`))
	if err != nil {
		t.Fatal(err)
	}
	runtimeConf := func(p *corev1.Pod) (*libcni.RuntimeConf, cnins.NetNS) {
		podNS := n.NewPodNS()
		rt := nodetest.RuntimeConf(p.Name, podNS)
		rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", string(p.UID)}}
		return rt, podNS
	}
	addWhenKnown := func(rt *libcni.RuntimeConf) net.IP {
		t.Helper()
		var ip net.IP
		if err := kubetest.Eventually(60*time.Second, func(context.Context) (bool, error) {
			res, err := n.Add(list, rt)
			if err != nil {
				return false, nil
			}
			ip = res.IPs[0].Address.IP
			return true, nil
		}); err != nil {
			t.Fatalf("ADD %s: %v\n%s", rt.ContainerID, err, nodetest.Tail(n.AgentLog(), 3000))
		}
		return ip
	}

	client, other := createPod("client", map[string]string{"role": "client"}), createPod("other", nil)
	clientRT, clientNS := runtimeConf(client)
	otherRT, otherNS := runtimeConf(other)
	addWhenKnown(clientRT)
	addWhenKnown(otherRT)
	// A pod of the policy's, attached before: it shows when the agent has
	// the policy.
	web0RT, _ := runtimeConf(createPod("web0", map[string]string{"app": "web"}))
	addWhenKnown(web0RT)
	if _, err := env.Client.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(20*time.Second, func(ctx context.Context) (bool, error) {
		pp, err := n.Client().Policy(ctx, ns+"/web0")
		return err == nil && slices.Contains(pp.Ingress, ns+"/web-from-client"), nil
	}); err != nil {
		t.Fatalf("the agent did not apply the policy: %v\n%s", err, nodetest.Tail(n.AgentLog(), 3000))
	}

	// The watch lags: the pod exists in the API, the agent cannot see it.
	fwd.Cut()
	web := createPod("web", map[string]string{"app": "web"})
	webRT, webNS := runtimeConf(web)
	veths := func() string {
		out, err := n.Output("ip", "-o", "link", "show", "type", "veth")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := strings.Count(veths(), "\n")
	t0 := time.Now()
	_, err = n.Add(list, webRT)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Error()+cniErr.Details, "not in the agent's cache") {
		t.Fatalf("ADD of a pod the agent does not know yet: %v, want code %d saying the pod is not in the cache\n%s",
			err, types.ErrTryAgainLater, nodetest.Tail(n.PluginLog(), 2000))
	}
	t.Logf("refused after %s: %s", time.Since(t0).Round(time.Millisecond), cniErr.Details)
	if after := strings.Count(veths(), "\n"); after != before {
		t.Fatalf("the refused ADD left a veth (%d before, %d after):\n%s", before, after, veths())
	}
	allocs, err := n.Client().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range allocs {
		if al.Pod == "web" {
			t.Fatalf("the refused ADD left an allocation: %+v", al)
		}
	}
	if err := n.Del(list, webRT); err != nil { // the runtime cleans up after a failed ADD
		t.Fatalf("DEL after the refused ADD: %v", err)
	}

	// The API is back: the cache gets the pod, the runtime's retry attaches
	// it, with its policy in force from its first packet.
	fwd.Open()
	webIP := addWhenKnown(webRT)
	addr := nodetest.Serve(t, webNS, net.JoinHostPort(webIP.String(), "8080"), "web")
	if line, err := nodetest.Dial(clientNS, addr.String()); err != nil || !strings.HasPrefix(line, "web") {
		t.Fatalf("client -> web (allowed by the policy): %q %v", line, err)
	}
	if line, err := nodetest.Dial(otherNS, addr.String()); err == nil {
		t.Fatalf("other -> web (not allowed by the policy) connected: %q", line)
	}
}
