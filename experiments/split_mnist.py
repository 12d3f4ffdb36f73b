"""Split MNIST in the three scenarios, the protocol of van de Ven, Tuytelaars & Tolias (2022).

Their paper: "Three types of incremental learning", Nature Machine Intelligence.

    continual run split_mnist                        # class-incremental, seed 0
    continual run split_mnist --arg task             # task-incremental (masked heads)
    continual run split_mnist --arg domain           # domain-incremental (shared 2-way head)
    continual sweep split_mnist --seeds 20 --set seed=2 --method ewc   # the paper's seeds 2-21

A method's 20-seed sweep took 26-33 minutes on 2 shared CPU cores (A-GEM and LwF 25-27 per 10
seeds), one program per seed; with `--set stream.class_order=sorted` all seeds are one program
(5 seeds: 2-13 minutes). Times and numbers: docs/reproductions.md.

MNIST (60,000 / 10,000 images; obtained without a download where needed, see README) in five
tasks of two digits; MLP 784-400-400-10 (ReLU), Adam lr 1e-3 (moments not reset), minibatches
of 128, 2000 iterations per task. Strengths are theirs (their `params/param_values.py`): EWC
with the exact Fisher on every training example, λ = 1e5 / 1e10 / 1e9 (task / domain / class);
SI with ξ = 0.1 and c = 10 / 5e4 / 5e3; LwF at T = 2, its distillation loss without the T²
factor (strength 1/4) and, class-incremental, over all ten outputs with weight 1 (their code:
every output active, `loss_fn_kd`; task- and domain-incremental weighed by the number of
earlier tasks); ER and A-GEM with 100 examples per class (class-balanced), a replayed batch of
128; ER weighs the replayed loss by the number of earlier tasks, as their 1/t : 1 - 1/t
weighting does. Training reads every output in class-incremental learning, as their default
(`--active-classes all`); `--set stream.train_outputs=seen` trains over the classes seen so far
instead (their `all-so-far`, but for LwF's zero targets on the current classes). `joint`
trains once on all five tasks (10,000 iterations). Which digits pair up into the five tasks
follows the seed, as in their code (`stream.class_order = "shuffled"`, drawn as their
`data/load.py` draws it; seed 0 keeps 0-1, 2-3, ..., 8-9, and the paper's runs are seeds
2-21), so each seed of a sweep is a program of its own; `--set stream.class_order=sorted`
keeps 0-1, 2-3, ..., 8-9 for every seed, as this experiment did before 2026-11-30.
Published class-incremental average accuracy (20 seeds, ± SEM): None 19.89 ± 0.02, Joint
98.17 ± 0.04, EWC 20.64 ± 0.52, SI 21.20 ± 0.57, LwF 21.89 ± 0.32, A-GEM 65.10 ± 3.64, ER
88.79 ± 0.20. Ours, with the command that measured them and where they differ and why:
docs/reproductions.md (with their digit pairs, seeds 2-21: None 19.91 ± 0.02, Joint 98.17 ±
0.05, EWC 20.62 ± 0.52, SI 23.79 ± 0.83, LwF 22.52 ± 0.34, A-GEM 65.69 ± 4.29, ER 89.32 ±
0.20). Their layers start from PyTorch's initialisation and ours from Flax's; SI with theirs
(`--set model.initializer=torch`) gives 23.17 ± 0.70, and with their minibatches (epochs
without replacement, `--set train.sampling=shuffle`) 23.13 ± 0.86; with both 22.23 ± 0.62.
"""

# Their chosen strengths per scenario (GMvandeVen/continual-learning, params/param_values.py).
STRENGTHS = {
    "task": {"ewc": 1e5, "si": 10.0},
    "domain": {"ewc": 1e10, "si": 5e4},
    "class": {"ewc": 1e9, "si": 5e3},
}


def get_config(arg=None):
    """`arg`: the scenario, "class" (default), "task" or "domain"."""
    scenario = arg or "class"
    if scenario not in STRENGTHS:
        raise ValueError(f"split_mnist: --arg must be one of {', '.join(STRENGTHS)}")
    memory = {"capacity": 1000, "selection": "class_balanced", "per_class": 100, "batch_size": 128}
    return {
        "seed": 0,
        "stream": {
            "name": "split",
            "source": "mnist",
            "num_tasks": 5,
            "scenario": scenario,
            "class_order": "shuffled",  # their seeds pair the digits up differently
        },
        "model": {"name": "mlp", "widths": [400, 400]},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"steps": 2000, "batch_size": 128, "eval_every": 500},
        "regularisers": {
            "ewc": {"strength": STRENGTHS[scenario]["ewc"], "estimator": "exact"},
            "si": {"strength": STRENGTHS[scenario]["si"], "damping": 0.1},
            "lwf": {
                "strength": 1 / 4,  # their distillation loss has no T^2 factor
                "temperature": 2.0,
                "scale_by_tasks": scenario != "class",  # their class-IL weighs it 1 : 1
                "units": "all" if scenario == "class" else "seen",
            },
            "replay": {**memory, "weight": 1.0, "scale_by_tasks": True},
            "agem": dict(memory),
        },
        "methods": {
            "none": {},
            "joint": {"joint": True},
            "ewc": {"use": ["ewc"]},
            "si": {"use": ["si"]},
            "lwf": {"use": ["lwf"]},
            "er": {"use": ["replay"]},
            "agem": {"use": ["agem"]},
        },
        "run": [],
    }
