# iotposture: the two commands are `make demo` and `make test`.
# Everything they need is built here on first use and reused afterwards.

CARGO ?= cargo
PLANE_BIN := target/testplane/bin
TESTPLANE := $(CARGO) run -q -p iotposture-e2e --bin testplane --

.PHONY: all build test lint kopium-types unit e2e crds crds-check install-yaml testplane-bins images testplane-up testplane-down demo demo-down e2e-kind clean-planes help

all: build

help:
	@echo "make demo            start a local control plane and the operator, apply the examples, show the result"
	@echo "make demo-down       stop the demo"
	@echo "make test            lint, unit tests and tests against a real local control plane"
	@echo "make crds            regenerate crds/ from the Rust types (and the chart's copies)"
	@echo "make install-yaml    render manifests/install.yaml from the chart"
	@echo "make e2e-kind        on a host with Docker and kind: the e2e suite against the chart in kind"
	@echo "make testplane-up    start the test cluster, with its node (target/testplane/kubeconfig)"
	@echo "make images          build the container images into target/images"
	@echo "make testplane-down  stop it"

build:
	$(CARGO) build --workspace

# The control plane and the node's programs from the Go module proxy (cached).
testplane-bins:
	bash e2e/controlplane/build.sh $(PLANE_BIN)
	bash e2e/tools/build.sh $(PLANE_BIN)
	bash e2e/node/build.sh target/node/bin
	bash e2e/logs/build.sh target/logs/bin

# Container images from Debian packages and our binaries (cached; needs root).
images:
	$(CARGO) build -q -p iotposture
	bash e2e/node/build.sh target/node/bin
	bash e2e/logs/build.sh target/logs/bin
	bash images/build.sh target/images

testplane-up: testplane-bins images
	bash e2e/thirdparty/fetch-crds.sh
	$(TESTPLANE) --dir target/testplane --bin-dir $(PLANE_BIN) up

testplane-down:
	$(TESTPLANE) --dir target/testplane --bin-dir $(PLANE_BIN) down

# Through a temporary file, so a failed build never leaves an empty CRD behind.
# The chart carries copies of the CRD and of the alert rules (tests check them).
crds:
	$(CARGO) run -q -p iotposture -- crd --out-dir crds
	cp crds/iotsystem.yaml crds/nodeposture.yaml charts/iotposture/crds/
	cp manifests/prometheus/iotposture.rules.yaml charts/iotposture/files/iotposture.rules.yaml

# manifests/install.yaml: the chart rendered with its defaults (a test checks it is current).
install-yaml:
	bash e2e/tools/build.sh $(PLANE_BIN)
	bash scripts/render-install.sh > manifests/.install.yaml.new
	mv manifests/.install.yaml.new manifests/install.yaml

# Rust types for cert-manager and PrometheusRule, by kopium from their CRDs (make test checks they are current).
kopium-types:
	bash scripts/gen-kopium-types.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Everything, including the tests against the real control plane.
test:
	bash scripts/test.sh

# Hosts with Docker and kind only (not these build machines): the chart in kind.
e2e-kind:
	bash scripts/e2e-kind.sh

demo:
	bash scripts/demo.sh up

demo-down:
	bash scripts/demo.sh down

# Benchmarks (figures to bench/results/*.json; not part of make test). Builds
# only what they run: the control plane, kwok and Kyverno, and release binaries.
.PHONY: bench
bench:
	bash scripts/bench.sh

# The operator at scale on a plane with kwok's simulated nodes (bench/scale/);
# IOTPOSTURE_BENCH_SIZES=10,100 for a shorter run.
.PHONY: bench-scale
bench-scale:
	bash scripts/bench.sh scale
