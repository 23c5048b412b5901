package policy

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Names of what Compile emits. They are derived from stable identities (a
// pod's "namespace/name", a set's canonical meaning), never from positions,
// so they stay the same from one sync to the next and the driver rewrites
// only what changed.

const (
	// ingressChainPrefix and egressChainPrefix start the per-pod chains:
	// "TERN-PI-" and "TERN-PE-" followed by nameHashLen characters (24 in all).
	ingressChainPrefix = ChainPrefix + "I-"
	egressChainPrefix  = ChainPrefix + "E-"
	// nameHashLen is the number of base32 characters (5 bits each: 80 bits)
	// of a name's hash.
	nameHashLen = 16
	// maxChainName and maxSetName are the kernel's limits (28 and 31
	// characters, one byte less than XT_EXTENSION_MAXNAMELEN and
	// IPSET_MAXNAMELEN for the terminating NUL).
	maxChainName = 28
	maxSetName   = 31
	// maxLogPrefix keeps the NFLOG prefix under the kernel's 64 bytes.
	maxLogPrefix = 60
)

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// nameHash is nameHashLen lowercase base32 characters of the SHA-256 of s.
func nameHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return lowerBase32.EncodeToString(h[:nameHashLen*5/8])
}

// podChainNames are the ingress and egress chains of the pod "ns/name".
func podChainNames(podKey string) (ingress, egress string) {
	h := nameHash(podKey)
	return ingressChainPrefix + h, egressChainPrefix + h
}

// setName is the ipset of a canonical set key in one family. The family is
// part of the hash: ipset names are shared by both families.
func setName(v6 bool, key string) string {
	return SetPrefix + nameHash(familyName(v6)+"\x00"+key)
}

// familyName is the ipset family.
func familyName(v6 bool) string {
	if v6 {
		return "inet6"
	}
	return "inet"
}

// logPrefix is the NFLOG prefix of a pod's drops: one argument without
// spaces or quotes ("tern-drop-in:ns/pod"), at most maxLogPrefix bytes.
// Namespace and pod names are DNS names, so nothing needs quoting; anything
// else is replaced, so the driver can join arguments with spaces.
func logPrefix(ingress bool, podKey string) string {
	dir := "out"
	if ingress {
		dir = "in"
	}
	p := "tern-drop-" + dir + ":" + podKey
	p = strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' || r == '"' || r == '\'' || r == '\\' {
			return '_'
		}
		return r
	}, p)
	if len(p) > maxLogPrefix {
		p = p[:maxLogPrefix]
	}
	return p
}
