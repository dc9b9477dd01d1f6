"""The baselines' recipes as their authors ran them (config_base.set_baseline_recipes),
and what the program builds from them."""
from __future__ import annotations

import jax
import pytest

from meta_semi_jax import build, config_check, data as data_lib
from tests.run_files import load_config


def test_mean_teacher_follows_its_cifar10_cnn13_recipe():
    """Mean Teacher's TensorFlow cifar10_final_eval: consistency weight 100 * n / N,
    sigmoid ramp-up over 80 passes over the N training images (its 40,000 steps of 100
    over 50,000; 36,000 here, where 5,000 are held out), EMA decay 0.999 from the first
    step, input noise and dropout."""
    config = load_config("cifar10", "1000")
    train_images = 50_000 - config.num_validation
    mean_teacher = config.mean_teacher
    assert mean_teacher.weight == pytest.approx(100.0 * 1000 / train_images)
    assert mean_teacher.rampup_steps == 36_000  # 80 x 45,000 / 100
    assert (mean_teacher.noisy_network, mean_teacher.ema_warmup) == (True, False)
    assert config.ema_decay == 0.999


def test_the_pi_model_runs_with_its_network_noise():
    assert load_config("cifar10", "1000").pi_model.noisy_network is True


@pytest.mark.parametrize("algorithm,noisy", [("mean_teacher", True), ("pi_model", True),
                                             ("meta_semi", False), ("ict", False)])
def test_the_program_builds_the_noisy_network_only_where_the_recipe_asks(algorithm, noisy):
    config = load_config("digits", "50")
    config.algorithm = algorithm
    raw = data_lib.load_raw(config)
    ssl = data_lib.split_dataset(raw, data_lib.split_indices(config, raw))
    model = build.build_training(config, ssl).state.apply_fn.__self__
    assert (model.input_noise, model.dropout_rate) == ((0.15, 0.5) if noisy else (0.0, 0.0))


def test_network_noise_on_a_model_without_it_is_refused_before_compute():
    config = load_config("cifar10", "1000")
    config.algorithm, config.model = "mean_teacher", "wrn28_2"
    with pytest.raises(config_check.ConfigError, match="noisy_network=True needs a model"):
        config_check.check_config(config, 1)


@pytest.mark.slow  # two runs per algorithm compiling its programs (CI runs it)
@pytest.mark.parametrize("algorithm", ["temporal_ensembling", "mean_teacher_fast_swa"])
def test_a_resumed_run_continues_its_algorithm_state_exactly(tmp_path, algorithm):
    """Temporal Ensembling's ensemble predictions and fast-SWA's weight average live in
    the train state, so a run resumed from a checkpoint ends bitwise where the
    uninterrupted run ends, and so does the evaluated model (fast-SWA's average with its
    recomputed BatchNorm statistics)."""
    import json
    import shutil

    import numpy as np

    from meta_semi_jax import checkpoint, train

    def config():
        c = load_config("digits", "50")
        c.algorithm, c.num_train_steps = algorithm, 12
        c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = 6
        c[algorithm].rampup_steps = 0  # the unlabeled loss counts from step 1
        if algorithm == "mean_teacher_fast_swa":  # cycles of 2 steps after step 4,
            c.mean_teacher_fast_swa.update({  # the student averaged from step 2 on
                "lr_decay_steps": 6, "cycle_start_steps": 4, "cycle_steps": 2,
                "average_every_steps": 1, "bn_batches": 3})
        return c

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train.train_and_evaluate(config(), str(whole))
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "12")
    train.train_and_evaluate(config(), str(resumed))

    def final_state(workdir):
        manager = checkpoint.open_manager(str(workdir), 2)
        restored = manager.restore(12, args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardRestore()))
        manager.close()
        return restored.state

    a, b = final_state(whole), final_state(resumed)
    # Restored without a target, the algorithm state is a dict.
    if algorithm == "temporal_ensembling":  # every unlabeled image drawn was counted
        assert np.asarray(a["algorithm_state"]["counts"]).sum() == 12 * 96
    else:  # the points after steps 2, ..., 12
        assert int(a["algorithm_state"]["num_points"]) == 11
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    results = [json.loads((run / "results.json").read_text()) for run in (whole, resumed)]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]


def test_sntg_takes_mean_teachers_recipe_and_follows_its_overrides():
    config = load_config("cifar10", "1000")
    config.num_labels = 4000
    assert config.sntg.weight == config.mean_teacher.weight == pytest.approx(
        100.0 * 4000 / (50_000 - config.num_validation))
    assert (config.sntg.graph_weight, config.sntg.margin) == (0.4, 1.0)
