// Package hostveth owns the host end of a pod's point-to-point veth, the
// one thing the CNI plugin creates and the agent deletes:
//
//   - its name, Prefix and HexLen lowercase hex characters of a SHA-256 of
//     the pod (namespace/name, or the container ID) and the pod's interface
//     (Name), and the shape every such name has (IsTern), on which policy's
//     dispatch and the agent's checks rely;
//   - its MAC, the pod's gateway (MAC);
//   - the link group of host veths waiting to be deleted (Group), and the
//     kernel operations on them: Detach (down and into Group), Delete (one
//     veth, by name and index), DeleteDisposed (all of Group in one request)
//     and Up.
//
// Names, the MAC and the group are values; only link.go touches the kernel.
package hostveth

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
)

const (
	// Prefix starts the name of every host veth tern creates; iptables
	// matches all of them as "tern+".
	Prefix = "tern"
	// HexLen is the number of lowercase hex characters after Prefix: the
	// name is IFNAMSIZ-1 = 15 characters long.
	HexLen = 11
	// Group is the link group of host veths whose pods are gone, down,
	// waiting for the agent to delete them all in one request.
	Group = 0x7e52
)

// MAC is the MAC of every host veth: the pod's gateway.
var MAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// Name is the host veth of a pod's interface: Prefix and HexLen hex
// characters of a SHA-256 of "<namespace>.<pod>" (or of the container ID
// when namespace or pod is empty); for an interface other than eth0 (a
// second tern attachment), of "<namespace>.<pod>.<ifName>".
func Name(namespace, pod, containerID, ifName string) string {
	key := containerID
	if namespace != "" && pod != "" {
		key = namespace + "." + pod
	}
	if ifName != "" && ifName != "eth0" {
		key += "." + ifName
	}
	sum := sha256.Sum256([]byte(key))
	return Prefix + hex.EncodeToString(sum[:])[:HexLen]
}

// IsTern reports whether name has the shape of the names Name gives:
// Prefix and exactly HexLen lowercase hex characters.
func IsTern(name string) bool {
	if len(name) != len(Prefix)+HexLen || name[:len(Prefix)] != Prefix {
		return false
	}
	for i := len(Prefix); i < len(name); i++ {
		if c := name[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Link names a host veth by name and index, so that a veth of the same name
// created since (a new sandbox of the same pod) is never mistaken for it.
type Link struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
}
