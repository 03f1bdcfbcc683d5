#!/usr/bin/env bash
# fetch-pinned.sh URL COMMIT DIR: check out exactly COMMIT of the git repository at URL into DIR.
#
# Fetches that one commit (no branch, no tag, no history), refuses anything but a full 40-hex commit id,
# checks that HEAD is the commit asked for, and drops .git so the image carries only the source.
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: fetch-pinned.sh URL COMMIT DIR" >&2
  exit 64
fi
url="$1"
commit="$2"
dir="$3"
if ! [[ "$commit" =~ ^[0-9a-f]{40}$ ]]; then
  echo "fetch-pinned.sh: '$commit' is not a full 40-hex commit id ($url)" >&2
  exit 64
fi
git init -q "$dir"
git -C "$dir" remote add origin "$url"
git -C "$dir" fetch -q --depth 1 origin "$commit"
git -C "$dir" checkout -q --detach FETCH_HEAD
actual="$(git -C "$dir" rev-parse HEAD)"
if [ "$actual" != "$commit" ]; then
  echo "fetch-pinned.sh: $url gave $actual, not $commit" >&2
  exit 65
fi
rm -rf "$dir/.git"
echo "fetch-pinned.sh: $url @ $commit -> $dir"
