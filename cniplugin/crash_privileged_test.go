package cniplugin_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/tern-net/tern/internal/nodetest"
)

// TestAgentSIGKILLDuringConcurrentAdds kills the agent with SIGKILL while 50
// ADDs are in flight, restarts it, lets the "runtime" retry what failed (DEL,
// then ADD again, as kubelet does), and proves that no address went to two
// pods and that no allocation was lost or leaked.
func TestAgentSIGKILLDuringConcurrentAdds(t *testing.T) {
	const pods = 50
	n := nodetest.NewNode(t, "10.244.9.0/24")
	list := n.ConfList("1.0.0")
	podNS := make([]ns.NetNS, pods)
	for i := range podNS {
		podNS[i] = n.NewPodNS()
	}

	results := make([]*current.Result, pods)
	errs := make([]error, pods)
	var done atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = n.Add(list, nodetest.RuntimeConf(fmt.Sprintf("p%02d", i), podNS[i]))
			done.Add(1)
		}()
	}
	close(start)
	// Kill once some allocations are durable and others are still coming.
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := n.Client().Status(context.Background())
		if err == nil && len(st.Pools) == 1 && st.Pools[0].InUse >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocations never reached 8: %+v %v", st, err)
		}
		time.Sleep(time.Millisecond)
	}
	n.KillAgent()
	atKill := done.Load()
	if atKill >= pods {
		t.Fatalf("all %d ADDs finished before the kill; the test proved nothing", pods)
	}
	n.StartAgent()
	wg.Wait()

	failed := 0
	for i := range pods {
		if errs[i] == nil {
			continue
		}
		failed++
		if !strings.Contains(errs[i].Error(), "unreachable") && !strings.Contains(errs[i].Error(), "not ready") {
			t.Errorf("ADD p%02d failed with %v; want the agent-unreachable error (code 11)", i, errs[i])
		}
		rt := nodetest.RuntimeConf(fmt.Sprintf("p%02d", i), podNS[i])
		if err := n.Del(list, rt); err != nil {
			t.Fatalf("runtime's DEL after a failed ADD: %v", err)
		}
		if results[i], errs[i] = n.Add(list, rt); errs[i] != nil {
			t.Fatalf("retried ADD p%02d: %v\n%s", i, errs[i], n.AgentLog())
		}
	}
	t.Logf("killed the agent with %d of %d ADDs done; %d failed and were retried", atKill, pods, failed)

	// Every pod has one address, in its namespace, and no two are the same.
	owner := map[netip.Addr]int{}
	for i, r := range results {
		if len(r.IPs) != 1 {
			t.Fatalf("pod %d result: %+v", i, r)
		}
		ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
		ip = ip.Unmap()
		if j, dup := owner[ip]; dup {
			t.Fatalf("address %s given to pods %d and %d", ip, j, i)
		}
		owner[ip] = i
		if got := podAddr(t, podNS[i]); got != ip {
			t.Fatalf("pod %d has %s in its namespace, its result says %s", i, got, ip)
		}
	}
	// The agent's records are exactly the pods: nothing lost, nothing leaked.
	allocs, err := n.Client().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(allocs) != pods {
		t.Fatalf("agent holds %d allocations for %d pods", len(allocs), pods)
	}
	for _, al := range allocs {
		var i int
		if _, err := fmt.Sscanf(al.ContainerID, "ctr-p%02d", &i); err != nil || len(al.IPs) != 1 || owner[al.IPs[0]] != i {
			t.Fatalf("allocation %+v does not match the pod that has the address", al)
		}
	}
	veths, _ := n.Output("ip", "-o", "link", "show", "type", "veth")
	if c := strings.Count(veths, ": tern"); c != pods {
		t.Fatalf("%d tern veths for %d pods:\n%s", c, pods, veths)
	}
}

func podAddr(t *testing.T, podNS ns.NetNS) netip.Addr {
	t.Helper()
	var out netip.Addr
	err := podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 {
			return fmt.Errorf("addresses %v: %v", addrs, err)
		}
		out, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
