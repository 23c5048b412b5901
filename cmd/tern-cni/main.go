// Command tern-cni is tern's CNI plugin, installed as /opt/cni/bin/tern.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tern-net/tern/cniplugin"
)

// Netlink work in namespaces must stay on one OS thread.
func init() { runtime.LockOSThread() }

// version is set at build time.
var version = "dev"

func main() {
	skel.PluginMainFuncs(cniplugin.Funcs(), cniplugin.SupportedVersions, "tern CNI plugin "+version)
}
