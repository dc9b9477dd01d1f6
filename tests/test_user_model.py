"""The README's use of the API with a user's own Flax model, with and without BatchNorm,
and the program's ``--config.model=package.module:ClassName``."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import meta_semi_jax as ms
from meta_semi_jax import checkpoint, config_check, model_card, train
from meta_semi_jax.config_check import ConfigError
from tests.run_files import load_config
from tests.tiny_models import ConvBatchNormNet


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


class WithoutTrainArgument(nn.Module):
    """The constructor's fields, but called as ``__call__(x)``: refused."""
    num_classes: int
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


TINY_MODEL = "tests.tiny_models:ConvBatchNormNet"


def test_the_program_trains_a_model_named_by_its_import_path(tmp_path):
    config = load_config("digits", "50")
    config.model = TINY_MODEL
    config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    config.log_every_steps, config.selection_probe_size = 2, 0
    config.algorithm = "supervised"  # the cheapest step to compile; the model is tested
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["model"] == TINY_MODEL
    assert model_card.read_model_json(str(tmp_path)).model == TINY_MODEL
    _, variables = checkpoint.ema_variables(str(tmp_path), "latest")
    init = jax.jit(ConvBatchNormNet(num_classes=10).init, static_argnames="train")
    expected = init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(expected)


# (config.model, words of the one-line refusal)
BAD_MODELS = [
    ("tests.no_such_module:Net", "module 'tests.no_such_module' cannot be imported"),
    ("tests.tiny_models:NoSuchNet", "has no Flax module class 'NoSuchNet'"),
    ("numpy:ndarray", "has no Flax module class 'ndarray'"),
    ("tests.test_user_model:MLPWithoutBatchNorm", "has no field axis_name, dtype"),
    ("tests.test_user_model:WithoutTrainArgument", "has no argument 'train'"),
    ("tests.tiny_models:", "package.module:ClassName"),
    ("resnet50", "no model is named 'resnet50'; choose one of cnn13"),
]


@pytest.mark.parametrize("path, words", BAD_MODELS, ids=[path for path, _ in BAD_MODELS])
def test_a_model_path_without_the_convention_is_refused_in_one_line(path, words):
    config = load_config("digits", "50")
    config.model = path
    with pytest.raises(ConfigError) as error:
        config_check.check_config(config, num_devices=1)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"config.model={path!r}")
    assert words in message, message
