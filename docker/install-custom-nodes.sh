#!/usr/bin/env bash
# install-custom-nodes.sh LIST NODES_DIR PIP_COMMAND...: install every custom-node pack of LIST.
#
# LIST has one pack a line, "<directory> <git url> <40-hex commit>" ('#' starts a comment). Each pack is
# checked out at its commit under NODES_DIR and its requirements.txt is installed with PIP_COMMAND, which
# the Dockerfile gives a constraints file so that no pack can replace the pinned torch.
set -euo pipefail

if [ "$#" -lt 3 ]; then
  echo "usage: install-custom-nodes.sh LIST NODES_DIR PIP_COMMAND..." >&2
  exit 64
fi
list="$1"
nodes_dir="$2"
shift 2
here="$(dirname "$0")"

while read -r name url commit extra; do
  case "$name" in
    "" | "#"*) continue ;;
  esac
  if [ -z "$commit" ] || [ -n "$extra" ]; then
    echo "install-custom-nodes.sh: malformed line for '$name' in $list" >&2
    exit 64
  fi
  "$here/fetch-pinned.sh" "$url" "$commit" "$nodes_dir/$name"
  if [ -f "$nodes_dir/$name/requirements.txt" ]; then
    "$@" -r "$nodes_dir/$name/requirements.txt"
  fi
done <"$list"
