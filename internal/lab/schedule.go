// The lab's scheduler: pods that name no node bound to a lab node.

package lab

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// schedule binds pods that name no node to a lab node, round-robin among the
// nodes whose labels match the pod's nodeSelector.
func (d *daemon) schedule(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName="})
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
				continue
			}
			if err := d.bind(ctx, p); err != nil {
				d.log.Warn("cannot schedule pod", "pod", p.Namespace+"/"+p.Name, "err", err)
			}
		}
		w.Stop()
	}
}

func (d *daemon) bind(ctx context.Context, p *corev1.Pod) error {
	d.mu.Lock()
	var names []string
	for name, ln := range d.nodes {
		ok := true
		for k, v := range p.Spec.NodeSelector {
			if nodeLabel(ln.Node, k) != v {
				ok = false
			}
		}
		if ok && ln.agent != nil {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return d.nodes[a].Number - d.nodes[b].Number })
	if len(names) == 0 {
		d.mu.Unlock()
		return errNoNodes
	}
	node := names[d.rr%len(names)]
	d.rr++
	d.mu.Unlock()
	return d.client.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID},
		Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{})
}

func nodeLabel(n Node, key string) string {
	switch key {
	case "kubernetes.io/hostname":
		return n.Name
	case LabelRack:
		return fmt.Sprint(n.Rack)
	case LabelReflector:
		if n.Reflector {
			return "true"
		}
	}
	return ""
}
