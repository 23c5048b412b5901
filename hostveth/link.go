package hostveth

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Delete deletes the tern veth with this name and index. A link that is
// gone, or whose index now belongs to another name, is left alone.
func Delete(name string, index int) error {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("find link %d: %w", index, err)
	}
	if link.Attrs().Name != name || link.Type() != "veth" || !strings.HasPrefix(name, Prefix) {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// DeleteDisposed deletes the links of Group: when all are tern veths,
// in one request (the kernel then waits for one RCU grace period for all of
// them, not one per veth); a link of the group that is not a tern veth is
// never deleted, and then the tern veths go one by one.
func DeleteDisposed() (int, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	var ours []netlink.Link
	foreign := false
	for _, l := range links {
		if l.Attrs().Group != Group {
			continue
		}
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, Prefix) {
			ours = append(ours, l)
		} else {
			foreign = true
		}
	}
	if len(ours) == 0 {
		return 0, nil
	}
	if !foreign {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(Group)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		if err == nil || errors.Is(err, unix.ENODEV) {
			return len(ours), nil
		}
		// fall through to one by one
	}
	var errs []error
	for _, l := range ours {
		if err := Delete(l.Attrs().Name, l.Attrs().Index); err != nil {
			errs = append(errs, err)
		}
	}
	if foreign {
		errs = append(errs, fmt.Errorf("link group %#x holds links that are not tern veths; left alone", Group))
	}
	return len(ours), errors.Join(errs...)
}

// Detach finds the host veth paired with the pod's interface contIf
// in the namespace at netnsPath, sets it down (which removes the host routes
// to the pod through it) and marks it for the agent to delete. It returns a
// zero Link when there is no such veth: the namespace or the interface is
// gone, or its peer is not a tern veth.
func Detach(netnsPath, contIf string) (Link, error) {
	var none Link
	var nf netlink.LinkNotFoundError
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		var gone ns.NSPathNotExistErr
		if errors.As(err, &gone) || errors.Is(err, os.ErrNotExist) {
			return none, nil // gone: its veth went with it
		}
		return none, fmt.Errorf("open the pod's network namespace %s: %w", netnsPath, err)
	}
	defer podNS.Close()
	podNL, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return none, fmt.Errorf("netlink socket in the pod's namespace: %w", err)
	}
	defer podNL.Close()
	cont, err := podNL.LinkByName(contIf)
	if errors.As(err, &nf) {
		return none, nil
	}
	if err != nil {
		return none, fmt.Errorf("look up %s in the pod: %w", contIf, err)
	}
	if cont.Type() != "veth" || cont.Attrs().ParentIndex <= 0 {
		return none, nil
	}
	hostNL, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return none, fmt.Errorf("netlink socket: %w", err)
	}
	defer hostNL.Close()
	host, err := hostNL.LinkByIndex(cont.Attrs().ParentIndex)
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return none, nil // the peer is not in this namespace
	}
	if err != nil {
		return none, fmt.Errorf("look up the host end of %s: %w", contIf, err)
	}
	// The same index in this namespace could be another link: it is the peer
	// only if it points back at the pod's interface and is tern's.
	a := host.Attrs()
	if host.Type() != "veth" || !strings.HasPrefix(a.Name, Prefix) ||
		a.ParentIndex != cont.Attrs().Index || a.HardwareAddr.String() != MAC.String() {
		return none, nil
	}
	// Down takes the routes through it away at once; the group marks it for
	// the agent's batched deletion.
	if err := hostNL.LinkSetDown(host); err != nil {
		return none, fmt.Errorf("set host veth %s down: %w", a.Name, err)
	}
	if err := hostNL.LinkSetGroup(host, Group); err != nil {
		return none, fmt.Errorf("mark host veth %s for deletion: %w", a.Name, err)
	}
	return Link{Name: a.Name, Index: a.Index}, nil
}

// Up reports whether a link of this name exists and is up.
func Up(name string) bool {
	l, err := netlink.LinkByName(name)
	return err == nil && l.Attrs().Flags&net.FlagUp != 0
}
