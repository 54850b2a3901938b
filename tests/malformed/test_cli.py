"""Malformed command lines: each answers with exit code 2 and one message that names the value,
what is allowed and the fix, without a traceback, within 2 seconds.

``{d}`` stands for a folder of prepared files (``files.py``). Each case lists fragments its
message must hold: the value given, and what to give instead.
"""

from __future__ import annotations

import shlex
import time

import pytest

from memfit.cli import main

M = "{d}/model.py:build"
IDS = "input_ids=int64[2,16]<8000"

CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # estimate: the model
    ("zoo-name", "estimate gtp2", ("'gtp2'", "known models", "Did you mean 'gpt2'", "memfit zoo")),
    ("zoo-empty", "estimate ''", ("''", "known models", "file.py:builder")),
    ("file-no-input", f"estimate {M}", ("--input", "input_ids=int64")),
    ("file-missing", f"estimate {{d}}/nope.py:build --input {IDS}", ("nope.py", "does not exist")),
    ("file-no-fn", f"estimate {{d}}/model.py:nope --input {IDS}", ("'nope'", "build")),
    ("file-syntax", f"estimate {{d}}/broken.py:build --input {IDS}", ("broken.py", "SyntaxError")),
    (
        "file-not-callable",
        f"estimate {{d}}/model.py:not_callable --input {IDS}",
        ("not_callable", "callable"),
    ),
    (
        "builder-raises",
        f"estimate {{d}}/model.py:raises --input {IDS}",
        ("raises()", "no weights here", "fake tensors"),
    ),
    (
        "builder-not-module",
        f"estimate {{d}}/model.py:not_a_module --input {IDS}",
        ("not_a_module()", "int", "nn.Module"),
    ),
    (
        "loss-missing",
        f"estimate {M} --input {IDS} --loss-fn {{d}}/nope.py:f",
        ("nope.py", "does not exist"),
    ),
    ("loss-no-fn", f"estimate {M} --input {IDS} --loss-fn {{d}}/model.py:nope", ("'nope'", "loss")),
    (
        "forward-not-callable",
        f"estimate {M} --input {IDS} --forward {{d}}/model.py:not_callable",
        ("not_callable", "callable"),
    ),
    # estimate: the input spec
    (
        "spec-shape",
        f"estimate {M} --input 'input_ids=int64[2,x]'",
        ("int64[2,x]", "integers", "name=dtype"),
    ),
    (
        "spec-dtype",
        f"estimate {M} --input 'input_ids=float99[2,16]'",
        ("float99", "allowed", "int64"),
    ),
    (
        "spec-zero-dim",
        f"estimate {M} --input 'input_ids=int64[0,16]'",
        ("int64[0,16]", "dimension < 1", "name=dtype"),
    ),
    (
        "spec-bound-float",
        f"estimate {M} --input 'x=float32[2,16]<5'",
        ("<5", "integer inputs only"),
    ),
    ("spec-bound-zero", f"estimate {M} --input 'input_ids=int64[2,16]<0'", ("<0", ">= 1")),
    (
        "spec-mixed",
        f"estimate {M} --input 'a=int64[2,16] int64[2,16]'",
        ("mixes named and unnamed", "name all"),
    ),
    ("spec-empty", f"estimate {M} --input ''", ("''", "empty", "name=dtype")),
    (
        "spec-parens",
        f"estimate {M} --input 'input_ids=int64(2,16)'",
        ("int64(2,16)", "malformed", "name=dtype"),
    ),
    ("spec-brackets", f"estimate {M} --input 'input_ids=int64[2,16'", ("int64[2,16", "malformed")),
    (
        "vocab",
        f"estimate {M} --input 'input_ids=int64[2,16]<50257'",
        ("<50257", "'embed' has 8000 rows", "<8000"),
    ),
    (
        "vocab-labels",
        f"estimate {M} --input 'input_ids=int64[2,16]<8000 labels=int64[2,16]<9000'",
        ("'labels'", "<9000", "8000 rows"),
    ),
    (
        "positions",
        f"estimate {M} --input 'input_ids=int64[2,4096]<8000'",
        ("4096 tokens", "'pos' holds 512 positions", "at most 512"),
    ),
    (
        "positions-unnamed",
        f"estimate {M} --input 'int64[2,600]<8000'",
        ("600 tokens", "512 positions"),
    ),
    # estimate: settings
    ("device", "estimate gpt2 --device h300", ("'h300'", "known devices", "memfit devices")),
    ("device-empty", "estimate gpt2 --device ''", ("''", "known devices")),
    ("precision", "estimate gpt2 --precision fp8", ("'fp8'", "allowed", "bf16-mixed")),
    ("precision-typo", "estimate gpt2 --precision bf16mixed", ("'bf16mixed'", "bf16-mixed")),
    ("optimizer", "estimate gpt2 --optimizer lion", ("'lion'", "adamw", "factory")),
    ("optimizer-empty", "estimate gpt2 --optimizer ''", ("''", "adamw")),
    ("batch-zero", "estimate gpt2 --batch-size 0", ("batch_size=0", "at least 1")),
    ("batch-negative", "estimate gpt2 --batch-size -3", ("batch_size=-3", "at least 1")),
    ("batch-word", "estimate gpt2 --batch-size eight", ("'eight'", "integer")),
    ("batch-float", "estimate gpt2 --batch-size 2.5", ("'2.5'", "integer")),
    ("seq-zero", "estimate gpt2 --seq-len 0", ("seq_len=0", "at least 1")),
    (
        "seq-long",
        "estimate gpt2 --seq-len 99999",
        ("seq_len=99999", "1024 positions", "seq_len=1024"),
    ),
    ("seq-long-llama", "estimate llama-1b --seq-len 4096", ("seq_len=4096", "2048")),
    ("format", "estimate gpt2 --format xml", ("'xml'", "table", "json")),
    ("budget-bare", "estimate gpt2 --budget 16", ("'16'", "'16GiB'", "0.8")),
    ("budget-decimal", "estimate gpt2 --budget 1.5", ("'1.5'", "'1.5GiB'", "fraction")),
    ("budget-nan", "estimate gpt2 --budget nan", ("'nan'", "24GiB")),
    ("budget-negative", "estimate gpt2 --budget -4GiB", ("'-4GiB'", "positive")),
    ("budget-unit", "estimate gpt2 --budget 16XB", ("'16XB'", "unknown unit", "GiB")),
    ("budget-zero", "estimate gpt2 --budget 0", ("'0'", "positive")),
    (
        "budget-huge",
        "estimate gpt2 --budget 200GiB",
        ("200.00 GiB", "more than h100-80gb", "smaller budget"),
    ),
    ("budget-tiny", "estimate gpt2 --budget 16B", ("'16B'", "'16GiB'", "fraction")),
    ("budget-words", "estimate gpt2 --budget lots", ("'lots'", "24GiB")),
    ("unknown-option", "estimate gpt2 --batchsize 4", ("--batchsize", "--batch-size")),
    ("unknown-command", "estimat gpt2", ("estimat", "estimate")),
    ("no-model", "estimate", ("MODEL",)),
    # plan
    ("plan-no-budget", "plan gpt2", ("--budget",)),
    ("plan-budget-bare", "plan gpt2 --budget 16", ("'16'", "'16GiB'", "0.8")),
    ("plan-budget-decimal", "plan gpt2 --budget 1.5", ("'1.5'", "'1.5GiB'")),
    ("plan-budget-nan", "plan gpt2 --budget NaN", ("'NaN'", "24GiB")),
    ("plan-budget-inf", "plan gpt2 --budget inf", ("'inf'", "24GiB")),
    ("plan-budget-huge", "plan gpt2 --budget 2TiB", ("2.00 TiB", "more than h100-80gb")),
    (
        "plan-budget-fraction-device",
        "plan gpt2 --budget 0.5 --device h999",
        ("'h999'", "known devices"),
    ),
    (
        "plan-allow-unknown",
        "plan gpt2 --budget 4GiB --allow checkpointing",
        ("checkpointing", "checkpoint", "chooses from"),
    ),
    (
        "plan-allow-mixed",
        "plan gpt2 --budget 4GiB --allow mixed_precision",
        ("mixed_precision", "chooses from"),
    ),
    ("plan-allow-empty", "plan gpt2 --budget 4GiB --allow ,", ("','", "names no technique")),
    (
        "plan-out-dir",
        "plan gpt2 --budget 16GiB --out {d}/missing/plan.json",
        ("missing/plan.json", "does not exist", "mkdir"),
    ),
    (
        "plan-out-folder",
        "plan gpt2 --budget 16GiB --out {d}/adir",
        ("adir", "is a folder", "file name"),
    ),
    ("plan-out-empty", "plan gpt2 --budget 16GiB --out ''", ("--out", "empty", "file name")),
    ("plan-precision", "plan gpt2 --budget 16GiB --precision fp4", ("'fp4'", "allowed")),
    ("plan-optimizer", "plan gpt2 --budget 16GiB --optimizer adafactor", ("'adafactor'", "adamw")),
    (
        "plan-vocab",
        f"plan {M} --input 'input_ids=int64[2,16]<50257' --budget 1GiB",
        ("<50257", "8000 rows"),
    ),
    # report
    ("report-nothing", "report", ("nothing to report on", "--snapshot")),
    ("report-zoo", "report gtp2", ("'gtp2'", "known models")),
    ("report-notjson", "report {d}/notjson.json", ("notjson.json", "not JSON", "--format json")),
    ("report-other", "report {d}/other.json", ("not a memfit profile or plan", "memfit estimate")),
    ("report-list", "report {d}/list.json", ("not a memfit profile or plan",)),
    ("report-empty", "report {d}/empty.json", ("not a memfit profile or plan", "--out plan.json")),
    (
        "report-badtype",
        "report {d}/profile_badtype.json",
        ("'peak_allocated'", "'a lot'", "whole number of bytes"),
    ),
    ("report-negative", "report {d}/profile_negative.json", ("'peak_reserved'", "-5", "0 or more")),
    ("report-v2", "report {d}/profile_v2.json", ("schema_version 2", "version 1", "Re-create")),
    ("report-category", "report {d}/profile_category.json", ("'weights'", "param, buffer, grad")),
    ("report-phase", "report {d}/profile_phase.json", ("'warmup'", "forward, backward")),
    ("report-extra", "report {d}/profile_extra.json", ("['gpu']", "known:")),
    ("report-float", "report {d}/profile_float.json", ("'device_memory'", "1.5", "whole number")),
    ("report-bool", "report {d}/profile_bool.json", ("'peak_allocated'", "True", "whole number")),
    ("report-warnings", "report {d}/profile_warnings.json", ("'warnings'", "'none'", "a list")),
    ("report-modules", "report {d}/profile_modules.json", ("module 0", "'fqn'", "a string")),
    (
        "report-plan-technique",
        "report {d}/plan_technique.json",
        ("'offload_everything'", "known:", "checkpoint"),
    ),
    ("report-plan-setting", "report {d}/plan_setting.json", ("micro_batch", "['k']", "takes: n")),
    ("report-plan-budget", "report {d}/plan_budget.json", ("'budget'", "'16GiB'", "whole number")),
    (
        "report-plan-frontier",
        "report {d}/plan_frontier.json",
        ("frontier point 0", "'peak_reserved'", "'big'"),
    ),
    ("report-missing", "report {d}/nope.json", ("nope.json", "does not exist")),
    (
        "report-out-dir",
        "report {d}/profile.json --out {d}/missing/r.html",
        ("missing/r.html", "does not exist", "mkdir"),
    ),
    ("report-out-folder", "report {d}/profile.json --out {d}/adir", ("adir", "is a folder")),
    (
        "report-png-file",
        "report {d}/profile.json --out {d}/r.html --png {d}/afile.png",
        ("afile.png", "is a file", "folder"),
    ),
    (
        "report-png-under-file",
        "report {d}/profile.json --out {d}/r.html --png {d}/afile.png/figs",
        ("afile.png", "is a file"),
    ),
    (
        "report-zoo-out-dir",
        "report gpt2 --out {d}/missing/r.html",
        ("missing/r.html", "does not exist"),
    ),
    (
        "report-budget-bare",
        "report {d}/profile.json --out {d}/r.html --budget 16",
        ("'16'", "'16GiB'"),
    ),
    ("report-zoo-budget-bare", "report gpt2 --out {d}/r.html --budget 16", ("'16'", "'16GiB'")),
    (
        "report-frontier-missing",
        "report {d}/profile.json --out {d}/r.html --frontier {d}/nope.json",
        ("nope.json", "not a readable JSON file", "plan points"),
    ),
    (
        "report-frontier-notlist",
        "report {d}/profile.json --out {d}/r.html --frontier {d}/frontier_notlist.json",
        ("frontier_notlist.json", "list of plan points", "peak_reserved"),
    ),
    (
        "report-frontier-point",
        "report {d}/profile.json --out {d}/r.html --frontier {d}/frontier_point.json",
        ("item 0", "'peak_reserved'", "label"),
    ),
    ("report-format", "report gpt2 --format yaml", ("'yaml'", "table", "json")),
    ("report-device", "report gpt2 --device h300", ("'h300'", "known devices")),
    (
        "snap-missing",
        "report --snapshot {d}/nope.pickle",
        ("nope.pickle", "does not exist", "_record_memory_history"),
    ),
    (
        "snap-garbage",
        "report --snapshot {d}/snap_garbage.pickle",
        ("snap_garbage.pickle", "not a readable memory snapshot", "_dump_snapshot"),
    ),
    (
        "snap-evil",
        "report --snapshot {d}/snap_evil.pickle",
        ("snap_evil.pickle", "os.system", "refuses"),
    ),
    (
        "snap-list",
        "report --snapshot {d}/snap_list.pickle",
        ("snap_list.pickle", "not a memory snapshot", "'segments'"),
    ),
    (
        "snap-nokeys",
        "report --snapshot {d}/snap_nokeys.pickle",
        ("snap_nokeys.pickle", "'device_traces'"),
    ),
    (
        "snap-empty",
        "report --snapshot {d}/snap_empty.pickle",
        ("no allocation history", "_record_memory_history"),
    ),
    (
        "snap-negative",
        "report --snapshot {d}/snap_negative.pickle",
        ("device_traces[0][1]", "size -5", "take the snapshot again"),
    ),
    ("snap-nokey", "report --snapshot {d}/snap_nokey.pickle", ("device_traces[0][1]", "no 'addr'")),
    (
        "snap-addr",
        "report --snapshot {d}/snap_addr.pickle",
        ("device_traces[0][1]", "'0x10'", "whole number"),
    ),
    (
        "snap-action",
        "report --snapshot {d}/snap_action.pickle",
        ("device_traces[0][1]", "no 'action'"),
    ),
    ("snap-segment", "report --snapshot {d}/snap_segment.pickle", ("segments[0]", "total_size -1")),
    (
        "snap-blocks",
        "report --snapshot {d}/snap_blocks.pickle",
        ("segments[0]['blocks']", "not a list"),
    ),
    (
        "snap-device-index",
        "report --snapshot {d}/snap_good.pickle --device-index 5 --out {d}/r.html",
        ("device 5", "[0]", "--device-index"),
    ),
    (
        "snap-device",
        "report --snapshot {d}/snap_good.pickle --device h300 --out {d}/r.html",
        ("'h300'", "known devices"),
    ),
    (
        "snap-out-dir",
        "report --snapshot {d}/snap_good.pickle --out {d}/missing/r.html",
        ("missing/r.html", "does not exist"),
    ),
    # compare
    ("compare-one", "compare {d}/profile.json", ("two runs", "got 1", "before.json after.json")),
    ("compare-three", "compare {d}/profile.json {d}/profile.json {d}/profile.json", ("got 3",)),
    (
        "compare-missing",
        "compare {d}/nope.json {d}/profile.json",
        ("nope.json", "does not exist", "memfit estimate"),
    ),
    (
        "compare-other",
        "compare {d}/other.json {d}/profile.json",
        ("not a memfit profile or plan", "memfit estimate"),
    ),
    (
        "compare-notjson",
        "compare {d}/profile.json {d}/notjson.json",
        ("notjson.json", "not JSON", "--format json"),
    ),
    (
        "compare-badtype",
        "compare {d}/profile.json {d}/profile_badtype.json",
        ("'peak_allocated'", "'a lot'"),
    ),
    ("compare-top", "compare {d}/profile.json {d}/profile.json --top 0", ("--top 0", "1 or more")),
    (
        "compare-top-word",
        "compare {d}/profile.json {d}/profile.json --top many",
        ("'many'", "integer"),
    ),
    (
        "compare-out-dir",
        "compare {d}/profile.json {d}/profile.json --out {d}/missing/c.html",
        ("missing/c.html", "does not exist"),
    ),
    (
        "compare-png-file",
        "compare {d}/profile.json {d}/profile.json --out {d}/c.html --png {d}/afile.png",
        ("afile.png", "is a file"),
    ),
    (
        "compare-snap-negative",
        "compare {d}/snap_negative.pickle {d}/profile.json",
        ("device_traces[0][1]", "size -5"),
    ),
    # the listing commands
    ("devices-format", "devices --format csv", ("'csv'", "table", "json")),
    ("zoo-format", "zoo --format csv", ("'csv'", "table", "json")),
    ("zoo-extra", "zoo gpt2", ("unexpected extra argument", "gpt2")),
    ("calibrate-format", "calibrate --format xml", ("'xml'", "table")),
]


@pytest.mark.parametrize(("argv", "must"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_command_line_says_what_to_do(argv, must, files, capsys) -> None:
    args = [a.replace("{d}", str(files)) for a in shlex.split(argv)]
    started = time.perf_counter()
    code = main(args)
    took = time.perf_counter() - started
    captured = capsys.readouterr()
    message = captured.err
    assert code == 2, (code, captured.out[-500:], message)
    assert "Traceback" not in message + captured.out
    for fragment in must:
        assert fragment.replace("{d}", str(files)) in message, (fragment, message)
    assert took < 2.0, f"{took:.2f} s"


def test_the_table_is_long() -> None:
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)
