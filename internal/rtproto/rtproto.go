// Package rtproto owns the route protocol number that marks every route tern
// writes, whoever writes it: the agent's dataplane (blackholes of the node's
// pod CIDRs, routes learned over BGP) and the CNI plugin (the host route to a
// pod, the routes inside the pod). It is its own leaf so that the CNI plugin
// can mark its routes without linking the agent's dataplane.
package rtproto

// Tern is tern's route protocol (iproute2 name: "tern" in rt_protos). Only
// routes of this protocol are ever read back, changed or swept as tern's.
const Tern = 96
