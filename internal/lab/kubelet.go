package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// kubelet is the lab's kubelet for one node: it registers the Node and keeps
// it Ready (status and Lease), and runs the node's pods as network namespaces
// attached by the real CNI plugin through libcni, serving their declared
// ports.
type kubelet struct {
	log    *slog.Logger
	client kubernetes.Interface
	node   Node
	netns  string // the node's namespace
	prefix string // the lab's namespace prefix
	cni    *libcni.CNIConfig
	conf   *libcni.NetworkConfigList

	mu   sync.Mutex
	pods map[string]*podRT // by namespace/name
	kick chan string
}

// podRT is a running pod.
type podRT struct {
	UID   types.UID
	NetNS string
	IPs   []netip.Addr
	srv   *portServer
	rt    *libcni.RuntimeConf
}

// PodInfo is what the lab reports of a pod it runs.
type PodInfo struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Node      string       `json:"node"`
	NetNS     string       `json:"netns"`
	IPs       []netip.Addr `json:"ips"`
}

// register creates (or takes over) the Node object and marks it Ready.
func (k *kubelet) register(ctx context.Context) error {
	labels := map[string]string{"kubernetes.io/hostname": k.node.Name, "kubernetes.io/os": "linux", LabelRack: fmt.Sprint(k.node.Rack)}
	ann := map[string]string{"tern.io/as-number": fmt.Sprint(k.node.AS)}
	if k.node.Reflector {
		labels[LabelReflector] = "true"
		ann["tern.io/route-reflector-cluster-id"] = ReflectorClusterID
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.node.Name, Labels: labels, Annotations: ann}}
	_, err := k.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", k.node.Name, err)
	}
	return k.updateStatus(ctx)
}

// updateStatus writes the node's addresses, capacity and Ready condition
// (retried on conflict: the node controllers write the Node too).
func (k *kubelet) updateStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return k.tryUpdateStatus(ctx) })
}

func (k *kubelet) tryUpdateStatus(ctx context.Context) error {
	n, err := k.client.CoreV1().Nodes().Get(ctx, k.node.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", k.node.Name, err)
	}
	now := metav1.Now()
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.node.Address().String()}, {Type: corev1.NodeHostName, Address: k.node.Name}}
	n.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("2Gi")}
	n.Status.Allocatable = n.Status.Capacity
	n.Status.NodeInfo.KubeletVersion = "tern-lab"
	n.Status.NodeInfo.OperatingSystem, n.Status.NodeInfo.Architecture = "linux", "amd64"
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "tern-lab kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
	found := false
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				ready.LastTransitionTime = c.LastTransitionTime
			}
			n.Status.Conditions[i], found = ready, true
		}
	}
	if !found {
		n.Status.Conditions = append(n.Status.Conditions, ready)
	}
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node's Lease every 10 s and its Ready condition every
// minute, as kubelet does, until ctx ends.
func (k *kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, k.node.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: k.node.Name},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(k.node.Name), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now}}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			k.log.Warn("lease renewal failed", "node", k.node.Name, "err", err)
		}
		if i%6 == 5 {
			if err := k.updateStatus(ctx); err != nil && ctx.Err() == nil {
				k.log.Warn("node status failed", "node", k.node.Name, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// run watches the node's pods and syncs each one until ctx ends.
func (k *kubelet) run(ctx context.Context) {
	f := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.node.Name).String()
	}))
	inf := f.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			select {
			case k.kick <- p.Namespace + "/" + p.Name:
			case <-ctx.Done():
			}
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue})
	f.Start(ctx.Done())
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	failed := map[string]bool{}
	for {
		var key string
		select {
		case <-ctx.Done():
			f.Shutdown()
			return
		case key = <-k.kick:
		case <-retry.C:
			for key := range failed {
				delete(failed, key)
				go func() { k.kick <- key }()
			}
			continue
		}
		obj, exists, _ := inf.GetStore().GetByKey(key)
		var pod *corev1.Pod
		if exists {
			pod = obj.(*corev1.Pod)
		}
		if err := k.sync(ctx, key, pod); err != nil && ctx.Err() == nil {
			k.log.Warn("pod sync failed; retrying", "node", k.node.Name, "pod", key, "err", err)
			failed[key] = true
		}
	}
}

// sync brings one pod to what the API says: running (attached, served,
// status written) or gone (detached, namespace removed, object deleted).
func (k *kubelet) sync(ctx context.Context, key string, pod *corev1.Pod) error {
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	gone := pod == nil || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if rt != nil && (gone || rt.UID != pod.UID) {
		if err := k.teardown(key, rt); err != nil {
			return err
		}
		rt = nil
	}
	if gone {
		if pod != nil && pod.DeletionTimestamp != nil {
			err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0), Preconditions: metav1.NewUIDPreconditions(string(pod.UID))})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				return fmt.Errorf("delete pod: %w", err)
			}
		}
		return nil
	}
	if pod.Spec.HostNetwork {
		if pod.Status.Phase != corev1.PodRunning {
			return k.writeStatus(ctx, pod, []netip.Addr{k.node.Address()})
		}
		return nil
	}
	if rt == nil {
		var err error
		if rt, err = k.setup(ctx, pod); err != nil {
			return err
		}
		k.mu.Lock()
		k.pods[key] = rt
		k.mu.Unlock()
	}
	if pod.Status.Phase != corev1.PodRunning || len(pod.Status.PodIPs) == 0 {
		return k.writeStatus(ctx, pod, rt.IPs)
	}
	return nil
}

// podNetNS names a pod's namespace: the lab's prefix and a hash of its UID.
func (k *kubelet) podNetNS(uid types.UID) string {
	h := sha256.Sum256([]byte(uid))
	return k.prefix + "-p" + hex.EncodeToString(h[:5])
}

func (k *kubelet) setup(ctx context.Context, pod *corev1.Pod) (*podRT, error) {
	name := k.podNetNS(pod.UID)
	_ = delNS(name) // a leftover of a failed attempt
	if err := addNS(name); err != nil {
		return nil, err
	}
	rt := &libcni.RuntimeConf{
		ContainerID: "lab" + strings.ReplaceAll(string(pod.UID), "-", ""),
		NetNS:       NSPath(name),
		IfName:      "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", "lab" + string(pod.UID)}, {"K8S_POD_UID", string(pod.UID)}},
	}
	res, err := k.cniAdd(ctx, rt)
	if err != nil {
		_ = delNS(name)
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	var ips []netip.Addr
	for _, c := range res.IPs {
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	srv, err := serve(k.log, name, pod)
	if err != nil {
		_ = k.cniDel(rt)
		_ = delNS(name)
		return nil, err
	}
	k.log.Info("pod running", "pod", pod.Namespace+"/"+pod.Name, "node", k.node.Name, "ips", ips, "netns", name)
	return &podRT{UID: pod.UID, NetNS: name, IPs: ips, srv: srv, rt: rt}, nil
}

func (k *kubelet) teardown(key string, rt *podRT) error {
	rt.srv.close()
	if err := k.cniDel(rt.rt); err != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	if err := delNS(rt.NetNS); err != nil {
		return err
	}
	k.mu.Lock()
	if k.pods[key] == rt {
		delete(k.pods, key)
	}
	k.mu.Unlock()
	k.log.Info("pod removed", "pod", key, "node", k.node.Name)
	return nil
}

// The plugin runs in the node's namespace, as kubelet's runtime would call
// it there: the exec happens on a thread inside it.
func (k *kubelet) inNode(f func() error) error {
	h, err := ns.GetNS(NSPath(k.netns))
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

func (k *kubelet) cniAdd(ctx context.Context, rt *libcni.RuntimeConf) (*current.Result, error) {
	var out *current.Result
	err := k.inNode(func() error {
		r, err := k.cni.AddNetworkList(ctx, k.conf, rt)
		if err != nil {
			return err
		}
		out, err = current.NewResultFromResult(r)
		return err
	})
	return out, err
}

func (k *kubelet) cniDel(rt *libcni.RuntimeConf) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return k.inNode(func() error { return k.cni.DelNetworkList(ctx, k.conf, rt) })
}

func (k *kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, ips []netip.Addr) error {
	p := pod.DeepCopy()
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = k.node.Address().String()
	p.Status.HostIPs = []corev1.HostIP{{IP: k.node.Address().String()}}
	p.Status.PodIPs = nil
	for _, a := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0].String()
	}
	if p.Status.StartTime == nil {
		p.Status.StartTime = &now
	}
	p.Status.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.PodReadyToStartContainers, corev1.ContainersReady, corev1.PodReady} {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	p.Status.ContainerStatuses = nil
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image,
			Ready: true, Started: ptr.To(true), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}})
	}
	_, err := k.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("pod status: %w", err)
	}
	return nil
}

// Pods lists the pods this kubelet runs.
func (k *kubelet) Pods() []PodInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []PodInfo
	for key, rt := range k.pods {
		ns, name, _ := strings.Cut(key, "/")
		out = append(out, PodInfo{Namespace: ns, Name: name, Node: k.node.Name, NetNS: rt.NetNS, IPs: rt.IPs})
	}
	return out
}

// stopPods removes every pod's namespace without CNI (the node is going).
func (k *kubelet) stopPods() {
	k.mu.Lock()
	pods := k.pods
	k.pods = map[string]*podRT{}
	k.mu.Unlock()
	for _, rt := range pods {
		rt.srv.close()
		_ = delNS(rt.NetNS)
	}
}

var errNoNodes = errors.New("no Ready lab node for the pod")
