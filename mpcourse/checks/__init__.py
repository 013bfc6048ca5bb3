"""Exercise checks for every chapter: ``checks.<name>(answer)``.

Each check prints ``Correct: ...`` and returns True, or raises
:class:`CheckFailed` (a subclass of AssertionError) that says in plain words
what is wrong, on which input, and what was expected.

Chapter modules register their checks here by name (one import line each); the
last line of this file puts every ``check_*`` behind the strict/student switch of
:mod:`mpcourse.checks._core` (one-line reports; in the student version a failed
check prints instead of raising, so Run All reaches the end).
"""

from ._core import CheckFailed, NotAnswered, NotPassed, student_mode, wrap_checks
from .autocast import check_autocast_categories, check_fp32_function, check_safe_bce
from .bench import (
    check_arithmetic_intensity,
    check_linear_saved_bytes,
    check_pad_to_multiple,
    check_padding_overhead,
)
from .debug import check_broken_loop, check_rms_norm, check_safe_inference
from .distributed import check_fsdp_bytes, check_policy_dtypes, check_skips_across_ranks
from .finetune import check_ema_moves, check_nf4_codes, check_swallowed
from .formats import (
    check_decode,
    check_e4m3_max,
    check_e4m3fnuz_max,
    check_format_limits,
    check_fp16_max,
    check_round_toy,
)
from .fp8 import (
    check_bf16_smallest_update,
    check_delayed_scales,
    check_fp8_scale,
    check_splitk_bf16_matmul,
)
from .frameworks import check_fp32_reason, check_predicted_row
from .inference import check_outlier_matmul, check_per_channel_scale, check_sensitive_layer
from .keras_mp import check_float32_head, check_keras_scale
from .master import check_bytes_per_parameter, check_master_step, check_working_after
from .mx import check_e8m0_scale, check_flushed, check_stochastic_round
from .numerics import (
    check_adam_eps,
    check_adam_survivors,
    check_lost_band,
    check_lost_fraction,
    check_smallest_scale,
    check_stable_softmax,
)
from .scaling import (
    check_scale_trajectory,
    check_static_scale,
    check_update_scale,
)
from .setup import check_amp_choice, check_nbytes
from .train import check_amp_bug_hunt, check_plain_amp_loop, check_resume
from .transformer import check_fp16_scores, check_masked_attention, check_transformer_step

# Every check imported above is public: a new chapter adds one import line, nothing more.
__all__ = ["CheckFailed", "NotAnswered", "NotPassed", "student_mode"] + sorted(
    name for name in dict(globals()) if name.startswith("check_")
)

wrap_checks(globals())  # keep last: wraps every check_* imported above
