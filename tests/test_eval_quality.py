"""bench/eval_quality.py: draws of rates (--rate-draws) and the table of each clip's mean over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import eval_quality
from eval_runs import DEFAULT_BPP


def _report(folder: Path, bdrates: dict[str, float]) -> Path:
    """A report folder with only the bdrate.csv rows print_draws_table reads (evaluate.py writes the real ones)."""
    folder.mkdir(parents=True)
    clips = ",".join(bdrates)
    mean = sum(bdrates.values()) / len(bdrates)
    values = ",".join(str(v) for v in bdrates.values())
    (folder / "bdrate.csv").write_text(f"metric,pair,{clips},mean\npsnr_y,agent vs baseline,{values},{mean}\n"
                                       f"ssim_y,agent vs baseline,{values},{mean}\n")  # fmt: skip
    return folder


def test_scaled_bpp_multiplies_the_given_or_default_targets():
    assert eval_quality.scaled_bpp("0.1,0.2", 1.03) == "0.103,0.206"
    assert eval_quality.scaled_bpp(None, 0.5) == ",".join(f"{v / 2:g}" for v in DEFAULT_BPP)
    assert eval_quality.draw_folder(Path("o"), "heldout", "C", 0.97) == Path("o/heldout_C_x0.97")
    assert eval_quality.draw_folder(Path("o"), "heldout", "C", None) == Path("o/heldout_C")


def test_draws_table_gives_each_clips_mean_range_and_worst(tmp_path, capsys):
    draws = [{"a": -1.0, "b": +0.9}, {"a": -2.0, "b": -1.5}, {"a": -3.0, "b": -0.3}]
    folders = [_report(tmp_path / f"d{i}", d) for i, d in enumerate(draws)]
    eval_quality.print_draws_table("heldout", {"P": folders}, [0.97, 1.0, 1.03])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| P |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "-2.00 [-3.00 … -1.00]"
    assert cells[2] == "-0.30 [-1.50 … +0.90]"
    assert cells[3] == "**-1.15**"  # the mean of the clips' means
    assert cells[4] == "-0.30"  # the worst clip by its mean, not by its worst draw (+0.90)
    assert cells[5] == "-0.05 / -1.75 / -1.65"


@pytest.mark.parametrize("flag,bad", [*(("--rate-draws", v) for v in ("0.97,x", "1,-0.5", "1,1", "")),
                                      *(("--layer-offset-scale", v) for v in ("-1", "nan", "x"))])
def test_bad_flags_refused_before_any_encode(tmp_path, flag, bad, monkeypatch, capsys):
    encodes: list[list[str]] = []
    monkeypatch.setattr(eval_quality, "run_evaluate", lambda args: encodes.append(args) or 0.0)
    monkeypatch.setattr("sys.argv", ["eval_quality.py", "--out", str(tmp_path / "eq"), flag, bad])
    with pytest.raises(SystemExit) as exc:
        eval_quality.main()
    assert exc.value.code == 2 and flag in capsys.readouterr().err and not encodes
