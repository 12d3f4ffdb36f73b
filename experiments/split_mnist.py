"""Split MNIST in the three scenarios, the protocol of van de Ven, Tuytelaars & Tolias (2022).

Their paper: "Three types of incremental learning", Nature Machine Intelligence.

    continual run split_mnist                        # class-incremental, seed 0
    continual run split_mnist --arg task             # task-incremental (masked heads)
    continual run split_mnist --arg domain           # domain-incremental (shared 2-way head)
    continual sweep split_mnist --seeds 20 --set seed=2 --method ewc   # the paper's seeds 2-21

Time: about half an hour for one method's 20-seed sweep on 2 shared CPU cores, one program per
seed (each command's time is on the results page).
Results: docs/reproductions.md#split-mnist-in-three-scenarios-van-de-ven-tuytelaars--tolias-2022

Five tasks of two digits; their MLP, optimizer and iterations per task; their strengths per
scenario (STRENGTHS below, from their `params/param_values.py`); their LwF loss, their ER
weighting and class-balanced memories for ER and A-GEM; `joint` trains once on all five tasks.
Which digits pair up into the tasks follows the seed, as in their code
(`stream.class_order = "shuffled"`, drawn as their `data/load.py` draws it; seed 0 keeps 0-1,
2-3, ..., 8-9); `--set stream.class_order=sorted` keeps those pairs for every seed, and a sweep's
seeds are then one program. `--set stream.train_outputs=seen` trains over the classes seen so far
(their `all-so-far`). The protocol in full, the published numbers beside ours, and where and why
they differ: the results page.
"""

ARGS = (None, "class", "task", "domain")  # what --arg accepts (None: no --arg)
SMOKE = {"arg": None, "set": ["train.steps=4", "train.eval_every=2"]}  # --smoke; the tests

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
