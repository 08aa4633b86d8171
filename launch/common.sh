# Shared by the launch scripts (sourced, not run): dry runs and shell quoting.
#
# A launch script collects the environment it sets with `setenv NAME VALUE` and runs commands with
# `run CMD ARGS...`. With DRY_RUN=1, nothing is set or started: every `setenv` prints `export NAME=VALUE` and every
# `run` prints its command line, shell-quoted, so the dry run's output is itself the script that would run.

DRY_RUN=${DRY_RUN:-0}

# quote1 WORD: WORD as the shell reads it back: bare when it is plain, else in single quotes.
quote1() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# quote ARGS...: the arguments as one shell-quoted line.
quote() {
  local out=() a
  for a in "$@"; do out+=("$(quote1 "$a")"); done
  printf '%s\n' "${out[*]}"
}

setenv() {
  if [ "$DRY_RUN" = 1 ]; then printf 'export %s=%s\n' "$1" "$(quote1 "$2")"; else export "$1=$2"; fi
}

run() {
  if [ "$DRY_RUN" = 1 ]; then quote "$@"; else "$@"; fi
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# has_override PREFIX ARGS...: whether ARGS already set a config key starting with PREFIX (--config.mesh.dcn_).
has_override() {
  local prefix=$1 a
  shift
  for a in "$@"; do [[ $a == "$prefix"* ]] && return 0; done
  return 1
}
