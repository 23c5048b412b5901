package bench

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

const (
	coldNodes    = 1000
	coldPods     = 10000
	coldPolicies = 1000
	coldNSs      = 50
)

// BenchmarkAgentColdStart measures tern-agent from process start to ready
// (caches synced, dataplane programmed, /readyz 200) against an API server
// holding 1,000 nodes, 10,000 pods and 1,000 NetworkPolicies, and its RSS
// then. Targets (issue 3): ready within 5 s, RSS under 150 MB.
func BenchmarkAgentColdStart(b *testing.B) {
	if b.N > 1 {
		b.Skip("one cold start per run: use -benchtime 1x (make bench does)")
	}
	env := kubetest.Start(b)
	n := nodetest.NewNodeNS(b)
	ctx := context.Background()
	cfg := *env.Config
	cfg.QPS, cfg.Burst = 1000, 2000
	client := kubernetes.NewForConfigOrDie(&cfg)

	t0 := time.Now()
	// This node first, so that kube-controller-manager's /24s (256 of them in
	// 10.244.0.0/16) certainly include one for it.
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	// The nodes go at the end: kube-controller-manager has only 256 /24s to
	// give, and the benchmarks after this one need some.
	b.Cleanup(func() {
		parallel(b, coldNodes-1, func(i int) error {
			return client.CoreV1().Nodes().Delete(context.Background(), fmt.Sprintf("cold-node-%04d", i), metav1.DeleteOptions{})
		})
		_ = client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{})
	})
	parallel(b, coldNodes-1, func(i int) error {
		_, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cold-node-%04d", i), Labels: map[string]string{"rack": fmt.Sprint(i % 20)}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)}}},
		}, metav1.CreateOptions{})
		return err
	})
	var nss []string
	for i := range coldNSs {
		ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			GenerateName: "cold-", Labels: map[string]string{"team": fmt.Sprint(i % 5)}}}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		nss = append(nss, ns.Name)
	}
	b.Cleanup(func() { removeNamespaces(b, client, nss) })
	parallel(b, coldPods, func(i int) error {
		node := fmt.Sprintf("cold-node-%04d", i%(coldNodes-1))
		if i%(coldNodes) == 0 {
			node = n.Name // 10 of them on the measured node
		}
		_, err := client.CoreV1().Pods(nss[i%coldNSs]).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%05d", i), Labels: map[string]string{"app": fmt.Sprint(i % 100), "tier": "web"}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		}, metav1.CreateOptions{})
		return err
	})
	tcp := corev1.ProtocolTCP
	parallel(b, coldPolicies, func(i int) error {
		_, err := client.NetworkingV1().NetworkPolicies(nss[i%coldNSs]).Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%04d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint(i % 100)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint(i % 5)}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}},
				}},
			},
		}, metav1.CreateOptions{})
		return err
	})
	b.Logf("created %d nodes, %d pods, %d policies in %s", coldNodes, coldPods, coldPolicies, time.Since(t0).Round(time.Millisecond))

	start := time.Now()
	startAgentVia(b, env, n)
	n.WaitReady(60 * time.Second)
	ready := time.Since(start)
	rss := rssMB(b, n.AgentPID())
	b.ReportMetric(ready.Seconds(), "ready-s")
	b.ReportMetric(rss, "agent-rss-MB")
	b.ReportMetric(ready.Seconds()/5, "of-5s-target-x")
	b.ReportMetric(rss/150, "of-150MB-target-x")
	appendOut(b, fmt.Sprintf("\nAgent cold start against %d nodes, %d pods, %d NetworkPolicies: ready in %.2f s (target < 5 s), RSS %.1f MB (target < 150 MB)\n",
		coldNodes, coldPods, coldPolicies, ready.Seconds(), rss))
}

// parallel runs f(0..n-1) on 32 workers and fails b on the first error.
func parallel(b *testing.B, n int, f func(i int) error) {
	b.Helper()
	parallelN(b, 32, n, f)
}

// removeNamespaces deletes the namespaces' pods at once (no kubelet would
// confirm a graceful deletion) and the namespaces, and waits until they are
// gone: the benchmarks after this one share the API server, and an agent
// watches every pod and policy of the cluster, so leftovers would inflate
// their figures.
func removeNamespaces(b *testing.B, client kubernetes.Interface, nss []string) {
	ctx := context.Background()
	zero := int64(0)
	for _, ns := range nss {
		_ = client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		_ = client.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	}
	deadline := time.Now().Add(3 * time.Minute)
	for _, ns := range nss {
		for {
			_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				b.Logf("namespace %s still there after 3 min: later benchmarks share its objects", ns)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// startAgentVia starts n's agent against env's API server, reached through a
// forwarder inside n's namespace, with the admin's credentials; it does not
// wait.
func startAgentVia(b *testing.B, env *kubetest.Env, n *nodetest.Node) {
	b.Helper()
	api, err := url.Parse(env.Config.Host)
	if err != nil {
		b.Fatal(err)
	}
	fwd := nodetest.Forward(b, n.NS, api.Host, true)
	kc, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + fwd.Addr
	}
	kcPath := filepath.Join(n.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kcPath); err != nil {
		b.Fatal(err)
	}
	n.Args = []string{"--kubeconfig", kcPath}
	n.StartAgentNoWait()
}
