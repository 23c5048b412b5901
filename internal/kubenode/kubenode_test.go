package kubenode

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

// A node that cannot start says what is wrong, all of it, before touching
// anything.
func TestStartRefusesBadConfig(t *testing.T) {
	_, err := Start(context.Background(), Config{
		Name: "bad node", Dir: "relative", NetNS: "/nonexistent/netns",
		KubeBin: "/nonexistent", NodeBin: "/nonexistent", Images: []string{"/nonexistent/pause.tar"},
	})
	if err == nil {
		t.Fatal("Start accepted a config with nothing in it")
	}
	for _, want := range []string{
		`node name "bad node"`, `node directory "relative" is not absolute`, "node addresses []: want one, or one of each family",
		"network namespace: stat /nonexistent/netns", "kubeconfig", "client CA", "kubelet: stat /nonexistent/kubelet",
		"containerd: stat", "runc: stat", "image archive: stat /nonexistent/pause.tar", "no sandbox (pause) image",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestKubeletConfig(t *testing.T) {
	c := Config{NodeIPs: []netip.Addr{netip.MustParseAddr("10.30.1.11")}, ClusterDNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	got := kubeletConfig(c, "/tern-node-n1", "/pki/ca.crt", "/n1/resolv.conf")
	for _, want := range []string{
		"failCgroupV1: false", "cgroupDriver: cgroupfs", "cgroupRoot: /tern-node-n1", `address: "10.30.1.11"`,
		"oomScoreAdj: 0", `clusterDNS: ["10.96.0.10"]`, "clusterDomain: cluster.local", `clientCAFile: "/pki/ca.crt"`,
		"mode: Webhook", "imageGCHighThresholdPercent: 100", `nodefs.available: "1%"`, "maxPods: 110",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, got)
		}
	}
	cd := containerdConfig("/bin/runc", "registry.k8s.io/pause:3.10.2")
	for _, want := range []string{"restrict_oom_score_adj = true", "netns_mounts_under_state_dir = true",
		`sandbox = "registry.k8s.io/pause:3.10.2"`, `BinaryName = "/bin/runc"`, "SystemdCgroup = false", `bin_dirs = ["/opt/cni/bin"]`} {
		if !strings.Contains(cd, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, cd)
		}
	}
	// Dual-stack: kubelet serves on every address, kube-proxy's primary
	// family is the first address's.
	c.NodeIPs = append(c.NodeIPs, netip.MustParseAddr("fd74:6572:6e30:1::b"))
	c.ClusterCIDR = "10.244.0.0/16,fd74:6572:6e44::/56"
	if got := kubeletConfig(c, "/tern-node-n1", "/pki/ca.crt", "/n1/resolv.conf"); !strings.Contains(got, `address: "::"`) {
		t.Errorf("dual-stack kubelet does not listen on both families:\n%s", got)
	}
	if got := proxyConfig(c); !strings.Contains(got, `bindAddress: "10.30.1.11"`) || !strings.Contains(got, `clusterCIDR: "10.244.0.0/16,fd74:6572:6e44::/56"`) {
		t.Errorf("dual-stack kube-proxy config:\n%s", got)
	}
	if got := c.nodeIPList(); got != "10.30.1.11,fd74:6572:6e30:1::b" {
		t.Errorf("--node-ip %s", got)
	}
	if got := resolvConf(nil, "cluster.local"); strings.Contains(got, "nameserver") {
		t.Errorf("resolv.conf without cluster DNS names a nameserver:\n%s", got)
	}
}
