#!/usr/bin/env bash
# Builds the project's container images without a registry or a container
# engine: a root filesystem from Debian packages (mmdebstrap) plus our own
# files, written as a one-layer OCI image layout archive that
# `ctr images import` takes. `images/<name>/Dockerfile` says the same for
# hosts with Docker.
#
#   images/build.sh OUT [NAME...]     (default: every image)
#
# Output: OUT/<name>.oci.tar, image name iotposture.local/<name>:<version>.
# A stamp of each image's inputs skips what is already built; the .debs are
# cached in OUT/debs, so a second image costs no second download.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$(mkdir -p "${1:?usage: images/build.sh OUT [NAME...]}" && cd "$1" && pwd)"
shift
all=(pause toolbox gateway operator mosquitto sensor dashboard coredns log-collector)
names=("${@:-${all[@]}}")
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
# Reproducible: every file dated the same, whatever day the image is built.
export SOURCE_DATE_EPOCH=1700000000
mirror=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

die() { echo "images/build.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (mmdebstrap builds root filesystems)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"

# What each image is: Debian packages, our files (from images/<name>/files and
# the extra paths given), and how it starts. User 65532 unless it must be root.
spec() {
  packages="" binaries=() entrypoint="" cmd="[]" user="65532:65532" env=()
  case "$1" in
  pause) entrypoint='["/pause"]' ;;
  toolbox)
    packages="curl openssl netcat-openbsd dnsutils iproute2 ca-certificates mosquitto-clients"
    entrypoint='["sleep", "infinity"]' ;;
  gateway)
    packages="nginx libnginx-mod-http-modsecurity modsecurity-crs"
    entrypoint='["nginx"]' cmd='["-c", "/etc/iotposture/nginx.conf", "-e", "stderr"]' ;;
  operator)
    packages="ca-certificates"
    binaries=("$root/target/debug/iotposture:/usr/bin/iotposture")
    entrypoint='["/usr/bin/iotposture"]' cmd='["run"]' ;;
  mosquitto)
    packages="mosquitto"
    entrypoint='["mosquitto"]' cmd='["-c", "/etc/iotposture-mqtt/mosquitto.conf"]' ;;
  sensor)
    packages="mosquitto-clients ca-certificates"
    entrypoint='["/usr/local/bin/sensor"]' ;;
  dashboard)
    packages="python3"
    entrypoint='["python3", "/usr/local/lib/dashboard/app.py"]' ;;
  log-collector)
    binaries=("$root/target/logs/bin/iotposture-otelcol:/usr/bin/iotposture-otelcol")
    entrypoint='["/usr/bin/iotposture-otelcol"]' cmd='["--config=/etc/iotposture-logs/config/config.yaml"]' ;;
  coredns)
    binaries=("$root/target/node/bin/coredns:/usr/bin/coredns")
    entrypoint='["/usr/bin/coredns"]' cmd='["-conf", "/etc/coredns/Corefile"]' ;;
  *) die "no image called $1" ;;
  esac
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

build() {
  local name="$1" work="$out/work-$1" tag="iotposture.local/$1:$version"
  spec "$name"
  local inputs=("$0")
  [[ -d "$here/$name" ]] && while IFS= read -r f; do inputs+=("$f"); done < <(find "$here/$name" -type f | sort)
  for b in "${binaries[@]}"; do inputs+=("${b%%:*}"); done
  local stamp
  stamp="$(printf '%s\n' "$packages" "$tag" | cat - "${inputs[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$out/$name.oci.tar" && "$(cat "$out/$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  echo "==> image $tag" >&2
  rm -rf "$work" && mkdir -p "$work/rootfs" "$out/debs"

  if [[ "$name" == pause ]]; then
    # Nothing but the one static program.
    gcc -static -O2 -o "$work/rootfs/pause" "$here/pause/pause.c"
  else
    local hooks=(
      --dpkgopt='path-exclude=/usr/share/doc/*'
      --dpkgopt='path-exclude=/usr/share/man/*'
      --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/locale/*'
      --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\""
      --setup-hook="sync-in '$out/debs' /var/cache/apt/archives"
      --customize-hook="sync-out /var/cache/apt/archives '$out/debs'"
      # The image runs as 65532 unless it says otherwise.
      --customize-hook='echo "iotposture:x:65532:65532::/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"'
      --customize-hook='echo "iotposture:x:65532:" >> "$1/etc/group"'
      --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/var/log/*'
    )
    [[ -d "$here/$name/files" ]] && hooks+=(--customize-hook="copy-in '$here/$name/files/.' /")
    if [[ -z "$packages" ]]; then
      # A static binary alone needs no distribution at all.
      mkdir -p "$work/rootfs/etc" "$work/rootfs/tmp"
      echo "iotposture:x:65532:65532::/nonexistent:/usr/sbin/nologin" > "$work/rootfs/etc/passwd"
      [[ -d "$here/$name/files" ]] && cp -a "$here/$name/files/." "$work/rootfs/"
    else
      mmdebstrap --quiet --mode=root --variant=essential --include="$packages" \
        --skip=download/empty "${hooks[@]}" bookworm "$work/rootfs" "${mirror[@]}" >&2
    fi
  fi
  for b in "${binaries[@]}"; do
    local from="${b%%:*}" to="${b#*:}"
    [[ -f "$from" ]] || die "$from is missing (image $name)"
    install -D -m 0755 "$from" "$work/rootfs$to"
    strip --strip-debug "$work/rootfs$to" 2>/dev/null || true
  done

  # One layer, every file owned by root and dated alike: the same inputs give
  # the same digest.
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/rootfs" -cf "$work/layer.tar" .
  local diff_id size layer_digest
  diff_id="$(sha "$work/layer.tar")"
  gzip -n -6 "$work/layer.tar"
  layer_digest="$(sha "$work/layer.tar.gz")"
  size="$(stat -c %s "$work/layer.tar.gz")"
  mkdir -p "$work/layout/blobs/sha256"
  mv "$work/layer.tar.gz" "$work/layout/blobs/sha256/$layer_digest"

  local env_json='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
  for e in "${env[@]}"; do env_json+=", \"$e\""; done
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"%s","Env":[%s],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$user" "$env_json" "$entrypoint" "$cmd" "$diff_id" > "$work/config.json"
  local config_digest config_size
  config_digest="$(sha "$work/config.json")"
  config_size="$(stat -c %s "$work/config.json")"
  mv "$work/config.json" "$work/layout/blobs/sha256/$config_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$size" > "$work/manifest.json"
  local manifest_digest manifest_size
  manifest_digest="$(sha "$work/manifest.json")"
  manifest_size="$(stat -c %s "$work/manifest.json")"
  mv "$work/manifest.json" "$work/layout/blobs/sha256/$manifest_digest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$tag" "$version" > "$work/layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$work/layout" -cf "$out/$name.oci.tar" .
  echo "$stamp" > "$out/$name.stamp"
  echo "$tag sha256:$manifest_digest" > "$out/$name.digest"
  rm -rf "$work"
}

for name in "${names[@]}"; do
  build "$name"
done
