// The control plane: hack/kube-env.sh, the CRDs and the lab's BGP objects,
// the agents' token, kubectl, and the CNI plugin installed as the DaemonSet does.

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

func (d *daemon) script(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(d.cfg.Root, "hack", "kube-env.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "TERN_KUBE_WATCH_PID="+strconv.Itoa(os.Getpid()))
	var stderr bytes.Buffer
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/kube-env.sh %s: %w: %s", strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (d *daemon) startControlPlane(ctx context.Context) error {
	if _, err := d.script("build"); err != nil {
		return err
	}
	bindir, err := d.script("bindir")
	if err != nil {
		return err
	}
	d.kubectl = filepath.Join(bindir, "kubectl")
	d.kubeDir = filepath.Join(d.cfg.Dir, "kube")
	if err := os.MkdirAll(d.kubeDir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	kc, err := d.script("up", d.kubeDir)
	if err != nil {
		return err
	}
	d.mark(func(t *Timings) { t.KubeEnvUp = time.Since(t0) })
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		return err
	}
	if err := d.useAdmin(cfg); err != nil {
		return err
	}
	for _, f := range []string{"00-namespace.yaml", "01-crds.yaml", "01-crds-network-policy-api.yaml", "02-rbac.yaml"} {
		if out, err := d.kubectlRun("", "apply", "-f", filepath.Join(d.cfg.Root, "manifests", f)); err != nil {
			return fmt.Errorf("kubectl apply %s: %w: %s", f, err, out)
		}
	}
	if err := d.applyBGPObjects(); err != nil {
		return err
	}
	sas := d.client.CoreV1().ServiceAccounts("tern-system")
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "tern-agent"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account tern-system/tern-agent: %w", err)
	}
	tr, err := sas.CreateToken(ctx, "tern-agent", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](30 * 24 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for tern-system/tern-agent: %w", err)
	}
	d.token = tr.Status.Token
	return nil
}

func (d *daemon) kubectlRun(stdin string, args ...string) (string, error) {
	cmd := exec.Command(d.kubectl, append([]string{"--kubeconfig", d.admin}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// installPlugin installs the CNI plugin as the DaemonSet does: bin/tern-cni
// as "tern" in the directory the runtime searches.
func (d *daemon) installPlugin() error {
	src, err := os.ReadFile(filepath.Join(d.cfg.BinDir, "tern-cni"))
	if errors.Is(err, os.ErrNotExist) {
		src, err = os.ReadFile(filepath.Join(d.cfg.BinDir, "tern")) // already under its installed name
	}
	if err != nil {
		return fmt.Errorf("the CNI plugin (build it with make build): %w", err)
	}
	dir := filepath.Join(d.cfg.Dir, "cni-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".tern.tmp")
	if err := os.WriteFile(tmp, src, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "tern"))
}

// useAdmin writes the admin kubeconfig the host uses (cfg, its server as the
// host reaches it) and connects the lab's client with it.
func (d *daemon) useAdmin(cfg *clientcmdapi.Config) error {
	d.admin = filepath.Join(d.cfg.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, d.admin); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", d.admin)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 100, 200
	if d.client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	d.api = strings.TrimPrefix(rc.Host, "https://")
	d.writeState()
	return nil
}

// applyBGPObjects waits for tern's CRDs and applies the lab's BGP objects.
func (d *daemon) applyBGPObjects() error {
	if out, err := d.kubectlRun("", "wait", "--for=condition=Established", "--timeout=60s", "crd/bgpconfigurations.tern.io", "crd/bgppeers.tern.io"); err != nil {
		return fmt.Errorf("CRDs not established: %w: %s", err, out)
	}
	if out, err := d.kubectlRun(d.cfg.BGPObjects(), "apply", "-f", "-"); err != nil {
		return fmt.Errorf("apply the lab's BGP objects: %w: %s", err, out)
	}
	return nil
}
