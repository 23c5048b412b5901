package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
)

const (
	scalePods     = 5000
	scaleLocal    = 1000
	scalePolicies = 500
	scaleNSs      = 20
)

// BenchmarkAgentPolicyRSS runs the real tern-agent against the real API
// server holding 5,000 pods (1,000 of them on the agent's node, all with
// addresses) and 500 NetworkPolicies of mixed shapes, waits until the agent
// has compiled and applied them (the TERN-PI/PE chains of its pods are in its
// namespace), and reads its RSS. Target (NetworkPolicy issue): under 100 MB.
func BenchmarkAgentPolicyRSS(b *testing.B) {
	if b.N > 1 {
		b.Skip("one run: use -benchtime 1x (make bench does)")
	}
	env := kubetest.Start(b)
	n := nodetest.NewNodeNS(b)
	ctx := context.Background()
	cfg := *env.Config
	cfg.QPS, cfg.Burst = 1000, 2000
	client := kubernetes.NewForConfigOrDie(&cfg)
	t0 := time.Now()
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}) })
	var nss []string
	for i := range scaleNSs {
		ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			GenerateName: "scale-", Labels: map[string]string{"team": fmt.Sprint(i % 4)}}}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		nss = append(nss, ns.Name)
	}
	b.Cleanup(func() { removeNamespaces(b, client, nss) })
	parallel(b, scalePods, func(i int) error {
		node := fmt.Sprintf("other-%d", i%50)
		if i%(scalePods/scaleLocal) == 0 {
			node = n.Name
		}
		p, err := client.CoreV1().Pods(nss[i%scaleNSs]).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%05d", i), Labels: map[string]string{"app": fmt.Sprint(i % 50), "tier": []string{"web", "db", "cache"}[i%3]}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)}}
		p.Status.PodIP = p.Status.PodIPs[0].IP
		_, err = client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	named := intstr.FromString("http")
	port := intstr.FromInt32(8080)
	end := int32(8090)
	parallel(b, scalePolicies, func(i int) error {
		sel := metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint(i % 50)}}
		spec := networkingv1.NetworkPolicySpec{PodSelector: sel}
		switch i % 5 {
		case 0: // from a pod label, a port
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}}
		case 1: // from namespaces, a named port
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint(i % 4)}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}}}}
		case 2: // pod AND namespace, a port range
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "1"}},
				PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "cache"}}}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port, EndPort: &end}}}}
		case 3: // egress to an ipBlock with except, and named port egress
			spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			spec.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{fmt.Sprintf("10.%d.0.0/16", i%200+1)}}}}},
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}, {Protocol: &udp}}},
			}
		case 4: // default deny both ways
			spec.PodSelector = metav1.LabelSelector{}
			spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		_, err := client.NetworkingV1().NetworkPolicies(nss[i%scaleNSs]).Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%04d", i)}, Spec: spec}, metav1.CreateOptions{})
		return err
	})
	b.Logf("created %d pods (%d local), %d policies in %s", scalePods, scaleLocal, scalePolicies, time.Since(t0).Round(time.Millisecond))

	start := time.Now()
	startAgentVia(b, env, n)
	n.WaitReady(120 * time.Second)
	// Ready means the dataplane, policy included, was programmed once; count
	// the per-pod chains to be sure the policies are in.
	out, err := n.Output("iptables-save", "-t", "filter")
	if err != nil {
		b.Fatal(err)
	}
	chains := strings.Count(out, "\n:TERN-PI-") + strings.Count(out, "\n:TERN-PE-")
	if chains < scaleLocal/2 {
		b.Fatalf("only %d per-pod policy chains installed", chains)
	}
	ready := time.Since(start)
	time.Sleep(5 * time.Second) // a few more passes (a resync's read-back among them)
	rss := rssMB(b, n.AgentPID())
	b.ReportMetric(ready.Seconds(), "ready-s")
	b.ReportMetric(rss, "agent-rss-MB")
	b.ReportMetric(rss/100, "of-100MB-target-x")
	appendOut(b, fmt.Sprintf("\nAgent with NetworkPolicy at scale: %d pods (%d on its node), %d policies: ready with %d per-pod chains in %.2f s, RSS %.1f MB (target < 100 MB)\n",
		scalePods, scaleLocal, scalePolicies, chains, ready.Seconds(), rss))
}
