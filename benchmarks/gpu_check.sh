#!/bin/bash
# The GPU check behind the README's "On a GPU" numbers (needs CUDA; about 6 minutes on an H200).
#   bash benchmarks/gpu_check.sh DAVIS_ROOT [SEQUENCE] [RUN_DIR]
# DAVIS_ROOT holds JPEGImages/480p/<seq> and Annotations/480p/<seq> (first 48 frames used: copy
# them into a folder of their own if the sequence is longer). Then, on any machine:
#   python benchmarks/gpu_memory.py report RUN_DIR --tag <gpu>
set -u
DAVIS=$1; S=${2:-blackswan}; RUN=${3:-runs/gpu_check}
mkdir -p "$RUN"
V=$DAVIS/JPEGImages/480p/$S; M=$DAVIS/Annotations/480p/$S
python -m pytest -q tests/library/test_cuda.py | tee "$RUN/pytest_cuda.txt"
python benchmarks/gpu_memory.py depth "$RUN/depth.json"
COMMON="segment $V --labels $M --label-frames 0,23,47 --eval-labels $M --scale 0.5 --config paper-video --device cuda --quiet"
FAST="--set train.warmup_steps=1 --set train.checkpoint_every=100000 --set data.predict_shifts=1 --set data.predict_flip=false"
for mem in plain reversible; do
  python benchmarks/gpu_memory.py segment "$RUN/pv_${mem}_win.json" --steps 10 -- $COMMON $FAST --out "$RUN/pv_${mem}_win" \
    --set train.steps=10 --set model.memory=$mem
  python benchmarks/gpu_memory.py segment "$RUN/pv_${mem}_full.json" --steps 5 -- $COMMON $FAST --out "$RUN/pv_${mem}_full" \
    --set train.steps=5 --set model.memory=$mem --set data.batch_size=1 \
    --set data.window_depth=48 --set data.window_height=240 --set data.window_width=428
  for w in win full; do cp "$RUN/pv_${mem}_$w/metrics.json" "$RUN/pv_${mem}_${w}_metrics.json"; done
done
python benchmarks/gpu_memory.py segment "$RUN/pv_train.json" --steps 550 -- $COMMON --out "$RUN/pv_train" \
  --set train.steps=550 --set train.checkpoint_every=100000
cp "$RUN/pv_train/metrics.json" "$RUN/pv_train_metrics.json"
