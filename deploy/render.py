"""Render the SLURM job scripts of deploy/slurm/job.sbatch.in: one GPU, one node with all its GPUs, several
nodes; for CUDA and for ROCm (MI300A); `aam pretrain` or `aam train`.

    python deploy/render.py --vendor rocm --shape nodes --command pretrain > pretrain.sbatch
    python deploy/render.py --all deploy/rendered      # every combination (what the tests check)
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "slurm" / "job.sbatch.in"

VENDORS = {
    "cuda": {"VENDOR_TEXT": "NVIDIA GPUs (CUDA)", "CONTAINER": "--nv aam-cuda.sif",
             "VENDOR_SETUP": "module load cuda 2>/dev/null || true  # site-specific; the wheels bring their CUDA runtime"},
    "rocm": {"VENDOR_TEXT": "AMD GPUs (ROCm; MI300A APUs: 4 per node, gfx942)", "CONTAINER": "--rocm aam-rocm.sif",
             "VENDOR_SETUP": "\n".join([
                 "module load rocm 2>/dev/null || true  # site-specific; match the ROCm of the torch wheels",
                 "export MIOPEN_USER_DB_PATH=$LOCAL/miopen MIOPEN_CUSTOM_CACHE_DIR=$LOCAL/miopen",
                 "export HSA_XNACK=1  # MI300A: GPU page faults on host memory (one unified memory on the APU)",
                 "export HIP_FORCE_DEV_KERNARG=1  # kernel arguments in device memory: lower launch latency"])},
}
SHAPES = {
    "gpu": {"SHAPE_TEXT": "one GPU", "NODES": "1", "GPUS": "1", "CPUS": "16",
            "LAUNCH": 'srun "$PY" -m aam.cli.main', "WORKERS": ""},
    "node": {"SHAPE_TEXT": "one node with all its GPUs (one DDP worker per GPU)", "NODES": "1", "GPUS": "4",
             "CPUS": "64", "LAUNCH": 'srun "$PY" -m aam.cli.main', "WORKERS": ' --nproc-per-node "$GPUS"'},
    "nodes": {"SHAPE_TEXT": "several nodes (torchrun, rendezvous on the first node)", "NODES": "2", "GPUS": "4",
              "CPUS": "64",
              "LAUNCH": 'srun "$PY" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node="$GPUS" '
                        '--rdzv-backend=c10d --rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | '
                        'head -n 1):29500" --rdzv-id="$SLURM_JOB_ID" -m aam.cli.main', "WORKERS": ""},
}
COMMANDS = {
    "pretrain": {"INPUTS": "TREE=${TREE:-$SLURM_SUBMIT_DIR/data/tree.nwk}", "STAGED": '"$TABLE" "$TREE"',
                 "ARGS": '--table "$LOCAL/$(basename "$TABLE")" --tree "$LOCAL/$(basename "$TREE")" --epochs 100 '
                         '--auto-batch-size --target-effective-batch-size 256 --mixed-precision bf16 '
                         '--checkpoint-every 500'},
    "train": {"INPUTS": "METADATA=${METADATA:-$SLURM_SUBMIT_DIR/data/metadata.tsv}\n"
                        "COLUMN=${COLUMN:-age}\n"
                        "ENCODER=${ENCODER:-$SLURM_SUBMIT_DIR/runs/pretrain/checkpoints/best.pt}",
              "STAGED": '"$TABLE" "$METADATA"',
              "ARGS": '--table "$LOCAL/$(basename "$TABLE")" --metadata "$LOCAL/$(basename "$METADATA")" '
                      '--metadata-column "$COLUMN" --pretrained-encoder "$ENCODER" --mixed-precision bf16 '
                      '--checkpoint-every 200'},
}


def render(vendor: str, shape: str, command: str) -> str:
    text = TEMPLATE.read_text()
    fields = {**VENDORS[vendor], **SHAPES[shape], **COMMANDS[command], "COMMAND": command}
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if leftover:
        raise SystemExit(f"template fields left unrendered: {leftover}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vendor", choices=VENDORS, default="cuda")
    parser.add_argument("--shape", choices=SHAPES, default="gpu")
    parser.add_argument("--command", choices=COMMANDS, default="pretrain")
    parser.add_argument("--all", metavar="DIR", help="write every combination to DIR/<vendor>-<shape>-<command>.sbatch")
    args = parser.parse_args(argv)
    if args.all:
        out = Path(args.all)
        out.mkdir(parents=True, exist_ok=True)
        for vendor, shape, command in itertools.product(VENDORS, SHAPES, COMMANDS):
            (out / f"{vendor}-{shape}-{command}.sbatch").write_text(render(vendor, shape, command))
        return 0
    sys.stdout.write(render(args.vendor, args.shape, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
