#!/usr/bin/env bash
# Prepares .gpu/ for benchmarks/gpu_session.sh: everything a GPU machine without the network needs
# to run the benchmarks, in one git-ignored folder to carry (about 50 MiB).
#
#     bash benchmarks/gpu_prepare.sh [REV]        # REV: the commit whose mmalign is measured (HEAD)
#
#   .gpu/src       `git archive REV` (mmalign, plugins, pyproject.toml, ...), with this working
#                  tree's benchmarks/ copied over it (the harness as edited here; mmalign as committed)
#   .gpu/whl/mm    wheels for mmalign's side, installed over the machine's own torch: mmalign itself
#                  (built from .gpu/src, so its plugins' entry points are found), transformers 5.25,
#                  diffusers, peft, accelerate, datasets, TRL 1.16 and what they need beyond the
#                  machine's image (benchmarks/README.md, "On a GPU machine")
#   .gpu/whl/peer  wheels for the ddpo peer: TRL 0.23.1 and the transformers 4.x stack it runs on
#
# Wheels are for CPython 3.12 on x86-64 Linux (the GPU machine's python), all pure Python but
# tokenizers (abi3, any CPython >= 3.9). The session installs them with --no-deps: each list below
# names every package the machine's image lacks or holds in a version that does not fit.
set -euo pipefail
REV=${1:-HEAD}
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >>"$EXCLUDE"

MM_WHEELS=(transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0
           idna==3.20 truststore==0.10.5 click==8.5.1 typing_extensions==4.16.0 diffusers==0.42.1
           importlib_metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2 peft==0.21.2 accelerate==1.16.0
           datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 trl==1.16.0)
PEER_WHEELS=(trl==0.23.1 transformers==4.57.6 diffusers==0.35.2 peft==0.17.1 accelerate==1.10.1 datasets==4.3.0
             huggingface_hub==0.36.2 tokenizers==0.22.2 dill==0.4.0 multiprocess==0.70.16)

rm -rf .gpu/src .gpu/whl
mkdir -p .gpu/src .gpu/whl/mm .gpu/whl/peer
git archive "$REV" | tar -x -C .gpu/src
cp benchmarks/*.py benchmarks/*.sh benchmarks/README.md benchmarks/requirements.txt .gpu/src/benchmarks/
git rev-parse "$REV" >.gpu/src/REVISION
git diff --quiet "$REV" -- benchmarks || echo "benchmarks/ differs from $REV (copied from the working tree)" >>.gpu/src/REVISION

download() {  # DIR SPEC...: CPython 3.12 manylinux wheels, no dependencies
  local dir=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@" 2>&1 | grep -v 'is ignored' || true
}
download .gpu/whl/mm "${MM_WHEELS[@]}"
download .gpu/whl/peer "${PEER_WHEELS[@]}"
# mmalign as a wheel of the snapshot: its dist-info carries the plugins' entry points (group mmalign)
python3 -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl/mm .gpu/src
rm -rf .gpu/src/build .gpu/src/*.egg-info

check() {  # DIR WANT: one wheel per name asked for (a failed download stops here, not on the GPU machine)
  local found
  found=$(ls "$1"/*.whl | wc -l)
  [ "$found" -eq "$2" ] || { echo "gpu_prepare: $1 holds $found wheels, expected $2" >&2; exit 1; }
}
check .gpu/whl/mm $((${#MM_WHEELS[@]} + 1))
check .gpu/whl/peer ${#PEER_WHEELS[@]}
du -sh .gpu; du -sh .gpu/src .gpu/whl/mm .gpu/whl/peer
