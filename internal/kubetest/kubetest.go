// Package kubetest gives tests a real Kubernetes control plane: etcd,
// kube-apiserver and kube-controller-manager on 127.0.0.1, built and started by
// hack/kube-env.sh once per test binary, or an existing one named by the
// environment variable TERN_KUBECONFIG. Each test gets its own namespace.
//
// A package whose tests use kubetest must stop the control plane from its
// TestMain, since package testing has no per-package teardown of its own:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
// (Should a test binary die before that, a watchdog started with the control
// plane stops it within a second.) When the control plane cannot be built or
// started, tests that ask for it skip, or fail under CI=true; with -short they
// skip.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tern-net/tern/internal/nodetest"
)

// KubeVersion is the Kubernetes release the helper builds and starts, matching
// the k8s.io/client-go minor in go.mod. K8S_VERSION overrides it.
const KubeVersion = "v1.37.2"

// EnvKubeconfig names an environment variable: when set, tests use the
// control plane behind this kubeconfig instead of starting one.
const EnvKubeconfig = "TERN_KUBECONFIG"

// Env is a running control plane.
type Env struct {
	Kubeconfig string               // admin kubeconfig (group system:masters)
	Config     *rest.Config         // from Kubeconfig
	Client     kubernetes.Interface // admin clientset
	Version    string               // the gitVersion the server is expected to report
	Dir        string               // state, logs and PIDs; "" when reused from TERN_KUBECONFIG
}

var (
	once     sync.Once
	shared   *Env
	startErr error

	stopMu  sync.Mutex
	started string // the state dir of a control plane this binary started
)

// Start returns the test binary's control plane, starting it on first use.
func Start(t testing.TB) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test against a real API server; skipped with -short")
	}
	once.Do(func() { shared, startErr = start() })
	if startErr != nil {
		if nodetest.InCI() {
			t.Fatalf("Kubernetes control plane unavailable under CI=true: %v", startErr)
		}
		t.Skipf("Kubernetes control plane unavailable: %v", startErr)
	}
	return shared
}

// Main runs the tests, then stops the control plane that Start started.
// Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if err := stop(code != 0); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func wantVersion() string {
	if v := os.Getenv("K8S_VERSION"); v != "" {
		return v
	}
	return KubeVersion
}

func start() (*Env, error) {
	if kc := os.Getenv(EnvKubeconfig); kc != "" {
		return connect(kc, "")
	}
	root, err := nodetest.ModuleRoot()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, "hack", "kube-env.sh")
	if _, err := runScript(script, nil, "build"); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tern-kube-")
	if err != nil {
		return nil, err
	}
	// The watchdog stops the control plane when this process is gone, even
	// when Main never gets to it (a panic, a timeout, a missing TestMain).
	out, err := runScript(script, []string{"TERN_KUBE_WATCH_PID=" + strconv.Itoa(os.Getpid())}, "up", dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	stopMu.Lock()
	started = dir
	stopMu.Unlock()
	return connect(strings.TrimSpace(out), dir)
}

// runScript runs hack/kube-env.sh with K8S_VERSION set and returns its stdout.
func runScript(script string, env []string, args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	cmd.Env = append(append(os.Environ(), "K8S_VERSION="+wantVersion()), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kube-env.sh %s: %w\n%s", strings.Join(args, " "), err, nodetest.Tail(stderr.String(), 4000))
	}
	return stdout.String(), nil
}

func connect(kubeconfig, dir string) (*Env, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	// Tests create objects in bursts; client-go's default 5 QPS would throttle.
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("clientset: %w", err)
	}
	if _, err := client.Discovery().ServerVersion(); err != nil {
		return nil, fmt.Errorf("API server of %s: %w", kubeconfig, err)
	}
	return &Env{Kubeconfig: kubeconfig, Config: cfg, Client: client, Version: wantVersion(), Dir: dir}, nil
}

// stop stops the control plane this binary started, and removes its state;
// when keepLogs, the logs stay (and their folder is printed).
func stop(keepLogs bool) error {
	stopMu.Lock()
	dir := started
	started = ""
	stopMu.Unlock()
	if dir == "" {
		return nil
	}
	root, err := nodetest.ModuleRoot()
	if err != nil {
		return err
	}
	if _, err := runScript(filepath.Join(root, "hack", "kube-env.sh"), nil, "down", dir); err != nil {
		return err
	}
	if keepLogs {
		fmt.Fprintf(os.Stderr, "kubetest: control plane logs kept in %s\n", dir)
		return os.RemoveAll(filepath.Join(dir, "etcd"))
	}
	return os.RemoveAll(dir)
}

// NewNamespace creates a namespace named after the test, with a unique suffix,
// and deletes it when the test ends.
func (e *Env) NewNamespace(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: namePrefix(t.Name()),
		Labels:       map[string]string{"tern.io/kubetest": "true"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := e.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// namePrefix turns a test name into a DNS label prefix for GenerateName
// (the server appends 5 characters).
func namePrefix(test string) string {
	var b strings.Builder
	b.WriteString("t-")
	dash := true
	for _, r := range strings.ToLower(test) {
		if b.Len() >= 50 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case !dash:
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.TrimRight(b.String(), "-")
	return s + "-"
}

// ServiceAccountConfig creates the ServiceAccount namespace/name if it does
// not exist and returns a client configuration that authenticates as it, with
// a bound token valid for an hour. It has the permissions RBAC gives it.
func (e *Env) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sas := e.Client.CoreV1().ServiceAccounts(namespace)
	_, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service account %s/%s: %v", namespace, name, err)
	}
	expiry := int64(3600)
	tr, err := sas.CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, name, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// ErrTimeout is returned by Eventually when the condition never held.
var ErrTimeout = errors.New("condition not met in time")

// Eventually polls cond every 100 ms until it returns true or timeout passes.
// An error from cond counts as "not yet"; the last one is wrapped into the
// ErrTimeout that Eventually returns.
func Eventually(timeout time.Duration, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return poll(ctx, timeout, func() error {
		ok, err := cond(ctx)
		switch {
		case ok:
			return nil
		case err == nil:
			return errNotYet
		}
		return err
	})
}

// EventuallyErr polls check every 100 ms until it returns nil or timeout
// passes, then returns ErrTimeout wrapping check's last error, which should
// say what was awaited and what was seen instead.
func EventuallyErr(timeout time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return poll(ctx, timeout, check)
}

// errNotYet is a condition that is false without an error to tell why.
var errNotYet = errors.New("not yet")

func poll(ctx context.Context, timeout time.Duration, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == errNotYet {
				return fmt.Errorf("%w after %s", ErrTimeout, timeout)
			}
			return fmt.Errorf("%w after %s: %w", ErrTimeout, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kubectl runs the kubectl that hack/kube-env.sh built (the server's version)
// with the admin kubeconfig and returns its combined output.
func (e *Env) Kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	root, err := nodetest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := runScript(filepath.Join(root, "hack", "kube-env.sh"), nil, "bindir")
	if err != nil {
		t.Fatalf("kube-env.sh bindir: %v", err)
	}
	cmd := exec.Command(filepath.Join(strings.TrimSpace(dir), "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
