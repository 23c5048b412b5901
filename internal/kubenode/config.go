package kubenode

import (
	"fmt"
	"net/netip"
	"strings"
)

// containerdConfig is containerd's config.toml (version 3) for a node: the
// paths a real node uses (they are the node's own directories inside its
// mount namespace), runc with cgroupfs, and what this kind of machine needs:
// a negative oom_score_adj clamped instead of refused, the sandbox image
// pinned (nothing can be pulled, so it must never be garbage-collected), and
// the pods' network namespaces under containerd's state directory, which is
// the node's own, so none is left in the host's /run/netns.
func containerdConfig(runc, pause string) string {
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %[2]q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = %[1]q

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/opt/cni/bin"]
  conf_dir = "/etc/cni/net.d"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
`, runc, pause)
}

// kubeletConfig is the KubeletConfiguration of a node on this kind of machine:
// cgroup v1 with no systemd (failCgroupV1 false, the cgroupfs driver, a
// cgroup root of its own so that no kubelet sees another's pods), no
// negative oom_score_adj, no image garbage collection (nothing can be pulled
// again), eviction thresholds that a shared development disk does not trip,
// and webhook authentication and authorization so that the API server's
// exec, logs and port-forward are checked as on any node.
func kubeletConfig(c Config, cgroupRoot, clientCA, resolvConf string) string {
	var dns []string
	for _, a := range c.ClusterDNS {
		dns = append(dns, fmt.Sprintf("%q", a))
	}
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: %[2]q
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[3]q}
authorization:
  mode: Webhook
oomScoreAdj: 0
failSwapOn: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
clusterDomain: %[4]s
clusterDNS: [%[5]s]
resolvConf: %[6]q
serializeImagePulls: false
maxPods: %[7]d
nodeStatusReportFrequency: 10s
`, cgroupRoot, c.bindAddress(), clientCA, c.clusterDomain(), strings.Join(dns, ", "), resolvConf, c.maxPods())
}

// resolvConf is the resolver configuration of the node's pods with
// dnsPolicy Default (and of kubelet's own view): the cluster's DNS, never the
// host's resolvers, which are outside the lab's namespaces.
func resolvConf(dns []netip.Addr, domain string) string {
	var b strings.Builder
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	if len(dns) == 0 {
		// No nameserver line means the resolver's default, the node's own
		// loopback, where nothing answers.
		b.WriteString("# no cluster DNS configured\n")
	}
	fmt.Fprintf(&b, "search %s\noptions ndots:1\n", domain)
	return b.String()
}

// proxyConfig is kube-proxy's KubeProxyConfiguration for a node in a network
// namespace: conntrack limits left alone (nf_conntrack_max cannot be set
// from inside a namespace), health and metrics on the node's own loopback.
func proxyConfig(c Config) string {
	mode := c.ProxyMode
	if mode == "" {
		mode = "iptables"
	}
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %s
bindAddress: %q
clusterCIDR: %q
mode: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.ProxyKubeconfig, c.Name, c.NodeIPs[0], c.ClusterCIDR, mode)
}
