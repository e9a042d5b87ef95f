#!/usr/bin/env bash
# Install mmmv and the OpenMMLab stack it plugs into, on the PyTorch already installed.
#
#   bash tools/install.sh                 # runtime: torch, mmcv (built with ops), mmengine, mmdet, mmseg, mmpretrain, triton, mmmv
#   bash tools/install.sh --dev           # the same plus the test tools (pytest)
#   bash tools/install.sh --wheelhouse D  # download/build every wheel into D (run once on a machine with network)
#   bash tools/install.sh --offline D     # install from the wheelhouse D only (air-gapped cluster)
#
# Environment:
#   PYTHON            interpreter to install into (default: python3, or python if that is missing)
#   MMMV_TORCH_SPEC   what to install when torch is missing (default: "torch", a CUDA build on Linux): on a machine
#                     without a GPU name a CPU build, e.g. "torch==2.13.0" where your index serves that as the CPU
#                     wheel, or "torch --index-url https://download.pytorch.org/whl/cpu"; an installed torch is kept
#   MAX_JOBS          parallel compile jobs for the mmcv build (default: number of cores)
#
# Why the steps are what they are (docs/install.md has the long version):
# - mmcv has no wheels for current torch, so mmcv 2.1.0 (the newest that mmdet 3.3 / mmseg 1.2 / mmpretrain 1.2 accept)
#   is built from source with its ops. Its setup.py imports torch and pkg_resources, so it is built without build
#   isolation against the installed torch, with setuptools < 70. pip caches the built wheel: a re-run takes seconds.
# - mmsegmentation 1.2.2 imports ftfy and regex without declaring them.
set -euo pipefail

PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
TORCH_SPEC=${MMMV_TORCH_SPEC:-torch}
MMCV_SPEC="mmcv==2.1.0"
# torch >= 2.6 requires setuptools >= 77; mmengine still imports pkg_resources at run time, gone from setuptools 81.
RUNTIME_SETUPTOOLS="setuptools>=77.0.3,<81"
STACK_SPECS=("$RUNTIME_SETUPTOOLS" "mmengine>=0.10.3,<1.0" "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmpretrain==1.2.0" "ftfy" "regex")
BUILD_SPECS=("setuptools>=59,<70" "wheel" "ninja")
TRITON_SPEC="triton"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

mode=install
extras=""
wheelhouse=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) extras="[dev]" ;;
    --wheelhouse) mode=wheelhouse; wheelhouse=${2:?--wheelhouse needs a folder}; shift ;;
    --offline) mode=offline; wheelhouse=${2:?--offline needs a folder}; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[mmmv install] %s\n' "$*"; }
# pip's "running pip as root" warning (containers run as root) and its version notice are noise here
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
pip_() { "$PYTHON" -m pip "$@"; }
# the torchvision release paired with the installed torch 2.x (0.x with x = minor + 15)
torchvision_spec() {
  "$PYTHON" -c 'import torch; major, minor = torch.__version__.split(".")[:2]; print(f"torchvision==0.{int(minor) + 15}.*" if major == "2" else "torchvision")'
}

"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"mmmv needs Python >= 3.10, this is {sys.version.split()[0]}")
EOF

index_args=()
if [ "$mode" = offline ]; then
  [ -d "$wheelhouse" ] || { echo "install.sh: wheelhouse '$wheelhouse' does not exist; build it with --wheelhouse first" >&2; exit 2; }
  index_args=(--no-index --find-links "$wheelhouse")
fi

# 1. torch: keep what is there.
if "$PYTHON" -c "import torch" 2>/dev/null; then
  say "keeping torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
  say "no torch found: installing '$TORCH_SPEC' (set MMMV_TORCH_SPEC to choose a build)"
  # unquoted: the spec may carry pip options, e.g. "torch --index-url https://download.pytorch.org/whl/cpu"
  # shellcheck disable=SC2086
  pip_ install "${index_args[@]}" $TORCH_SPEC
fi
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')

if [ "$mode" = wheelhouse ]; then
  mkdir -p "$wheelhouse"
  say "building the wheelhouse in $wheelhouse (torch $torch_version)"
  pip_ install "${BUILD_SPECS[@]}"
  # two resolutions: the build pins setuptools < 70, the runtime needs >= 77
  pip_ download -d "$wheelhouse" "${BUILD_SPECS[@]}"
  pip_ download -d "$wheelhouse" "${STACK_SPECS[@]}" "pytest" "torch==${torch_version%%+*}"
  pip_ download -d "$wheelhouse" "$TRITON_SPEC" || say "triton has no wheel for this platform: skipped"
  pip_ download -d "$wheelhouse" --no-deps "mambavision==1.2.0" "timm==1.0.15" "einops" "safetensors" "pytest-timeout"
  pip_ download -d "$wheelhouse" --no-deps "$(torchvision_spec)" \
    || say "no torchvision wheel for this torch: mmpretrain will be unavailable offline"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_ wheel --no-build-isolation --no-deps -w "$wheelhouse" "$MMCV_SPEC"
  pip_ download -d "$wheelhouse" "$MMCV_SPEC" --no-deps --no-binary mmcv 2>/dev/null || true
  # mmcv's own runtime requirements
  pip_ download -d "$wheelhouse" addict "numpy" packaging Pillow pyyaml yapf opencv-python
  pip_ wheel --no-deps -w "$wheelhouse" "$HERE"
  say "done: copy $wheelhouse to the cluster and run 'bash tools/install.sh --offline $wheelhouse'"
  say "(the mmcv wheel is built for torch $torch_version: install that torch there, or keep the one the wheelhouse holds)"
  exit 0
fi

# 2-3. mmcv with ops, built against this torch unless a working one is already installed. Its setup.py breaks with
# setuptools >= 70: build with an older one, step 4 moves setuptools back to what torch and mmengine need.
if "$PYTHON" -c "import mmcv, mmcv.ops; assert mmcv.__version__.startswith('2.1.')" 2>/dev/null; then
  say "keeping mmcv $("$PYTHON" -c 'import mmcv; print(mmcv.__version__)') with ops"
else
  pip_ install "${index_args[@]}" "${BUILD_SPECS[@]}"
  say "building $MMCV_SPEC with ops against torch $torch_version (about 10 minutes on 2 cores, cached afterwards)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_ install "${index_args[@]}" --no-build-isolation "$MMCV_SPEC"
fi

# 4. the toolboxes, their undeclared imports, triton where it installs, and mmmv itself.
pip_ install "${index_args[@]}" "${STACK_SPECS[@]}"
pip_ install "${index_args[@]}" "$TRITON_SPEC" || say "triton does not install here: mmmv will use its torch backend"
# mmpretrain imports torchvision without declaring it. Install the release paired with this torch (--no-deps: never
# let it replace torch). PyPI's Linux torchvision wheels are CUDA builds: with a CPU-only torch they do not import,
# so there it is removed again and mmpretrain (classification) is reported unavailable; mmdet and mmseg do not need it.
if ! "$PYTHON" -c "import torchvision" 2>/dev/null; then
  tv_spec=$(torchvision_spec)
  say "installing $tv_spec for mmpretrain"
  pip_ install "${index_args[@]}" --no-deps "$tv_spec" || true
  if ! "$PYTHON" -c "import torchvision" 2>/dev/null; then
    pip_ uninstall -y torchvision >/dev/null 2>&1 || true
    say "note: no torchvision that works with torch $torch_version could be installed (PyPI has CUDA builds only);"
    say "      mmdet and mmseg do not need it, mmpretrain (classification configs) does: see the summary below."
  fi
fi
pip_ install "${index_args[@]}" --no-build-isolation -e "$HERE$extras"
if [ -n "$extras" ]; then
  # The official model, for the parity tests only. --no-deps: its pins would pull mamba_ssm (a CUDA build) and
  # torchvision; the tests run it with shims for both (tests/helpers/run_official_mambavision.py).
  pip_ install "${index_args[@]}" --no-deps "mambavision==1.2.0" "timm==1.0.15" "einops"
fi

"$PYTHON" - <<'EOF'
import importlib
import importlib.metadata
rows = []
for name in ("torch", "mmengine", "mmcv", "mmdet", "mmseg", "mmpretrain", "triton", "mmmv"):
    try:
        rows.append((name, importlib.import_module(name).__version__))
    except ImportError as e:
        rows.append((name, f"not installed ({e})"))
    except Exception as e:  # noqa: BLE001 - mmpretrain raises whatever its torchvision import raises
        rows.append((name, f"{importlib.metadata.version(name)}, does not import ({type(e).__name__})"))
import mmcv.ops  # noqa: F401  (fails loudly if the ops were not built)
from mmmv.engine.toolbox import torchvision_fix, torchvision_problem
problem = torchvision_problem()
if problem is not None:
    rows = [(name, f"{importlib.metadata.version('mmpretrain')} installed, unusable here: {problem}" if name == "mmpretrain"
             else version) for name, version in rows]
print("[mmmv install] installed:")
for name, version in rows:
    print(f"    {name:<11} {version}")
if problem is not None:
    print("[mmmv install] classification configs (mmpretrain) need a torchvision built for this torch; fix:")
    print(f"    {torchvision_fix()}")
EOF
