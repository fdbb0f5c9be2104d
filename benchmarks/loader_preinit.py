"""Benchmark c: standard vs threaded pre-initialised loader (thesis Alg. 6), workers=2, not
persistent.

The epoch-start stall is the time from asking for an epoch's iterator to holding its first batch,
for the training and the validation loader together (thesis Table 2.8). Targets against the standard
loader (the thesis' and PyTorch's default: workers forked, `loader.start_method=auto`): stall
removed >= 80 %, whole epoch preinit/standard <= 1.02 (the next epoch's workers start near the
current epoch's end, so they do not compete with it all epoch).

A pre-initialised loader starts its workers from a forkserver (forking from its helper thread is
unsafe), so a third variant, the standard loader with forkserver workers, separates what
pre-initialisation itself gains from what the start method does: forking workers from a process that
trains costs the training process copy-on-write page faults (its `main sys s` and `minor faults`
columns, the whole bench).

Rounds alternate the variants (and their order) to spread machine noise; each round gives a ratio,
and the median ratio is the figure.

    .venv/bin/python benchmarks/loader_preinit.py [--rounds 3] [--epochs 2] [key=value ...]
"""
import statistics

from _common import parser, run_variants, table

BASE = [
    "data.dataset=cremad",
    "data.preset=tiny",
    "loader.num_workers=2",
    "loader.persistent_workers=false",
    "train.lr=0.01",
    "system.sample_interval=0",
]

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of all variants")
    p.set_defaults(epochs=2)
    args = p.parse_args()
    variants = {"standard": ["loader.preinit=false"], "preinit": ["loader.preinit=true"],
                "standard-forkserver": ["loader.preinit=false", "loader.start_method=forkserver"]}
    rounds = []
    for r in range(args.rounds):
        order = dict(reversed(variants.items())) if r % 2 else variants
        rounds.append(run_variants(order, args, BASE))
    stall = lambda v: v["train_loader_init_s_mean"] + v["val_loader_init_s_mean"]  # noqa: E731
    rows = []
    for k in variants:
        runs = [res[k] for res in rounds]
        mean = lambda f: statistics.mean(f(v) for v in runs)  # noqa: E731
        rows.append(
            (
                k,
                mean(lambda v: v["train_loader_init_s_mean"]),
                mean(lambda v: v["val_loader_init_s_mean"]),
                mean(stall),
                mean(lambda v: v["epoch_s_mean"]),
                " ".join(f"{v['epoch_s_mean']:.2f}" for v in runs),
                mean(lambda v: v["main_sys_s"]),
                round(mean(lambda v: v["main_minor_faults"])),
            )
        )
    print(
        f"{args.rounds} rounds x {args.epochs} measured epochs after {args.warmup} warm-up, per "
        "variant"
    )
    table(rows, ("loader", "train init s", "val init s", "stall s", "epoch s", "epoch s per round",
                 "main sys s", "minor faults"))
    for ref in [k for k in variants if k != "preinit"]:
        removed = statistics.median(
            100 * (1 - stall(res["preinit"]) / stall(res[ref])) for res in rounds
        )
        ratios = [res["preinit"]["epoch_s_mean"] / res[ref]["epoch_s_mean"] for res in rounds]
        target = " (targets: >= 80 %, <= 1.02)" if ref == "standard" else ""
        print(f"vs {ref}: epoch-start stall removed {removed:.1f} %; whole epoch preinit/{ref} = "
              f"{statistics.median(ratios):.3f} (median; rounds: "
              f"{', '.join(f'{x:.3f}' for x in ratios)}){target}")
