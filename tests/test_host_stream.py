"""The unlabeled pool in host memory (``unlabeled_placement='host'``): the devices hold
one step's batch, and training is the same as with the pool on the devices."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from meta_semi_jax import build, data as data_lib, train
from tests.run_files import load_config, records_without_time, without_time


def digits_config(placement: str):
    config = load_config("digits", "50")
    config.unlabeled_placement = placement
    config.num_train_steps, config.eval_every_steps, config.log_every_steps = 12, 6, 6
    return config


def test_devices_hold_only_the_steps_unlabeled_batch():
    config = digits_config("host")
    raw = data_lib.load_raw(config)
    ssl = data_lib.split_dataset(raw, data_lib.split_indices(config, raw))
    training = build.build_training(config, ssl)
    batch = build.place_data(training.dp, ssl, config, training.stream).unlabeled_images
    assert batch.shape == (config.unlabeled_batch_size,) + ssl.unlabeled_images.shape[1:]
    assert [s.data.shape[0] for s in batch.addressable_shards] == [
        config.unlabeled_batch_size // 4] * 4
    # Step 0's rows of the pool, split over the 4 devices in order.
    np.testing.assert_array_equal(np.asarray(batch),
                                  ssl.unlabeled_images[training.stream.indices(0)])
    # Over one epoch (1,047 images at 96 per step, so 10 whole steps and a part) every
    # image is drawn once before any is drawn again.
    drawn = np.concatenate([training.stream.indices(s) for s in range(11)])
    assert len(np.unique(drawn[:len(ssl.unlabeled_images)])) == len(ssl.unlabeled_images)


@pytest.mark.slow  # three runs, two programs of their own (CI runs it)
def test_host_stream_trains_exactly_as_the_pool_on_the_devices(tmp_path):
    """Same indices, same augmentation keys, same step: the same run, also when it
    resumes from a checkpoint (here: the run's step-6 checkpoint, the later one gone)."""
    device, host = tmp_path / "device", tmp_path / "host"
    on_device = without_time(train.train_and_evaluate(digits_config("replicated"), str(device)))
    config = digits_config("host")
    config.checkpoint_every_steps = 6
    assert without_time(train.train_and_evaluate(config, str(host))) == on_device
    assert records_without_time(host) == records_without_time(device)
    shutil.rmtree(host / "checkpoints" / "12")
    (host / "results.json").unlink()
    assert without_time(train.train_and_evaluate(config, str(host))) == on_device
    assert records_without_time(host) == records_without_time(device)
