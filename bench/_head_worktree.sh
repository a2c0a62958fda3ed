# Sourced by the bench/*_ab.sh scripts that measure a changed copy of HEAD beside this checkout:
#   source "$(dirname "$0")/_head_worktree.sh" PREFIX [COMMIT]
# sets $here (this checkout's root) and $tree (a detached git worktree of COMMIT, default HEAD,
# /tmp/PREFIX.XXXXXX), removed when the script exits, however it exits.
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d "/tmp/$1.XXXXXX")
_remove_tree() { git -C "$here" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"; }
trap _remove_tree EXIT
git -C "$here" worktree add -q --detach "$tree" "${2:-HEAD}"
