"""Keras 3 mixed precision next to PyTorch's, and the one place that picks Keras's backend.

Keras 3 runs on several backends; the course uses **torch** by default (no
TensorFlow needed) and **tensorflow** when it is installed
(``pip install -e ".[tf]"``). The choice is read from the environment variable
``MPCOURSE_KERAS_BACKEND`` (``torch`` or ``tensorflow``) by :func:`load_keras`,
which must run before anything imports ``keras``: Keras fixes its backend at
import time (``KERAS_BACKEND``).

Keras's names for what chapters 04-07 built in PyTorch:

* policy ``mixed_float16``: variables (master weights) in float32, each layer
  computes in float16 (``torch.autocast``), except where Keras keeps float32
  itself (losses, ``BatchNormalization``'s inputs); ``mixed_bfloat16`` likewise;
* ``LossScaleOptimizer``: dynamic loss scaling. ``S0 = 2^15``; a step whose
  gradients hold inf/NaN is skipped and ``S <- S / 2``; after
  ``dynamic_growth_steps`` (2000) finite steps in a row ``S <- 2 S``. That is
  :class:`~mpcourse.scaling.DynamicLossScaler` with ``init_scale=2^15``
  (:func:`scaler_like`), proven step by step by :func:`lockstep`.

Taught in course/12_keras_tensorflow.ipynb.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import digits
from .device import pick_device
from .scaling import DynamicLossScaler

__all__ = [
    "ENV_VAR",
    "BACKENDS",
    "backend_name",
    "load_keras",
    "tf_namespace",
    "digits_28x28",
    "to_numpy",
    "LayerDtypes",
    "layer_dtypes",
    "format_layer_dtypes",
    "scaled_gradients",
    "scaler_like",
    "LockstepStep",
    "lockstep",
]

ENV_VAR = "MPCOURSE_KERAS_BACKEND"
DEFAULT_BACKEND = "torch"
# backend -> (the module it needs, how to install it)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("torch", 'pip install -e "."'),
    "tensorflow": ("tensorflow", 'pip install -e ".[tf]"'),
}


def backend_name(name: str | None = None) -> str:
    """The Keras backend to use: ``name`` if given, else ``$MPCOURSE_KERAS_BACKEND``, else torch.

    Raises ValueError for a backend the course does not support and
    ModuleNotFoundError, naming the extra to install, when the backend's
    package is missing. Taught in course/12_keras_tensorflow.ipynb.
    """
    source = "the argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR, "") or DEFAULT_BACKEND, f"${ENV_VAR}"
    if not isinstance(name, str):
        raise TypeError(f"the Keras backend must be a string, got {name!r}")
    choice = name.strip().lower()
    if choice not in BACKENDS:
        raise ValueError(
            f"Keras backend {name!r} (from {source}) is not one the course runs on: "
            f"choose one of {sorted(BACKENDS)}."
        )
    module, install = BACKENDS[choice]
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"The Keras backend {choice!r} (from {source}) needs the {module!r} package, which "
            f"is not installed: run `{install}` in the course folder (the 'tf' extra installs "
            f"tensorflow-cpu), or unset {ENV_VAR} to use the torch backend."
        )
    return choice


def load_keras(name: str | None = None, *, threads: int | None = None) -> types.ModuleType:
    """Select the backend (:func:`backend_name`), import ``keras``, print the choice, return it.

    Sets ``KERAS_BACKEND``; for torch, ``KERAS_TORCH_DEVICE`` from
    :func:`mpcourse.device.pick_device` (one place decides the device); for
    tensorflow, silences its start-up log (``TF_CPP_MIN_LOG_LEVEL=2``) and turns
    off its oneDNN custom ops (``TF_ENABLE_ONEDNN_OPTS=0``: they print a banner
    at start-up); both only if unset.
    ``threads`` fixes the CPU threads of torch (and TensorFlow) for reproducible
    sums. Keras cannot switch backends once imported: a different choice then
    raises RuntimeError (restart the kernel). Taught in course/12_keras_tensorflow.ipynb.
    """
    choice = backend_name(name)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise TypeError(f"threads must be an int >= 1 or None, got {threads!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != choice:
        raise RuntimeError(
            f"Keras is already imported with the {loaded.backend.backend()!r} backend and cannot "
            f"switch to {choice!r}: restart the kernel and call load_keras() before importing "
            "keras."
        )
    os.environ["KERAS_BACKEND"] = choice
    if choice == "torch":
        os.environ.setdefault("KERAS_TORCH_DEVICE", str(pick_device()))
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if threads is not None:
        torch.set_num_threads(threads)
    import keras

    if threads is not None and choice == "tensorflow":
        import tensorflow as tf

        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            try:  # only possible before TensorFlow's runtime has started
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                pass
    print(f"Keras {keras.__version__} with the {keras.backend.backend()} backend")
    return keras


def tf_namespace() -> Any:
    """What the seed's ``import tensorflow as tf`` provides to its code: ``tf.keras``.

    On the tensorflow backend, TensorFlow itself (whose ``tf.keras`` is Keras 3);
    on the torch backend, a namespace whose only attribute is ``keras``.
    Call :func:`load_keras` first. Taught in course/12_keras_tensorflow.ipynb.
    """
    keras = sys.modules.get("keras")
    if keras is None:
        raise RuntimeError("call mpcourse.keras_mp.load_keras() first: it picks Keras's backend")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf
    return types.SimpleNamespace(keras=keras)


def digits_28x28(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The course's real digits (:func:`mpcourse.data.digits`) in the seed's input shape.

    Returns ``(images, labels)``: float32 ``(N, 28, 28, 1)`` (channels last, as
    Keras expects; the 8x8 digits upsampled bilinearly and standardized) and int64
    ``(N,)``; ``limit`` keeps the first ``limit`` images.

    Taught in course/12_keras_tensorflow.ipynb.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    data = digits(split, image_size=28)
    images, labels = data.tensors[0][:limit, :1], data.tensors[1][:limit]
    return images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()


def to_numpy(x: Any) -> np.ndarray:
    """A Keras tensor or Variable (any backend) as a NumPy array.

    Torch and TensorFlow tensors are converted by their own ``.numpy()`` (Keras's
    ``convert_to_numpy`` warns about NumPy 2's ``copy`` keyword on both); a torch
    bfloat16 tensor comes back as float32 (exact).
    Taught in course/12_keras_tensorflow.ipynb.
    """
    import keras

    value = getattr(x, "value", x)  # a Variable's current tensor
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if callable(getattr(value, "numpy", None)):  # a TensorFlow tensor: the same warning
        return np.asarray(value.numpy())
    return np.asarray(keras.ops.convert_to_numpy(value))


def _dtype_name(dtype: Any) -> str:
    import keras

    return keras.backend.standardize_dtype(dtype)


@dataclass(frozen=True)
class LayerDtypes:
    """One layer under a dtype policy: what its weights are stored in, what it computes in."""

    name: str
    policy: str
    variable_dtype: str  # Keras's name for the master weights' dtype
    compute_dtype: str  # what the layer casts its inputs and weights to (autocast)
    weights: tuple[str, ...]  # the dtypes of the stored weights
    output_dtype: str  # measured on a real batch


def layer_dtypes(model: Any, x: Any) -> list[LayerDtypes]:
    """Run ``x`` through a Sequential ``model`` layer by layer and record each layer's dtypes.

    Taught in course/12_keras_tensorflow.ipynb.
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, list) or not layers:
        raise TypeError(f"model must be a keras.Sequential with layers, got {type(model).__name__}")
    rows = []
    out = x
    for layer in layers:
        out = layer(out)
        policy = layer.dtype_policy
        rows.append(
            LayerDtypes(
                name=layer.name,
                policy=policy.name,
                variable_dtype=policy.variable_dtype,
                compute_dtype=policy.compute_dtype,
                weights=tuple(_dtype_name(w.dtype) for w in layer.weights),
                output_dtype=_dtype_name(out.dtype),
            )
        )
    return rows


def format_layer_dtypes(rows: list[LayerDtypes]) -> str:
    """The table of :func:`layer_dtypes`: variable, compute, stored and output dtype per layer.

    Taught in course/12_keras_tensorflow.ipynb.
    """
    lines = [f"  {'layer':<16} {'variables':<10} {'compute':<9} {'weights stored':<18} output"]
    for r in rows:
        stored = ",".join(sorted(set(r.weights))) or "-"
        lines.append(
            f"  {r.name:<16} {r.variable_dtype:<10} {r.compute_dtype:<9} {stored:<18} "
            f"{r.output_dtype}"
        )
    return "\n".join(lines)


def scaled_gradients(
    model: Any, loss_fn: Callable, optimizer: Any, x: Any, y: Any
) -> tuple[float, list[Any]]:
    """A custom training step's first half: ``(loss, d(scale_loss(loss))/d weights)``.

    Keras 3 has no backend-neutral autograd, so this is the one backend-specific
    piece: ``tf.GradientTape`` on tensorflow, ``Tensor.backward()`` on torch (as
    Keras's own ``fit`` does). The gradients are ``S * g`` where ``S`` is the
    LossScaleOptimizer's scale; ``optimizer.apply(grads)`` unscales them, skips
    the step on inf/NaN and updates ``S``. Taught in course/12_keras_tensorflow.ipynb.
    """
    import keras

    weights = model.trainable_variables
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            scaled = optimizer.scale_loss(loss)
        return float(loss), tape.gradient(scaled, weights)
    for w in weights:
        w.value.grad = None
    loss = loss_fn(y, model(x, training=True))
    optimizer.scale_loss(loss).backward()
    return float(loss.detach()), [w.value.grad for w in weights]


def scaler_like(optimizer: Any) -> DynamicLossScaler:
    """Our :class:`DynamicLossScaler` with a Keras ``LossScaleOptimizer``'s settings.

    Keras: initial scale ``initial_scale``, x2 after ``dynamic_growth_steps``
    finite steps, x0.5 on inf/NaN. Taught in course/12_keras_tensorflow.ipynb.
    """
    for attr in ("initial_scale", "dynamic_growth_steps"):
        if not hasattr(optimizer, attr):
            raise TypeError(
                f"optimizer must be a keras LossScaleOptimizer, got {type(optimizer).__name__}"
            )
    return DynamicLossScaler(
        init_scale=float(optimizer.initial_scale),
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=int(optimizer.dynamic_growth_steps),
    )


@dataclass(frozen=True)
class LockstepStep:
    """One training step seen by Keras's LossScaleOptimizer and by our DynamicLossScaler."""

    step: int
    loss: float
    keras_scale: float  # the scale this step's loss was multiplied by
    our_scale: float
    keras_skipped: bool
    our_skipped: bool
    max_weight_diff: float  # max |Keras weight - our weight| after the step


def lockstep(
    model: Any,
    loss_fn: Callable,
    batches: Iterable[tuple[Any, Any]],
    *,
    learning_rate: float = 0.01,
    initial_scale: float = 2.0**15,
    dynamic_growth_steps: int = 2000,
) -> list[LockstepStep]:
    """Train ``model`` with ``LossScaleOptimizer(SGD(learning_rate))`` and, on the very same
    scaled gradients, an FP32 copy of its weights with ``torch.optim.SGD`` + our
    :func:`scaler_like` scaler; record both scales, skips and the weight gap per step.

    Taught in course/12_keras_tensorflow.ipynb.
    """
    import keras

    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(learning_rate),
        initial_scale=initial_scale,
        dynamic_growth_steps=dynamic_growth_steps,
    )
    weights = model.trainable_variables
    copies = [torch.tensor(to_numpy(w), requires_grad=True) for w in weights]
    sgd = torch.optim.SGD(copies, lr=learning_rate)
    scaler = scaler_like(optimizer)
    records = []
    for step, (x, y) in enumerate(batches):
        keras_scale = float(to_numpy(optimizer.dynamic_scale)) if optimizer.built else initial_scale
        our_scale = scaler.get_scale()
        loss, grads = scaled_gradients(model, loss_fn, optimizer, x, y)
        scaler.scale(torch.tensor(loss))  # our S * loss (creates our scale on the first step)
        for copy, grad in zip(copies, grads):
            copy.grad = torch.from_numpy(np.array(to_numpy(grad)))
        iterations, skips = int(optimizer.iterations), scaler.skipped_steps
        with torch.no_grad():  # (as Keras's fit does on the torch backend)
            optimizer.apply(grads, weights)  # Keras: unscale, skip on inf/NaN, update S
        scaler.step(sgd)  # ours: unscale, skip on inf/NaN ...
        scaler.update()  # ... update S
        gap = max(
            float(np.abs(to_numpy(w) - c.detach().numpy()).max()) for w, c in zip(weights, copies)
        )
        records.append(
            LockstepStep(
                step=step,
                loss=loss,
                keras_scale=keras_scale,
                our_scale=our_scale,
                keras_skipped=int(optimizer.iterations) == iterations,
                our_skipped=scaler.skipped_steps > skips,
                max_weight_diff=gap,
            )
        )
    return records
