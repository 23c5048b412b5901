// Package bgp will own tern's embedded BGP speaker (GoBGP v3): peers, the
// announcement of each node's pod CIDRs and the routes learned from others. It
// is the only package that imports GoBGP. Built by the BGP issue.
package bgp
