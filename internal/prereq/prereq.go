// Package prereq decides what a test does when something it needs from the
// machine (root, a Debian package) is missing: it skips, or, under CI=true,
// fails, so that CI never passes by running nothing. It imports nothing of
// tern's, so that every package's tests can use it.
package prereq

import (
	"fmt"
	"os"
	"testing"
)

// InCI reports whether missing prerequisites must fail rather than skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips the test for want of what, or fails it under CI=true.
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing under CI=true: %s", what)
	}
	t.Skipf("prerequisite missing: %s", what)
}

// RequireRoot skips the test when not root, or fails it under CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root (network namespaces)")
	}
}

// RequirePath skips the test when path is missing, or fails it under CI=true.
func RequirePath(t testing.TB, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, fmt.Sprintf("%s (%s; run `make deps`)", what, path))
	}
}
