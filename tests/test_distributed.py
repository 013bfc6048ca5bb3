"""Tests for mpcourse.distributed: real 2-rank torchrun launches (gloo on CPU), DDP and FSDP2."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from mpcourse import checks, master
from mpcourse.checks import CheckFailed
from mpcourse.checks.distributed import _reference_bytes, _reference_skips
from mpcourse.distributed import (
    backend_for,
    local_batch,
    parse_run,
    rank_ledger,
    shard_rows,
    train_single,
    validate,
)
from mpcourse.distributed.__main__ import main
from mpcourse.distributed.launch import LaunchError, _alive_rank, launch, load_model

STEPS = 16
RUNS = [
    "ddp:fp32",
    "ddp:amp-bf16",
    "ddp:amp-fp16:outlier=1@2",
    "ddp:fp32:hook=bf16",
    "fsdp2:fp32",
    "fsdp2:amp-bf16:reduce=bf16",
    "fsdp2:amp-fp16:outlier=1@2",
]
HANG = "ddp:fp32:hang=1@1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """One launch: every run in RUNS, then one whose rank 1 hangs; once the last normal run
    has written its results, the test kills rank 1 from outside (SIGKILL). The launch fails,
    the finished runs' results stay readable, and no process may be left behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the single-process reference: tiny tensors, busy machine
    out = tmp_path_factory.mktemp("dist")
    box: dict = {}

    def go() -> None:
        box["r"] = launch([*RUNS, HANG], out, nproc=2, steps=STEPS, timeout=120, check=False)

    thread = threading.Thread(target=go)
    thread.start()
    last = out / parse_run(RUNS[-1]).name
    wanted = [last / "rank0.json", last / "rank1.json", last / "model.pt"]
    deadline = time.monotonic() + 110
    while not all(f.exists() for f in wanted) and thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in sorted(out.glob("pid-rank*"))]
    os.kill(pids[1], signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    box["r"].killed = pids
    yield box["r"]
    torch.set_num_threads(threads)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ddp_and_fsdp2_fp32_match_one_process_on_the_concatenated_batch(runs) -> None:
    ref, _, ref_acc = train_single("fp32", steps=STEPS)
    for run in ("ddp:fp32", "fsdp2:fp32"):
        got = load_model(runs.out_dir, run)
        diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
        assert diff < 1e-5, (run, diff)  # only the order of float32 sums differs
        assert runs.results(run)[0]["test_accuracy"] == pytest.approx(ref_acc, abs=0.01)


def test_amp_runs_reach_fp32_accuracy(runs) -> None:
    fp32 = runs.results("ddp:fp32")[0]["test_accuracy"]
    assert fp32 > 0.8
    for run in ("ddp:amp-bf16", "ddp:amp-fp16:outlier=1@2", "fsdp2:amp-bf16:reduce=bf16"):
        accs = {r["test_accuracy"] for r in runs.results(run)}
        assert len(accs) == 1  # every rank evaluates the same model
        assert abs(accs.pop() - fp32) < 0.03, run


@pytest.mark.parametrize("run", ["ddp:amp-fp16:outlier=1@2", "fsdp2:amp-fp16:outlier=1@2"])
def test_every_rank_takes_the_same_found_inf_decision(runs, run) -> None:
    r0, r1 = (r["log"] for r in runs.results(run))
    assert r1["local_nonfinite"][2] and r1["local_nonfinite"].count(True) == 1
    if run.startswith("ddp"):  # seen before the all-reduce: rank 0's own gradients were fine
        assert not any(r0["local_nonfinite"])
    assert [i for i, s in enumerate(r0["skipped"]) if s] == [2]
    assert r0["skipped"] == r1["skipped"] and r0["scale"] == r1["scale"]
    assert r0["scale"][2] == 2.0**16 and r0["scale"][3] == 2.0**15


def test_comm_hook_halves_bytes_and_error_is_bf16_sized(runs) -> None:
    for r in runs.results("ddp:fp32:hook=bf16"):
        red = r["reduction"]
        assert red["bytes_low"] * 2 == red["bytes_fp32"] == 4 * r["n_params"]
        assert 0 < red["rel_error"] < 2.0**-8


def test_fsdp2_policy_dtypes_and_reduce_error(runs) -> None:
    for r in runs.results("fsdp2:amp-bf16:reduce=bf16"):
        assert r["fsdp2"]["sharded_param"] == "DTensor float32"  # the master weights
        assert r["fsdp2"]["compute_param"].endswith("bfloat16")  # param_dtype
        assert r["fsdp2"]["output_dtype"] == "float32"  # output_dtype
        assert r["fsdp2"]["local_shape"] == [[16, 64], [15, 64]][r["rank"]]  # 31 rows
        red = r["reduction"]
        assert red["bytes_low"] * 2 == red["bytes_fp32"]
        assert 0 < red["rel_error"] < 2.0**-8


def test_torch_grad_scaler_handles_dtensor_grads(runs) -> None:
    probes = [r["scaler_probe"] for r in runs.results("fsdp2:amp-fp16:outlier=1@2")]
    for p in probes:  # inf only in rank 1's shard: DTensor all-reduces found_inf
        assert p["torch.amp.GradScaler"] and p["ShardedGradScaler"]
    assert [p["GradScaler on plain shards"] for p in probes] == [False, True]


def test_ledger_matches_the_tensors_each_rank_holds(runs) -> None:
    for run in RUNS:
        for r in runs.results(run):
            persistent = {k: v for k, v in r["ledger"].items() if "transient" not in k}
            assert persistent == r["bytes_held"], (run, r["rank"])
            if run.startswith("ddp"):
                assert r["bytes_held"]["weights fp32"] == 4 * r["n_params"]


def test_fsdp2_pads_uneven_shards_as_the_ledger_says(runs) -> None:
    # 31 rows -> 16 + 15 real rows, but 16 stored on both ranks; Adam covers real rows only
    h0, h1 = (r["bytes_held"] for r in runs.results("fsdp2:fp32"))
    assert h0["weights fp32"] == h1["weights fp32"] and h0["grads fp32"] == h1["grads fp32"]
    assert h0["optimizer states fp32"] - h1["optimizer states fp32"] == 8 * (64 + 1)
    assert h0["weights fp32"] + h1["weights fp32"] > 4 * runs.results("fsdp2:fp32")[0]["n_params"]


def test_killing_a_rank_fails_the_launch_and_leaves_no_process_behind(runs) -> None:
    assert runs.returncode != 0 and "Signal 9 (SIGKILL) received" in runs.output
    assert runs.pids == runs.killed and len(runs.pids) == 2
    assert not any(_alive_rank(p) for p in runs.pids)
    assert not _alive(runs.launcher_pid)
    assert not (runs.out_dir / parse_run(HANG).name / "rank0.json").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_a_launch_that_times_out_is_killed_with_its_ranks(tmp_path) -> None:
    with pytest.raises(LaunchError, match="timed out after 3 s"):
        launch(["ddp:fp32"], tmp_path, steps=10**6, timeout=3)
    assert _processes_mentioning(str(tmp_path)) == []  # torchrun and every rank it started


@pytest.mark.parametrize(
    ("runs_", "world", "batch", "match"),
    [
        (["fsdp2:amp-fp16:scaler=none"], 2, 64, "fp16 needs loss scaling"),
        (["ddp:amp-bf16:scaler=torch"], 2, 64, "does nothing useful"),
        (["fsdp2:fp32:hook=bf16"], 2, 64, "comm hooks are DDP's"),
        (["ddp:fp32:reduce=bf16"], 2, 64, "reduce= is FSDP2's"),
        (["ddp:fp32"], 3, 64, "cannot be split evenly"),
        (["ddp:fp32"], 128, 64, "cannot be split evenly"),
        (["ddp:fp32:outlier=5@1"], 2, 64, "needs rank < 2"),
        (["zero:fp32"], 2, 64, "strategy must be one of"),
        (["ddp:fp8"], 2, 64, "precision must be one of"),
        (["ddp:fp32:turbo=1"], 2, 64, "unknown option"),
        (["ddp"], 2, 64, "STRATEGY:PRECISION"),
        (["ddp:fp32", "ddp:fp32"], 2, 64, "distinct"),
        ("ddp:fp32", 2, 64, "non-empty list"),
    ],
)
def test_bad_input_fails_before_any_process(tmp_path, runs_, world, batch, match) -> None:
    with pytest.raises(ValueError, match=match):
        validate(runs_, world, batch_size=batch, steps=4)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        launch(runs_, out, nproc=world, batch_size=batch, steps=4)
    assert not out.exists()  # nothing was started, not even the results folder


def test_bad_types_and_entry_point_without_torchrun(monkeypatch, tmp_path) -> None:
    with pytest.raises(TypeError, match="a run is a string"):
        parse_run(3)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        validate(["ddp:fp32"], 0, batch_size=64, steps=1)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit):
        main(["--train", "ddp:fp32", "--out", str(tmp_path)])


def test_backend_is_chosen_in_one_place() -> None:
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == "nccl"
    with pytest.raises(ValueError, match="no collective backend"):
        backend_for("meta")


def test_run_names_round_trip() -> None:
    spec = parse_run("fsdp2:amp-fp16:scaler=sharded,outlier=1@3")
    assert parse_run(spec.as_arg()) == spec
    assert spec.name == "fsdp2-amp-fp16-scaler_sharded-outlier_1at3"
    assert parse_run("ddp:amp-fp16").resolved_scaler == "torch"


def test_local_batches_concatenate_to_the_global_batch() -> None:
    x, y = torch.arange(24.0).view(12, 2), torch.arange(12)
    parts = [local_batch(x, y, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_shard_rows_cover_every_row_once() -> None:
    for rows in range(1, 30):
        for world in range(1, 9):
            parts = [shard_rows(rows, world, r) for r in range(world)]
            assert sum(real for _, real in parts) == rows
            assert {stored for stored, _ in parts} == {math.ceil(rows / world)}
    with pytest.raises(ValueError, match="rank"):
        shard_rows(4, 2, 2)


def test_rank_ledger_ddp_is_chapter_04_ledger_and_fsdp2_shards_it() -> None:
    shapes = [(32, 64), (32,), (10, 32), (10,)]
    n = 2410  # an MLP 64 -> 32 -> 10
    ddp = rank_ledger(shapes, "ddp", "amp-bf16", "adam", world_size=4, rank=1)
    base = master.ledger("amp", "adam")
    assert ddp["weights fp32"] == base["weights fp32"] * n
    assert ddp["optimizer states fp32"] == 8 * n
    assert ddp["autocast weight copies bf16 (transient)"] == 2 * n
    total = sum(
        rank_ledger(shapes, "fsdp2", "fp32", "adam", world_size=4, rank=r)["optimizer states fp32"]
        for r in range(4)
    )
    assert total == 8 * n  # the states are partitioned, nothing lost or doubled
    with pytest.raises(ValueError, match="strategy"):
        rank_ledger(shapes, "zero3", "fp32")
    with pytest.raises(ValueError, match="precision"):
        rank_ledger(shapes, "ddp", "fp8")


def test_checks_accept_the_reference_and_name_mistakes() -> None:
    assert checks.check_skips_across_ranks(_reference_skips)
    assert checks.check_fsdp_bytes(_reference_bytes)
    with pytest.raises(CheckFailed, match="rank 0's own"):
        checks.check_skips_across_ranks(lambda f, s, g: _reference_skips(f[:1], s, g))
    with pytest.raises(CheckFailed, match="DDP"):
        checks.check_fsdp_bytes(lambda shapes, n, r: 16 * sum(math.prod(s) for s in shapes))
    with pytest.raises(CheckFailed, match="padded"):
        checks.check_fsdp_bytes(
            lambda shapes, n, r: (
                16 * sum(shard_rows(s[0], n, r)[1] * math.prod(s[1:]) for s in shapes)
            )
        )
