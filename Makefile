# tern — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
CNITOOL_VERSION := v1.3.1
STATICCHECK_VERSION := v0.8.2
export PATH := $(BIN):$(PATH)

IMAGE ?= ghcr.io/tern-net/tern:$(VERSION)

.PHONY: help build deps test test-unit lint bench tools image lab lab-down e2e conformance e2e-suite npapi-suite
.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

LAB_ARGS ?= --nodes 4 --racks 2 --router mixed

lab: deps build kube-env node-env image ## a real cluster on this machine (root): 4 real nodes, 2 racks behind BIRD and FRR, then a demo
	@if [ "$$(id -u)" != 0 ]; then echo "make lab needs root: it creates network namespaces" >&2; exit 1; fi
	$(BIN)/tern-lab up $(LAB_ARGS)
	$(BIN)/tern-lab demo

lab-down: ## stop the lab and remove everything it made
	$(BIN)/tern-lab down

e2e: deps build kube-env node-env e2e-suite npapi-suite ## end-to-end tests on a lab (root), also part of make test
	$(GO) test -count=1 -v -timeout 40m ./e2e/...

build: ## build bin/tern-agent, bin/tern-cni, bin/ternctl, bin/tern-lab
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

deps: ## install the Debian packages the tests need (root; quiet when present)
	@if [ "$$(id -u)" = 0 ]; then bash hack/install-deps.sh; else echo "not root: skipping package install; privileged tests will not run" >&2; fi

tools: ## install cnitool into bin/ from the Go module proxy
	@test -x $(BIN)/cnitool || GOBIN=$(BIN) $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)

test: deps build tools kube-env node-env e2e-suite npapi-suite ## run every test this machine can run (as root: the network-namespace tests too)
	@# One package at a time: several start a control plane of their own and
	@# time-sensitive BGP sessions; side by side on two cores they starve each other.
	$(GO) test -count=1 -p 1 -timeout 40m ./...
	cd hack/ocibuild && GOWORK=off $(GO) test -count=1 ./...

.PHONY: kube-env node-env
kube-env: ## builds the test control plane into the cache
	bash hack/kube-env.sh build

e2e-suite: ## builds Kubernetes' e2e suite (e2e.test) and the ginkgo CLI into the cache
	bash hack/kube-env.sh build e2e

npapi-suite: ## builds network-policy-api's conformance suite (ClusterNetworkPolicy) into the cache
	bash hack/npapi.sh build

# make conformance: for each IP family (a dual-stack lab, then an IPv6-only
# one), a lab of real nodes (4 nodes, 2 racks behind BIRD and FRR), then
# Kubernetes' [sig-network] Netpol suite and sig-network's [Conformance]
# specs, three runs each, 100 generated policy cases, and network-policy-api's
# ClusterNetworkPolicy conformance suite (its report in
# conformance/network-policy-api-FAMILY.yaml); one report with a column per
# family.
CONFORMANCE_RUNS ?= 3
NETPOL_CASES ?= 100
CONFORMANCE_FAMILIES ?= dual ipv6
conformance: deps build kube-env node-env e2e-suite npapi-suite ## Kubernetes' own network e2e suites on real-node labs of each IP family (root), 3 runs; writes CONFORMANCE.md, JUnit in conformance-out/
	rm -rf $(CURDIR)/conformance-out
	mkdir -p $(CURDIR)/conformance
	for f in $(CONFORMANCE_FAMILIES); do \
	TERN_E2E_IP_FAMILY=$$f TERN_CONFORMANCE_SUITES=netpol,sig-network-conformance TERN_CONFORMANCE_RUNS=$(CONFORMANCE_RUNS) \
	TERN_CONFORMANCE_REPORT=$(CURDIR)/CONFORMANCE.md TERN_CONFORMANCE_OUT=$(CURDIR)/conformance-out \
	TERN_NETPOL_CASES=$(NETPOL_CASES) TERN_NPAPI_TESTS=all TERN_NPAPI_REPORT=$(CURDIR)/conformance/network-policy-api-$$f.yaml \
	$(GO) test -count=1 -v -timeout 170m -run '^(TestGeneratedPolicies|TestUpstreamSuites|TestClusterNetworkPolicyConformance)$$' ./e2e || exit 1; \
	done

node-env: ## builds a real node's parts (kubelet, kube-proxy, containerd, runc, images) into the cache
	bash hack/node-env.sh build

test-unit: ## run the tests that need no root
	$(GO) test -count=1 -short ./...

lint: ## gofmt check, go vet, and staticcheck when it installs
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) 2>/dev/null; then $(BIN)/staticcheck ./...; else echo "staticcheck did not install; skipped" >&2; fi

bench: deps build kube-env node-env ## benchmarks side by side with their references (root); tables in bench-out/*.md
	@rm -rf bench-out && mkdir -p bench-out
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/... | grep -v 'level=' | tee bench-out/bench.txt
	@cat bench-out/*.md

image: deps build ## tern's image $(IMAGE) as bin/tern-image.tar (docker save format; docker/podman when one runs, else no engine needed)
	bash hack/image.sh tern $(BIN)/tern-image.tar $(IMAGE)
