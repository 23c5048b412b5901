package policy

// What the external tests (package policy_test: those of policytest's
// cluster, which an in-package test cannot import, policytest importing
// policy) need of the package's insides.

// FreshCompiles is how many of c's compiles started afresh.
func (c *Compiler) FreshCompiles() int { return c.stats.fresh }

var (
	RulesetDiff        = rulesetDiff
	CheckDispatchDepth = checkDispatchDepth
)
