"""The wire format: parsers reject what PROTOCOL.md forbids, naming the file and the field."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol
from protocol import Feedback, ProtocolError, Request

P = Path("rl_io/mg0003_rq.json")


def make_request(**over) -> Request:
    fields = dict(
        mg_index=3, gop_index=0, mg_in_gop=3, mgs_in_gop=8, gop_frames=64, first_frame=24, frame_count=8,
        frame_types=["INTER"] * 8, temporal_layers=[2, 1, 2, 0, 2, 1, 2, 0], base_qp=35, qp_min=1, qp_max=63,
        fp_bpp=0.08, lookahead_fp_bpp=[0.07, 0.09], gop_bits_spent=30000, gop_bits_budget=80000,
        total_bits_spent=30000, total_bits_budget=160000, target_kbps=120.0, fps=30.0, width=176, height=144,
        total_frames=120, codec="svtav1", session="s1",
    )  # fmt: skip
    fields.update(over)
    return Request(**fields)


def make_feedback(**over) -> Feedback:
    fields = dict(
        mg_index=3, gop_index=0, frame_count=8, bits=9000, qp_used=35, frame_qps=[35] * 8, frame_bits=[1125] * 8,
        mse_y=12.0, mse_u=5.0, mse_v=6.0, psnr_y=37.3, psnr_u=41.1, psnr_v=40.3, psnr_y_frame_mean=37.4,
        ssim_y=0.95, gop_end=0, session="s1",
    )  # fmt: skip
    fields.update(over)
    return Feedback(**fields)


def test_request_round_trip():
    req = make_request()
    assert protocol.parse_request(protocol.to_json(req), P) == req


def test_feedback_round_trip():
    fb = make_feedback()
    assert protocol.parse_feedback(protocol.to_json(fb), P) == fb


def make_first_pass(frames: int = 12, **over) -> protocol.FirstPass:
    cols = dict(
        intra_cost=[9.0] * frames, inter_cost=[3.0] * frames, sr_inter_cost=[4.0] * frames,
        inter_share=[0.8] * frames, motion_share=[0.5] * frames, mv_mean=[2.0] * frames, noise_sigma=[1.5] * frames,
    )  # fmt: skip
    cols.update(over)
    return protocol.FirstPass(**cols)


def test_v2_request_with_first_pass_round_trips():
    req = make_request(first_pass=make_first_pass(), qp_scale_max=255, qp_max=255)
    text = protocol.to_json(req)
    assert '"first_pass":{"intra_cost":[9.0' in text
    assert protocol.parse_request(text, P) == req


def test_first_pass_propagation_is_optional_and_round_trips():
    without = make_request(first_pass=make_first_pass())
    assert "propagation" not in protocol.to_json(without)  # left out, not null
    assert protocol.parse_request(protocol.to_json(without), P).first_pass.propagation is None
    req = make_request(first_pass=make_first_pass(propagation=[2.5 - 0.2 * i for i in range(12)]))
    assert protocol.parse_request(protocol.to_json(req), P) == req
    data = json.loads(protocol.to_json(without))
    data["first_pass"]["propagation"] = None  # an encoder that writes null for "none"
    assert protocol.parse_request(json.dumps(data), P).first_pass.propagation is None


def test_v1_request_takes_the_v2_defaults():
    data = asdict(make_request())
    for name in ("qp_scale_max", "first_pass"):
        del data[name]
    data["version"] = 1
    req = protocol.parse_request(json.dumps(data), P)
    assert (req.version, req.qp_scale_max, req.first_pass) == (1, 63, None)


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(inter_cost=[3.0] * 11), r"'first_pass.inter_cost' has 11 entries, 'first_pass.intra_cost' 12"),
        (dict(inter_share=[0.8] * 11 + [1.5]), r"'first_pass.inter_share\[11\]' is 1.5, outside \[0, 1.0\]"),
        (dict(noise_sigma=[-1.0] * 12), r"'first_pass.noise_sigma\[0\]' is -1.0"),
        (dict(mv_mean=["x"] * 12), r"'first_pass.mv_mean\[0\]' must be a number"),
        (dict(propagation=[1.0] * 13), r"'first_pass.propagation' has 13 entries, 'first_pass.intra_cost' 12"),
        (dict(propagation=[1.0] * 11 + [-0.5]), r"'first_pass.propagation\[11\]' is -0.5, outside \[0, inf\]"),
    ],
)
def test_bad_first_pass_fields_are_named(over, match):
    req = make_request(first_pass=make_first_pass(**over))
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_request(protocol.to_json(req), P)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("frame_bits", [100] * 7 + [True], r"'frame_bits\[7\]' must be an integer"),
        ("frame_bits", [100] * 7 + [2**63], r"'frame_bits\[7\]' must fit a signed 64-bit integer"),
        ("frame_bits", [100] * 7 + [1.5], r"'frame_bits\[7\]' must be an integer"),
        ("frame_qps", [30] * 3 + ["30"] + [30] * 4, r"'frame_qps\[3\]' must be an integer"),
    ],
)
def test_a_bad_list_entry_is_named_by_its_index(field, value, match):
    data = asdict(make_feedback())
    data[field] = value
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_feedback(json.dumps(data), P)


def test_list_entries_are_typed_as_declared():
    """Integer-valued floats in an int list become ints, ints in a float list become floats (fast or slow path)."""
    data = asdict(make_feedback())
    data["frame_bits"] = [float(b) for b in data["frame_bits"]]
    fb = protocol.parse_feedback(json.dumps(data), P)
    assert fb.frame_bits == make_feedback().frame_bits and all(type(b) is int for b in fb.frame_bits)
    req = make_request(first_pass=make_first_pass())
    data = asdict(req)
    data["first_pass"]["intra_cost"] = [int(v) for v in data["first_pass"]["intra_cost"]]
    parsed = protocol.parse_request(json.dumps(data), P)
    assert all(type(v) is float for v in parsed.first_pass.intra_cost)


KEY_START = dict(mg_index=0, mg_in_gop=0, first_frame=0, frame_types=["KEY"] + ["INTER"] * 7,
                 temporal_layers=[0, 2, 1, 2, 0, 2, 1, 2], gop_bits_spent=0, total_bits_spent=0)


def test_key_probe_is_optional_and_round_trips():
    assert protocol.parse_request(protocol.to_json(make_request(**KEY_START)), P).key_probe is None
    probe = protocol.KeyProbe(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5)
    req = make_request(**KEY_START, key_probe=probe)
    text = protocol.to_json(req)
    assert '"key_probe":{"offset":3,"finer_bits":240000' in text
    assert protocol.parse_request(text, P) == req


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(offset=0), r"mg0003_rq.json: field 'key_probe.offset' must be >= 1 \(got 0\)"),
        (dict(finer_bits=0), r"field 'key_probe.finer_bits' must be > 0 \(got 0\)"),
        (dict(coarser_psnr_y=0.0), r"field 'key_probe.coarser_psnr_y' must be in \(0, 100\] dB \(got 0.0\)"),
        (dict(finer_psnr_y=101.0), r"field 'key_probe.finer_psnr_y' must be in \(0, 100\] dB"),
        (dict(coarser_bits="5"), r"field 'key_probe.coarser_bits' must be an integer"),
        (dict(finer_psnr_y=None), r"field 'key_probe.finer_psnr_y' must be a number"),
    ],
)
def test_bad_key_probe_fields_are_named(over, match):
    data = asdict(make_request(**KEY_START))
    data["key_probe"] = dict(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5)
    data["key_probe"].update(over)
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_request(json.dumps(data), P)


def test_the_probes_zero_encode_is_optional_comes_as_a_pair_and_is_checked():
    probe = protocol.KeyProbe(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5,
                              zero_bits=238000, zero_psnr_y=36.4)  # fmt: skip
    req = make_request(**KEY_START, key_probe=probe)
    assert protocol.parse_request(protocol.to_json(req), P) == req
    data = asdict(make_request(**KEY_START))
    base = dict(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5)
    for over, match in [
        (dict(zero_bits=238000), r"fields 'key_probe.zero_bits' and 'key_probe.zero_psnr_y' come together"),
        (dict(zero_bits=0, zero_psnr_y=36.4), r"field 'key_probe.zero_bits' must be > 0 \(got 0\)"),
        (dict(zero_bits=238000, zero_psnr_y=-1.0), r"field 'key_probe.zero_psnr_y' must be in \(0, 100\] dB"),
    ]:
        data["key_probe"] = {**base, **over}
        with pytest.raises(ProtocolError, match=match):
            protocol.parse_request(json.dumps(data), P)


def test_key_probe_on_a_mini_gop_inside_its_gop_is_refused():
    probe = protocol.KeyProbe(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5)
    with pytest.raises(ProtocolError, match=r"'key_probe' is sent with a GOP's first mini-GOP only \(mg_in_gop is 3\)"):
        protocol.parse_request(protocol.to_json(make_request(key_probe=probe)), P)


def test_ramp_probe_rides_on_mini_gops_1_to_5_only_and_its_fields_are_named():
    probe = protocol.KeyProbe(offset=3, finer_bits=240000, finer_psnr_y=36.2, coarser_bits=236000, coarser_psnr_y=36.5)
    req = make_request(ramp_probe=probe)  # mg_in_gop 3
    assert protocol.parse_request(protocol.to_json(req), P) == req
    for mg_in_gop in (0, 6):
        bad = make_request(**({**KEY_START} if mg_in_gop == 0 else {"mg_in_gop": 6}), ramp_probe=probe)
        with pytest.raises(ProtocolError, match=rf"'ramp_probe' is sent with a GOP's mini-GOPs 1..5 only "
                                                rf"\(mg_in_gop is {mg_in_gop}\)"):  # fmt: skip
            protocol.parse_request(protocol.to_json(bad), P)
    data = asdict(req)
    data["ramp_probe"]["coarser_bits"] = 0
    with pytest.raises(ProtocolError, match=r"mg0003_rq.json: field 'ramp_probe.coarser_bits' must be > 0"):
        protocol.parse_request(json.dumps(data), P)


def test_first_pass_shorter_than_the_mini_gop_is_refused():
    req = make_request(first_pass=make_first_pass(frames=4))
    with pytest.raises(ProtocolError, match=r"'first_pass.intra_cost' has 4 entries, fewer than frame_count 8"):
        protocol.parse_request(protocol.to_json(req), P)


def test_first_pass_that_is_not_an_object_is_named():
    data = asdict(make_request())
    data["first_pass"] = [1, 2]
    with pytest.raises(ProtocolError, match=r"field 'first_pass' must be a JSON object"):
        protocol.parse_request(json.dumps(data), P)


def test_missing_field_is_named():
    data = asdict(make_request())
    del data["base_qp"]
    with pytest.raises(ProtocolError, match=r"mg0003_rq.json: missing field 'base_qp'"):
        protocol.parse_request(json.dumps(data), P)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("base_qp", "35", "'base_qp' must be an integer"),
        ("fp_bpp", "high", "'fp_bpp' must be a number"),
        ("fp_bpp", 0, "'fp_bpp' and 'lookahead_fp_bpp' must be > 0"),
        ("lookahead_fp_bpp", [0.07, 0.0], "'fp_bpp' and 'lookahead_fp_bpp' must be > 0"),
        ("frame_types", ["KEY"], "'frame_types' must have frame_count=8"),
        ("base_qp", 70, "'base_qp' 70 is outside"),
        ("frame_types", ["I"] * 8, "KEY or INTER"),
        ("version", 3, "'version' is 3; this program reads versions 1, 2"),
        ("qp_scale_max", 51, "'qp_scale_max' is 51; it must be >= qp_max"),
    ],
)
def test_bad_request_fields_are_named(field, value, match):
    data = asdict(make_request())
    data[field] = value
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_request(json.dumps(data), P)


def test_nan_and_infinity_are_rejected():
    text = protocol.to_json(make_feedback()).replace('"mse_y":12.0', '"mse_y":NaN')
    with pytest.raises(ProtocolError, match="non-finite"):
        protocol.parse_feedback(text, P)


def test_gop_end_must_be_0_or_1():
    with pytest.raises(ProtocolError, match="'gop_end' must be 0 or 1"):
        protocol.parse_feedback(protocol.to_json(make_feedback(gop_end=2)), P)


def test_reply_range_is_enforced_not_clamped():
    assert protocol.parse_reply('{"qp": 63}', P, 1, 63).qp == 63
    with pytest.raises(ProtocolError, match=r"'qp' is 64, outside the allowed range \[1, 63\]"):
        protocol.parse_reply('{"qp": 64}', P, 1, 63)
    with pytest.raises(ProtocolError, match="must be an integer"):
        protocol.parse_reply('{"qp": true}', P)
    with pytest.raises(ProtocolError, match="top level must be a JSON object"):
        protocol.parse_reply("[30]", P)


def test_unknown_fields_are_ignored():
    assert protocol.parse_reply('{"qp": 30, "note": "x"}', P).qp == 30


@given(st.text(max_size=200))
def test_reply_parser_never_crashes_on_garbage(text):
    try:
        reply = protocol.parse_reply(text, P, 0, 63)
    except ProtocolError as exc:
        assert str(P) in str(exc)
    else:
        assert isinstance(reply.qp, int) and 0 <= reply.qp <= 63


@given(
    st.dictionaries(
        st.sampled_from(list(asdict(make_feedback()).keys()) + ["extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=5),
                  st.lists(st.integers(0, 60), max_size=9)),  # fmt: skip
    )
)
def test_feedback_parser_only_raises_protocol_errors(data):
    base = asdict(make_feedback())
    base.update(data)
    text = json.dumps(base)  # may contain NaN: must be rejected, not crash
    try:
        fb = protocol.parse_feedback(text, P)
    except ProtocolError as exc:
        assert str(P) in str(exc)
    else:
        assert fb.gop_end in (0, 1) and fb.bits >= 0


def test_write_atomic_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "mg0000_rq.json"
    big = json.dumps({"x": "y" * 2_000_000})
    seen: list[int] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(len(target.read_text()))

    t = threading.Thread(target=reader)
    t.start()
    # Under load the reader may not run at all during five writes (seen empty on a loaded 2-core VM):
    # keep writing until it has read the file many times, or for at most 10 s.
    writes, deadline = 0, time.monotonic() + 10.0
    while (writes < 5 or len(seen) < 20) and time.monotonic() < deadline:
        protocol.write_atomic(target, big)
        writes += 1
    stop.set()
    t.join()
    assert seen and set(seen) == {len(big)}


def test_clear_protocol_files_leaves_other_files(tmp_path):
    for name in ("mg0000_rq.json", "mg0001_qp.json", "mg0002_fb.json.tmp", "end.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    assert protocol.clear_protocol_files(tmp_path) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_watcher_wakes_on_rename_without_polling(tmp_path):
    with protocol.DirWatcher(tmp_path) as w:
        assert w.uses_inotify  # Linux CI
        target = tmp_path / "mg0000_qp.json"

        def writer():
            time.sleep(0.2)
            protocol.write_atomic(target, '{"qp": 3}')

        threading.Thread(target=writer).start()
        t0 = time.monotonic()
        text = protocol.read_when_present(target, w, time.monotonic() + 5.0)
        assert text == '{"qp": 3}'
        assert 0.15 < time.monotonic() - t0 < 4.5  # woken by the file, well before the 5 s deadline


def test_read_when_present_gives_up_at_deadline_or_dead_peer(tmp_path):
    with protocol.DirWatcher(tmp_path) as w:
        t0 = time.monotonic()
        assert protocol.read_when_present(tmp_path / "nope", w, t0 + 0.3) is None
        assert time.monotonic() - t0 >= 0.3
        t0 = time.monotonic()
        assert protocol.read_when_present(tmp_path / "nope", w, t0 + 10, alive=lambda: False) is None
        assert time.monotonic() - t0 < 9.0  # the dead peer ends the wait, not the 10 s deadline


def test_tmp_name_is_ignored_by_readers(tmp_path):
    (tmp_path / ("mg0000_qp.json" + protocol.TMP_SUFFIX)).write_text('{"qp": 1')  # half-written, never renamed
    with protocol.DirWatcher(tmp_path) as w:
        assert protocol.read_when_present(tmp_path / "mg0000_qp.json", w, time.monotonic() + 0.1) is None
    assert os.path.exists(tmp_path / "mg0000_qp.json.tmp")


def test_reply_echoes_only_the_session_the_encoder_sent(tmp_path):
    import json
    from dataclasses import replace

    import io_runner

    req = protocol.Request(mg_index=3, gop_index=0, mg_in_gop=3, mgs_in_gop=4, gop_frames=16, first_frame=12,
                           frame_count=4, frame_types=["INTER"] * 4, temporal_layers=[0, 2, 1, 2], base_qp=30,
                           qp_min=1, qp_max=63, fp_bpp=0.1, lookahead_fp_bpp=[], gop_bits_spent=0,
                           gop_bits_budget=1000, total_bits_spent=0, total_bits_budget=1000, target_kbps=10.0,
                           fps=30.0, width=16, height=16, total_frames=16)  # fmt: skip
    channel = io_runner.RlIoChannel(tmp_path / "rl", "agent-session", 1.0)
    try:
        channel.write_reply(req, 31)  # the encoder sent no session
        reply = json.loads(protocol.reply_path(tmp_path / "rl", 3).read_text())
        assert reply["qp"] == 31 and reply.get("session") is None
        channel.write_reply(replace(req, mg_index=4, session="enc-1"), 32)
        assert json.loads(protocol.reply_path(tmp_path / "rl", 4).read_text())["session"] == "enc-1"
    finally:
        channel.close()


def test_feedback_written_before_the_next_request_is_taken_first_even_if_it_lands_late(tmp_path):
    """The race: the agent looks for feedback 3 (not there yet), then the encoder writes feedback 3 and request 4,
    then the agent finds request 4. It must take feedback 3 first, or request 4's state would describe mini-GOP 2."""
    import io_runner

    rl = tmp_path / "rl"
    channel = io_runner.RlIoChannel(rl, "s1", 1.0)
    looked = []
    real = channel._read_feedback

    def late(path, mg_index):
        if not looked:  # the first look: nothing yet; the encoder writes both files right after it
            looked.append(path)
            protocol.write_message(protocol.feedback_path(rl, 3), make_feedback())
            protocol.write_message(protocol.request_path(rl, 4), make_request(mg_index=4, mg_in_gop=4, first_frame=32))
            return None
        return real(path, mg_index)

    channel._read_feedback = late
    try:
        first = channel.next_message(4, [3], lambda: True)
        assert isinstance(first, Feedback) and first.mg_index == 3
        second = channel.next_message(4, [], lambda: True)  # the request waited on disk
        assert isinstance(second, Request) and second.mg_index == 4
    finally:
        channel.close()
