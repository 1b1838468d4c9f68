#!/usr/bin/env bash
# One prepared session on a lent GPU (an H100/H200), every stage time-boxed so that one call of a
# few minutes brings back what it measured even when a stage runs long:
#   speed     bench/trainer_speed.py in fp32 and bf16, with --complete: the complete BSeGN at bsegn.md
#             sizes (hidden 4096, batch 64), seconds per AwA1 epoch and peak GPU memory;
#   main      bench/awa1_lampert.py: BSeGN, f-CLSWGAN and ESZSL, the validation run choosing the number
#             of generator epochs among $EPOCHS (and every seen-or-unseen gate's threshold), 3 seeds;
#   demo      the demo pipeline in fp16: `accelerate launch --mixed_precision fp16 train.py`;
#   ablations the six BSeGN ablations of bench/awa1_lampert.py, as `main`, one process each, side by
#             side (one process leaves the GPU mostly idle between its small kernels);
#   longer    f-CLSWGAN and BSeGN (one process each) choosing among longer trainings ($LONGER_EPOCHS).
#   images    bench/images.py: extraction and fine-tuning of resnet101 at 224 px in bf16 on $IMAGES
#             generated 500x375 JPEGs (channels-last, pinned memory, workers sized from the machine),
#             once as shipped and once with --reduced-decode --compile; img/s and whole/bare ratios
#   graphs    bench/trainer_speed.py --complete in fp32 with BSEGN_CUDA_GRAPHS unset and =1 (the critic
#             steps replayed as a CUDA graph): ms per iteration, off vs on
#   predict   bench/predict.py on the bundle the demo stage wrote ($DEMO_RUN; needs the demo stage)
#   flowers   (opt-in: STAGES="flowers") the flowers photos ($BSEGN_SHARED_DATA/flowers) on the validation
#             protocol only, for seeds $FLOWERS_SEEDS: the whole network fine-tuned in bf16 ($FLOWERS_ALL, the
#             benchmark configs' SGD recipe) against the shipped last stage, one after the other on the same
#             machine; each run's validation metrics to OUT_DIR/flowers_<variant>_s<seed>.json. Never reads
#             test: whether whole-network fine-tuning earns the flowers config is a validation question.
# Usage: BSEGN_SHARED_DATA=/path/to/shared/data [STAGES="speed main"] bash bench/gpu_session.sh [OUT_DIR]
# OUT_DIR defaults to bench/results/<gpu name>_<date>/ (the images stage writes its JSON there).
# Stages run in the background where they can share the machine (demo, ablations, longer). Nothing
# here is GPU-specific code: the same commands run on a CPU, only slower. OUT_DIR gets awa1_runs.json
# (every bench process's --json, by stage name), demo_metrics.json and logs.txt (every stage's log).
set -u
repo=$(realpath "$(dirname "$0")/..")
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '_' | tr -s '_')
out=$(realpath -m "${1:-$repo/bench/results/${gpu:-cpu}_$(date +%F)}")
mkdir -p "$out"
cd "$repo"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
STAGES=${STAGES:-speed images graphs main demo ablations predict}
EPOCHS=${EPOCHS:-2,3,6,12}
LONGER_EPOCHS=${LONGER_EPOCHS:-2,3,6,12,24}
CONFIG=${CONFIG:-configs/awa1-lampert.yaml}
IMAGES=${IMAGES:-5000}
logs=${LOGS:-/tmp/bsegn-gpu-logs}
mkdir -p "$logs"

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run time-boxed, log to $logs/NAME.log, print its tail
    local name=$1 limit=$2 t
    shift 2
    echo "=== $name (limit ${limit} s) at $(date +%T)"
    t=$(date +%s)
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    echo "=== $name: exit $? after $(( $(date +%s) - t )) s"
    tail -n "${TAIL:-15}" "$logs/$name.log"
}
wants() { [[ " $STAGES " == *" $1 "* ]]; }
awa1() {  # awa1 NAME LIMIT METHODS EPOCHS
    stage "$1" "$2" python3 bench/awa1_lampert.py --methods "$3" --config "$CONFIG" --select-epochs "$4" \
        --seeds 3 --validation-seeds "${VALIDATION_SEEDS:-2}" --threads "${THREADS:-2}" --json "$logs/$1.json" \
        --gates "${GATES:-stacking,gaussian,learned,semantic,combined}"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, accelerate, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| accelerate', accelerate.__version__, '| timm', timm.__version__)"
} 2>&1 | tee "$logs/environment.log"

# Decode the AwA1-Lampert features into the cache once, while the first stage runs (only for the stages that read them).
decoding=""
if wants main || wants ablations || wants longer; then
    python3 -c "from bsegn.datasets.lampert import load_awa1_lampert; load_awa1_lampert(None, None, 'lss')" \
        >"$logs/decode.log" 2>&1 &
    decoding=$!
fi

if wants speed; then
    stage trainer_speed 100 bash -c "python3 bench/trainer_speed.py --iterations ${SPEED_ITERATIONS:-30} --complete \
        --mixed-precision no; python3 bench/trainer_speed.py --iterations ${SPEED_ITERATIONS:-30} --complete \
        --mixed-precision bf16"
fi
if wants images; then
    for variant in shipped fast; do
        extra=""; [[ $variant == fast ]] && extra="--reduced-decode --compile"
        stage "images_$variant" "${IMAGES_LIMIT:-300}" python3 bench/images.py --model resnet101 --image-size 224 \
            --mixed-precision bf16 --images "$IMAGES" --batch-size 64 --folder /tmp/bsegn-jpegs $extra --json "$out/images_resnet101_bf16_$variant.json"
    done
fi
if wants graphs; then
    stage graphs_off 120 env -u BSEGN_CUDA_GRAPHS python3 bench/trainer_speed.py --iterations "${SPEED_ITERATIONS:-30}" --complete
    stage graphs_on 120 env BSEGN_CUDA_GRAPHS=1 python3 bench/trainer_speed.py --iterations "${SPEED_ITERATIONS:-30}" --complete
fi
if wants demo; then
    TAIL=25 stage demo_fp16 "${DEMO_LIMIT:-300}" python3 -m accelerate.commands.launch --mixed_precision fp16 \
        --num_processes 1 --num_machines 1 --dynamo_backend no train.py --output "${DEMO_RUN:-/tmp/bsegn-demo-fp16}" &
fi
[[ -n $decoding ]] && wait "$decoding"
if wants main; then
    awa1 awa1_main "${MAIN_LIMIT:-260}" bsegn,f-clswgan,eszsl "$EPOCHS"
fi
if wants ablations; then
    for switch in fem fem_s2f balance fem_boosts_g cycle mfim_levels; do
        awa1 "awa1_no_$switch" "${ABLATION_LIMIT:-300}" "bsegn-no-$switch" "$EPOCHS" &
    done
fi
if wants longer; then
    for method in f-clswgan bsegn; do
        awa1 "awa1_longer_$method" "${LONGER_LIMIT:-330}" "$method" "$LONGER_EPOCHS" &
    done
fi
wait
if wants flowers; then
    flowers=${BSEGN_SHARED_DATA:-$repo/../shared/data}/flowers
    if [[ -f $flowers/classes.csv ]]; then
        for seed in ${FLOWERS_SEEDS:-0}; do
            for variant in last_stage all; do
                extra=""; [[ $variant == all ]] && extra=${FLOWERS_ALL:-"--finetune.layers all --finetune.optimizer sgd \
                    --finetune.lr_backbone 1e-3 --finetune.lr_head 1e-2 --finetune.epochs 10 --finetune.warmup_epochs 1"}
                run="${FLOWERS_RUNS:-/tmp}/bsegn-flowers-$variant-s$seed"
                # shellcheck disable=SC2086  # $extra and $FLOWERS_EXTRA are word lists of flags
                TAIL=6 stage "flowers_${variant}_s$seed" "${FLOWERS_LIMIT:-900}" python3 -m accelerate.commands.launch \
                    --mixed_precision "${FLOWERS_PRECISION:-bf16}" --num_processes 1 --num_machines 1 --dynamo_backend no train.py \
                    --config flowers --data.images_root "$flowers/images" --data.attributes_csv "$flowers/classes.csv" \
                    --backbone.num_workers "${FLOWERS_WORKERS:-8}" --run.protocol validation --run.seed "$seed" \
                    --run.output "$run" $extra ${FLOWERS_EXTRA:-}
                cp "$run/metrics.json" "$out/flowers_${variant}_s$seed.json" 2>/dev/null
            done
        done
    else
        echo "=== flowers: skipped, no $flowers/classes.csv (set BSEGN_SHARED_DATA to the folder holding flowers/)"
    fi
fi
if wants predict; then
    stage predict 180 python3 bench/predict.py --model "${DEMO_RUN:-/tmp/bsegn-demo-fp16}" --images 256
fi
cp "${DEMO_RUN:-/tmp/bsegn-demo-fp16}/metrics.json" "$out/demo_metrics.json" 2>/dev/null
python3 - "$logs" "$out/awa1_runs.json" <<'PY'
import json, pathlib, sys
runs = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("awa1_*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
PY
for f in "$logs"/*.log; do echo "##### $(basename "$f")"; cat "$f"; done >"$out/logs.txt"
echo "=== done at $(date +%T)"
