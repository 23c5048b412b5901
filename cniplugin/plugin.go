package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tern-net/tern/hostveth"
	"github.com/tern-net/tern/internal/agentapi"
)

// ErrCodePoolFull is tern's own CNI error code (100+ are the plugin's) for a
// node whose pod CIDR has no free address.
const ErrCodePoolFull uint = 100

// Funcs returns the CNI verbs for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC}
}

// invocation is what every verb starts from.
type invocation struct {
	conf   *NetConf
	log    *slog.Logger
	agent  *agentapi.Client
	ctx    context.Context
	cancel context.CancelFunc
	close  func()
}

func start(args *skel.CmdArgs, verb string) (*invocation, error) {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	log, closeLog := newLogger(conf)
	log = log.With("verb", verb, "containerID", args.ContainerID, "ifName", args.IfName)
	timeout := time.Duration(conf.TimeoutSeconds) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return &invocation{
		conf: conf, log: log, agent: agentapi.NewClient(conf.AgentSocket, timeout),
		ctx: ctx, cancel: cancel, close: closeLog,
	}, nil
}

func (iv *invocation) done() { iv.cancel(); iv.close() }

// agentError turns an agent failure into a CNI error a runtime acts on.
func (iv *invocation) agentError(what string, err error) error {
	switch {
	case errors.Is(err, agentapi.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("%s: tern-agent is unreachable at %s", what, iv.conf.AgentSocket),
			"is the tern-agent pod running on this node? check `kubectl -n kube-system get pods -l k8s-app=tern-agent -o wide` and its logs: "+err.Error())
	case agentapi.IsCode(err, agentapi.CodeNotReady):
		return types.NewError(types.ErrTryAgainLater, what+": tern-agent is not ready yet", err.Error())
	case agentapi.IsCode(err, agentapi.CodePoolFull):
		return types.NewError(ErrCodePoolFull, what+": this node's pod CIDR is full", err.Error()+"; delete pods on this node or give the node a larger pod CIDR")
	default:
		return types.NewError(types.ErrInternal, what+": "+err.Error(), "")
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	iv, err := start(args, "ADD")
	if err != nil {
		return err
	}
	defer iv.done()
	if iv.conf.PrevResult != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "tern must be the first plugin of the conflist",
			"it creates the pod's interface; put chained plugins such as portmap after it")
	}
	pod, err := ParseArgs(args.Args)
	if err != nil {
		return err
	}
	hostIf := hostveth.Name(pod.Namespace, pod.Name, args.ContainerID, args.IfName)
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("cannot open the pod's network namespace %q: %v", args.Netns, err), "CNI_NETNS must name an existing network namespace")
	}
	defer podNS.Close()

	att := agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	t0 := time.Now()
	// The agent allocates while this process builds the veth pair.
	type allocation struct {
		al  agentapi.Allocation
		err error
	}
	allocated := make(chan allocation, 1)
	go func() {
		// An agent that is starting (socket not there yet, or not ready) is
		// waited for, within agentTimeoutSeconds: a refusal now would send
		// kubelet into its sandbox back-off for a few hundred milliseconds'
		// wait.
		al, err := iv.agent.WaitForStart().Allocate(iv.ctx, agentapi.AllocateRequest{
			Attachment: att, Network: iv.conf.Name, Namespace: pod.Namespace, Pod: pod.Name, PodUID: pod.UID, HostIf: hostIf, Netns: args.Netns,
		})
		allocated <- allocation{al, err}
	}()
	mtu := iv.conf.MTU
	if mtu == 0 {
		mtu = 1500 // until the agent says what the uplink has
	}
	var a Attached
	p, perr := newPair(podNS, hostIf, args.IfName)
	if perr == nil {
		defer p.close()
		perr = p.create(mtu)
	}
	got := <-allocated // always: a failed ADD must not leave an allocation behind
	tAlloc := time.Since(t0)
	if perr == nil && got.err == nil {
		if iv.conf.MTU == 0 && got.al.MTU > 0 {
			mtu = got.al.MTU // the agent reads the uplink's MTU at each resync
		}
		a, perr = p.configure(got.al.IPs, mtu)
	}
	if perr != nil || got.err != nil {
		// Roll back what this ADD made: the veth (by index, never a namesake)
		// and the allocation; the runtime's DEL finds nothing left to do.
		if p != nil {
			if derr := p.destroy(); derr != nil {
				iv.log.Error("rollback: delete host veth", "err", derr)
			}
		}
		if got.err != nil {
			return iv.agentError("allocate pod address", got.err)
		}
		iv.log.Error("attach failed; rolled back", "hostIf", hostIf, "err", perr)
		if _, rerr := iv.agent.Release(iv.ctx, att); rerr != nil && !agentapi.IsCode(rerr, agentapi.CodeNotFound) {
			iv.log.Error("rollback: release address", "err", rerr)
		}
		var cniErr *types.Error
		if errors.As(perr, &cniErr) {
			return cniErr
		}
		return types.NewError(types.ErrInternal, "attach pod: "+perr.Error(), "")
	}
	iv.log.Info("attached", "pod", pod.Namespace+"/"+pod.Name, "hostIf", hostIf, "ips", got.al.IPs, "mtu", mtu,
		"allocate", tAlloc, "total", time.Since(t0))
	return types.PrintResult(BuildResult(a, iv.conf.DNS), iv.conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	iv, err := start(args, "DEL")
	if err != nil {
		return err
	}
	defer iv.done()
	pod, _ := ParseArgs(args.Args) // DEL must clean up even with odd args
	att := agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}

	// The host veth to remove is the peer of the pod's interface, found from
	// the pod's side: never a veth of the same name made for a newer sandbox
	// of the pod. Without the pod's namespace there is none: a veth dies with
	// its namespace. Its routes go now, so that the address is routed nowhere
	// once released; the veth itself the agent deletes after answering.
	host, err := hostveth.Detach(args.Netns, args.IfName)
	if err != nil {
		return types.NewError(types.ErrInternal, "detach pod: "+err.Error(), "")
	}
	var dispose []hostveth.Link
	if host.Index > 0 {
		dispose = append(dispose, host)
	}
	_, err = iv.agent.Release(iv.ctx, att, dispose...)
	if err != nil && !agentapi.IsCode(err, agentapi.CodeNotFound) {
		// The agent cannot delete it: do it here, then let the runtime retry.
		if host.Index > 0 {
			if derr := hostveth.Delete(host.Name, host.Index); derr != nil {
				iv.log.Error("delete host veth", "err", derr)
			}
		}
		return iv.agentError("release pod address", err)
	}
	iv.log.Info("detached", "pod", pod.Namespace+"/"+pod.Name, "hostIf", host.Name)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	iv, err := start(args, "CHECK")
	if err != nil {
		return err
	}
	defer iv.done()
	if iv.conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "the runtime must pass the cached result of ADD")
	}
	prev, err := current.NewResultFromResult(iv.conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot convert prevResult: "+err.Error(), "")
	}
	var hostIf string
	var ips []netip.Addr
	for _, itf := range prev.Interfaces {
		if itf.Sandbox == "" && strings.HasPrefix(itf.Name, hostveth.Prefix) {
			hostIf = itf.Name
		}
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface < len(prev.Interfaces) && prev.Interfaces[*ipc.Interface].Name == args.IfName {
			if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				ips = append(ips, ip.Unmap())
			}
		}
	}
	rec, err := iv.agent.Get(iv.ctx, agentapi.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		if agentapi.IsCode(err, agentapi.CodeNotFound) {
			return types.NewError(types.ErrInternal, "CHECK failed: tern-agent has no allocation for this attachment", "the pod's address is not reserved; delete and recreate the pod")
		}
		return iv.agentError("CHECK", err)
	}
	var problems []string
	if !sameAddrs(rec.IPs, ips) {
		problems = append(problems, fmt.Sprintf("tern-agent has %v for this attachment, the runtime's result has %v", rec.IPs, ips))
	}
	if hostIf == "" {
		hostIf = rec.HostIf
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("CHECK failed: the pod's network namespace %q cannot be opened: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	problems = append(problems, checkAttachment(podNS, hostIf, args.IfName, rec.IPs)...)
	if len(problems) > 0 {
		return types.NewError(types.ErrInternal, "CHECK failed: "+strings.Join(problems, "; "), "delete and recreate the pod to repair its network")
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	iv, err := start(args, "STATUS")
	if err != nil {
		return err
	}
	defer iv.done()
	st, err := iv.agent.Status(iv.ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("tern-agent is unreachable at %s", iv.conf.AgentSocket), err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "tern-agent is not ready: "+st.Reason, "")
	}
	for _, p := range st.Pools {
		if uint64(p.InUse) >= p.Size {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("pod CIDR %s is full (%d addresses)", p.CIDR, p.Size), "")
		}
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	iv, err := start(args, "GC")
	if err != nil {
		return err
	}
	defer iv.done()
	valid := make([]agentapi.Attachment, 0, len(iv.conf.ValidAttachments))
	for _, v := range iv.conf.ValidAttachments {
		valid = append(valid, agentapi.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	resp, err := iv.agent.GC(iv.ctx, iv.conf.Name, valid)
	if err != nil {
		return iv.agentError("GC", err)
	}
	// Each stale attachment goes as in DEL: its veth, found from its own
	// namespace if that still exists, down first; then its address.
	var errs []error
	released := 0
	for _, al := range resp.Stale {
		var dispose []hostveth.Link
		if al.Netns != "" {
			host, err := hostveth.Detach(al.Netns, al.IfName)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s/%s: %w", al.ContainerID, al.IfName, err))
				continue
			}
			if host.Index > 0 {
				dispose = append(dispose, host)
			}
		}
		if _, err := iv.agent.Release(iv.ctx, al.Attachment, dispose...); err != nil && !agentapi.IsCode(err, agentapi.CodeNotFound) {
			errs = append(errs, fmt.Errorf("release %s/%s: %w", al.ContainerID, al.IfName, err))
			continue
		}
		iv.log.Info("garbage-collected", "attachment", al.ContainerID+"/"+al.IfName, "pod", al.Namespace+"/"+al.Pod, "ips", al.IPs)
		released++
	}
	iv.log.Info("GC done", "stale", len(resp.Stale), "released", released)
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "GC: "+err.Error(), "")
	}
	return nil
}

func sameAddrs(a, b []netip.Addr) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, netip.Addr.Compare)
	slices.SortFunc(b, netip.Addr.Compare)
	return slices.Equal(a, b)
}

// newLogger logs to stderr and, when configured, to the log file.
func newLogger(conf *NetConf) (*slog.Logger, func()) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(conf.LogLevel))
	var w io.Writer = os.Stderr
	closeFn := func() {}
	if conf.LogFile != "" {
		// Its directory is the plugin's (/var/log/tern by default).
		_ = os.MkdirAll(filepath.Dir(conf.LogFile), 0o755)
		f, err := os.OpenFile(conf.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err == nil {
			w = io.MultiWriter(os.Stderr, f)
			closeFn = func() { f.Close() }
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("plugin", "tern", "pid", os.Getpid()), closeFn
}
