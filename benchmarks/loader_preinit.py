"""Benchmark c: standard vs threaded pre-initialised loader (thesis Alg. 6), workers=2, not persistent.

The epoch-start stall is the time from asking for an epoch's iterator to holding its first batch, for the
training and the validation loader together (thesis Table 2.8). Targets against the standard loader (its
workers forked, `loader.start_method=auto`): stall removed >= 80 %, whole epoch preinit/standard <= 1.02
(the next epoch's workers start near the current epoch's end, so they do not compete with it all epoch).

Rounds alternate the variants (and their order) to spread machine noise; each round gives a ratio, and the
median ratio is the figure. `--forkserver` adds a standard loader with forkserver workers for reference
(the pre-initialised loader starts its workers that way).

    .venv/bin/python benchmarks/loader_preinit.py [--rounds 3] [--epochs 2] [--forkserver] [key=value ...]
"""
import statistics

from _common import parser, run_variants, table

BASE = ["data.dataset=cremad", "data.preset=tiny", "loader.num_workers=2", "loader.persistent_workers=false",
        "train.lr=0.01", "system.sample_interval=0"]

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of all variants")
    p.add_argument("--forkserver", action="store_true", help="also a standard loader with forkserver workers")
    p.set_defaults(epochs=2)
    args = p.parse_args()
    variants = {"standard": ["loader.preinit=false"], "preinit": ["loader.preinit=true"]}
    if args.forkserver:
        variants["standard-forkserver"] = ["loader.preinit=false", "loader.start_method=forkserver"]
    rounds = []
    for r in range(args.rounds):
        order = dict(reversed(variants.items())) if r % 2 else variants
        rounds.append(run_variants(order, args, BASE))
    stall = lambda v: v["train_loader_init_s_mean"] + v["val_loader_init_s_mean"]  # noqa: E731
    rows = []
    for k in variants:
        runs = [res[k] for res in rounds]
        rows.append((k, statistics.mean(v["train_loader_init_s_mean"] for v in runs),
                     statistics.mean(v["val_loader_init_s_mean"] for v in runs),
                     statistics.mean(stall(v) for v in runs), statistics.mean(v["epoch_s_mean"] for v in runs),
                     " ".join(f"{v['epoch_s_mean']:.2f}" for v in runs)))
    print(f"{args.rounds} rounds x {args.epochs} measured epochs after {args.warmup} warm-up, per variant")
    table(rows, ("loader", "train init s", "val init s", "stall s", "epoch s", "epoch s per round"))
    for ref in [k for k in variants if k != "preinit"]:
        removed = statistics.median(100 * (1 - stall(res["preinit"]) / stall(res[ref])) for res in rounds)
        ratios = [res["preinit"]["epoch_s_mean"] / res[ref]["epoch_s_mean"] for res in rounds]
        target = " (targets: >= 80 %, <= 1.02)" if ref == "standard" else ""
        print(f"vs {ref}: epoch-start stall removed {removed:.1f} %; whole epoch preinit/standard = "
              f"{statistics.median(ratios):.3f} (median; rounds: {', '.join(f'{x:.3f}' for x in ratios)}){target}")
