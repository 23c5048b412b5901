package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestAgentOnKubernetes runs the real agent in a node namespace against the
// real control plane: readiness before and after sync, the podCIDR from
// kube-controller-manager, the NetworkUnavailable condition, a CNI ADD from
// that CIDR, and the release of the address once the pod is deleted.
func TestAgentOnKubernetes(t *testing.T) {
	// The CRDs and the agent's RBAC from the manifests: the agent runs as its
	// ServiceAccount, with the grants users install, not as an admin.
	c := clustertest.NewCluster(t)
	env := c.Env
	n := nodetest.NewNodeNS(t)
	fwd, kubeconfig := c.Connect(n, false)
	n.Args = []string{"--kubeconfig", kubeconfig, "--resync=1s", "--pod-release-grace=2s"}
	n.StartAgentNoWait()
	ctx := context.Background()

	// The API is not reachable yet: no cache, no kernel write, not ready.
	readyz := func(want int, says string) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) {
			code, body, err := n.Health("/readyz")
			return err == nil && code == want && strings.Contains(body, says), nil
		}
	}
	if err := kubetest.Eventually(10*time.Second, readyz(503, "waiting for the Kubernetes caches")); err != nil {
		code, body, herr := n.Health("/readyz")
		out, _ := exec.Command("ps", "-ef").Output()
		t.Fatalf("/readyz before sync: %v (%d %q %v)\nagent log:\n%s\nps:\n%s", err, code, body, herr, n.AgentLog(), out)
	}
	if out, _ := n.Output("ip", "route", "show", "proto", "96"); out != "" {
		t.Fatalf("routes written before the caches synced:\n%s", out)
	}
	fwd.Open()
	if err := kubetest.Eventually(10*time.Second, readyz(503, "does not exist")); err != nil {
		t.Fatalf("/readyz with no Node object: %v\n%s", err, n.AgentLog())
	}

	// The node appears; kube-controller-manager gives it a podCIDR.
	_, err := env.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}) })
	n.WaitReady(30 * time.Second)
	node, err := env.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil || node.Spec.PodCIDR == "" {
		t.Fatalf("node %s: %v, podCIDR %q", n.Name, err, node.Spec.PodCIDR)
	}
	podCIDR := netip.MustParsePrefix(node.Spec.PodCIDR)
	st, err := n.Client().Status(ctx)
	if err != nil || len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != podCIDR {
		t.Fatalf("agent pod CIDRs %v (%v), node has %s", st.PodCIDRs, err, podCIDR)
	}
	if out, _ := n.Output("ip", "route", "show", "proto", "96"); !strings.Contains(out, "blackhole "+podCIDR.String()) {
		t.Fatalf("no blackhole route for %s:\n%s", podCIDR, out)
	}
	if err := kubetest.Eventually(10*time.Second, func(ctx context.Context) (bool, error) {
		nd, err := env.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				return c.Status == corev1.ConditionFalse && c.Reason == "TernIsUp", nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("NetworkUnavailable: %v", err)
	}
	if code, body, err := n.Health("/readyz"); err != nil || code != 200 {
		t.Fatalf("/readyz after sync: %d %q %v", code, body, err)
	}
	if code, body, err := n.Health("/metrics"); err != nil || code != 200 || !strings.Contains(body, "tern_ready 1") ||
		!strings.Contains(body, "tern_reconcile_duration_seconds_count") {
		t.Fatalf("/metrics: %d %v\n%s", code, err, body)
	}

	if err := kubetest.Eventually(15*time.Second, func(context.Context) (bool, error) {
		return strings.Contains(n.AgentLog(), `msg="watching custom resources" resource=bgppeers`), nil
	}); err != nil {
		t.Fatalf("the agent does not watch tern's custom resources: %v\n%s", err, n.AgentLog())
	}

	// A pod on the node: its sandbox gets an address from the node's podCIDR.
	ns := env.NewNamespace(t)
	pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "web", Image: "registry.invalid/web"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podNS := n.NewPodNS()
	rt := nodetest.RuntimeConf("web", podNS)
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "web"}, {"K8S_POD_UID", string(pod.UID)}}
	res, err := n.Add(n.ConfList("1.0.0"), rt)
	if err != nil {
		t.Fatalf("ADD: %v\n%s", err, n.PluginLog())
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if !podCIDR.Contains(ip.Unmap()) {
		t.Fatalf("pod got %s, outside the node's podCIDR %s", ip, podCIDR)
	}

	// A second pod that stays.
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "stays"},
		Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	staysRT := nodetest.RuntimeConf("stays", n.NewPodNS())
	staysRT.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", "stays"}}
	if _, err := n.Add(n.ConfList("1.0.0"), staysRT); err != nil {
		t.Fatalf("ADD stays: %v", err)
	}

	// The pod is deleted and its DEL never comes: the agent releases the
	// address after the grace period, and its veth goes.
	zero := int64(0)
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(20*time.Second, func(ctx context.Context) (bool, error) {
		allocs, err := n.Client().List(ctx)
		if err != nil || len(allocs) != 1 {
			return false, err
		}
		links, err := n.Output("ip", "-o", "link", "show", "type", "veth")
		return err == nil && !strings.Contains(links, res.Interfaces[0].Name), err
	}); err != nil {
		allocs, _ := n.Client().List(ctx)
		t.Fatalf("address of the deleted pod not released: %v %+v\n%s", err, allocs, n.AgentLog())
	}
	if _, body, _ := n.Health("/metrics"); !strings.Contains(body, "tern_ipam_released_gone_pods_total 1") {
		t.Fatalf("metrics do not count the release:\n%s", body)
	}
	// The pod that stays keeps its address, pass after pass: three more
	// (a second apart, --resync=1s), each a chance to release it wrongly.
	before, err := reconcilePasses(n)
	if err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(15*time.Second, func(context.Context) (bool, error) {
		now, err := reconcilePasses(n)
		return now >= before+3, err
	}); err != nil {
		t.Fatalf("no three more reconcile passes: %v\n%s", err, n.AgentLog())
	}
	if err := n.Check(n.ConfList("1.0.0"), staysRT); err != nil {
		t.Fatalf("the pod that stays lost its network: %v\n%s", err, n.AgentLog())
	}
	if allocs, _ := n.Client().List(ctx); len(allocs) != 1 || allocs[0].Pod != "stays" {
		t.Fatalf("allocations: %+v", allocs)
	}
	if strings.Contains(n.AgentLog(), "forbidden") {
		t.Fatalf("the agent's ServiceAccount was refused something:\n%s", n.AgentLog())
	}
}

// reconcilePasses is the count of the agent's reconcile passes, from its
// /metrics.
func reconcilePasses(n *nodetest.Node) (int, error) {
	code, body, err := n.Health("/metrics")
	if err != nil || code != 200 {
		return 0, fmt.Errorf("/metrics: %d %w", code, err)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, "tern_reconcile_duration_seconds_count "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("/metrics has no tern_reconcile_duration_seconds_count")
}
