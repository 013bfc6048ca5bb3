"""Checks for the exercises of course/12_keras_tensorflow.ipynb (Keras 3 mixed precision)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._core import _short, call_answer, fail, passed, require_answer

KERAS_INITIAL_SCALE = 2.0**15
KERAS_GROWTH_STEPS = 2000


def _keras() -> Any:
    keras = sys.modules.get("keras")
    if keras is None:
        from ..keras_mp import load_keras

        keras = load_keras()
    return keras


# -- exercise 1: the layer that must stay float32 ----------------------------------------------
def _head_cases(keras: Any) -> list[tuple[str, tuple[int, ...], Callable[[], list[Any]]]]:
    L = keras.layers
    rng = random.Random()  # fresh sizes on every run: the answer must not hard-code them
    a, b, c = rng.randint(5, 12), rng.randint(2, 9), rng.randint(3, 8)
    return [
        ("logits head", (6,), lambda: [L.Dense(a, activation="relu"), L.Dense(b)]),
        ("softmax head", (6,), lambda: [L.Dense(a, activation="relu"), L.Dense(c, "softmax")]),
        (
            "conv model with a sigmoid head",
            (8, 8, 1),
            lambda: [L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(1, "sigmoid")],
        ),
        (
            "separate softmax layer",
            (5,),
            lambda: [L.Dense(a, activation="relu"), L.Dense(b), L.Activation("softmax")],
        ),
    ]


def _activation_name(layer: Any, keras: Any) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    if fn is None:
        return "linear"
    name = keras.activations.serialize(fn)
    return name if isinstance(name, str) else str(getattr(fn, "__name__", fn))


def check_float32_head(float32_head: Callable) -> bool:
    """Check ``float32_head(layers) -> layers`` on fresh mixed_float16 models: the model's
    output (and its final activation) in float32, every hidden layer still in float16."""
    require_answer(float32_head, "`float32_head`")
    keras = _keras()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for label, shape, make in _head_cases(keras):
            layers = make()
            got = call_answer(float32_head, list(layers), what="float32_head")
            _check_head(keras, label, shape, layers, got)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return passed(
        "the output layer (and its activation) computes in float32 on every model, "
        "and the hidden layers still compute in float16."
    )


def _check_head(
    keras: Any, label: str, shape: tuple[int, ...], layers: list[Any], got: Any
) -> None:
    if not isinstance(got, (list, tuple)) or not all(isinstance(x, keras.Layer) for x in got):
        fail(f"float32_head should return a list of Keras layers, got {_short(got)} ({label}).")
    got = list(got)
    body, head = layers[:-1], layers[-1]
    for layer in body:
        if not any(layer is x for x in got):
            fail(
                f"On a {label}, the hidden layer {layer.name!r} is missing from what you "
                "returned: keep the body as it is, change only the head."
            )
    model = keras.Sequential([keras.Input(shape), *got])
    x = np.random.default_rng().normal(size=(3, *shape)).astype("float32")
    out = model(x)
    for layer in body:
        if layer.compute_dtype != "float16":
            fail(
                f"On a {label}, the hidden layer {layer.name!r} now computes in "
                f"{layer.compute_dtype}: only the output needs float32, the rest should stay "
                "float16 (that is where the speed comes from)."
            )
    dtype = keras.backend.standardize_dtype(out.dtype)
    if dtype != "float32":
        fail(
            f"On a {label}, the model still outputs {dtype}: the last layer must compute in "
            "float32 (dtype='float32'), e.g. an Activation('linear', dtype='float32') at the end."
        )
    want_units = keras.Sequential([keras.Input(shape), *body, head])(x).shape[-1]
    if tuple(out.shape) != (3, want_units):
        fail(
            f"On a {label}, the output has shape {tuple(out.shape)}, expected {(3, want_units)}:"
            " keep the head's number of units."
        )
    wanted = _activation_name(head, keras)
    new_head = [x for x in got if not any(x is b for b in body)]
    applied = [(x, _activation_name(x, keras)) for x in new_head]
    applied = [(x, name) for x, name in applied if name != "linear"]
    if wanted == "linear":
        if applied:
            fail(
                f"On a {label}, the head outputs logits (no activation), but yours applies "
                f"{applied[-1][1]!r}: keep what the head computes, change only its dtype."
            )
        return
    if [name for _, name in applied] != [wanted]:
        fail(
            f"On a {label}, the head should apply {wanted!r} once, yours applies "
            f"{[name for _, name in applied] or 'nothing'}: keep what the head computes."
        )
    layer = applied[0][0]
    if layer.compute_dtype != "float32":
        fail(
            f"On a {label}, the {wanted} still runs in float16 (layer {layer.name!r}): casting its"
            " result to float32 afterwards is too late, the saturated probabilities are already "
            f"0 or 1. Compute the {wanted} itself in float32, e.g. Activation({wanted!r}, "
            "dtype='float32') after a linear Dense."
        )


# -- exercise 2: predict Keras's loss scale -----------------------------------------------------
def reference_keras_scale(
    events: list[tuple[bool, int]],
    initial_scale: float = KERAS_INITIAL_SCALE,
    growth_steps: int = KERAS_GROWTH_STEPS,
) -> float:
    """Keras's LossScaleOptimizer scale after runs of ``(finite, count)`` steps.

    A run of ``n`` overflows halves the scale ``n`` times and restarts the
    finite-step counter; a run of ``n`` finite steps adds ``n`` to the counter
    and doubles the scale once per ``growth_steps`` it completes. Equal, step
    by step, to :func:`mpcourse.scaling.next_scale` and to Keras itself (tested).
    """
    scale, tracker = float(initial_scale), 0
    for finite, count in events:
        if not finite:  # every overflow halves and resets the counter
            scale, tracker = scale * 0.5**count, 0
            continue
        grown, tracker = divmod(tracker + count, growth_steps)
        scale *= 2.0**grown
    return scale


def _mistakes(events: list[tuple[bool, int]], initial: float, growth: int) -> dict[str, float]:
    """What common wrong rules give, to name the mistake."""

    def run(reset_on_overflow: bool, carry: bool, interval: int, start: float) -> float:
        scale, tracker = start, 0
        for finite, count in events:
            if not finite:
                scale *= 0.5**count
                tracker = 0 if reset_on_overflow else tracker
                continue
            grown, tracker = divmod((tracker if carry else 0) + count, interval)
            scale *= 2.0**grown
        return scale

    return {
        "the finite-step counter must restart at 0 after an overflow": run(
            False, True, growth, initial
        ),
        "the counter carries over from one run of finite steps to the next (it only restarts "
        "after a growth or an overflow)": run(True, False, growth, initial),
        f"the scale grows after {growth} finite steps, not {growth + 1}": run(
            True, True, growth + 1, initial
        ),
        "Keras starts at 2^15 = 32768 (PyTorch's GradScaler starts at 2^16)": run(
            True, True, growth, 2.0 * initial
        ),
    }


def _scale_cases() -> list[tuple[list[tuple[bool, int]], float, int]]:
    rng = random.Random()
    cases = [
        ([(True, 1999)], KERAS_INITIAL_SCALE, KERAS_GROWTH_STEPS),
        ([(True, 2000)], KERAS_INITIAL_SCALE, KERAS_GROWTH_STEPS),
        ([(True, 1500), (False, 1), (True, 1500)], KERAS_INITIAL_SCALE, KERAS_GROWTH_STEPS),
        ([(True, 1200), (True, 1200)], KERAS_INITIAL_SCALE, KERAS_GROWTH_STEPS),
        ([(False, 5), (True, 7)], 2.0**10, 3),
    ]
    for _ in range(6):
        growth = rng.choice([3, 10, 2000])
        events = [
            (finite, rng.randint(1, 4) if not finite else rng.randint(1, 3 * growth))
            for finite in (rng.random() < 0.6 for _ in range(rng.randint(2, 7)))
        ]
        cases.append((events, 2.0 ** rng.randint(8, 20), growth))
    return cases


def check_keras_scale(keras_scale: Callable) -> bool:
    """Check ``keras_scale(events, initial_scale, growth_steps) -> float`` on unseen runs."""
    require_answer(keras_scale, "`keras_scale`")
    for events, initial, growth in _scale_cases():
        got = call_answer(keras_scale, list(events), initial, growth, what="keras_scale")
        want = reference_keras_scale(events, initial, growth)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            fail(f"keras_scale should return a number (the scale), got {_short(got)}.")
        if got != want:
            hint = next(
                (why for why, value in _mistakes(events, initial, growth).items() if got == value),
                "replay the rule step by step: overflow -> halve and restart the count; "
                f"{growth} finite steps in a row -> double and restart the count.",
            )
            fail(
                f"keras_scale({events}, initial_scale={initial:g}, growth_steps={growth}): "
                f"expected {want:g}, got {got:g}. Hint: {hint}"
            )
    long_run = [(True, 30_000_000), (False, 1), (True, 4_000_000)]  # 34 million steps
    start = time.perf_counter()
    got = call_answer(keras_scale, list(long_run), 1.0, 1_000_000, what="keras_scale")
    seconds = time.perf_counter() - start
    if got != reference_keras_scale(long_run, 1.0, 1_000_000):
        fail(f"keras_scale({long_run}, 1.0, 1000000): expected 2^33, got {_short(got)}.")
    if seconds > 1.0:
        fail(
            f"keras_scale took {seconds:.1f} s for 34 million steps: handle each run at once "
            "(divmod of the counter by growth_steps) instead of looping over its steps."
        )
    return passed(
        "your rule gives Keras's scale on every sequence of finite/overflowing steps, "
        "34 million steps included."
    )
