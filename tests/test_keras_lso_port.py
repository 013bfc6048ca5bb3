"""Keras's own LossScaleOptimizer tests, ported and run against both loss scalers.

Source: keras-team/keras, ``keras/src/optimizers/loss_scale_optimizer_test.py``
(the copy installed with Keras 3.15). Each ported test below names its
original and is parametrised over two implementations of the same contract:

* ``keras``: Keras's ``LossScaleOptimizer(SGD(0.5))`` on the backend that
  ``MPCOURSE_KERAS_BACKEND`` selects (torch by default); this proves the port,
  since the original assertions pass on the real thing;
* ``ours``: :class:`mpcourse.scaling.DynamicLossScaler` with Keras's settings
  (:func:`mpcourse.keras_mp.scaler_like`) driving ``torch.optim.SGD(lr=0.5)``:
  ``param.grad = scaled grads; scaler.step(sgd); scaler.update()``.

The adapter maps Keras's ``optimizer.apply(grads, vars)`` to one such step,
``optimizer.scale_loss(1.0)`` to ``scaler.get_scale()``, and Keras's
``optimizer.iterations`` (which counts applied, not skipped, steps) to steps
minus ``scaler.skipped_steps``.

Ported: ``test_finite_step`` (stateful), ``test_apply_with_no_vars``,
``test_infinite_step`` (stateful), ``test_downscaling`` (stateful),
``test_upscaling`` (stateful), ``test_iterations_update`` (stateful),
``test_serialization`` (as ``state_dict``/``load_state_dict``: the scale and
the growth interval survive a round trip), ``test_init_unsupported_arg``
(unknown arguments are refused, naming them).

Do not apply (and why):

* the ``stateless`` variants: ``stateless_apply`` is JAX's functional API;
  neither torch's optimizers nor our scaler have one;
* ``test_finite_step_with_inner_loss_scale``: Keras's ``loss_scale_factor`` on
  the inner optimizer has no PyTorch counterpart;
* ``test_finite_step_with_overwrite``: Keras's ``overwrite_with_gradient``
  variables (for FP8 scaling factors) have no PyTorch counterpart;
* ``test_init_dynamic_arg``: Keras 3 only allows ``dynamic=True`` (a fixed
  scale is ``loss_scale_factor`` there); our dynamic scaler has no ``dynamic``
  argument (a fixed scale is :class:`mpcourse.scaling.StaticLossScaler`);
* ``test_init_base_optimizer_unsupported_args``: Keras's wrapper refuses
  ``clipnorm`` etc. because it wraps the optimizer; our scaler does not wrap
  it (clip after ``unscale_``, chapter 07);
* ``test_config`` and ``test_deserialization_backwards_compatibility``: Keras's
  config serialization format.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpcourse import keras_mp
from mpcourse.scaling import DynamicLossScaler

keras = keras_mp.load_keras()


class KerasImpl:
    """Keras's LossScaleOptimizer(SGD(0.5)) on one variable."""

    def __init__(self, values: list[float], **kwargs: float) -> None:
        self.opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), **kwargs)
        self.var = keras.Variable(values)
        self.opt.build([self.var])

    @property
    def initial_scale(self) -> float:
        return float(self.opt.initial_scale)

    def apply(self, grads: list[float]) -> None:
        g = keras.ops.convert_to_tensor(np.array(grads, dtype="float32"))
        if keras.backend.backend() == "torch":
            with torch.no_grad():
                self.opt.apply([g], [self.var])
        else:
            self.opt.apply([g], [self.var])

    def values(self) -> list[float]:
        return keras_mp.to_numpy(self.var).tolist()

    def scale(self) -> float:
        return float(keras_mp.to_numpy(self.opt.scale_loss(1.0)))

    def applied_steps(self) -> int:
        return int(keras_mp.to_numpy(self.opt.iterations))


class OurImpl:
    """DynamicLossScaler with Keras's settings driving torch.optim.SGD(lr=0.5)."""

    def __init__(self, values: list[float], **kwargs: float) -> None:
        self.param = torch.nn.Parameter(torch.tensor(values))
        self.sgd = torch.optim.SGD([self.param], lr=0.5)
        self.scaler = DynamicLossScaler(
            init_scale=kwargs.get("initial_scale", 2.0**15),
            growth_factor=2.0,
            backoff_factor=0.5,
            growth_interval=int(kwargs.get("dynamic_growth_steps", 2000)),
        )
        self.scaler.scale(torch.tensor(1.0))  # as a training step would, before its backward
        self.steps = 0
        self.initial_scale = float(kwargs.get("initial_scale", 2.0**15))

    def apply(self, grads: list[float]) -> None:
        self.param.grad = torch.tensor(grads)
        self.scaler.step(self.sgd)
        self.scaler.update()
        self.steps += 1

    def values(self) -> list[float]:
        return self.param.detach().tolist()

    def scale(self) -> float:
        return self.scaler.get_scale()

    def applied_steps(self) -> int:
        return self.steps - self.scaler.skipped_steps


IMPLS = {"keras": KerasImpl, "ours": OurImpl}


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


def test_keras_defaults_are_what_scaler_like_copies():
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5))
    ours = keras_mp.scaler_like(opt)
    assert (opt.initial_scale, opt.dynamic_growth_steps) == (2.0**15, 2000)
    assert ours.get_scale() == 2.0**15 and ours.get_growth_interval() == 2000


def test_finite_step(impl):
    """test_finite_step (stateful) and test_apply_with_no_vars: grads S*g, update lr*g."""
    run = impl([1.0, 2.0, 3.0, 4.0])
    s = run.initial_scale
    run.apply([1.0 * s, 6.0 * s, 7.0 * s, 2.0 * s])
    assert np.allclose(run.values(), [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4)


def test_infinite_step(impl):
    """test_infinite_step (stateful): inf gradients leave the variables unchanged."""
    run = impl([1.0, 2.0, 3.0, 4.0])
    run.apply([math.inf] * 4)
    assert np.allclose(run.values(), [1.0, 2.0, 3.0, 4.0], rtol=1e-4, atol=1e-4)


def test_downscaling(impl):
    """test_downscaling (stateful): 400 halves four times on inf gradients: 25."""
    run = impl([1.0, 2.0, 3.0, 4.0], initial_scale=400.0)
    for _ in range(4):
        run.apply([math.inf] * 4)
    assert run.scale() == pytest.approx(25.0)


def test_upscaling(impl):
    """test_upscaling (stateful): 2 doubles every 2 finite steps, 8 steps: 32."""
    run = impl([1.0, 2.0, 3.0, 4.0], initial_scale=2.0, dynamic_growth_steps=2)
    for _ in range(8):
        run.apply([1.0, 6.0, 7.0, 2.0])
    assert run.scale() == pytest.approx(32.0)


def test_iterations_update(impl):
    """test_iterations_update (stateful): each finite step counts; a skipped one does not."""
    run = impl([1.0, 2.0, 3.0, 4.0])
    assert run.applied_steps() == 0
    for i in range(3):
        run.apply([1.0, 6.0, 7.0, 2.0])
        assert run.applied_steps() == i + 1
    run.apply([math.nan] * 4)  # not in the original: a skipped step is not counted
    assert run.applied_steps() == 3


def test_serialization_round_trip():
    """test_serialization: Keras's config keeps initial_scale and dynamic_growth_steps;
    ours keeps the same two numbers through state_dict / load_state_dict."""
    opt = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.5), initial_scale=3.0, dynamic_growth_steps=2, name="test_opt"
    )
    config = opt.get_config()
    assert (config["initial_scale"], config["dynamic_growth_steps"]) == (3.0, 2)
    keras.optimizers.LossScaleOptimizer.from_config(config)
    ours = keras_mp.scaler_like(opt)
    ours.scale(torch.tensor(1.0))
    fresh = DynamicLossScaler()
    fresh.load_state_dict(ours.state_dict())
    assert fresh.get_scale() == 3.0 and fresh.get_growth_interval() == 2


def test_init_unsupported_arg():
    """test_init_unsupported_arg: unknown arguments are refused, each named."""
    with pytest.raises(ValueError, match="arguments: `foo`, `bar`"):
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), foo=True, bar=3)
    with pytest.raises(TypeError, match="foo"):
        DynamicLossScaler(foo=True)  # type: ignore[call-arg]
