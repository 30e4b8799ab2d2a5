#!/usr/bin/env bash
# Checks the toolchains every other script needs, with a clear message when one
# is missing. Sourced by scripts/test.sh and scripts/demo.sh.
for tool in go cargo; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: '$tool' is not on PATH; install it first (see README.md, Requirements)" >&2
    exit 1
  fi
done
