package k8s_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/tern-net/tern/internal/k8s"
	"github.com/tern-net/tern/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestBGPPasswordsFromSecretsCache: BGPInput takes passwords from a cache of
// the Secrets of one namespace, kept by a watch: a Secret's change comes in
// with an event (and a call of changed), a Secret of another namespace is
// not seen, and a missing Secret or key is an error for its peer, which is
// left out.
func TestBGPPasswordsFromSecretsCache(t *testing.T) {
	env := kubetest.Start(t)
	if out, err := env.Kubectl(t, "apply", "-f", "../../manifests/01-crds.yaml"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=30s", "crd/bgppeers.tern.io", "crd/bgpconfigurations.tern.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ns, other := env.NewNamespace(t), env.NewNamespace(t)
	ctx := context.Background()
	peer := "secrets-cache-" + ns
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	u := map[string]any{
		"apiVersion": "tern.io/v1alpha1", "kind": "BGPPeer", "metadata": map[string]any{"name": peer},
		"spec": map[string]any{"peerIP": "10.35.0.254", "asNumber": int64(65001),
			"passwordSecretRef": map[string]any{"name": "bgp-md5", "key": "password"}},
	}
	if _, err := dyn.Resource(k8s.BGPPeers).Create(ctx, unstructuredOf(u), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dyn.Resource(k8s.BGPPeers).Delete(context.Background(), peer, metav1.DeleteOptions{}) })
	// The same name in another namespace: never read.
	if _, err := env.Client.CoreV1().Secrets(other).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp-md5"},
		StringData: map[string]string{"password": "elsewhere"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	w := k8s.NewWatcher(env.Client, dyn, "no-such-node", ns, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, _, _, errs := w.BGPInput(); len(errs) != 1 || !errors.Is(errs[0], k8s.ErrCustomResourcesNotSynced) {
		t.Fatalf("before the watches: %v", errs)
	}
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	var events atomic.Int64
	if err := w.Start(wctx, func() { events.Add(1) }); err != nil {
		t.Fatal(err)
	}
	// password returns the peer's password, or the error about it.
	password := func() (string, error) {
		_, _, peers, errs := w.BGPInput()
		for _, e := range errs {
			if strings.Contains(e.Error(), peer) || errors.Is(e, k8s.ErrCustomResourcesNotSynced) || errors.Is(e, k8s.ErrSecretsNotSynced) {
				return "", e
			}
		}
		for _, p := range peers {
			if p.Name == peer {
				return p.Password, nil
			}
		}
		return "", errors.New("peer not in the input")
	}
	wait := func(what string, ok func(string, error) bool) {
		t.Helper()
		var pw string
		var err error
		if werr := kubetest.Eventually(15*time.Second, func(context.Context) (bool, error) {
			pw, err = password()
			return ok(pw, err), nil
		}); werr != nil {
			t.Fatalf("%s: password %q, %v", what, pw, err)
		}
	}
	wait("no Secret", func(_ string, err error) bool { return err != nil && strings.Contains(err.Error(), "not found") })

	secrets := env.Client.CoreV1().Secrets(ns)
	before := events.Load()
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bgp-md5"},
		StringData: map[string]string{"password": "first"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("Secret created", func(pw string, err error) bool { return err == nil && pw == "first" })
	if events.Load() == before {
		t.Fatal("no event for the new Secret")
	}
	s, err := secrets.Get(ctx, "bgp-md5", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data = map[string][]byte{"password": []byte("second")}
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("Secret changed", func(pw string, err error) bool { return err == nil && pw == "second" })
	s.Data = map[string][]byte{"other": []byte("x")}
	s.ResourceVersion = ""
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("key gone", func(_ string, err error) bool {
		return err != nil && strings.Contains(err.Error(), `no key "password"`)
	})
	if err := secrets.Delete(ctx, "bgp-md5", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("Secret deleted", func(_ string, err error) bool { return err != nil && strings.Contains(err.Error(), "not found") })

	// Without a secret namespace no Secret is watched; a peer with a password
	// is an error, never a peer without one.
	w = k8s.NewWatcher(env.Client, dyn, "no-such-node", "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := w.Start(wctx, func() {}); err != nil {
		t.Fatal(err)
	}
	wait("no secret namespace", func(_ string, err error) bool {
		return err != nil && strings.Contains(err.Error(), "--secret-namespace")
	})
}

func unstructuredOf(obj map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: obj}
}
