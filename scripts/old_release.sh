#!/usr/bin/env bash
# Builds the netstackd and CNI plugin binaries of an older release once per machine, for
# e2e/test_upgrade.sh, and prints the directory that holds them. The release is a git tag
# (v0.1.0 unless RELEASE_TAG says otherwise); where the tag is missing from this clone, the
# commit it was made on (RELEASE_COMMIT) is used instead, and where neither is there (a shallow
# clone) the script fails saying so. The cache, /var/cache/netstack/<tag>-<commit>, is keyed by
# the commit, so a tag moved to another commit is built again. The sources are exported with
# `git archive` into a scratch directory (no worktree is registered in the repository, so an
# interrupted build leaves nothing in .git), built with a scratch target directory, and both are
# removed once the two binaries are in the cache. The first build takes several minutes on 2
# cores (a release build of the whole dependency tree); later calls find the cache.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=${RELEASE_TAG:-v0.1.0}
# The commit v0.1.0 was tagged on, for clones that fetched the history but not the tags.
PINNED=${RELEASE_COMMIT:-9ca7713e7743caa61a1b59fd02bbf63da40965c0}

commit=$(git -C "$ROOT" rev-parse --verify --quiet "refs/tags/$TAG^{commit}" ||
  git -C "$ROOT" rev-parse --verify --quiet "$PINNED^{commit}" || true)
if [ -z "$commit" ]; then
  echo "old_release.sh: neither tag $TAG nor commit $PINNED is in $ROOT (a shallow clone?);" \
    "run 'git fetch --tags --unshallow' to test upgrades from $TAG" >&2
  exit 1
fi
DEST=${RELEASE_CACHE:-/var/cache/netstack/$TAG-$commit}
if [ ! -x "$DEST/bin/netstackd" ] || [ ! -x "$DEST/bin/netstack" ]; then
  scratch=$(mktemp -d /var/tmp/netstack-release.XXXXXX)
  trap 'rm -rf "$scratch"' EXIT
  trap 'exit 143' TERM INT
  echo "old_release.sh: building $TAG ($commit) into $DEST (once per machine; several minutes)" >&2
  mkdir -p "$scratch/src"
  git -C "$ROOT" archive "$commit" | tar -x -C "$scratch/src"
  # No debug info: these binaries only run the upgrade test, and they link faster without.
  (cd "$scratch/src" && CARGO_TARGET_DIR="$scratch/target" CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo build --quiet --release --locked -p netstackd -p cni-plugin --bin netstackd --bin netstack) >&2
  mkdir -p "$DEST/bin.tmp"
  cp "$scratch/target/release/netstackd" "$scratch/target/release/netstack" "$DEST/bin.tmp/"
  echo "$commit" >"$DEST/bin.tmp/COMMIT"
  rm -rf "$DEST/bin"
  mv "$DEST/bin.tmp" "$DEST/bin"
fi
echo "$DEST/bin"
