package dataplane

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/tern-net/tern/policy"
)

// What the compiler makes of IPv6 and dual-stack policies, odd blocks
// included (IPv4-mapped ones, which it once put in inet6 sets), the driver
// accepts: rules of each family refer to sets of that family, and every
// member parses as one of its set's family.
func TestCompiledIPv6RulesetIsValid(t *testing.T) {
	for name, pols := range map[string][]*networkingv1.NetworkPolicy{
		"dual-stack": {isolateBPolicy("fd10:244::/32", "fd10:244:1::/48")},
		"IPv4 block": {isolateBPolicy("10.244.0.0/16", "10.244.1.0/24", "fd10:244:1::/48")},
		"mapped":     {isolateBPolicy("::ffff:10.244.0.0/112")},
		"mapped except": {isolateBPolicy("::/0", "::ffff:0:0/96", "fd10:244:1::/48"),
			isolateBPolicy("fd10:244::/32", "::ffff:10.244.1.0/120")},
	} {
		t.Run(name, func(t *testing.T) {
			rs := policy.Compile(labInput(pols))
			if _, err := validateRuleset(rs, true); err != nil {
				t.Fatalf("%v\n%s", err, rs.String())
			}
			if _, err := planSets(map[string]*ipsetState{}, rs.Sets, nil); err != nil {
				t.Fatalf("%v\n%s", err, rs.String())
			}
			if len(chainNames(rs, true)) == 0 {
				t.Fatal("no IPv6 chains")
			}
		})
	}
}
