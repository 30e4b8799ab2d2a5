#!/usr/bin/env bash
# Builds the log shipping programs from the Go module proxy into $1 (default
# target/logs/bin):
#   - victoria-logs, the log store the tests ship to (VictoriaLogs);
#   - iotposture-otelcol, an OpenTelemetry Collector with only the components
#     e2e/logs/otelcol-builder.yaml lists, made by the collector's builder.
# Static (CGO off). A stamp of this script and the manifest marks a finished
# build, so a second run with nothing changed returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-$root/target/logs/bin}" && cd "${1:-$root/target/logs/bin}" && pwd)"

# VictoriaLogs v1.52.1 needs Go >= 1.26.5. GOTOOLCHAIN is left as the
# environment has it, as in the other build scripts: `local` stops an older
# go with a message that says so, `auto` fetches that toolchain from the proxy.
VICTORIA_LOGS_VERSION=v1.52.1
VICTORIA_LOGS=github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@$VICTORIA_LOGS_VERSION
BUILDER=go.opentelemetry.io/collector/cmd/builder@v0.165.0
# The builder's generated module and its binary; the manifest's output_path
# names the same folder (relative to e2e/logs).
build_dir="$root/target/logs/otelcol-build"

stamp="$(cat "$0" "$here/otelcol-builder.yaml" | sha256sum | cut -c1-16)"
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/victoria-logs" && -x "$out/iotposture-otelcol" ]]; then
  exit 0
fi
echo "building VictoriaLogs and the log collector into $out (first run takes several minutes)" >&2
# No VCS stamp: the builder's module sits inside this repository, and the
# binary should not change with our commits.
export CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false"
# The builder makes a temporary folder it never removes: keep it in one we do.
TMPDIR="$(mktemp -d)"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

# Outside any module of ours: go install uses VictoriaLogs' own go.mod and go.sum.
# The version string is what `victoria-logs -version` and its metrics report.
(cd "$TMPDIR" && GOBIN="$out" go install \
  -ldflags "-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=victoria-logs-$VICTORIA_LOGS_VERSION" \
  "$VICTORIA_LOGS")

# The builder itself is a program from the proxy too; kept beside its output.
mkdir -p "$build_dir"
GOBIN="$root/target/logs/tools" go install -ldflags "-s -w" "$BUILDER"
# It writes go.mod, main.go and components.go into build_dir, resolves the
# modules (into the default GOPATH, like every other Go build here) and
# compiles; CGO_ENABLED=0 unless the manifest says cgo_enabled.
(cd "$here" && "$root/target/logs/tools/builder" --config=otelcol-builder.yaml)
install -m 0755 "$build_dir/iotposture-otelcol" "$out/iotposture-otelcol"
echo "$stamp" > "$out/.stamp"
