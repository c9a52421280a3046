# Sourced by launch/mpirun.sh and launch/hosts.sh. run_forwarding COMMAND...: run COMMAND in the
# background and wait for it, passing the INT, TERM and HUP this script gets on as SIGTERM (a
# background job ignores SIGINT); leaves COMMAND's exit status in `status`.
run_forwarding() {
  "$@" &
  local job=$!
  status=0
  trap 'kill -TERM "$job" 2>/dev/null || true' INT TERM HUP
  wait "$job" || status=$?
  while kill -0 "$job" 2>/dev/null; do  # a trapped signal ends the first wait early
    wait "$job" || status=$?
  done
}
