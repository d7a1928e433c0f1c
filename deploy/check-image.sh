#!/usr/bin/env bash
# Build the serving image and run it for real: `make image-check` (and .ci/run after `make test`).
#
#   1. tools: podman + runc + debootstrap (apt-get install when missing; needs root)
#   2. base:  localhost/python-base:3.11-<recipe hash>, made with debootstrap when not cached
#   3. model: a tiny model trained and exported with the repo's .venv
#   4. build: podman build --format docker (keeps HEALTHCHECK) on the local base
#   5. run:   the model mounted read-only at /models, host network, free loopback ports; twice:
#             with the image's defaults, and with BNSERVE_PROCESSES=2 on top (HTTP stays on)
#   6. probe: each container: grpc.health.v1 SERVING (polled with a deadline), examples scored
#             from the host and compared with the training inference path, v2 over gRPC and
#             HTTP, /metrics answered (summed over both processes of the second)
#   7. podman healthcheck run; what the image must not carry (onnx, training, compilers, root)
#   8. podman stop -t 10: each exited by itself with code 0 (not killed)
#   9. image size <= 400 MB, and how long each step took
#
# Exits non-zero with the reason when any step fails or cannot run here.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

image=${BNSERVE_CHECK_IMAGE:-localhost/bnserve:check}
max_image_mb=400
python_for_venv=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
venv_python=$repo/.venv/bin/python
container=bnserve-check-$$
containers=("$container" "$container-processes-2") # the defaults; BNSERVE_PROCESSES=2 on top
work=$(mktemp -d "${TMPDIR:-/tmp}/bnserve-image-check.XXXXXX")

fail() {
  echo "image-check: FAILED: $*" >&2
  exit 1
}

untagged_before="" # untagged images that existed before this build: not ours to remove
build_started=false
cleanup() {
  if command -v podman >/dev/null 2>&1; then
    podman rm --force --time 0 "${containers[@]}" >/dev/null 2>&1 || true
    if $build_started; then remove_build_stages; fi
  fi
  rm -rf "$work"
}
# The Dockerfile's earlier stages (requirements, builder) end as untagged <none> images; the
# ones this build made go, the tagged image and other untagged images stay.
remove_build_stages() {
  local stage
  for stage in $(podman images --quiet --no-trunc --filter dangling=true 2>/dev/null); do
    [[ " $untagged_before " == *" $stage "* ]] || podman rmi --force "$stage" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so that cleanup runs on Ctrl-C and kill as well

declare -a step_names=() step_seconds=()
step_started=0
step() { # step NAME: start timing a step
  step_started=$(date +%s.%N)
  step_names+=("$1")
  echo "== $1"
}
step_done() {
  step_seconds+=("$(awk -v a="$step_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')")
}

free_port() {
  "$venv_python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- 1. tools -----------------------------------------------------------------------------------
step "tools (podman, runc, debootstrap)"
missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || fail "needs ${missing[*]} and is not root to apt-get install them"
  command -v apt-get >/dev/null 2>&1 || fail "needs ${missing[*]} and there is no apt-get here"
  echo "installing ${missing[*]} with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; fail "apt-get install ${missing[*]}"; }
fi
[[ $(id -u) == 0 ]] ||
  fail "runs rootful podman (rootless podman needs user namespaces and cgroup delegation that this machine does not give): run it as root"

# podman's defaults fail here twice: the default nofile limit cannot be raised, and crun refuses
# the hybrid cgroup layout. Limits stay at or below what this shell may grant.
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited ]] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu)
[[ $hard_nproc == unlimited ]] && hard_nproc=32768
nofile=$((hard_nofile < 20000 ? hard_nofile : 20000))
nproc=$((hard_nproc < 32768 ? hard_nproc : 32768))
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf
podman info >/dev/null 2>"$work/podman-info.log" ||
  { cat "$work/podman-info.log" >&2; fail "podman does not work here (podman info)"; }
# Containers a killed earlier check left behind (SIGKILL skips the cleanup trap).
podman ps --all --quiet --filter name='^bnserve-check-' | xargs --no-run-if-empty podman rm --force \
  >/dev/null 2>&1 || true
step_done

# ---- 2. base image ------------------------------------------------------------------------------
step "base image"
if [[ -n ${BASE_IMAGE:-} ]]; then
  base_image=$BASE_IMAGE
  podman image exists "$base_image" || podman pull "$base_image" || fail "cannot pull $base_image"
else
  # The recipe and the host CA certificates baked into the base (a rotated proxy CA must rebuild).
  shopt -s nullglob
  host_certificates=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
  recipe_hash=$(cat deploy/base-image.sh "${host_certificates[@]}" | sha256sum | cut -c1-12)
  base_image=localhost/python-base:3.11-$recipe_hash
  if podman image exists "$base_image"; then
    echo "cached: $base_image"
  else
    echo "no cached base: making $base_image with debootstrap (about a minute)"
    bash deploy/base-image.sh "$base_image" || fail "could not make the base image $base_image"
  fi
fi
step_done

# ---- 3. a tiny model ----------------------------------------------------------------------------
step "model (tiny digits run: train + export)"
if [[ ! -x $venv_python ]]; then
  [[ -n $python_for_venv ]] || fail "no python3 to make .venv with"
  make -s .venv/.installed PYTHON="$python_for_venv" || fail "could not make .venv"
fi
mkdir -p "$work/models"
chmod 755 "$work" "$work/models"
"$venv_python" -m bnserve.cli train --out "$work/run" --data digits --hidden 64,64 --epochs 10 \
  --seed 0 --no-progress --no-checkpoints >"$work/train.log" 2>&1 ||
  { tail -20 "$work/train.log" >&2; fail "bnserve train"; }
"$venv_python" -m bnserve.cli export "$work/run" --out "$work/models/model.onnx" \
  >"$work/export.log" 2>&1 || { tail -20 "$work/export.log" >&2; fail "bnserve export"; }
chmod 644 "$work/models/model.onnx"
step_done

# ---- 4. build -----------------------------------------------------------------------------------
step "build $image"
untagged_before=$(podman images --quiet --no-trunc --filter dangling=true | tr '\n' ' ')
build_started=true
podman build --pull=never --format docker --network host --layers \
  --build-arg BASE_IMAGE="$base_image" -t "$image" . >"$work/build.log" 2>&1 ||
  { tail -30 "$work/build.log" >&2; fail "podman build (log tail above)"; }
step_done

# ---- 5. run -------------------------------------------------------------------------------------
declare -A grpc_ports=() http_ports=() metrics_ports=()
run_container() { # run_container NAME [-e VAR=VALUE ...]: the image on free loopback ports
  local name=$1
  shift
  grpc_ports[$name]=$(free_port)
  http_ports[$name]=$(free_port)
  metrics_ports[$name]=$(free_port)
  # podman's stderr here says only that systemd (absent) cannot time the HEALTHCHECK.
  podman run -d --name "$name" --network host \
    -v "$work/models:/models:ro" \
    -e BNSERVE_PORT="${grpc_ports[$name]}" -e BNSERVE_HTTP_PORT="${http_ports[$name]}" \
    -e BNSERVE_METRICS_PORT="${metrics_ports[$name]}" "$@" \
    "$image" >/dev/null 2>"$work/podman-run.log" || { cat "$work/podman-run.log" >&2; fail "podman run $name"; }
}
step "run (the image's defaults, then BNSERVE_PROCESSES=2 on top)"
run_container "${containers[0]}"
run_container "${containers[1]}" -e BNSERVE_PROCESSES=2
step_done

# ---- 6. probe from the host ---------------------------------------------------------------------
probe_container() { # probe_container NAME: scored, v2 over gRPC and HTTP, metrics counted
  local name=$1 grpc_port=${grpc_ports[$1]} http_port=${http_ports[$1]}
  "$venv_python" scripts/demo.py --target "127.0.0.1:$grpc_port" --run "$work/run" \
    --min-accuracy 0.9 --serve-deadline 90 ||
    {
      podman logs --tail 40 "$name" >&2 || true
      fail "$name did not serve the held-out set correctly (its log tail above)"
    }
  "$venv_python" deploy/check_v2.py --target "127.0.0.1:$grpc_port" \
    --http-target "127.0.0.1:$http_port" --run "$work/run" ||
    fail "$name's Open Inference Protocol (v2) answers over gRPC or HTTP are wrong"
  # The metrics port answers Prometheus text that counted the Predict calls just made.
  "$venv_python" - "${metrics_ports[$name]}" <<'PYTHON' || fail "$name's /metrics endpoint"
import re, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/metrics"
text = urllib.request.urlopen(url, timeout=5).read().decode()
predicts = 0.0
for labels, value in re.findall(r"^bnserve_requests_total\{(.*)\} (\S+)$", text, re.MULTILINE):
    label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    if label.get("method", "").endswith("/Predict") and label.get("code") == "OK":
        predicts += float(value)
print(f"{url}: {predicts:.0f} OK Predict calls counted")
sys.exit(0 if predicts >= 270 else f"expected >= 270 OK Predict calls in {url}")
PYTHON
}
step "probe from the host: SERVING, native, v2 over gRPC and HTTP, metrics (each container)"
probe_container "${containers[0]}"
probe_container "${containers[1]}"
podman logs "${containers[1]}" 2>&1 | grep -q "2 processes serving on port [0-9]*, ready" ||
  fail "${containers[1]} did not say '2 processes serving on port …, ready'"
echo "${containers[1]}: 2 processes serving"
step_done

# ---- 7. healthcheck and what the image carries --------------------------------------------------
step "healthcheck, user, contents"
for name in "${containers[@]}"; do
  health=$(podman healthcheck run "$name" 2>&1) || fail "$name HEALTHCHECK: ${health:-unhealthy}"
  echo "$name HEALTHCHECK: ${health:-healthy}"
done
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image runs as root (User=$user)"
podman run --rm --network none --entrypoint python "$image" 2>"$work/contents.log" -c '
import importlib.util, shutil, sys
# generic top-level names (server, training, export) are never installed: only bnserve
present = [m for m in ("onnx", "bnserve.training", "bnserve.export", "server", "training", "export",
                      "matplotlib", "pytest") if importlib.util.find_spec(m)]
compilers = [c for c in ("gcc", "cc", "g++", "clang") if shutil.which(c)]
if present or compilers:
    sys.exit(f"runtime image carries {present + compilers}")
print("runtime image: no onnx, training, export, test tools or compilers")
' || { grep -v systemd "$work/contents.log" >&2; fail "the image carries what serving does not need"; }
step_done

# ---- 8. graceful stop ---------------------------------------------------------------------------
step "podman stop -t 10 (SIGTERM), each container"
for name in "${containers[@]}"; do
  stop_started=$(date +%s.%N)
  podman stop -t 10 "$name" >/dev/null 2>"$work/podman-stop.log" ||
    { cat "$work/podman-stop.log" >&2; fail "podman stop $name"; }
  stop_seconds=$(awk -v a="$stop_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  echo "$name exited with code $exit_code after ${stop_seconds}s"
  podman logs --tail 2 "$name" 2>&1 | sed 's/^/  container log: /'
  [[ $exit_code == 0 ]] ||
    fail "$name did not exit cleanly on SIGTERM (exit code $exit_code; 137 means killed after -t 10)"
done
step_done

# ---- 9. size and timings ------------------------------------------------------------------------
size_bytes=$(podman image inspect --format '{{.Size}}' "$image")
size_mb=$(awk -v b="$size_bytes" 'BEGIN { printf "%.0f", b / 1e6 }')
echo
echo "image $image: $size_mb MB (limit $max_image_mb MB), base $base_image"
printf '%-50s %8s\n' step seconds
for i in "${!step_names[@]}"; do
  printf '%-50s %8s\n' "${step_names[$i]}" "${step_seconds[$i]}"
done
((size_mb <= max_image_mb)) || fail "image is $size_mb MB, over $max_image_mb MB"
# Old build layers go after a day; recent ones stay as the cache of the next build.
podman image prune --force --filter until=24h >/dev/null 2>&1 || true
echo "image-check: OK"
