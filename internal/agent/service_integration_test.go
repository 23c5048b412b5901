package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tern-net/tern/internal/clustertest"
	"github.com/tern-net/tern/internal/kubetest"
	"github.com/tern-net/tern/internal/nodetest"
	"github.com/tern-net/tern/internal/routertest"
)

// TestServiceLoadBalancerIPs: a LoadBalancer Service's ingress IP is
// announced from every node with externalTrafficPolicy Cluster, and only from
// the node with a ready endpoint with Local, as a router (BIRD) sees it.
func TestServiceLoadBalancerIPs(t *testing.T) {
	c := clustertest.NewCluster(t)
	ctx := context.Background()
	c.Apply(`apiVersion: tern.io/v1alpha1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMesh: false, advertise: {serviceLoadBalancerIPs: [10.250.40.0/24]}}
---
apiVersion: tern.io/v1alpha1
kind: BGPPeer
metadata: {name: router}
spec: {peerIP: 10.40.0.254, asNumber: 65001}
`)
	fab := clustertest.NewFabric(t)
	r := clustertest.NewRouter(t)
	fab.JoinNS(r, "r", "10.40.0.254/24")
	conf := "router id 10.40.0.254;\nprotocol device { scan time 1; }\n"
	for i := 1; i <= 2; i++ {
		conf += fmt.Sprintf("protocol bgp n%d { local 10.40.0.254 as 65001; neighbor 10.40.0.%d as 64512; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }\n", i, i)
	}
	bird := routertest.StartBIRD(t, r, conf)
	var nodes []*nodetest.Node
	for i := range 2 {
		n := nodetest.NewNodeNS(t)
		addr := fmt.Sprintf("10.40.0.%d", i+1)
		fab.Join(n, fmt.Sprintf("s%d", i), addr+"/24")
		c.Start(n, addr, nil, nil)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.WaitReady(30 * time.Second)
	}

	ns := c.Env.NewNamespace(t)
	svcs := c.Env.Client.CoreV1().Services(ns)
	svc, err := svcs.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.250.40.10"}}
	if svc, err = svcs.UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A ready endpoint on node 2 only.
	_, err = c.Env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.99.5"}, NodeName: ptr.To(nodes[1].Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	via := func() string { return bird.Birdc("show", "route", "for", "10.250.40.10/32", "all") }
	only := func(want, not string) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) {
			out := via()
			return strings.Contains(out, "via "+want) && (not == "" || !strings.Contains(out, "via "+not)), nil
		}
	}
	if err := kubetest.Eventually(20*time.Second, only("10.40.0.2", "10.40.0.1")); err != nil {
		t.Fatalf("Local: want the LB IP from node 2 only: %v\n%s\n%s", err, via(), nodetest.Tail(nodes[1].AgentLog(), 2000))
	}
	// Cluster: every node announces it.
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if _, err := svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(20*time.Second, func(ctx context.Context) (bool, error) {
		ok1, _ := only("10.40.0.1", "")(ctx)
		ok2, _ := only("10.40.0.2", "")(ctx)
		return ok1 && ok2, nil
	}); err != nil {
		t.Fatalf("Cluster: want the LB IP from both nodes: %v\n%s", err, via())
	}
	// The Service goes: so does the announcement.
	if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.Eventually(20*time.Second, func(context.Context) (bool, error) {
		return !strings.Contains(via(), "10.250.40.10"), nil
	}); err != nil {
		t.Fatalf("the LB IP outlived its Service: %s", via())
	}
}
