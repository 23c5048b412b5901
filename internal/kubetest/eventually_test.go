package kubetest_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tern-net/tern/internal/kubetest"
)

func TestEventuallyErr(t *testing.T) {
	calls := 0
	err := kubetest.EventuallyErr(5*time.Second, func() error {
		if calls++; calls < 3 {
			return errors.New("not there")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("EventuallyErr = %v after %d calls, want nil after 3", err, calls)
	}
	err = kubetest.EventuallyErr(250*time.Millisecond, func() error { return fmt.Errorf("seen %d", calls) })
	if !errors.Is(err, kubetest.ErrTimeout) || !strings.Contains(err.Error(), fmt.Sprintf("seen %d", calls)) {
		t.Fatalf("EventuallyErr = %v, want ErrTimeout with the last error", err)
	}
}
