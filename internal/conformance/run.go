package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options say where the suite's binaries are and where it runs.
type Options struct {
	E2ETest string // e2e.test, from hack/kube-env.sh build e2e
	Ginkgo  string // the ginkgo CLI of the version Kubernetes pins
	// Kubeconfig is the admin kubeconfig as seen from NetNS.
	Kubeconfig string
	// NetNS is the path of the network namespace the suite runs in (the
	// lab's control plane's: it reaches the API server on its loopback,
	// and the nodes, pods and Services through the fabric), or "" for
	// this process's own.
	NetNS string
	// Procs is ginkgo's number of parallel processes (1: serial).
	Procs int
	// OutDir receives the JUnit report, ginkgo's output and the suite's
	// artifacts.
	OutDir string
	// Timeout bounds the whole run (ginkgo's --timeout); 0: one hour.
	Timeout time.Duration
	// Family is the IP family of the lab (ipv4, ipv6, dual), for the report.
	Family string
	// Log, when set, also receives ginkgo's output as it runs.
	Log io.Writer
}

// JUnitFile is the report a run of suite writes in OutDir.
func JUnitFile(outDir string, s Suite) string {
	return filepath.Join(outDir, "junit-"+s.Name+".xml")
}

// Command is the command line that runs suite s: ginkgo with e2e.test
// precompiled, the focus and skips of the suite, a JUnit report, and
// e2e.test's flags for a cluster with no cloud provider and nobody to
// ssh into.
func Command(s Suite, o Options) ([]string, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if o.E2ETest == "" || o.Ginkgo == "" || o.Kubeconfig == "" || o.OutDir == "" {
		return nil, errors.New("conformance: e2e.test, ginkgo, a kubeconfig and an output directory are required")
	}
	procs := max(o.Procs, 1)
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = time.Hour
	}
	var argv []string
	if o.NetNS != "" {
		argv = append(argv, "nsenter", "--net="+o.NetNS, "--")
	}
	argv = append(argv, o.Ginkgo,
		"--procs="+strconv.Itoa(procs),
		"--focus="+s.Focus,
		"--timeout="+timeout.String(),
		"--junit-report="+filepath.Base(JUnitFile(o.OutDir, s)),
		"--output-dir="+o.OutDir,
		"--no-color",
		// Every spec, however long, reports where it is after a minute.
		"--poll-progress-after=60s", "--poll-progress-interval=30s",
	)
	if e := s.SkipExpr(); e != "" {
		argv = append(argv, "--skip="+e)
	}
	argv = append(argv, o.E2ETest, "--",
		"--kubeconfig="+o.Kubeconfig,
		// No cloud: the framework's skeleton provider.
		"--provider=skeleton",
		"--e2e-output-dir="+filepath.Join(o.OutDir, "artifacts-"+s.Name),
		// Logs are dumped over ssh or by a provider's script; the lab has
		// neither. Failures print the pods' logs and events themselves.
		"--disable-log-dump",
		"--dump-logs-on-failure=false",
	)
	return argv, nil
}

// Run runs suite s once and reads its report. An error means the suite
// could not run or left no report; failed specs are in the Result.
func Run(ctx context.Context, s Suite, o Options) (Result, error) {
	argv, err := Command(s, o)
	if err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Join(o.OutDir, "artifacts-"+s.Name), 0o755); err != nil {
		return Result{}, err
	}
	junit := JUnitFile(o.OutDir, s)
	if err := os.Remove(junit); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Result{}, err
	}
	logf, err := os.Create(filepath.Join(o.OutDir, "ginkgo-"+s.Name+".log"))
	if err != nil {
		return Result{}, err
	}
	defer logf.Close()
	var out io.Writer = logf
	if o.Log != nil {
		out = io.MultiWriter(logf, o.Log)
	}
	fmt.Fprintf(out, "# %q\n", argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	// ginkgo stops its e2e.test processes when interrupted.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	t0 := time.Now()
	runErr := cmd.Run()
	wall := time.Since(t0)
	f, err := os.Open(junit)
	if err != nil {
		if runErr != nil {
			return Result{}, fmt.Errorf("ginkgo: %w (no report: %v; output in %s)", runErr, err, logf.Name())
		}
		return Result{}, fmt.Errorf("ginkgo wrote no report: %w", err)
	}
	defer f.Close()
	res, err := ParseJUnit(f, s)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", junit, err)
	}
	res.Started, res.Wall = t0, wall
	if len(res.Specs) == 0 {
		return res, fmt.Errorf("%s: no spec of %s in the report (output in %s)", junit, s.Title, logf.Name())
	}
	if runErr != nil && res.OK() {
		// ginkgo failed although every spec in the report passed: a
		// parallel process died and its spec is missing from the report.
		res.Setup = append(res.Setup, Spec{Name: "ginkgo", State: Failed,
			Message: fmt.Sprintf("ginkgo exited with %v although the report shows no failure (output in %s)", runErr, logf.Name())})
	}
	return res, nil
}

// RunAll runs each suite runs times in a row (all the suites, then all of
// them again), appending each run's result to rep.Runs as it ends and
// saying how it went to log, so that a report can be written whatever
// happens. The error is the first run that could not be read (the runs
// after it are not made); failed specs are in rep.
func RunAll(ctx context.Context, suites []Suite, runs int, o Options, rep *Report, log func(string)) error {
	for i := 1; i <= runs; i++ {
		for _, s := range suites {
			log(fmt.Sprintf("%s, run %d of %d (%d processes), output in %s", s.Title, i, runs, max(o.Procs, 1), o.OutDir))
			ro := o
			ro.OutDir = filepath.Join(o.OutDir, fmt.Sprintf("run%d", i))
			res, err := Run(ctx, s, ro)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", s.Title, i, err)
			}
			res.Family = o.Family
			rep.Runs = append(rep.Runs, res)
			log(fmt.Sprintf("%s, run %d: %s", s.Title, i, res.Summary()))
			for _, sp := range append(res.Setup, res.Specs...) {
				if sp.State != Passed && sp.State != Skipped {
					log(fmt.Sprintf("  %s: %s\n    %s", sp.State, sp.Name, sp.Message))
				}
			}
		}
	}
	return nil
}

// WriteJSON saves the report, for a later Merge (make conformance runs a
// lab per IP family and writes one report of them all).
func (r Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ReadJSON reads a report WriteJSON saved.
func ReadJSON(path string) (Report, error) {
	var r Report
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return r, fmt.Errorf("conformance report %s: %w", path, err)
	}
	return r, nil
}

// Merge adds the runs of o (on a lab of another family) to r: its runs,
// its lab and its notes; r's versions and command stay (the same tree built
// both; the later run's command says how the report was written).
func (r Report) Merge(o Report) Report {
	r.Runs = append(slices.Clone(r.Runs), o.Runs...)
	r.Notes = append(slices.Clone(r.Notes), o.Notes...)
	if o.Lab != "" && o.Lab != r.Lab {
		r.Lab = strings.TrimSpace(r.Lab + "\n\n" + o.Lab)
	}
	if o.Generated.After(r.Generated) {
		r.Generated = o.Generated
	}
	return r
}

// Write writes the report's Markdown to path.
func (r Report) Write(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := r.Markdown(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
