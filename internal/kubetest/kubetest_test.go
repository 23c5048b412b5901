package kubetest_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tern-net/tern/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestServerVersion(t *testing.T) {
	env := kubetest.Start(t)
	v, err := env.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != env.Version {
		t.Fatalf("server reports gitVersion %q (major %q, minor %q), want %q", v.GitVersion, v.Major, v.Minor, env.Version)
	}
	if !strings.HasPrefix(env.Version, "v"+v.Major+"."+v.Minor+".") {
		t.Errorf("server reports major %q minor %q, want those of %s", v.Major, v.Minor, env.Version)
	}
}

// A new Node gets its pod CIDR from kube-controller-manager's node IPAM, and
// the API server refuses to change it afterwards: tern's agent must take the
// CIDR it is given, never write its own.
func TestNodePodCIDR(t *testing.T) {
	env := kubetest.Start(t)
	nodes := env.Client.CoreV1().Nodes()
	node, err := nodes.Create(ctx(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "kubetest-node-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	t.Cleanup(func() {
		if err := nodes.Delete(context.Background(), node.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete node %s: %v", node.Name, err)
		}
	})

	start := time.Now()
	var podCIDR string
	err = kubetest.Eventually(10*time.Second, func(c context.Context) (bool, error) {
		n, err := nodes.Get(c, node.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		podCIDR = n.Spec.PodCIDR
		return podCIDR != "", nil
	})
	if err != nil {
		t.Fatalf("node %s got no spec.podCIDR: %v", node.Name, err)
	}
	t.Logf("node %s got podCIDR %s after %s", node.Name, podCIDR, time.Since(start).Round(time.Millisecond))
	p, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		t.Fatalf("podCIDR %q: %v", podCIDR, err)
	}
	if cluster := netip.MustParsePrefix("10.244.0.0/16"); p.Bits() != 24 || !cluster.Contains(p.Addr()) {
		t.Fatalf("podCIDR %s is not a /24 of %s", p, cluster)
	}

	other := "10.244.254.0/24"
	if podCIDR == other {
		other = "10.244.253.0/24"
	}
	// kube-controller-manager may still be writing the node (taints,
	// conditions): retry on a conflict, from a fresh read.
	for range 20 {
		current, gerr := nodes.Get(ctx(t), node.Name, metav1.GetOptions{})
		if gerr != nil {
			t.Fatalf("get node: %v", gerr)
		}
		current.Spec.PodCIDR, current.Spec.PodCIDRs = other, []string{other}
		_, err = nodes.Update(ctx(t), current, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "may not change podCIDR") {
		t.Fatalf("second change of spec.podCIDR: got %v, want the server to refuse it as invalid", err)
	}
	t.Logf("refused: %v", err)
	n, err := nodes.Get(ctx(t), node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if n.Spec.PodCIDR != podCIDR {
		t.Fatalf("podCIDR changed from %s to %s", podCIDR, n.Spec.PodCIDR)
	}
}

func TestDefaultServiceAccount(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.NewNamespace(t)
	err := kubetest.Eventually(10*time.Second, func(c context.Context) (bool, error) {
		_, err := env.Client.CoreV1().ServiceAccounts(ns).Get(c, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("no default ServiceAccount in %s: %v", ns, err)
	}
}

// RBAC is on: a ServiceAccount with no bindings authenticates, and is then
// refused what it was not granted.
func TestRBACForbidsUnboundServiceAccount(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.NewNamespace(t)
	client, err := kubernetes.NewForConfig(env.ServiceAccountConfig(t, ns, "nobody"))
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}

	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx(t), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review: %v", err)
	}
	if want := "system:serviceaccount:" + ns + ":nobody"; review.Status.UserInfo.Username != want {
		t.Fatalf("authenticated as %q, want %q", review.Status.UserInfo.Username, want)
	}

	_, err = client.CoreV1().Nodes().List(ctx(t), metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list nodes as an unbound ServiceAccount: got %v, want forbidden", err)
	}
	if _, err := env.Client.CoreV1().Nodes().List(ctx(t), metav1.ListOptions{}); err != nil {
		t.Fatalf("list nodes as admin: %v", err)
	}
}

func TestNewNamespaceIsDeletedAtCleanup(t *testing.T) {
	env := kubetest.Start(t)
	var ns string
	t.Run("inner", func(t *testing.T) {
		ns = env.NewNamespace(t)
		if !strings.HasPrefix(ns, "t-testnewnamespaceisdeletedatcleanup-inner-") {
			t.Errorf("namespace %q is not named after the test", ns)
		}
	})
	got, err := env.Client.CoreV1().Namespaces().Get(ctx(t), ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Fatalf("get namespace %s: %v", ns, err)
	}
	if got.DeletionTimestamp == nil {
		t.Fatalf("namespace %s not deleted after its test", ns)
	}
}
