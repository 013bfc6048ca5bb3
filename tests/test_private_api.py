"""No module of mpcourse reaches into private state it does not own, outside an allow-list.

The scan walks every ``mpcourse/**.py`` with ``ast`` and collects each use of a private
name (one leading underscore, not a dunder) that belongs to someone else:

* ``x._name`` where ``x`` is not ``self``/``cls`` and the module itself never assigns an
  attribute or a module-level name called ``_name`` (so a module may use the private
  fields of its own classes); methods count as someone else's, since the same method name
  may be torch's (``_found_inf_per_device`` is both ``DynamicLossScaler``'s and
  ``GradScaler``'s);
* ``getattr``/``setattr``/``hasattr``/``delattr`` with a private name as a string;
* ``import`` / ``from ... import`` of a private module (``torch.utils._pytree``) or of a
  private name (``from .inference import _check_float``). A package's own private
  modules are its own: a relative import of a private sibling module and of its names
  (``from ._core import _short``, ``from . import _hf``) is not counted.

Each use must be in ``ALLOWED`` with its reason, and each entry of ``ALLOWED`` must still
be used (no stale entries).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mpcourse"

# (file relative to the repository, private name) -> why it is needed
ALLOWED: dict[tuple[str, str], str] = {
    # -- a scaler's skip decision: the one audited reader --------------------------------
    ("mpcourse/scaling.py", "_found_inf_per_device"): (
        "scaling.found_inf, the package's one reader of a scaler's skip decision: torch 2.13 "
        "has no public found-inf signal (a public step(..., return_found_inf=True) is proposed "
        "upstream, pytorch PR #142472)"
    ),
    ("mpcourse/train.py", "_get_scale_async"): (
        "train.train keeps the scale of each step as a device tensor, read once per epoch: "
        "the public get_scale() would synchronise the host on every step"
    ),
    # -- torch kernels and protocols a from-scratch scaler must speak ----------------------
    ("mpcourse/scaling.py", "_amp_foreach_non_finite_check_and_unscale_"): (
        "the kernel GradScaler itself uses; DynamicLossScaler matches it bit for bit "
        "(a readable fused=False path exists next to it)"
    ),
    ("mpcourse/scaling.py", "_step_supports_amp_scaling"): (
        "torch's flag by which an optimizer says it unscales itself (fused Adam): "
        "GradScaler's protocol, read the way GradScaler reads it"
    ),
    ("mpcourse/scaling.py", "_values"): (
        "the values of a sparse gradient, as GradScaler reads them (no public accessor)"
    ),
    # -- chapter 04: master weights --------------------------------------------------------
    ("mpcourse/master.py", "_foreach_copy_"): (
        "one fused copy of all FP32 master weights into the FP16 working weights; "
        "torch has no public foreach copy (a loop of copy_ launches one kernel per tensor)"
    ),
    ("mpcourse/master.py", "_base"): (
        "measure_bytes_per_parameter: a saved-tensor hook must see through a view "
        "(w.t() saved by linear) to the FP16 weight copy it aliases"
    ),
    # -- dispatch-level code: chapters 06 and 09 (no public home in torch) ------------------
    ("mpcourse/autocast.py", "module torch.utils._python_dispatch"): (
        "TorchDispatchMode: records the dtype of every aten op autocast dispatches"
    ),
    ("mpcourse/autocast.py", "module torch.utils._pytree"): (
        "tree_map over an op's nested arguments inside the dispatch mode"
    ),
    ("mpcourse/checks/debug.py", "module torch.utils._python_dispatch"): (
        "the chapter 10 check watches the ops a student's function runs"
    ),
    ("mpcourse/costs.py", "module torch.utils._python_dispatch"): (
        "TorchDispatchMode: counts kernels and bytes per aten op (chapter 09)"
    ),
    ("mpcourse/costs.py", "module torch.utils._pytree"): (
        "tree_map over an op's nested arguments inside the dispatch mode"
    ),
    ("mpcourse/costs.py", "_ops"): "the type of an aten op overload (torch._ops.OpOverload)",
    ("mpcourse/costs.py", "_schema"): (
        "an op's schema: its name and which outputs alias an input (views launch no kernel)"
    ),
    ("mpcourse/autocast_policy.py", "module torch._subclasses.fake_tensor"): (
        "FakeTensor: traces autocast's CUDA policy on a machine without a GPU (chapter 06)"
    ),
    # -- overridden hooks of other libraries, and a module's own classes --------------------
    ("mpcourse/explorer.py", "_repr_mimebundle_"): (
        "IPython's display protocol (public despite the underscore): the bit explorer's panel "
        "adds a static HTML picture to ipywidgets' bundle for pages rendered without a kernel"
    ),
    ("mpcourse/grading.py", "_replace_solution_region"): (
        "nbgrader's ClearSolutions hook, overridden so the stub raises only inside a function "
        "(nbgrader has no public option for it)"
    ),
    ("mpcourse/fp8.py", "_scale"): (
        "FP8Linear's own method, called by its autograd Function _FP8Matmul in the same module"
    ),
    # -- chapters 15-17: libraries' private hooks ------------------------------------------
    ("mpcourse/finetune_memory.py", "_new_buffer"): (
        "torchao's low-bit optimizers build each (quantized) state with _new_buffer; no public "
        "call makes an empty state whose bytes chapter 16 can count"
    ),
    ("mpcourse/frameworks/_harness.py", "_enabled"): (
        "whether a framework's GradScaler (any subclass) is on, read without calling into it"
    ),
    ("mpcourse/frameworks/_harness.py", "_scale"): (
        "whether a framework's GradScaler really scaled a loss: GradScaler creates _scale at "
        "the first scale() and has no public flag for it"
    ),
    ("mpcourse/frameworks/_hf.py", "_reset_state"): (
        "accelerate's process-wide singletons must be reset between two runs in one process"
    ),
    ("mpcourse/nf4.py", "_apply"): (
        "nn.Module._apply, overridden so .to(device) moves the packed NF4 storage "
        "(super()._apply keeps the rest of torch's behaviour)"
    ),
    # -- the standard library ---------------------------------------------------------------
    ("mpcourse/distributed/__main__.py", "_exit"): (
        "os._exit (documented public API despite the name): skips torch's slow interpreter "
        "teardown on each torchrun rank once its results are written"
    ),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> set[str]:
    """Attributes the module assigns (``x._a = ...``) and its module-level names."""
    own = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
           and isinstance(n.ctx, ast.Store)}  # fmt: skip
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            if isinstance(target, ast.Name):
                own.add(target.id)
    return own


def private_uses(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` for every use of someone else's private name in ``path``."""
    tree = ast.parse(path.read_text())
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not mine and node.attr not in own:
                found.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append((node.lineno, node.args[1].value))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0 and (not module or _private(module.split(".")[0])):
                continue  # the package's own private submodules (``from ._core import _x``)
            if any(_private(part) for part in module.split(".")):
                found.append((node.lineno, f"module {module}"))
            found += [(node.lineno, f"import {a.name}") for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"module {a.name}") for a in node.names
                      if any(_private(part) for part in a.name.split("."))]  # fmt: skip
    return found


def _scan() -> dict[tuple[str, str], list[int]]:
    uses: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for line, name in private_uses(path):
            uses.setdefault((rel, name), []).append(line)
    return uses


def test_no_private_access_outside_the_allow_list():
    uses = _scan()
    unexpected = [f"{f}:{min(lines)} {name}" for (f, name), lines in uses.items()
                  if (f, name) not in ALLOWED]  # fmt: skip
    assert not unexpected, (
        "private names of torch or of another module used outside the allow-list "
        f"(use the public API, or add an entry with its reason to ALLOWED): {unexpected}"
    )


def test_every_allow_list_entry_is_still_needed():
    stale = sorted(set(ALLOWED) - set(_scan()))
    assert not stale, f"allow-list entries no longer used (remove them): {stale}"


def test_the_scan_sees_what_it_must_refuse(tmp_path):
    """The scanner itself: each kind of private use is found, own state is not."""
    src = tmp_path / "m.py"
    src.write_text(
        "import torch.utils._pytree\n"
        "from torch._subclasses import fake_tensor\n"
        "from .other import _helper\n"
        "from ._core import _short\n"
        "from . import _hf\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def f(self, other, scaler):\n"
        "        self._theirs_via_self()\n"
        "        other._mine\n"
        "        getattr(scaler, '_flag', False)\n"
        "        return scaler._found_inf_per_device(None), other.__dict__\n"
    )
    assert [name for _, name in private_uses(src)] == [
        "module torch.utils._pytree",
        "module torch._subclasses",
        "import _helper",
        "_flag",
        "_found_inf_per_device",
    ]
