"""Setting a run up: its data loaded and checked, the model and train state, the data
on the devices, and the compiled per-device programs (``build_training``)."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import ml_collections

from meta_semi_jax import algorithms, config_check, data as data_lib
from meta_semi_jax.assumption import device_assumption_ratio
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.bn_recompute import device_average_variables
from meta_semi_jax.data.host_stream import HostStream
from meta_semi_jax.data.sampler import SamplerSpec
from meta_semi_jax.evaluation import Evaluator
from meta_semi_jax.models import create_model
from meta_semi_jax.optim import make_optimizer
from meta_semi_jax.parallel import AXIS, DataParallel, make_mesh
from meta_semi_jax.run_dir import check_same_split
from meta_semi_jax.selection import SelectionProbe, selection_probe
from meta_semi_jax.state import TrainState, create_train_state
from meta_semi_jax.step import device_train_step, step_keys


def load_checked_data(config: ml_collections.ConfigDict, workdir: str) -> data_lib.SSLData:
    """Loads and splits the dataset, checking the config against it on the way, and the
    split against the one a previous run in ``workdir`` used (``split.json``)."""
    num_classes, _ = data_lib.dataset_facts(config)
    fold_size = data_lib.fold_size(config)
    config_check.check_label_counts(config, num_classes, fold_size)
    raw = data_lib.load_raw(config)
    if fold_size is None:
        config_check.check_pool_size(
            config, data_lib.max_labels_per_class(raw.train_labels, num_classes,
                                                  config.num_validation), num_classes)
    split = data_lib.split_indices(config, raw)
    check_same_split(workdir, split)
    ssl = data_lib.split_dataset(raw, split)
    config_check.check_batch_sizes(config, len(ssl.unlabeled_labels))
    return ssl


def sampler_from_config(config: ml_collections.ConfigDict, unlabeled_views: int) -> SamplerSpec:
    """How the step draws its batch: the config's batch sizes, augmentation and pool
    placement, with ``unlabeled_views`` augmentations of each unlabeled image."""
    return SamplerSpec(labeled_batch_size=config.labeled_batch_size,
                       unlabeled_batch_size=config.unlabeled_batch_size,
                       translate=config.translate, flip=config.flip, pad_mode=config.pad_mode,
                       unlabeled_placement=config.unlabeled_placement,
                       unlabeled_views=unlabeled_views)


# A run's training pools on the devices, made when asked: a single run's placed pools, or
# a parallel run's slice of the set's stacked pools (``run_set``), taken only when needed.
DataSource = Callable[[], DeviceData]
# (replicated state, the run's pools) -> the same state whose EMA model (``ema_params``,
# ``ema_batch_stats``) is the model to evaluate.
Evaluated = Callable[[TrainState, DataSource], TrainState]


def the_ema_model(state: TrainState, data: DataSource) -> TrainState:
    """What every algorithm without a weight average evaluates: the EMA model as it is
    (``data`` is not read)."""
    return state


def evaluated_model(dp: DataParallel, algorithm: algorithms.Algorithm, sampler: SamplerSpec,
                    data_kinds: Any, run_key: jax.Array) -> Evaluated:
    """The one place that says which model the evaluations (validation, test,
    results.json) measure: the EMA model (``the_ema_model``), or, for an algorithm with
    a ``weight_average`` (fast-SWA), its average with BatchNorm statistics recomputed on
    the devices from the run's pools (``bn_recompute.device_average_variables``,
    data-parallel like the evaluation), put in the EMA model's place of a copy of the
    state."""
    spec = algorithm.weight_average
    if spec is None:
        return the_ema_model
    fn = dp.run(functools.partial(device_average_variables, sampler=sampler, spec=spec),
                ("replicated", data_kinds, "replicated"))

    def average_model(state: TrainState, data: DataSource) -> TrainState:
        params, batch_stats = fn(state, data(), run_key)
        return state.replace(ema_params=params, ema_batch_stats=batch_stats)
    return average_model


@dataclasses.dataclass(frozen=True)
class Training:
    """Everything a run's loop needs, already on the devices but its training pools
    (``place_data``, or ``run_set.RunAxis.place`` for a set of runs, which would
    otherwise hold each run's pools twice). ``evaluated``: the state whose EMA model the
    evaluators measure (``evaluated_model``)."""
    dp: DataParallel
    step_fn: jax.stages.Wrapped  # (state, data, run_key) -> (state, metrics)
    device_step: Callable[..., Any]  # the per-device step that step_fn runs over AXIS
    data_kinds: Any  # DeviceData with the placement kind of each leaf (dp.run's in_kinds)
    state: TrainState
    run_key: jax.Array
    val_eval: Evaluator
    test_eval: Evaluator
    ratio_fn: Callable[..., dict[str, jax.Array]] | None  # Assumption 1, when logged
    stream: HostStream | None  # the unlabeled pool in host memory ('host' placement)
    probe: SelectionProbe | None = None  # Eq. (9)'s selection diagnostics, when made
    evaluated: Evaluated = the_ema_model


def unlabeled_pool_size(config: ml_collections.ConfigDict, num_unlabeled: int,
                        num_devices: int) -> int:
    """Images of the unlabeled pool as the devices read it: a sharded pool is cut to a
    multiple of the device count (``place_data``)."""
    if config.unlabeled_placement == "sharded":
        return num_unlabeled - num_unlabeled % num_devices
    return num_unlabeled


def host_pools(ssl: data_lib.SSLData) -> DeviceData:
    """A run's training pools as the devices hold them when replicated, on the host: the
    labeled pool, the unlabeled pool with its hidden labels (for diagnostics only), and
    the normalisation (NumPy leaves in DeviceData's tree)."""
    return cast(Any, DeviceData)(
        labeled_images=ssl.labeled_images, labeled_labels=ssl.labeled_labels,
        unlabeled_images=ssl.unlabeled_images, unlabeled_labels=ssl.unlabeled_labels,
        mean=ssl.mean, std=ssl.std)


def place_data(dp: DataParallel, ssl: data_lib.SSLData, config: ml_collections.ConfigDict,
               stream: HostStream | None = None) -> DeviceData:
    """A run's training pools on the devices (``host_pools``): the labeled pool
    replicated, the unlabeled pool as ``config.unlabeled_placement`` says: replicated,
    sharded (then cut to a multiple of the device count, dropping at most D - 1 images at
    its end), or, for ``host`` (``stream``: ``Training.stream``), only the first step's
    unlabeled batch."""
    if config.unlabeled_placement == "replicated":
        return cast(DeviceData, dp.replicate(host_pools(ssl)))
    unlabeled: tuple[jax.Array, jax.Array]
    if config.unlabeled_placement == "host":
        assert stream is not None, "build_training makes the stream of a host placement"
        unlabeled = stream.batch(0)
    else:
        keep = len(ssl.unlabeled_labels) - len(ssl.unlabeled_labels) % dp.num_devices
        unlabeled = dp.shard((ssl.unlabeled_images[:keep], ssl.unlabeled_labels[:keep]))
    return DeviceData(labeled_images=dp.replicate(ssl.labeled_images),
                      labeled_labels=dp.replicate(ssl.labeled_labels),
                      unlabeled_images=unlabeled[0], unlabeled_labels=unlabeled[1],
                      mean=dp.replicate(ssl.mean), std=dp.replicate(ssl.std))


def build_training(config: ml_collections.ConfigDict, ssl: data_lib.SSLData) -> Training:
    """Initialises the model and puts state, data and keys on the devices. The hidden
    labels of the unlabeled set only reach the pseudo-label diagnostics."""
    dp = DataParallel(config.parallel, make_mesh())
    algorithm = algorithms.from_config(config, ssl.num_classes)
    model = functools.partial(create_model, config.model, ssl.num_classes,
                              axis_name=AXIS if config.sync_batch_norm else None,
                              noisy=algorithm.noisy_network)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(model(dtype=jnp.dtype(config.compute_dtype)),
                               make_optimizer(config, algorithm.lr_cycles), init_key,
                               jnp.zeros((1,) + ssl.labeled_images.shape[1:], jnp.float32))
    if config.compute_dtype != "float32":
        state = state.replace(float32_apply_fn=model().apply)
    if algorithm.init_state is not None:
        state = state.replace(algorithm_state=algorithm.init_state(
            unlabeled_pool_size(config, len(ssl.unlabeled_labels), dp.num_devices),
            state.params))
    unlabeled_kind = "replicated" if config.unlabeled_placement == "replicated" else "sharded"
    # DeviceData's pytree with a placement kind (str) at each leaf: dp.run's in_kinds.
    data_kinds = cast(Any, DeviceData)(
        labeled_images="replicated", labeled_labels="replicated",
        unlabeled_images=unlabeled_kind, unlabeled_labels=unlabeled_kind,
        mean="replicated", std="replicated")
    sampler = sampler_from_config(config, algorithm.unlabeled_views)
    device_step = functools.partial(device_train_step, sampler=sampler, algorithm=algorithm,
                                    ema_decay=config.ema_decay)
    step_fn = dp.run(device_step, ("replicated", data_kinds, "replicated"), donate_argnums=(0,))
    ratio_fn = None
    if config.log_assumption_ratio:
        terms = algorithm.assumption_terms
        assert terms is not None, "config_check admits the ratio only where it has terms"
        ratio_fn = dp.run(functools.partial(
            device_assumption_ratio, sampler=dataclasses.replace(sampler, unlabeled_views=1),
            terms=terms, num_samples=config.assumption_ratio_samples),
            ("replicated", data_kinds, "replicated"))
    stream = None
    if config.unlabeled_placement == "host":
        stream = HostStream(dp, ssl.unlabeled_images, ssl.unlabeled_labels,
                            step_keys(run_key, 0)[0], config.unlabeled_batch_size)
    device_run_key = dp.replicate(run_key)
    return Training(
        dp=dp, step_fn=step_fn, device_step=device_step, data_kinds=data_kinds,
        state=dp.replicate(state), run_key=device_run_key,
        val_eval=Evaluator(dp, ssl.val_images, ssl.val_labels, ssl.mean, ssl.std,
                           config.eval_batch_size, ssl.num_classes),
        test_eval=Evaluator(dp, ssl.test_images, ssl.test_labels, ssl.mean, ssl.std,
                            config.eval_batch_size, ssl.num_classes),
        ratio_fn=ratio_fn, stream=stream,
        probe=selection_probe(config, dp, ssl, algorithm),
        evaluated=evaluated_model(dp, algorithm, sampler, data_kinds, device_run_key))
