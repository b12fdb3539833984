#!/usr/bin/env bash
# The mask generator's training for a session that has a GPU, after perf/gpu_checks.sh: one
# command that leaves everything a later CPU session needs to judge and ship the result.
#   bash perf/gpu_train_generator.sh [MINUTES] [LOG_DIR]     (defaults: 4, $OUT or ./gpu-train)
# Environment (all optional):
#   CFG      stylegan3-t (default) or stylegan3-r: from nothing unless RESUME names a state of
#            theirs; or stylegan2, the shipped generator's network. Why stylegan3-t: the shipped
#            StyleGAN2 generator makes half as many nuclei cut by the tile's edge as real tiles
#            have (its whole count shortfall), and from scratch on a CPU StyleGAN2 kept its
#            nuclei off the edges (16-24 kimg) where stylegan3-t put them there from its first
#            blobs (12-16 kimg); see the model card. On a CPU stylegan3-t costs about 245 s/kimg
#            against 31, so only a GPU can train it far.
#   CBASE, CMAX  widths (default 2048, 64: the shipped generator's)
#   RESUME   a full training state (network-snapshot-*.pt with G, D, optimizers, ADA p) to go on
#            from; default for stylegan2: the shipped dsb2018-nuclei weights with a fresh
#            discriminator
#   DATA     a masks zip from `dataset pack`; default: packed here from $DSB/train as the shipped
#            generator's was (128-px tiles at stride 64, scaled to 64 px)
#   DSB      the DSB2018 fluorescence data (default: ../shared/data/dsb2018-fluo)
#   REPEAT   `dataset pack --repeat-crowded` rules for that zip (default: none; e.g. 14:4,10:2)
#   BATCH    minibatch (default 64)   GAMMA  R1 weight (default 1)   SEED  (default 0)
#   TICK     kimg per tick, one snapshot per tick (default 8)
#   PICK     generated tiles per snapshot and setting for the choice (default 300)
#   PAR      snapshots measured at once (default 8)   KEEP  snapshots measured (default 16)
# Steps, each under its own time limit:
# 1. the data: DSB2018 imported and packed (skipped with DATA);
# 2. training (CFG, with the shipped generator's widths and latent sizes) for MINUTES
#    (`--max-minutes`), a snapshot every tick;
# 3. the snapshot and sampling settings (psi 0.8 / 1, seed level 0.4 / 0.55) of lowest mean W1
#    to the real TRAIN tiles (perf/pick_snapshot.py, many processes, one per snapshot), the
#    starting state or the shipped generator measured beside them;
# 4. that snapshot's full state and its weights-only export (the settings recorded) copied to
#    LOG_DIR, with its goal figures on the test split (perf/pretrained_goals.py --skip-images),
#    the train log and the choice table.
# Run it as a device call of its own after the checks (their 7 minutes and this together pass
# the 10-minute limit of one call): MINUTES of training and about 3 more for the rest.
# A CPU run of the same script with MINUTES 0.3 checks the whole chain (tests do not run it).
set -u
MIN=${1:-4}
L=${2:-${OUT:-gpu-train}}
if ! [[ $MIN =~ ^[0-9]*\.?[0-9]+$ ]] || [[ $MIN =~ ^0*\.?0*$ ]]; then
  echo "gpu_train_generator.sh: MINUTES must be a positive number, not '$MIN'" >&2
  exit 2
fi
mkdir -p "$L"
L=$(cd "$L" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH=$ROOT:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CS="$PY -m cellsynth"
DSB=${DSB:-$ROOT/../shared/data/dsb2018-fluo}
W=${WORK:-$(mktemp -d)}
T0=$(date +%s)
el() { echo "[t=$(($(date +%s) - T0))s] $*" | tee -a "$L/timeline.txt"; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
el "start: ${GPU:-no GPU} minutes=$MIN work=$W"

# 1. data
ZIP=${DATA:-}
if [ -z "$ZIP" ]; then
  ZIP=$W/dsb-masks64.zip
  REP=()
  [ -n "${REPEAT:-}" ] && REP=(--repeat-crowded "$REPEAT")
  timeout 300 $CS dataset import embedseg "$DSB" --out "$W/DSB" >"$L/data.log" 2>&1 &&
    timeout 300 $CS dataset pack --kind masks --source "$W/DSB" --split train --dest "$ZIP" \
      --resolution 64 --transform tiles --tile-size 128 --stride 64 "${REP[@]}" >>"$L/data.log" 2>&1
  rc=$?
  el "data rc=$rc ($(tail -1 "$L/data.log"))"
  [ $rc -eq 0 ] || exit $rc
fi

# 2. training
CFG=${CFG:-stylegan3-t}
RES=()
if [ -n "${RESUME:-}" ]; then
  RES=(--resume "$RESUME")
elif [ "$CFG" = stylegan2 ]; then
  RES=(--resume dsb2018-nuclei)
fi
timeout $((${MIN%.*} * 60 + 300)) $CS stylegan3 train --outdir "$W/run" --cfg "$CFG" \
  --data "$ZIP" --batch "${BATCH:-64}" --gamma "${GAMMA:-1}" --mirror --ada-kimg 100 \
  --tick "${TICK:-8}" --snap 1 --cbase "${CBASE:-2048}" --cmax "${CMAX:-64}" --map-depth 2 \
  --z-dim 64 --w-dim 64 --workers 4 --seed "${SEED:-0}" "${RES[@]}" --max-minutes "$MIN" \
  --no-progress >"$L/train.log" 2>&1
rc=$?
RUN=$(dirname "$(ls -t "$W"/run/*/network-snapshot-*.pt 2>/dev/null | head -1)")
cp "$RUN"/log.txt "$RUN"/stats.jsonl "$L"/ 2>/dev/null
el "train rc=$rc, $(ls "$RUN"/network-snapshot-*.pt 2>/dev/null | wc -l) snapshots in $RUN"
[ -d "$RUN" ] || exit 1

# 3. the choice, on the train split: one process per snapshot, PAR (default 8) at a time; the
# state in RESUME, else the shipped generator, is measured beside them (as kimg 0 of a folder
# "start"), same seeds
mkdir -p "$W/pick/start"
START=${RESUME:-}
if [ -z "$START" ]; then # the shipped generator, whatever CFG trains: the bar to pass
  START=$($PY -c "from cellsynth import models; print(models.resolve('dsb2018-nuclei', 'stylegan3'))")
fi
ln -sf "$(readlink -f "$START")" "$W/pick/start/network-snapshot-000000.000.pt"
echo "$W/pick/start" >"$W/pick/dirs"
# at most KEEP snapshots (default 16), evenly spread over the run, the last one always
SNAPS=$(ls "$RUN"/network-snapshot-*.pt | $PY -c "
import sys
s = sys.stdin.read().split()
k = min(len(s), int(sys.argv[1]))
print(*sorted({s[round(i * (len(s) - 1) / max(k - 1, 1))] for i in range(k)}))" "${KEEP:-16}")
for snap in $SNAPS; do
  d=$W/pick/$(basename "$snap" .pt)
  mkdir -p "$d" && ln -sf "$snap" "$d/"
  echo "$d" >>"$W/pick/dirs"
done
xargs -P "${PAR:-8}" -I{} sh -c "OMP_NUM_THREADS=2 timeout 300 $PY perf/pick_snapshot.py {} --every 1 \
  --data '$DSB' --num ${PICK:-300} --trunc 0.8,1 --marker-thresh 0.4,0.55 --log {}/pick.jsonl \
  >/dev/null 2>>'$L/pick.err'" <"$W/pick/dirs"
cat "$W"/pick/*/pick.jsonl >"$L/pick.jsonl" 2>/dev/null
BEST=$($PY - "$L/pick.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rows = [r for r in rows if r.get("w1_mean") is not None]
if rows:
    b = min(rows, key=lambda r: r["w1_mean"])
    start = [r["w1_mean"] for r in rows if "/start/" in r["snapshot"]]
    print(b["snapshot"], b["trunc"], b["marker_thresh"], b["w1_mean"], min(start, default=None))
EOF
)
el "best on the train split: ${BEST:-none} (snapshot psi seed-level w1-mean start's-best-w1-mean)"
[ -n "$BEST" ] || exit 1
read -r SNAP PSI LEVEL _ <<<"$BEST"

# 4. what comes back
cp "$(readlink -f "$SNAP")" "$L/"
$CS models export --kind stylegan3 --checkpoint "$SNAP" --trunc "$PSI" --marker-thresh "$LEVEL" \
  --out "$L/generator-gpu.pt" >"$L/export.log" 2>&1
el "export rc=$?"
OMP_NUM_THREADS=8 timeout 300 $PY perf/pretrained_goals.py --skip-images --data "$DSB" \
  --masks "$L/generator-gpu.pt" --num 1000 --grid-dir "$L" >"$L/goals.json" 2>"$L/goals.err"
el "goals rc=$? (test split, chosen snapshot only)"
