"""The README's use of the API with a user's own Flax model, with and without BatchNorm."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import meta_semi_jax as ms


class MLPWithoutBatchNorm(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Dense(16)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


class ConvWithBatchNorm(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


OPTIMIZER = optax.sgd(0.1, momentum=0.9, nesterov=True)
# Compiled, like the batch drawn with NumPy: eager JAX compiles each primitive alone.
initial_state = jax.jit(ms.create_train_state, static_argnums=(0, 1))


@pytest.mark.parametrize("model_cls", [MLPWithoutBatchNorm, ConvWithBatchNorm])
@pytest.mark.parametrize("algorithm", ["meta_semi", "supervised"])
def test_jitted_train_step_with_a_user_model(model_cls, algorithm):
    model = model_cls(num_classes=5)
    state = initial_state(model, OPTIMIZER, jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
    made = {"meta_semi": lambda: ms.algorithms.meta_semi.make(5, beta=1.0, meta_grad="jvp"),
            "supervised": lambda: ms.algorithms.supervised.make(5)}[algorithm]()
    step = jax.jit(ms.train_step, static_argnames=("algorithm", "ema_decay"))
    rng = np.random.default_rng(1)
    batch = ms.SSLBatch(labeled_images=rng.standard_normal((4, 6, 6, 3), np.float32),
                        labels=rng.integers(0, 5, (4,), np.int32),
                        unlabeled_images=rng.standard_normal((12, 6, 6, 3), np.float32))
    new_state, metrics = step(state, batch, jax.random.PRNGKey(2), algorithm=made,
                              ema_decay=0.999)
    assert int(new_state.step) == 1
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(new_state.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
    if algorithm == "meta_semi":
        assert 0.0 <= float(metrics["selected"]) <= 1.0
    if model_cls is MLPWithoutBatchNorm:
        assert new_state.batch_stats == {}
