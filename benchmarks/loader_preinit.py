"""Benchmark c: standard vs threaded pre-initialised loader (thesis Alg. 6), workers=2, not persistent.

The epoch-start stall is the time from asking for an epoch's iterator to holding its first batch, for the
training and the validation loader together (thesis Table 2.8). Targets against the standard loader (its
workers forked, `loader.start_method=auto`): stall removed >= 80 %, whole epoch preinit/standard <= 1.02
(the next epoch's workers start near the current epoch's end, so they do not compete with it all epoch).
A standard loader with forkserver workers is shown for reference: the pre-initialised one uses those.

    .venv/bin/python benchmarks/loader_preinit.py [key=value ...]
"""
from _common import parser, run_variants, table

BASE = ["data.dataset=cremad", "data.preset=tiny", "loader.num_workers=2", "loader.persistent_workers=false",
        "train.lr=0.01", "system.sample_interval=0"]

if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    res = run_variants({
        "standard": ["loader.preinit=false"],
        "standard-forkserver": ["loader.preinit=false", "loader.start_method=forkserver"],
        "preinit": ["loader.preinit=true"],
    }, args, BASE)
    stall = {k: v["train_loader_init_s_mean"] + v["val_loader_init_s_mean"] for k, v in res.items()}
    rows = [(k, v["train_loader_init_s_mean"], v["val_loader_init_s_mean"], stall[k], v["epoch_s_mean"],
             v["epoch_s_se"]) for k, v in res.items()]
    table(rows, ("loader", "train init s", "val init s", "stall s", "epoch s", "+-se"))
    for ref in ("standard", "standard-forkserver"):
        removed = 100 * (1 - stall["preinit"] / stall[ref])
        ratio = res["preinit"]["epoch_s_mean"] / res[ref]["epoch_s_mean"]
        target = " (targets: >= 80 %, <= 1.02)" if ref == "standard" else ""
        print(f"vs {ref}: epoch-start stall removed {removed:.1f} %; whole epoch preinit/standard = {ratio:.3f}"
              f"{target}")
