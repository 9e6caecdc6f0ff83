"""main.py --help and the README's flag table agree: the same flags, the same defaults, one default each."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from script_run import run_script

import cli

ROOT = Path(__file__).resolve().parent.parent


def readme_flags() -> dict[str, str]:
    """Flag -> default cell of the README's flag table (backticks dropped, '\\|' unescaped)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("### Flags", 1)[1].split("\n### ", 1)[0]
    flags: dict[str, str] = {}
    for line in table.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        names = re.findall(r"`(--[a-z0-9-]+)", cells[0])
        defaults = cells[1].split(", ") if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), line
        for name, default in zip(names, defaults, strict=True):
            flags[name] = default.replace("`", "").replace("\\|", "|")
    return flags


def help_flags() -> dict[str, list[str]]:
    """Flag -> every '(default: X)' its --help line shows."""
    out = {}
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        help_text = (action.help or "").replace("%%", "%")
        out[action.option_strings[0]] = re.findall(r"\(default: (.*?)\)(?=\s|$)", help_text, re.S)
    return out


def test_every_flag_has_help_and_exactly_one_default():
    for action in cli.build_parser()._actions:
        assert action.help, action.option_strings
        assert action.help.count("default") <= 1, action.help
    for flag, defaults in help_flags().items():
        assert len(defaults) == 1, (flag, defaults)


def test_help_and_readme_list_the_same_flags_with_the_same_defaults():
    readme = readme_flags()
    shown = {flag: defaults[0] for flag, defaults in help_flags().items()}
    assert sorted(readme) == sorted(shown)
    for flag, default in readme.items():
        assert shown[flag] == default, flag


def test_help_runs_and_names_every_flag():
    res = run_script(ROOT / "main.py", "--help")
    assert res.returncode == 0, res.stderr
    for flag in readme_flags():
        assert flag in res.stdout
    assert "(default: [])" not in res.stdout and "(default: )" not in res.stdout


def test_every_bench_script_imports_and_shows_its_help():
    """A renamed helper (eval_quality.make_heldout) once broke learning_curve.py's import unseen: run each --help."""
    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "machine_info.py"))
    assert len(scripts) >= 10
    for script in scripts:
        res = run_script(script, "--help", cwd=ROOT)
        assert res.returncode == 0 and "usage" in res.stdout.lower(), f"{script.name}: {res.stderr[-500:]}"


def test_bench_loop_refuses_an_unknown_clip_or_codec_before_any_encode():
    cases = ((["--clips", "qcif"], "--clips: unknown clip 'qcif'"), (["--codecs", "av2"], "unknown codec 'av2'"))
    for args, named in cases:
        res = run_script(ROOT / "bench" / "bench_loop.py", *args)
        assert res.returncode == 2 and named in res.stderr and "Traceback" not in res.stderr
        assert "machine:" not in res.stdout  # nothing ran


def test_bench_scripts_refuse_bad_input_with_a_message_naming_the_flag(tmp_path):
    """Unknown window sets, missing record files and malformed --policy: exit 2, the flag named, no traceback."""
    missing = str(tmp_path / "missing.jsonl")
    cases = [
        (["bench/loso_value.py", "--sweeps", missing], "--sweeps:"),
        (["bench/loso_value.py", "--sweeps", missing, "--judge", "nope"], "--judge: unknown window set 'nope'"),
        (["bench/key_diag.py", "sweeps", "--sets", "train,nope"], "--sets: unknown window set 'nope'"),
        (["bench/key_diag.py", "propagate", "--judge", "fixd"], "--judge: unknown window set 'fixd'"),
        (["bench/key_diag.py", "propagate", "--pool", "data/oracle_x264_seed2.jsonl"], "--pool 'data/oracle_x264_"),
        (["bench/key_diag.py", "propagate", "--pool", f"{missing}:2"], "--pool:"),
        (["bench/loso_value.py", "--sweeps", __file__, "--oracle", __file__, "--lead-sweeps", missing],
         "--lead-sweeps:"),
        (["bench/loso_value.py", "--sweeps", missing, "--policy", "nope"], "--policy: nope does not exist"),
        (["bench/key_ceiling.py", "--sweeps", missing], "--sweeps:"),
        (["bench/key_ceiling.py", "--sweeps", __file__, "--ramp", missing], "--ramp:"),
        (["bench/learning_curve.py", missing, "--out", str(tmp_path / "lc")], "is not a file"),
        (["bench/eval_quality.py", "--out", str(tmp_path / "eq"), "--policy", "agent"], "--policy 'agent'"),
        (["bench/eval_quality.py", "--out", str(tmp_path / "eq"), "--splits", "test,test3"], "unknown split"),
        (["bench/eval_quality.py", "--out", str(tmp_path / "eq"), "--keyint", "x"], "--keyint: invalid int value"),
        (["bench/eval_quality.py", "--out", str(tmp_path / "eq"), "--bpp", "0.1,-2"], "--bpp '0.1,-2'"),
        (["bench/pool_eval.py", f"agent={tmp_path / 'nowhere'}"], "no bdrate.csv in"),
        (["make_policy.py", "--windows", "train,nope", "--out", str(tmp_path / "p.pt")], "unknown window set 'nope'"),
        (["make_policy.py", "--key-curvature", "gop_lft", "--out", str(tmp_path / "p.pt")], "unknown state feature"),
        (["bench/finetune_sac.py", "--out", str(tmp_path / "ft"), "--windows", "train[x]"], "--windows: 'train[x]'"),
        (["bench/oracle_transfer.py", "--data", missing], "--data:"),
        (["bench/oracle_transfer.py", "--data", missing, "--factors", "0.9,x"], "--factors: '0.9,x'"),
        (["bench/oracle_transfer.py", "--data", missing, "--windows", "train,nope"], "unknown window set 'nope'"),
        (["bench/oracle_transfer.py"], "--data (oracle records) or --report"),
        (["bench/oracle_transfer.py", "--report", str(tmp_path), "--inputs", str(tmp_path)], "--report: [Errno 2]"),
    ]
    for args, named in cases:
        res = run_script(ROOT / args[0], *args[1:], cwd=ROOT)
        assert res.returncode == 2 and named in res.stderr and "Traceback" not in res.stderr, (args, res.stderr[-300:])
    assert not (tmp_path / "lc").exists() and not (tmp_path / "eq").exists()  # refused before any work


def test_evaluate_help_gives_each_flag_one_default():
    """evaluate.py's formatter appends "(default: X)" only where the help does not say it already."""
    import evaluate

    for oracle_mode in (False, True):
        parser = evaluate.build_parser(oracle_mode)
        formatter = parser._get_formatter()
        for action in parser._actions:
            shown = formatter._expand_help(action) if action.help else ""
            assert shown.count("(default") <= 1, (action.option_strings, shown)
        text = " ".join(parser.format_help().split())
        assert "(default: 0.04,0.08,0.16,0.32)" in text and "(default: None)" not in text.split("--bpp")[1][:80]
