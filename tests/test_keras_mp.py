"""Tests for mpcourse.keras_mp: backend choice, Keras's loss scale = DynamicLossScaler, checks.

Keras runs on the backend that ``MPCOURSE_KERAS_BACKEND`` selects (torch by
default; CI also runs the suite's chapter 12 on tensorflow).
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from mpcourse import checks, keras_mp
from mpcourse.checks import CheckFailed, NotAnswered
from mpcourse.checks.keras_mp import reference_keras_scale
from mpcourse.scaling import next_scale

keras = keras_mp.load_keras()


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends with Keras's default policy."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


# -- choosing the backend ----------------------------------------------------------------------
def test_backend_defaults_to_torch_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv(keras_mp.ENV_VAR, raising=False)
    assert keras_mp.backend_name() == "torch"
    monkeypatch.setenv(keras_mp.ENV_VAR, " Torch ")
    assert keras_mp.backend_name() == "torch"
    assert keras_mp.backend_name("torch") == "torch"


def test_unsupported_backend_is_refused(monkeypatch):
    monkeypatch.setenv(keras_mp.ENV_VAR, "jax")
    with pytest.raises(ValueError, match=r"'jax' \(from \$MPCOURSE_KERAS_BACKEND\).*'tensorflow'"):
        keras_mp.backend_name()
    with pytest.raises(TypeError, match="must be a string"):
        keras_mp.backend_name(3)  # type: ignore[arg-type]


def test_missing_backend_names_the_extra_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_tensorflow(name, *args, **kwargs):
        return None if name == "tensorflow" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorflow)
    monkeypatch.setenv(keras_mp.ENV_VAR, "tensorflow")
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[tf\]"'):
        keras_mp.backend_name()
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[tf\]"'):
        keras_mp.load_keras("tensorflow")


def test_keras_cannot_switch_backend_once_imported():
    other = "tensorflow" if keras.backend.backend() == "torch" else "torch"
    if importlib.util.find_spec(other) is None:  # torch is always installed: tensorflow missing
        with pytest.raises(ModuleNotFoundError, match="tf"):
            keras_mp.load_keras(other)
    else:
        with pytest.raises(RuntimeError, match="restart the kernel"):
            keras_mp.load_keras(other)


def test_load_keras_prints_the_backend_and_checks_threads(capsys):
    assert keras_mp.load_keras() is keras
    assert f"with the {keras.backend.backend()} backend" in capsys.readouterr().out
    with pytest.raises(ValueError, match="threads"):
        keras_mp.load_keras(threads=0)
    with pytest.raises(TypeError, match="threads"):
        keras_mp.load_keras(threads=1.5)  # type: ignore[arg-type]


def test_tf_namespace_gives_the_seed_its_tf_keras():
    tf = keras_mp.tf_namespace()
    assert tf.keras.layers.Dense is keras.layers.Dense
    assert tf.keras.mixed_precision.LossScaleOptimizer is keras.optimizers.LossScaleOptimizer


# -- data and dtypes ---------------------------------------------------------------------------
def test_digits_in_the_seed_shape():
    x, y = keras_mp.digits_28x28("test", limit=10)
    assert x.shape == (10, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (10,) and y.dtype == np.int64
    assert keras_mp.digits_28x28("test")[0].shape[0] == 359
    with pytest.raises(ValueError, match="limit"):
        keras_mp.digits_28x28("test", limit=0)
    with pytest.raises(ValueError, match="split"):
        keras_mp.digits_28x28("valid")


def _small_model(float32_output: bool = True):
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    if float32_output:
        layers.append(keras.layers.Activation("linear", dtype="float32"))
    return keras.Sequential(layers)


def test_layer_dtypes_under_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    rows = keras_mp.layer_dtypes(_small_model(), np.ones((2, 6), dtype=np.float32))
    assert [r.compute_dtype for r in rows] == ["float16", "float16", "float32"]
    assert [r.output_dtype for r in rows] == ["float16", "float16", "float32"]
    assert all(r.variable_dtype == "float32" for r in rows)
    assert rows[0].weights == ("float32", "float32")
    with pytest.raises(TypeError, match="Sequential"):
        keras_mp.layer_dtypes(object(), None)


# -- Keras's LossScaleOptimizer = our DynamicLossScaler ----------------------------------------
def test_scaler_like_copies_keras_settings():
    lso = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**7, dynamic_growth_steps=3
    )
    ours = keras_mp.scaler_like(lso)
    assert ours.get_scale() == 2.0**7 and ours.get_growth_interval() == 3
    default = keras_mp.scaler_like(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()))
    assert default.get_scale() == 2.0**15 and default.get_growth_interval() == 2000
    with pytest.raises(TypeError, match="LossScaleOptimizer"):
        keras_mp.scaler_like(keras.optimizers.SGD())


def _keras_scales(finite_flags: list[bool], initial: float, growth: int) -> list[float]:
    """The real LossScaleOptimizer's scale after each step, fed finite or inf gradients."""
    lso = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=initial, dynamic_growth_steps=growth
    )
    var = keras.Variable(np.zeros(2, dtype=np.float32))
    scales = []
    for finite in finite_flags:
        grad = np.array([1.0, 2.0] if finite else [np.inf, 1.0], dtype=np.float32)
        with torch.no_grad():
            lso.apply([keras.ops.convert_to_tensor(grad)], [var])
        scales.append(float(keras_mp.to_numpy(lso.dynamic_scale)))
    return scales


def test_keras_scale_rule_equals_next_scale_and_the_exercise_reference():
    rng = random.Random(12)
    for growth in (1, 3, 5):
        flags = [rng.random() < 0.75 for _ in range(40)]
        keras_scales = _keras_scales(flags, 2.0**10, growth)
        scale, tracker, ours = 2.0**10, 0, []
        for finite in flags:
            scale, tracker = next_scale(scale, tracker, not finite, growth_interval=growth)
            ours.append(scale)
        assert keras_scales == ours
        runs = [(finite, 1) for finite in flags]
        assert reference_keras_scale(runs, 2.0**10, growth) == keras_scales[-1]


def test_lockstep_same_scales_skips_and_weights():
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    x, y = keras_mp.digits_28x28("train", limit=96)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
            keras.layers.Activation("linear", dtype="float32"),
        ]
    )
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 96, 16)] * 2
    steps = keras_mp.lockstep(
        model,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches,
        learning_rate=0.05,
        initial_scale=2.0**22,  # gradients w.r.t. the float16 logits overflow: backoff
        dynamic_growth_steps=2,
    )
    assert [s.keras_scale for s in steps] == [s.our_scale for s in steps]
    assert [s.keras_skipped for s in steps] == [s.our_skipped for s in steps]
    assert steps[0].keras_skipped and sum(s.keras_skipped for s in steps) >= 2
    assert any(b.keras_scale > a.keras_scale for a, b in zip(steps, steps[1:]))
    assert max(s.max_weight_diff for s in steps) < 1e-6


# -- exercise checks ---------------------------------------------------------------------------
def test_check_float32_head_accepts_the_solutions():
    def split_head(layers):
        *body, head = layers
        config = head.get_config()
        activation = config.get("activation", "linear")
        config["activation"] = "linear"
        float32_activation = keras.layers.Activation(activation, dtype="float32")
        return [*body, type(head).from_config(config), float32_activation]

    def float32_last(layers):
        *body, head = layers
        return [*body, type(head).from_config({**head.get_config(), "dtype": "float32"})]

    assert checks.check_float32_head(split_head)
    assert checks.check_float32_head(float32_last)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda layers: [*layers, keras.layers.Activation("linear", dtype="float32")], "too late"),
        (lambda layers: layers, "still outputs float16"),
        (lambda layers: layers[-1:], "missing"),
        (
            lambda layers: [
                type(x).from_config({**x.get_config(), "dtype": "float32"}) for x in layers
            ],  # fmt: skip
            "missing",
        ),
        (lambda layers: None, "list of Keras layers"),
    ],
)
def test_check_float32_head_names_the_mistake(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_float32_head(wrong)


def test_check_float32_head_wants_the_body_in_float16():
    def everything_float32(layers):
        for layer in layers:
            layer.dtype_policy = "float32"
        return [*layers, keras.layers.Activation("linear", dtype="float32")]

    with pytest.raises(CheckFailed, match="only the output needs float32"):
        checks.check_float32_head(everything_float32)


def _keras_scale(events, initial_scale=2.0**15, growth_steps=2000):
    scale, counter = float(initial_scale), 0
    for finite, count in events:
        if finite:
            growths, counter = divmod(counter + count, growth_steps)
            scale *= 2.0**growths
        else:
            scale, counter = scale * 0.5**count, 0
    return scale


def test_check_keras_scale_accepts_a_correct_rule_and_names_mistakes():
    assert checks.check_keras_scale(_keras_scale)

    def no_reset(events, initial_scale=2.0**15, growth_steps=2000):
        scale, counter = float(initial_scale), 0
        for finite, count in events:
            if finite:
                growths, counter = divmod(counter + count, growth_steps)
                scale *= 2.0**growths
            else:
                scale *= 0.5**count
        return scale

    def torch_start(events, initial_scale=2.0**15, growth_steps=2000):
        return _keras_scale(events, 2.0**16, growth_steps) if initial_scale == 2.0**15 else 0.0

    with pytest.raises(CheckFailed, match="restart at 0 after an overflow"):
        checks.check_keras_scale(no_reset)
    with pytest.raises(CheckFailed, match="2\\^15"):
        checks.check_keras_scale(torch_start)
    with pytest.raises(NotAnswered):
        checks.check_keras_scale(None)
    with pytest.raises(CheckFailed, match="number"):
        checks.check_keras_scale(lambda events, initial, growth: "big")
