"""Training: one pure step, a chunk of steps as lax.scan, and the loop over a task's chunks.

Nothing here is jitted or reads config: the runner jits `make_chunk` once, with donation, and the
same compiled program serves every task (the task index and freeze mask are values, not shapes).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from continual.config import ConfigError
from continual.evaluate import evaluate_tasks
from continual.losses import Objective
from continual.regularisers import Regulariser
from continual.types import TaskData, TrainState

OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}


class DivergenceError(RuntimeError):
    """The training loss became non-finite; names the task and step."""

    def __init__(self, task: str, step: int, last_finite: float | None):
        self.task, self.step, self.last_finite = task, step, last_finite
        super().__init__(
            f"non-finite loss on task {task!r} at step {step} (last finite loss: {last_finite})"
        )


def make_optimizer(name: str, learning_rate: float, **kwargs) -> optax.GradientTransformation:
    """An optax optimizer whose float hyperparameters (learning rate, momentum, ...) are state
    leaves (`optax.inject_hyperparams`), so a sweep can stack them."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    return optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=learning_rate, **kwargs)


def reset_optimizer(optimizer, state: TrainState) -> TrainState:
    """Fresh optimizer moments for a new task, keeping the injected hyperparameter values."""
    fresh = optimizer.init(state.params)
    return state._replace(opt_state=fresh._replace(hyperparams=state.opt_state.hyperparams))


def init_state(params, optimizer, regulariser: Regulariser, key) -> TrainState:
    """The train state at step 0."""
    return TrainState(
        jnp.zeros((), jnp.int32), params, optimizer.init(params), regulariser.init(params), key
    )


SAMPLING = ("uniform", "shuffle")


def check_batch(sampling: str, batch_size: int, tasks) -> None:
    """Every task (a continual.types.Task) must hold a minibatch: a batch larger than the task it
    is drawn from is refused (with sampling "shuffle" an epoch would hold none)."""
    n, name = min((len(t.train["y"]), t.name) for t in tasks)
    if n < batch_size:
        why = ", so an epoch holds none" if sampling == "shuffle" else "; 0 takes all of them"
        raise ConfigError(
            f"train.batch_size ({batch_size}) is larger than task {name!r}'s {n} training "
            f"examples{why}"
        )


def sample_batch(data: TaskData, task, key, batch_size: int) -> dict:
    """`batch_size` examples of `task`, drawn uniformly with replacement; 0 means all of them."""
    if batch_size == 0:
        return data.task_batch(task)
    return data.sample(task, jax.random.randint(key, (batch_size,), 0, data.n[task]))


def epoch_order(data: TaskData, task, key, epoch) -> jax.Array:
    """Task `task`'s example indices in the random order of epoch `epoch` (a new order every
    epoch, each a function of `key`, `task` and `epoch` only); padding sorts last."""
    size = data.ref.shape[1]
    key = jax.random.fold_in(jax.random.fold_in(key, task), epoch)
    # 31 random bits per example (a tie, which keeps two examples in place, is rare at any
    # dataset size), and padding above them all.
    bits = jax.random.bits(key, (size,), jnp.uint32) >> 1
    return jnp.argsort(jnp.where(jnp.arange(size) < data.n[task], bits, jnp.uint32(2**32 - 1)))


def make_train_step(objective: Objective, optimizer, regulariser: Regulariser) -> Callable:
    """Returns the pure step(state, batch, trainable) -> (state, metrics).

    `trainable` is a params-shaped pytree of 0/1 scalars: frozen leaves receive no update.
    """

    def step(state: TrainState, batch, trainable):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
        k_penalty, k_transform, k_observe = jax.random.split(key, 3)

        def total_loss(params):
            loss = objective.loss(params, batch)
            pen, metrics = regulariser.penalty(params, state.reg_state, batch, k_penalty)
            return loss + pen, (loss, pen, metrics)

        grads, (loss, pen, metrics) = jax.grad(total_loss, has_aux=True)(state.params)
        grads = regulariser.transform(grads, state.params, state.reg_state, batch, k_transform)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u, t: u * t.astype(u.dtype), updates, trainable)
        params = optax.apply_updates(state.params, updates)
        reg_state = regulariser.observe(state.reg_state, state.params, grads, batch, k_observe)
        new = TrainState(state.step + 1, params, opt_state, reg_state, state.key)
        return new, {"loss": loss, "penalty": pen, **metrics}

    return step


def make_chunk(
    objective: Objective,
    optimizer,
    regulariser: Regulariser,
    batch_size: int,
    num_steps: int,
    batch_sharding=None,
    seen_only: bool = False,
    sampling: str = "uniform",
    readings: tuple | None = None,
    eval_batch: int = 0,
) -> Callable:
    """Returns the pure chunk(state, train, test, task, trainable, start, done) -> (state,
    losses, values): `num_steps` steps on task `task` as one lax.scan, the first of them the
    task's step `start` and the run's step `done`, then the metric on every task's test split,
    values (T,) (with `seen_only`, on tasks 0..task only; the others are NaN and cost nothing).
    `losses` holds every step's (num_steps,): "total" (what the step minimised), "loss" (the
    objective's part) and each regulariser's "<label>/penalty" (continual.regularisers.chain).
    With `readings`, a tuple of R objectives of the same model, values are (T, R), each task
    read from one forward pass (continual.evaluate.evaluate_tasks), in blocks of `eval_batch`
    examples when > 0.

    `sampling` "uniform" draws every minibatch uniformly with replacement; "shuffle" goes
    through the task in epochs, each a new random order cut into n // batch_size minibatches
    (the last n mod batch_size examples of an order are left out, as PyTorch's
    `DataLoader(shuffle=True, drop_last=True)` does). An epoch's order depends only on the key,
    task and epoch, so a chunk (or a resumed run) starting mid-epoch continues it.

    With a `batch_sharding` (a jax.sharding.Sharding of the example axis) every sampled batch is
    laid out that way: data parallel, XLA sums the gradients over the devices.

    A step whose loss or new parameters are not finite is not applied and reports a NaN loss:
    the state stays frozen at its last finite values for the rest of the run (its step count
    falls behind `done`, and no later step is applied); in a sweep, other members go on.
    """
    step = make_train_step(objective, optimizer, regulariser)

    if sampling not in SAMPLING:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING)}")
    shuffle = sampling == "shuffle"
    if shuffle and batch_size == 0:
        raise ValueError("sampling 'shuffle' needs batch_size > 0")

    def chunk(state: TrainState, train: TaskData, test: TaskData, task, trainable, start, done):
        order_key = jax.random.fold_in(state.key, 3)
        per_epoch = train.n[task] // batch_size if shuffle else None

        def draw(s, order, t):
            if not shuffle:
                key = jax.random.fold_in(jax.random.fold_in(s.key, 2), s.step)
                return sample_batch(train, task, key, batch_size), order
            epoch, pos = jnp.divmod(t, per_epoch)
            order = jax.lax.cond(
                (pos == 0) & (t > start),
                lambda: epoch_order(train, task, order_key, epoch),
                lambda: order,
            )
            idx = jax.lax.dynamic_slice_in_dim(order, pos * batch_size, batch_size)
            return train.sample(task, idx), order

        def body(carry, k):
            s, order = carry
            batch, order = draw(s, order, start + k)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            new, metrics = step(s, batch, trainable)
            loss = metrics["loss"] + metrics["penalty"]
            # one reduction over every parameter: one per leaf took XLA:CPU 40 s to compile
            # in SmolLM2's chunk of 272 leaves (docs/speed.md), this one a few
            leaves = [jnp.ravel(p) for p in jax.tree.leaves(new.params)]
            finite = jnp.isfinite(jnp.concatenate(leaves)).all()
            ok = jnp.isfinite(loss) & finite & (s.step == done + k)
            # Every field but the key (which a step never changes) is kept or rolled back.
            kept = jax.tree.map(
                lambda n, o: jnp.where(ok, n, o), new._replace(key=None), s._replace(key=None)
            )
            terms = {"total": loss, "loss": metrics["loss"]}
            terms.update({k: v for k, v in metrics.items() if k.endswith("/penalty")})
            return (kept._replace(key=s.key), order), {
                k: jnp.where(ok, v, jnp.nan) for k, v in terms.items()
            }

        order = epoch_order(train, task, order_key, start // per_epoch) if shuffle else None
        steps = jnp.arange(num_steps, dtype=jnp.int32)
        (state, _), losses = jax.lax.scan(body, (state, order), steps)
        upto = task if seen_only else None
        values = evaluate_tasks(readings or objective, state.params, test, upto, eval_batch)
        return state, losses, values

    return chunk


def make_consolidate(regulariser: Regulariser) -> Callable:
    """Returns the pure consolidate(state, train, task) -> state run at the end of a task."""

    def consolidate(state: TrainState, train: TaskData, task):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 1), task)
        reg_state = regulariser.consolidate(
            state.reg_state, state.params, train.task_batch(task), key
        )
        return state._replace(reg_state=reg_state)

    return consolidate
