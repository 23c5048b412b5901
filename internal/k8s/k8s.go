// Package k8s is tern-agent's view of the Kubernetes API: informers for the
// objects the agent programs from, turned into plain values (this node, the
// pods on it), and the one write the agent makes: the node's
// NetworkUnavailable condition. Nothing outside this package touches
// client-go's caches.
package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// AddressAnnotation on a Node overrides the addresses tern uses for it (by
// default its first InternalIP of each family): one address, or an IPv4 and
// an IPv6 address separated by a comma. A family the annotation does not
// name keeps the InternalIP of that family.
const AddressAnnotation = "tern.io/address"

// Node is what the agent needs of a Node object.
type Node struct {
	Name     string
	PodCIDRs []netip.Prefix
	// IPv4 and IPv6 are the node's addresses (AddressAnnotation, else the
	// first InternalIP of each family); either may be unset.
	IPv4, IPv6  netip.Addr
	Labels      map[string]string
	Annotations map[string]string
	// NetworkAvailable: the node's NetworkUnavailable condition is False.
	NetworkAvailable bool
}

// Pod is what the agent needs of a Pod on its node.
type Pod struct {
	Namespace, Name string
	// UIDs the runtime may know the pod by: its own, and for a static pod
	// the kubelet's (the mirror pod's annotations carry it).
	UIDs        []string
	HostNetwork bool
	IPs         []netip.Addr
}

// HasUID reports whether uid is one of the pod's.
func (p Pod) HasUID(uid string) bool { return slices.Contains(p.UIDs, uid) }

// Static pods: kubelet's UID of the pod, carried by its mirror pod.
const (
	annotationConfigMirror = "kubernetes.io/config.mirror"
	annotationConfigHash   = "kubernetes.io/config.hash"
)

func podFromAPI(p *corev1.Pod) Pod {
	pod := Pod{Namespace: p.Namespace, Name: p.Name, UIDs: []string{string(p.UID)}, HostNetwork: p.Spec.HostNetwork}
	for _, a := range []string{annotationConfigMirror, annotationConfigHash} {
		if v := p.Annotations[a]; v != "" && !slices.Contains(pod.UIDs, v) {
			pod.UIDs = append(pod.UIDs, v)
		}
	}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			pod.IPs = append(pod.IPs, a)
		}
	}
	return pod
}

// trim drops from cached objects what the agent never reads and what makes
// most of their size: managed fields, a node's list of images, and of a pod
// everything but its identity, labels, node, ports and addresses (the agent
// watches every pod of the cluster, for policy peers).
func trim(obj any) (any, error) {
	if p, ok := obj.(*corev1.Pod); ok {
		return slimPod(p), nil
	}
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	if n, ok := obj.(*corev1.Node); ok {
		n.Status.Images = nil
	}
	return obj, nil
}

func slimPod(p *corev1.Pod) *corev1.Pod {
	s := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, a := range []string{annotationConfigMirror, annotationConfigHash} {
		if v, ok := p.Annotations[a]; ok {
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations[a] = v
		}
	}
	for _, c := range p.Spec.Containers {
		var ports []corev1.ContainerPort
		for _, cp := range c.Ports {
			if cp.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol})
			}
		}
		s.Spec.Containers = append(s.Spec.Containers, corev1.Container{Name: c.Name, Ports: ports})
	}
	return s
}

// ErrNodeNotFound: this node has no Node object (yet, or any more).
var ErrNodeNotFound = errors.New("does not exist in the API")

// Config builds the client configuration: from kubeconfig when given, else
// in-cluster.
func Config(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster configuration (outside a cluster, pass --kubeconfig or --pod-cidr): %w", err)
	}
	return cfg, nil
}

// Watcher keeps the informers' caches of the objects the agent follows.
type Watcher struct {
	client   kubernetes.Interface
	nodeName string
	log      *slog.Logger

	cluster informers.SharedInformerFactory // nodes, pods, namespaces, network policies, services
	nodes   corelisters.NodeLister
	podsInf cache.SharedIndexInformer // every pod (policy peers), indexed by node
	nsList  corelisters.NamespaceLister
	netpols networkinglisters.NetworkPolicyLister
	svcs    corelisters.ServiceLister
	slices  discoverylisters.EndpointSliceLister
	synced  []cache.InformerSynced
	isSync  atomic.Bool

	dynamic    dynamic.Interface
	crds       dynamicinformer.DynamicSharedInformerFactory
	crdsOn     atomic.Bool
	crdsAbsent atomic.Bool // discovery says the API does not serve them (yet)

	// ClusterNetworkPolicies (cnp.go).
	cnp cnpWatch

	// The Secrets of BGP passwords, in secretNamespace only; nil without one.
	secretNamespace string
	secretsInf      informers.SharedInformerFactory
	secrets         corelisters.SecretLister
	secretsSynced   atomic.Bool
}

// The custom resources of API group tern.io the agent watches.
var (
	BGPConfigurations = schema.GroupVersionResource{Group: "tern.io", Version: "v1alpha1", Resource: "bgpconfigurations"}
	BGPPeers          = schema.GroupVersionResource{Group: "tern.io", Version: "v1alpha1", Resource: "bgppeers"}
)

// NewWatcher prepares informers for node nodeName, and for the Secrets of
// secretNamespace (the BGP passwords; none watched when it is empty).
// Nothing runs before Start.
func NewWatcher(client kubernetes.Interface, dyn dynamic.Interface, nodeName, secretNamespace string, log *slog.Logger) *Watcher {
	w := &Watcher{client: client, dynamic: dyn, nodeName: nodeName, secretNamespace: secretNamespace, log: log}
	if secretNamespace != "" {
		w.secretsInf = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(secretNamespace))
		_ = w.secretsInf.Core().V1().Secrets().Informer().SetTransform(trim)
		w.secrets = w.secretsInf.Core().V1().Secrets().Lister()
	}
	w.crds = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	w.cluster = informers.NewSharedInformerFactory(client, 0)
	nodes := w.cluster.Core().V1().Nodes()
	pods := w.cluster.Core().V1().Pods()
	for _, inf := range []cache.SharedIndexInformer{nodes.Informer(), pods.Informer(),
		w.cluster.Core().V1().Namespaces().Informer(), w.cluster.Networking().V1().NetworkPolicies().Informer()} {
		_ = inf.SetTransform(trim) // before start, it cannot fail
	}
	_ = pods.Informer().AddIndexers(cache.Indexers{indexNode: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}})
	w.nodes, w.podsInf = nodes.Lister(), pods.Informer()
	w.nsList, w.netpols = w.cluster.Core().V1().Namespaces().Lister(), w.cluster.Networking().V1().NetworkPolicies().Lister()
	svcs, eps := w.cluster.Core().V1().Services(), w.cluster.Discovery().V1().EndpointSlices()
	w.svcs, w.slices = svcs.Lister(), eps.Lister()
	w.synced = []cache.InformerSynced{
		nodes.Informer().HasSynced,
		pods.Informer().HasSynced,
		w.cluster.Core().V1().Namespaces().Informer().HasSynced,
		w.cluster.Networking().V1().NetworkPolicies().Informer().HasSynced,
		svcs.Informer().HasSynced,
		eps.Informer().HasSynced,
	}
	return w
}

// Start runs the informers until ctx is done and calls changed after every
// event (the caller coalesces). It returns at once.
func (w *Watcher) Start(ctx context.Context, changed func()) error {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(any, any) { changed() },
		DeleteFunc: func(any) { changed() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		w.cluster.Core().V1().Nodes().Informer(),
		w.cluster.Core().V1().Pods().Informer(),
		w.cluster.Core().V1().Namespaces().Informer(),
		w.cluster.Networking().V1().NetworkPolicies().Informer(),
		w.cluster.Core().V1().Services().Informer(),
		w.cluster.Discovery().V1().EndpointSlices().Informer(),
	} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("informer handler: %w", err)
		}
	}
	w.cluster.Start(ctx.Done())
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), w.synced...) {
			w.isSync.Store(true)
			w.log.Info("Kubernetes caches synced")
			changed()
		}
	}()
	go w.watchCustomResources(ctx, h)
	go w.watchClusterPolicies(ctx, h)
	if w.cnp.statusNS != "" {
		go w.runStatus(ctx)
	}
	if w.secretsInf != nil {
		if _, err := w.secretsInf.Core().V1().Secrets().Informer().AddEventHandler(h); err != nil {
			return fmt.Errorf("informer handler: %w", err)
		}
		w.secretsInf.Start(ctx.Done())
		go w.waitSecrets(ctx, changed)
	}
	return nil
}

// secretsSlow: the Secrets not listed after this long get a log line (BGP
// peers with a password wait for them).
const secretsSlow = 30 * time.Second

// waitSecrets marks the Secrets cache synced once it has its list, and asks
// for a pass then.
func (w *Watcher) waitSecrets(ctx context.Context, changed func()) {
	synced := w.secretsInf.Core().V1().Secrets().Informer().HasSynced
	slow := time.AfterFunc(secretsSlow, func() {
		w.log.Warn("the Secrets of BGP passwords are not listed yet: BGPPeers with a passwordSecretRef wait (may tern-agent list and watch Secrets there? manifests/02-rbac.yaml)",
			"namespace", w.secretNamespace)
	})
	defer slow.Stop()
	if cache.WaitForCacheSync(ctx.Done(), synced) {
		w.secretsSynced.Store(true)
		w.log.Info("watching Secrets", "namespace", w.secretNamespace)
		changed()
	}
}

// watchCustomResources starts the tern.io informers once the API serves the
// CRDs (they may be installed after the agent). The dataplane does not wait
// for them: what they configure (BGP) starts when they are in.
func (w *Watcher) watchCustomResources(ctx context.Context, h cache.ResourceEventHandler) {
	gv := BGPPeers.GroupVersion().String()
	for {
		_, err := w.client.Discovery().ServerResourcesForGroupVersion(gv)
		if err == nil {
			break
		}
		if apierrors.IsNotFound(err) && !w.crdsAbsent.Swap(true) {
			w.log.Warn("tern's CRDs are not installed: BGP runs on its defaults (kubectl apply -f manifests/)")
			h.OnAdd(nil, false) // a pass, now that BGP knows
		} else if !apierrors.IsNotFound(err) {
			w.log.Debug("discovery of tern.io", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
	for _, gvr := range []schema.GroupVersionResource{BGPConfigurations, BGPPeers} {
		if _, err := w.crds.ForResource(gvr).Informer().AddEventHandler(h); err != nil {
			w.log.Error("informer handler", "resource", gvr.Resource, "err", err)
			return
		}
	}
	w.crds.Start(ctx.Done())
	for gvr, ok := range w.crds.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return
		}
		w.log.Info("watching custom resources", "resource", gvr.Resource)
	}
	w.crdsOn.Store(true)
	w.crdsAbsent.Store(false)
	h.OnAdd(nil, false) // a pass, now that BGP can plan
}

// CustomResourcesSynced reports whether the tern.io caches are in.
func (w *Watcher) CustomResourcesSynced() bool { return w.crdsOn.Load() }

// CustomResources returns the cached objects of a tern.io resource.
func (w *Watcher) CustomResources(gvr schema.GroupVersionResource) ([]*unstructured.Unstructured, error) {
	if !w.crdsOn.Load() {
		return nil, fmt.Errorf("%s: not watched yet (are tern's CRDs installed?)", gvr.Resource)
	}
	objs, err := w.crds.ForResource(gvr).Lister().List(everything)
	if err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	return out, nil
}

// Synced reports whether the caches the dataplane programs from have their
// initial lists. The tern.io resources and the Secrets, which only BGP
// reads, have theirs apart (BGPInput says when they are not in).
func (w *Watcher) Synced() bool { return w.isSync.Load() }

// LocalNode returns this node as the cache has it.
func (w *Watcher) LocalNode() (Node, error) {
	n, err := w.nodes.Get(w.nodeName)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return Node{}, fmt.Errorf("%w: node %q (is --node-name / NODE_NAME right?)", ErrNodeNotFound, w.nodeName)
		}
		return Node{}, err
	}
	return NodeFromAPI(n)
}

// NodeFromAPI converts a Node object.
func NodeFromAPI(n *corev1.Node) (Node, error) {
	out := Node{Name: n.Name, Labels: n.Labels, Annotations: n.Annotations}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			out.NetworkAvailable = c.Status == corev1.ConditionFalse
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return out, fmt.Errorf("node %s: podCIDR %q: %w", n.Name, c, err)
		}
		out.PodCIDRs = append(out.PodCIDRs, p.Masked())
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			setAddr(&out, ip.Unmap(), false)
		}
	}
	if a, ok := n.Annotations[AddressAnnotation]; ok {
		var seen4, seen6 bool
		for _, f := range strings.Split(a, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil || ip.Zone() != "" {
				return out, fmt.Errorf("node %s: annotation %s=%q: %q is not an IP address (want one address, or an IPv4 and an IPv6 address separated by a comma)", n.Name, AddressAnnotation, a, f)
			}
			ip = ip.Unmap()
			if (ip.Is4() && seen4) || (ip.Is6() && seen6) {
				return out, fmt.Errorf("node %s: annotation %s=%q: two addresses of one family (want at most one IPv4 and one IPv6 address)", n.Name, AddressAnnotation, a)
			}
			seen4, seen6 = seen4 || ip.Is4(), seen6 || ip.Is6()
			setAddr(&out, ip, true)
		}
	}
	return out, nil
}

// setAddr sets the node's address of ip's family: the first one, or any
// with override.
func setAddr(n *Node, ip netip.Addr, override bool) {
	dst := &n.IPv4
	if ip.Is6() {
		dst = &n.IPv6
	}
	if override || !dst.IsValid() {
		*dst = ip
	}
}

// indexNode indexes pods by spec.nodeName.
const indexNode = "node"

// LocalPods returns the pods bound to this node, keyed by "namespace/name".
func (w *Watcher) LocalPods() (map[string]Pod, error) {
	list, err := w.podsInf.GetIndexer().ByIndex(indexNode, w.nodeName)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Pod, len(list))
	for _, o := range list {
		p := o.(*corev1.Pod)
		out[p.Namespace+"/"+p.Name] = podFromAPI(p)
	}
	return out, nil
}

// PodGone asks the API server itself, not the cache (which may be stale
// while the watch is broken), whether the pod namespace/name with uid is gone:
// not found, or there under another UID. An error means "do not know".
func (w *Watcher) PodGone(ctx context.Context, namespace, name, uid string) (bool, error) {
	p, err := w.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return uid != "" && !podFromAPI(p).HasUID(uid), nil
}

// SetNetworkAvailable sets this node's NetworkUnavailable condition to False
// (a strategic merge patch of the status: the condition list merges by type).
func (w *Watcher) SetNetworkAvailable(ctx context.Context) error {
	now := metav1.NewTime(time.Now())
	patch, err := json.Marshal(map[string]any{
		"status": map[string]any{
			"conditions": []corev1.NodeCondition{{
				Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
				Reason: "TernIsUp", Message: "tern-agent has programmed this node's routes",
				LastTransitionTime: now, LastHeartbeatTime: now,
			}},
		},
	})
	if err != nil {
		return err
	}
	_, err = w.client.CoreV1().Nodes().Patch(ctx, w.nodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("set NetworkUnavailable=False on node %s: %w", w.nodeName, err)
	}
	return nil
}
