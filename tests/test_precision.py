"""bfloat16 computation: Meta-Semi's meta scores keep their signs (so Eq. 9 keeps its
selection) on >= 99% of the examples of a fixed small problem, versus float32.

The problem: the digits CNN, trained briefly in float32 on real digits, scoring U~ =
MixUp(Concat(X, U)) with its own soft pseudo labels, as a Meta-Semi step does. The
scores come from the step's own functions (``labeled_direction`` and
``linearized_scores``), once with the model in float32 and once in bfloat16. And a short
bfloat16 training run learns about as well as float32 and keeps float32 parameters.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from meta_semi_jax.algorithms.common import forward_train, per_example_loss_fn
from meta_semi_jax.algorithms.meta_semi import labeled_direction
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import linearized_scores
from meta_semi_jax.mixup import mixup_labeled_and_unlabeled
from meta_semi_jax.models import create_model
from meta_semi_jax.state import create_train_state, model_variables


@pytest.fixture(scope="session")  # kept while the worker runs other files
def digits():
    data = load_digits()
    images = (data.images[..., None].astype(np.float32) - 4.9) / 6.0
    return images, jax.nn.one_hot(data.target, 10)


# One model and one optimiser for every seed: they are static fields of the train state,
# so the compiled functions below are shared by all seeds.
F32_MODEL = create_model("small_cnn", 10)
BF16_MODEL = create_model("small_cnn", 10, dtype=jnp.bfloat16)
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
initial_state = jax.jit(create_train_state, static_argnums=(0, 1))


@jax.jit
def sgd_step(state, x, y):
    def loss(params):
        logits, stats = forward_train(state, params, x)
        return jnp.mean(soft_cross_entropy(logits, y)), stats
    grads, stats = jax.grad(loss, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=stats)


def briefly_trained(images, targets, seed, steps):
    state = initial_state(F32_MODEL, OPTIMIZER, jax.random.PRNGKey(seed), images[:1])
    state = state.replace(step=jnp.int32(state.step))  # as after training: one compile
    for i in range(steps):
        batch = np.random.default_rng(i).integers(0, 1000, 64)
        state = sgd_step(state, images[batch], targets[batch])
    return state


@jax.jit  # compiled once: eager JAX compiles each primitive alone
def mixed_batches(state, key, labeled, targets, unlabeled):
    """X~ and U~ of a Meta-Semi step (Eqs. 12-13, beta 0.5) with the model's soft
    pseudo labels of ``unlabeled``."""
    pseudo = jax.nn.softmax(state.apply_fn(model_variables(state.params, state.batch_stats),
                                           unlabeled, train=False))
    return mixup_labeled_and_unlabeled(key, labeled, targets, unlabeled, pseudo, 0.5)


@jax.jit  # compiled once per model dtype (the state's apply_fn is static)
def step_scores(state, mixed_x, mixed_u):
    def unlabeled_losses(params):
        return per_example_loss_fn(state)(params, tuple(mixed_u)), None
    _, g_x = labeled_direction(state, mixed_x)
    return linearized_scores(unlabeled_losses, state.params, g_x)[1]


def test_bfloat16_keeps_the_signs_of_the_meta_scores(digits):
    images, targets = digits
    agree, total = 0, 0
    for seed in range(3):
        for steps in (0, 200):
            f32 = briefly_trained(images, targets, seed, steps)
            bf16 = f32.replace(apply_fn=BF16_MODEL.apply, float32_apply_fn=f32.apply_fn)
            mixed_x, mixed_u = mixed_batches(f32, jax.random.PRNGKey(seed), images[:32],
                                             targets[:32], images[1000:1096])
            s32 = step_scores(f32, mixed_x, mixed_u)
            s16 = step_scores(bf16, mixed_x, mixed_u)
            assert s16.dtype == jnp.float32 and not np.array_equal(s16, s32)  # really bf16
            agree += int(jnp.sum(jnp.sign(s16) == jnp.sign(s32)))
            total += s32.shape[0]
    assert agree / total >= 0.99, f"signs agree on {agree} of {total}"


def test_a_bfloat16_run_trains_and_keeps_float32_parameters(tmp_path):
    """A 60-step bfloat16 digits run learns as a float32 run does, and checkpoints float32
    parameters.

    Measured (test error %, float32 / bfloat16, seeds 0-4, this config on 4 CPU devices):
    33.6/34.2, 30.4/30.8, 35.6/35.4, 40.6/40.2, 34.6/33.8 -- bf16 within 0.8 points of
    float32 on every seed; chance is 90. A bf16 run that stopped learning (learning rate
    1e-7) ended at 91.8, one learning 5x slower (learning rate 0.02) at 64.6. Its labeled
    loss (one batch, noisy) fell from 2.05-2.14 at step 10 to 1.27-1.52 on average over
    steps 40-60 (no fall at learning rate 1e-7). At 20 steps the error is still 71-87,
    too close to chance to tell. A float32 run of its own here would cost another
    compilation of the step (~20 s), hence the measured bounds.
    """
    from configs import digits as digits_config
    from meta_semi_jax import train

    steps = 60
    config = digits_config.get_config("50")
    config.compute_dtype = "bfloat16"
    config.num_train_steps, config.checkpoint_every_steps = steps, steps
    config.eval_every_steps = 10
    config.selection_probe_size = 0  # a diagnostic with a program of its own
    results = train.train_and_evaluate(config, str(tmp_path))
    # float32 reaches 30-41 on seeds 0-4 (33.6 on this seed, 0); bf16 at most 4 points
    # above float32's worst seed still passes; a broken bf16 run does not.
    assert results["test_error"] < 45.0, results
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == list(range(10, steps + 1, 10))
    late = [r["labeled_loss"] for r in records[len(records) // 2:]]
    assert np.mean(late) < records[0]["labeled_loss"] - 0.3, records
    import orbax.checkpoint as ocp

    from meta_semi_jax import checkpoint
    manager = checkpoint.open_manager(str(tmp_path), 1)
    saved = manager.restore(steps, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()))
    manager.close()
    assert saved.loop["config"]["compute_dtype"] == "bfloat16"
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(saved.state["params"])}
    assert dtypes == {np.dtype(np.float32)}
