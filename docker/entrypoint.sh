#!/usr/bin/env bash
# Container entry point: ComfyUI (or its simulator) and one readiness-gated Celery worker, side by side.
#
# tini is PID 1 and forwards the stop signal to this script, which:
#   * starts ComfyUI on loopback and the worker (`dance worker`). There is no readiness loop here: the
#     worker's gate holds its queues until ComfyUI answers;
#   * exits as soon as either process exits, after stopping the other, so that the restart policy
#     brings both back together;
#   * on SIGTERM or SIGINT stops the worker first with a warm shutdown (no new job; the running one
#     may finish), escalates to SIGQUIT after DANCE_SOFT_SHUTDOWN_S (a cold shutdown: the job stops and
#     its message goes back to the queue), and stops ComfyUI only once the worker is gone, because the
#     running job needs ComfyUI until then. Set DANCE_SOFT_SHUTDOWN_S to the stop grace period minus 5 s.
#     This is Celery's soft shutdown (docs/celery-on-redis.md#graceful-shutdown) done from outside, and
#     it ends as soon as the job does instead of sleeping out a fixed window.
# Given arguments, it runs them instead (Flower, `dance models`, a shell).
set -euo pipefail

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

# Seconds a stopping worker may spend finishing its job before the cold shutdown.
DANCE_SOFT_SHUTDOWN_S="${DANCE_SOFT_SHUTDOWN_S:-25}"
# comfyui: the real server in COMFYUI_HOME; simulator: `python -m simulator` (COMFYSIM_* configure it).
COMFYUI_BACKEND="${COMFYUI_BACKEND:-comfyui}"
COMFYUI_HOME="${COMFYUI_HOME:-/opt/ComfyUI}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-/opt/comfyui-venv/bin/python}"
COMFYUI_URL="${COMFYUI_URL:-http://127.0.0.1:8188}"
: "${COMFYUI_INPUT_DIR:?set COMFYUI_INPUT_DIR: ComfyUI and the worker share this folder}"
: "${COMFYUI_OUTPUT_DIR:?set COMFYUI_OUTPUT_DIR: ComfyUI and the worker share this folder}"
export COMFYUI_URL COMFYUI_INPUT_DIR COMFYUI_OUTPUT_DIR

comfy_pid=""
worker_pid=""
worker_status=0

log() {
  printf 'entrypoint: %s\n' "$*" >&2
}

alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null
}

comfyui_port() {
  local rest="${COMFYUI_URL#*://}"
  rest="${rest%%/*}"
  case "$rest" in
    127.0.0.1:* | localhost:*) printf '%s' "${rest##*:}" ;;
    *)
      log "COMFYUI_URL=$COMFYUI_URL must name 127.0.0.1:<port>: ComfyUI runs in this container, on loopback"
      exit 64
      ;;
  esac
}

start_comfyui() {
  local port data_root extra=()
  port="$(comfyui_port)"
  # ComfyUI's layout, which the simulator copies: <root>/input, <root>/output and <root>/temp.
  data_root="$(dirname "$COMFYUI_OUTPUT_DIR")"
  mkdir -p "$COMFYUI_INPUT_DIR" "$COMFYUI_OUTPUT_DIR"
  read -r -a extra <<<"${COMFYUI_EXTRA_ARGS:-}"
  case "$COMFYUI_BACKEND" in
    comfyui)
      "$COMFYUI_PYTHON" "$COMFYUI_HOME/main.py" --listen 127.0.0.1 --port "$port" \
        --input-directory "$COMFYUI_INPUT_DIR" --output-directory "$COMFYUI_OUTPUT_DIR" \
        --temp-directory "$data_root" --disable-auto-launch "${extra[@]}" &
      ;;
    simulator)
      if [ "$COMFYUI_INPUT_DIR" != "$data_root/input" ]; then
        log "the simulator keeps input/ and output/ side by side; COMFYUI_INPUT_DIR must be $data_root/input"
        exit 64
      fi
      python -m simulator --host 127.0.0.1 --port "$port" --data-dir "$data_root" "${extra[@]}" &
      ;;
    *)
      log "COMFYUI_BACKEND=$COMFYUI_BACKEND is neither comfyui nor simulator"
      exit 64
      ;;
  esac
  comfy_pid=$!
  log "started $COMFYUI_BACKEND (pid $comfy_pid) on 127.0.0.1:$port"
}

start_worker() {
  dance worker &
  worker_pid=$!
  log "started worker (pid $worker_pid)"
}

stop_worker() {
  alive "$worker_pid" || return 0
  log "stopping the worker: warm shutdown, cold after ${DANCE_SOFT_SHUTDOWN_S}s"
  kill -TERM "$worker_pid" 2>/dev/null || true
  sleep "$DANCE_SOFT_SHUTDOWN_S" &
  local timer=$!
  while alive "$worker_pid" && alive "$timer"; do
    wait -n "$worker_pid" "$timer" || true
  done
  if alive "$worker_pid"; then
    log "soft shutdown window over: cold shutdown, the running job goes back to the queue"
    kill -QUIT "$worker_pid" 2>/dev/null || true
  fi
  kill "$timer" 2>/dev/null || true
  wait "$timer" 2>/dev/null || true
  wait "$worker_pid" && worker_status=0 || worker_status=$?
  log "worker exited ($worker_status)"
}

stop_comfyui() {
  alive "$comfy_pid" || return 0
  kill -TERM "$comfy_pid" 2>/dev/null || true
  wait "$comfy_pid" || true
  log "$COMFYUI_BACKEND stopped"
}

on_stop_signal() {
  log "received $1"
  # A second signal while the worker drains means "now": go straight to the cold shutdown.
  trap 'log "second stop signal: cold shutdown now"; alive "$worker_pid" && kill -QUIT "$worker_pid"' TERM INT
  stop_worker
  stop_comfyui
  exit "$worker_status"
}

on_sigterm() { on_stop_signal SIGTERM; }
on_sigint() { on_stop_signal SIGINT; }

# Runs until either process exits; its return status is the container's exit status.
run_pair() {
  local exited="" status=0
  start_comfyui
  start_worker
  wait -n -p exited "$comfy_pid" "$worker_pid" || status=$?
  if [ "$exited" = "$worker_pid" ]; then
    log "worker exited ($status): stopping $COMFYUI_BACKEND"
    stop_comfyui
    return "$status"
  fi
  log "$COMFYUI_BACKEND exited ($status): stopping the worker"
  stop_worker
  # ComfyUI going away is always a failure of this container, whatever its own exit status.
  return "$((status == 0 ? 70 : status))"
}

trap on_sigterm TERM
trap on_sigint INT
run_pair
