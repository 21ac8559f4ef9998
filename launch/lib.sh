# Argument checks shared by the launch scripts (sourced, not run). Each failed check prints the
# script's usage and the problem to stderr and exits 2, before anything is launched.

# usage_error MESSAGE: print "$USAGE" and MESSAGE, exit 2.
usage_error() {
  printf 'usage: %s\n%s: %s\n' "$USAGE" "$(basename "$0")" "$1" >&2
  exit 2
}

# require_count NAME VALUE: VALUE is a whole number >= 1 (a count of processes or nodes).
require_count() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || usage_error "$1 must be a whole number >= 1, got '$2'"
}

# require_config ARG: ARG is an existing config file, or an option (--resume RUN_DIR ...) that
# ddpinn itself checks.
require_config() {
  [[ -n "${1:-}" ]] || usage_error "no CONFIG given"
  [[ "$1" == -* || -f "$1" ]] || usage_error "config file '$1' does not exist"
}
