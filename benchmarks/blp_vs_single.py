"""Benchmark d: Branch-Level Parallelism vs a single device (thesis Sec. 3.4.4, Tables 4.13-4.15).

On the CPU the branches run in threads; on one GPU in CUDA streams; on several GPUs one branch per
GPU.

    .venv/bin/python benchmarks/blp_vs_single.py                       # synthetic CREMA-D tiny, CPU
    .venv/bin/python benchmarks/blp_vs_single.py data.preset=full system.device=cuda
    train.batch_size=64
"""
from _common import parser, run_variants, table

BASE = ["data.dataset=cremad", "data.preset=tiny", "train.lr=0.01", "system.sample_interval=0"]

if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    res = run_variants(
        {"single": ["system.parallelism=single"], "blp": ["system.parallelism=blp"]}, args, BASE
    )
    rows = [
        (k, v["train_s_mean"], v["epoch_s_mean"], v["epoch_s_se"], v["train_samples_per_s_mean"])
        for k, v in res.items()
    ]
    table(rows, ("parallelism", "train s", "epoch s", "+-se", "samples/s"))
    print(
        "BLP speedup (Eq. 4.1, epoch time single / blp): "
        f"{res['single']['epoch_s_mean'] / res['blp']['epoch_s_mean']:.3f}"
    )
