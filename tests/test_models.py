"""Shapes, parameter counts and BatchNorm behaviour of the model zoo."""
from __future__ import annotations

import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_semi_jax.models import (
    CNN13,
    MODELS,
    CNN13Small,
    SmallCNN,
    WideResNet,
    create_model,
)

NUM_CLASSES = 10


def abstract_variables(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """The shapes of ``model``'s variables, traced without computing anything."""
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def abstract_logits(model: nn.Module, variables: dict, shape: tuple[int, ...]):
    return jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)


def num_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def conv(k: int, c_in: int, c_out: int) -> int:
    """Weights of a k x k convolution without bias."""
    return k * k * c_in * c_out


def bn(c: int) -> int:
    """BatchNorm scale and bias (running statistics are in ``batch_stats``)."""
    return 2 * c


def wn_conv_bn(k: int, c_in: int, c_out: int) -> int:
    """CNN-13 layer: kernel + bias + one weight-norm scale per output channel + BN."""
    return conv(k, c_in, c_out) + c_out + c_out + bn(c_out)


def preact_unit(c_in: int, c_out: int) -> int:
    """WRN unit: BN(c_in), conv3x3 c_in->c_out, BN(c_out), conv3x3 c_out->c_out, and a
    1x1 shortcut conv when the channels change."""
    shortcut = conv(1, c_in, c_out) if c_in != c_out else 0
    return bn(c_in) + conv(3, c_in, c_out) + bn(c_out) + conv(3, c_out, c_out) + shortcut


CNN13_PARAMS = (
    wn_conv_bn(3, 3, 128) + 2 * wn_conv_bn(3, 128, 128)      # block 1
    + wn_conv_bn(3, 128, 256) + 2 * wn_conv_bn(3, 256, 256)  # block 2
    + wn_conv_bn(3, 256, 512)                                # block 3: conv3x3 valid
    + wn_conv_bn(1, 512, 256) + wn_conv_bn(1, 256, 128)      # block 3: two conv1x1
    + 128 * NUM_CLASSES + NUM_CLASSES + NUM_CLASSES          # dense: kernel + bias + WN scale
)

WRN28_2_PARAMS = (
    conv(3, 3, 16)                                           # stem, no bias
    + preact_unit(16, 32) + 3 * preact_unit(32, 32)          # stage 1: 4 units, 32 channels
    + preact_unit(32, 64) + 3 * preact_unit(64, 64)          # stage 2: 4 units, 64 channels
    + preact_unit(64, 128) + 3 * preact_unit(128, 128)       # stage 3: 4 units, 128 channels
    + bn(128)                                                # head BN
    + 128 * NUM_CLASSES + NUM_CLASSES                        # dense with bias
)

SMALL_CNN_PARAMS = (
    conv(3, 1, 32) + bn(32)                                  # conv 1 -> 32
    + conv(3, 32, 32) + bn(32)                               # conv 32 -> 32
    + conv(3, 32, 64) + bn(64)                               # conv 32 -> 64 after max-pool
    + 64 * NUM_CLASSES + NUM_CLASSES                         # dense with bias
)

# CNN-13 at 1/16 of its widths on 28x28 grey images (Fashion-MNIST on a CPU).
CNN13_SMALL_PARAMS = (
    wn_conv_bn(3, 1, 8) + 2 * wn_conv_bn(3, 8, 8)           # block 1, one input channel
    + wn_conv_bn(3, 8, 16) + 2 * wn_conv_bn(3, 16, 16)      # block 2
    + wn_conv_bn(3, 16, 32)                                 # block 3: conv3x3 valid
    + wn_conv_bn(1, 32, 16) + wn_conv_bn(1, 16, 8)          # block 3: two conv1x1
    + 8 * NUM_CLASSES + NUM_CLASSES + NUM_CLASSES           # dense: kernel + bias + WN scale
)

CASES = [  # name, input shape, expected parameter count
    ("cnn13", (2, 32, 32, 3), CNN13_PARAMS),
    ("cnn13_small", (2, 28, 28, 1), CNN13_SMALL_PARAMS),
    ("wrn28_2", (2, 32, 32, 3), WRN28_2_PARAMS),
    ("small_cnn", (2, 8, 8, 1), SMALL_CNN_PARAMS),
]


@pytest.mark.parametrize("name,shape,expected", CASES)
def test_shapes_and_parameter_counts(name, shape, expected):
    model = create_model(name, NUM_CLASSES)
    variables = abstract_variables(model, shape)
    assert set(variables) == {"params", "batch_stats"}
    assert num_params(variables["params"]) == expected
    logits = abstract_logits(model, variables, shape)
    assert logits.shape == (shape[0], NUM_CLASSES)
    assert logits.dtype == jnp.float32


def test_registry_classes():
    assert isinstance(create_model("cnn13", NUM_CLASSES), CNN13)
    small = create_model("cnn13_small", NUM_CLASSES)
    assert isinstance(small, CNN13Small) and small.width == 8
    wrn = create_model("wrn28_2", NUM_CLASSES)
    assert isinstance(wrn, WideResNet) and (wrn.depth, wrn.width) == (28, 2)
    assert wrn.stage_channels == (32, 64, 128)
    assert isinstance(create_model("small_cnn", NUM_CLASSES), SmallCNN)


def readme_parameter_counts() -> dict[str, int]:
    """The README's table of models: ``{name: parameters}``."""
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as f:
        rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d,]+) \|$", f.read(), re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_the_readme_states_every_model_s_parameter_count():
    """The README's table against the models built; models/cnn13_small.py states its own."""
    shapes = {"cnn13": (2, 32, 32, 3), "wrn28_2": (2, 32, 32, 3),
              "wrn28_2_scales4": (2, 96, 96, 3), "cnn13_small": (2, 28, 28, 1),
              "small_cnn": (2, 8, 8, 1)}
    documented = readme_parameter_counts()
    assert set(documented) == set(shapes) == set(MODELS)
    for name, shape in shapes.items():
        variables = abstract_variables(create_model(name, NUM_CLASSES), shape)
        assert num_params(variables["params"]) == documented[name], name
    from meta_semi_jax.models import cnn13_small
    assert f"{documented['cnn13_small']:,} parameters" in cnn13_small.__doc__


def test_cnn13_weight_norm_has_one_scale_per_output_channel():
    params = abstract_variables(CNN13(NUM_CLASSES), (2, 32, 32, 3))["params"]
    assert params["conv3a"]["WeightNorm_0"]["Conv_0/kernel/scale"].shape == (512,)
    assert params["fc_weight_norm"]["fc/kernel/scale"].shape == (NUM_CLASSES,)


def test_wrn_four_stages_for_stl10():
    """STL-10 runs MixMatch's STL-10 network (runs/table2.sh: --scales=4)."""
    from tests.run_files import load_config
    model = create_model(load_config("stl10", "1000").model, NUM_CLASSES)
    assert isinstance(model, WideResNet) and model.stage_channels == (32, 64, 128, 256)
    variables = abstract_variables(model, (2, 96, 96, 3))
    expected = (
        WRN28_2_PARAMS - bn(128) - 128 * NUM_CLASSES         # WRN-28-2 without its head
        + preact_unit(128, 256) + 3 * preact_unit(256, 256)  # stage 4: 4 units, 256 channels
        + bn(256) + 256 * NUM_CLASSES                        # head BN and dense kernel
    )
    assert num_params(variables["params"]) == expected
    assert abstract_logits(model, variables, (2, 96, 96, 3)).shape == (2, NUM_CLASSES)


def test_noisy_small_cnn_adds_noise_and_dropout_in_train_mode_only():
    """The Pi-model's and Mean Teacher's network noise: the same parameters, random
    train-mode outputs (a draw per key), and eval mode exactly the plain network's."""
    plain, noisy = create_model("small_cnn", NUM_CLASSES), create_model(
        "small_cnn", NUM_CLASSES, noisy=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)), jnp.float32)
    variables = plain.init(jax.random.PRNGKey(0), x, train=False)
    assert (jax.tree.structure(noisy.init(jax.random.PRNGKey(0), x, train=False))
            == jax.tree.structure(variables))

    def train_logits(model, seed):
        rngs = {"noise": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    np.testing.assert_array_equal(noisy.apply(variables, x, train=False),
                                  plain.apply(variables, x, train=False))
    assert not np.allclose(train_logits(noisy, 1), train_logits(noisy, 3))
    np.testing.assert_array_equal(train_logits(plain, 1), train_logits(plain, 3))


def test_noisy_cnn13_draws_from_both_random_streams():
    model = create_model("cnn13", NUM_CLASSES, noisy=True)
    variables = abstract_variables(model, (2, 32, 32, 3))
    assert num_params(variables["params"]) == CNN13_PARAMS
    for missing in ("noise", "dropout"):
        rngs = {name: jax.random.PRNGKey(0) for name in ("noise", "dropout") if name != missing}
        with pytest.raises(Exception, match=missing):
            jax.eval_shape(lambda v, r=rngs: model.apply(
                v, jnp.zeros((2, 32, 32, 3)), train=True, mutable=["batch_stats"], rngs=r),
                variables)


def test_only_the_noisy_models_take_network_noise():
    with pytest.raises(ValueError, match="no network noise"):
        create_model("wrn28_2", NUM_CLASSES, noisy=True)


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match="6 \\* n \\+ 4"):
        abstract_variables(WideResNet(NUM_CLASSES, depth=27), (2, 32, 32, 3))


def test_bfloat16_compute_keeps_float32_params():
    model = create_model("small_cnn", NUM_CLASSES, dtype=jnp.bfloat16)
    variables = abstract_variables(model, (2, 8, 8, 1))
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert abstract_logits(model, variables, (2, 8, 8, 1)).dtype == jnp.float32


def random_variables(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """Variables of ``model``'s shapes drawn with NumPy, much cheaper to compile than
    ``model.init`` for the large models: kernels with std 1/sqrt(fan-in), vectors (biases,
    scales, statistics) with std 0.1 so that no BatchNorm input has a mean far larger than
    its spread, which would make float32 statistics ill-conditioned."""
    rng = np.random.default_rng(0)

    def draw(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        std = 1 / math.sqrt(math.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
        # device_put, not jnp.asarray, which compiles a small program for every shape
        return jax.device_put(std * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map(draw, abstract_variables(model, shape))


def test_train_updates_batch_stats_and_eval_needs_no_mutability():
    model = SmallCNN(NUM_CLASSES)
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1), np.float32)
    variables = random_variables(model, x.shape)
    logits, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (4, NUM_CLASSES)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b),
                                     variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))
    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert eval_logits.shape == (4, NUM_CLASSES)  # no `mutable` needed: it did not raise


# Small inputs that still pass through every layer (CNN-13's valid conv needs >= 12x12).
SYNC_CASES = [("cnn13", (12, 12, 3)), ("wrn28_2", (8, 8, 3)), ("small_cnn", (8, 8, 1))]


@pytest.mark.parametrize("name,image_shape", SYNC_CASES)
def test_axis_name_synchronises_every_batch_norm(name, image_shape):
    """Two vmapped shards with BatchNorm synchronised over the vmap axis must match one
    call on the whole batch (outputs and new running statistics); any BatchNorm that did
    not receive ``axis_name`` would normalise with its shard's statistics instead."""
    x = np.random.default_rng(1).standard_normal((4,) + image_shape, np.float32)
    synced = create_model(name, NUM_CLASSES, axis_name="batch")
    unsynced = create_model(name, NUM_CLASSES)
    variables = random_variables(unsynced, x.shape)

    @jax.jit
    def sharded_and_full(variables: dict, x: jnp.ndarray):
        def train_apply(model: nn.Module, batch: jnp.ndarray):
            return model.apply(variables, batch, train=True, mutable=["batch_stats"])
        shards = x.reshape((2, 2) + image_shape)
        sharded = jax.vmap(lambda b: train_apply(synced, b), axis_name="batch")(shards)
        return sharded, train_apply(unsynced, x)

    # As NumPy arrays: eager reshapes and indexing would compile a program per shape.
    (sharded_logits, sharded_stats), (full_logits, full_stats) = jax.device_get(
        sharded_and_full(variables, x))
    np.testing.assert_allclose(sharded_logits.reshape(full_logits.shape), full_logits,
                               rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(
        lambda s, f: np.testing.assert_allclose(s[0], f, rtol=1e-4, atol=1e-5),
        sharded_stats, full_stats)


def test_unsynchronised_shards_differ_from_the_whole_batch():
    """The check above is sensitive: without ``axis_name`` the shards disagree."""
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 1), np.float32)
    model = SmallCNN(NUM_CLASSES)
    variables = random_variables(model, x.shape)

    @jax.jit
    def sharded_and_full(variables: dict, x: jnp.ndarray):
        def train_logits(batch: jnp.ndarray) -> jnp.ndarray:
            return model.apply(variables, batch, train=True, mutable=["batch_stats"])[0]
        sharded = jax.vmap(train_logits, axis_name="batch")(x.reshape(2, 2, 8, 8, 1))
        return sharded.reshape(4, NUM_CLASSES), train_logits(x)

    sharded, full = sharded_and_full(variables, x)
    assert not np.allclose(sharded, full, atol=1e-4)


def test_create_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="resnet50") as error:
        create_model("resnet50", NUM_CLASSES)
    for allowed in MODELS:
        assert allowed in str(error.value)


@pytest.mark.parametrize("name,shape,width", [("small_cnn", (2, 8, 8, 1), 64),
                                              ("cnn13", (2, 32, 32, 3), 128),
                                              ("wrn28_2", (2, 32, 32, 3), 128)])
def test_every_model_sows_the_features_its_classifier_reads(name, shape, width):
    model = create_model(name, NUM_CLASSES)
    variables = abstract_variables(model, shape)
    _, state = jax.eval_shape(lambda v: model.apply(
        v, jnp.zeros(shape), train=False, mutable=["intermediates"]), variables)
    (features,) = state["intermediates"]["features"]
    assert features.shape == (shape[0], width)
