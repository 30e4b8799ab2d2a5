#!/usr/bin/env bash
# make test: lint, unit tests, and the tests against a real local control plane.
# Starts the test plane when none runs, and stops it again at the end if it
# started it (a plane from `make testplane-up` is left running).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

echo "==> Debian packages the tests run for real (scripts/packages.sh)"
source scripts/packages.sh

echo "==> sslyze (PyPI), the third-party TLS scanner the probe is checked against"
if ! python3 -c "import sslyze" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'sslyze==6.3.1'
fi

echo "==> control plane and node binaries, helm and checkov, VictoriaLogs and the log collector (built once, then cached) and third-party CRDs"
bash e2e/controlplane/build.sh target/testplane/bin
bash e2e/node/build.sh target/node/bin
bash e2e/tools/build.sh target/testplane/bin
bash e2e/logs/build.sh target/logs/bin
bash e2e/thirdparty/fetch-crds.sh

echo "==> generated cert-manager types are current (kopium, built once into ~/.cache)"
bash scripts/gen-kopium-types.sh --check

echo "==> lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "==> container images (Debian packages and our binaries; rebuilt only when they change)"
cargo build -q -p iotposture
bash images/build.sh target/images

testplane() { cargo run -q -p iotposture-e2e --bin testplane -- --dir target/testplane --bin-dir target/testplane/bin "$@"; }
if testplane status >/dev/null; then
  echo "==> using the running test control plane (with the images built just now)"
  bash e2e/node/node.sh images target/testplane target/testplane/bin
else
  echo "==> starting a test control plane with its node"
  testplane up
  trap 'testplane down' EXIT
fi

echo "==> tests"
# The RBAC audit test (last) reads only the requests made from here on.
IOTPOSTURE_AUDIT_SINCE="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
export IOTPOSTURE_AUDIT_SINCE
# Every test binary runs even when one fails, so a run shows every failure.
# When any fails, the node's state goes to the output before the plane stops.
if ! cargo test --workspace --no-fail-fast; then
  echo "==> tests failed; the node as it is now"
  bash e2e/node/node.sh diagnose target/testplane target/testplane/bin || true
  exit 1
fi

# Last, as it reads what every test above made the operator request.
echo "==> the chart's roles against the operator's requests (API server audit log)"
cargo test -p iotposture-e2e --test chart -- --ignored
