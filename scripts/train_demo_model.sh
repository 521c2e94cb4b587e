#!/usr/bin/env bash
# Train the bundled demo model (jukebox_flax/assets/demo_model) from scratch on the synthetic dataset,
# with the configs of scripts/demo_configs/, on one CPU thread. About 45 minutes on one shared CPU core
# (VQ-VAE 11 min, top prior 20, upsamplers 8 + 6.5).
#   bash scripts/train_demo_model.sh [WORKDIR]        (default WORKDIR: runs/demo)
set -euo pipefail
W=${1:-runs/demo}
C=scripts/demo_configs
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# 4 songs per (artist, genre) for the VQ-VAE and the upsamplers; the top prior, which must learn each
# genre's rhythm from the labels alone, gets 8 (a superset: the first 4 of each pair are the same songs)
python scripts/make_synthetic_dataset.py "$W/data" --songs-per-pair 4 --seconds 8 --seed 0
python scripts/make_synthetic_dataset.py "$W/data_top" --songs-per-pair 8 --seconds 8 --seed 0
python scripts/make_synthetic_dataset.py "$W/heldout" --songs-per-pair 1 --seconds 8 --seed 1
python scripts/train_vqvae.py --data "$W/data" --out "$W/vq" --config $C/vqvae.json --steps 700 --batch 4 \
    --sample-length 8192 --lr 1e-3 --warmup 50 --log-every 25 --checkpoint-every 100 --no-progress
declare -A STEPS=([2]=4000 [1]=3000 [0]=3000)
declare -A DATA=([2]="$W/data_top" [1]="$W/data" [0]="$W/data")
for level in 2 1 0; do
  python scripts/train_prior.py --data "${DATA[$level]}" --vqvae "$W/vq/model" --out "$W/p$level" \
      --config $C/prior_level_$level.json --steps "${STEPS[$level]}" --batch 8 --lr 1e-3 \
      --log-every 50 --checkpoint-every 500 --no-progress
done
python scripts/build_demo_model.py --vqvae "$W/vq/model" --priors "$W/p0/model" "$W/p1/model" "$W/p2/model"
python scripts/evaluate_demo_model.py --data "$W/heldout" --temperature 0.8 --json "$W/evaluation.json"
