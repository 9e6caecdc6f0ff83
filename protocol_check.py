"""Conformance kit: runs an encoder through a scripted agent and reports which PROTOCOL.md rules it breaks.

    python -m protocol_check [--encoder "CMD"] [--input CLIP] [--frames N] [--bitrate KBPS]
                             [--videos "ARGS"] [--encoder-rl-args T] [--timeout S] [--keep DIR]

The encoder is started the way main.py starts it: `CMD` split like a shell, then the video's
arguments (`--videos`, '|'-separated as in main.py; default `--input CLIP --frames N --bitrate
KBPS`), then the protocol arguments (`--encoder-rl-args`, default `--rl-dir|{rl_dir}|--rl-session|
{session}`). A `--pass 2 --stat-in F` video whose F is missing gets main.py's pass-1 run first.
The scripted agent answers a varied sequence of QPs (the encoder's base QP, qp_min, qp_max, base
± 3) and checks every file against the rules below; protocol.py's parsers are the field checks.

Output: one line per rule, PASS / FAIL (with the first offending file and field and how many files
broke it) / "not reached" (the run ended before the rule could be checked). Exit 0 iff every rule
passes, 1 if any fails or is not reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import encoder_proc
import protocol
from protocol import End, Feedback, ProtocolError, Request

# rule name -> what it requires (PROTOCOL.md section)
RULES: dict[str, str] = {
    "files": "every protocol file is a regular file <= 256 KiB of UTF-8 JSON (an object, no NaN), renamed into "
    "place (§2)",
    "request": "requests: every field present, of its type, in its range (§4.1)",
    "request_index": "mgNNNN_rq.json holds mg_index N; requests come as 0, 1, 2, ... (§2, §3)",
    "gop_sequence": "requests walk each GOP: mg_in_gop 0 .. mgs_in_gop-1, then gop_index + 1; first_frame "
    "contiguous; total_frames fixed; frame_count summed over a GOP = gop_frames (§4.1)",
    "feedback": "feedback: every field present, of its type, in its range (§4.3)",
    "feedback_index": "mgNNNN_fb.json holds mg_index N of a requested mini-GOP; feedback comes in order (§2, §3)",
    "lengths": "per-frame lists have frame_count entries; frame_bits sum to bits (§4.1, §4.3)",
    "matches_request": "feedback's gop_index and frame_count are its request's (§4.3)",
    "qp_used": "qp_used is the reply's qp (§4.3)",
    "gop_end": "gop_end is 1 exactly on a GOP's last mini-GOP (or the encode's) (§4.3)",
    "propagation": "first_pass.propagation, if sent, is in every request that has first_pass and is 0 on each "
    "GOP's last frame (§4.1.1)",
    "session": "every file carries the session given with the session flag, \"\" if none (§1)",
    "end": "end.json after the last feedback, status ok, mini_gops / frames / bits add up (§4.4)",
    "exit": "the encoder exits 0 within 10 s of end.json ok (§4.4)",
    "progress": "no wait for the encoder's next file longer than --timeout (§5)",
    "no_stray": "no other protocol file is left: no temporary, no file of a mini-GOP never requested (§2)",
}
# Parser messages that are about the file itself, not a field.
_FILE_ERRORS = ("not valid JSON", "not valid UTF-8", "symbolic link", "not a regular file", "protocol's limit",
                "top level must be")  # fmt: skip
_LIST_FIELDS = ("frame_bits", "frame_qps", "frame_types", "temporal_layers")
# check_feedback_matches's field -> rule
_MATCH_RULES = {"mg_index": "feedback_index", "gop_index": "matches_request", "frame_count": "matches_request",
                "qp_used": "qp_used", "gop_end": "gop_end"}  # fmt: skip
# The scripted answers, cycled over the mini-GOPs: (name, qp from the request)
SCRIPT: tuple[tuple[str, Callable[[Request], int]], ...] = (
    ("base", lambda r: r.base_qp),
    ("qp_min", lambda r: r.qp_min),
    ("qp_max", lambda r: r.qp_max),
    ("base+3", lambda r: min(r.base_qp + 3, r.qp_max)),
    ("base-3", lambda r: max(r.base_qp - 3, r.qp_min)),
)
EXIT_WAIT_S = 10.0
PROPAGATION_TOL = 1e-6  # log2 units: an encoder's float32 arithmetic gives 0 to about 1e-7


@dataclass
class RuleResult:
    """What the run found for one rule."""

    checked: int = 0  # files (or events) the rule was applied to
    failures: int = 0
    first: str = ""  # the first failure: file and field

    @property
    def verdict(self) -> str:
        if self.failures:
            return "FAIL"
        return "PASS" if self.checked else "not reached"


@dataclass
class Report:
    """The run's results per rule, and what happened."""

    command: list[str]
    rules: dict[str, RuleResult] = field(default_factory=lambda: {name: RuleResult() for name in RULES})
    replies: list[int] = field(default_factory=list)
    feedback: int = 0
    end_status: str = "none"
    exit_code: int | None = None

    @property
    def clean(self) -> bool:
        return all(r.verdict == "PASS" for r in self.rules.values())

    def check(self, rule: str, ok: bool, where: Path | str = "", why: str = "") -> bool:
        """Applies `rule` once; a failure is recorded (the first one with its file and reason)."""
        res = self.rules[rule]
        res.checked += 1
        if not ok:
            res.failures += 1
            if not res.first:
                res.first = f"{where}: {why}" if where else why
        return ok

    def table(self) -> str:
        width = max(map(len, RULES))
        lines = [f"{'rule':<{width}}  result       first offence (files that broke it)", "-" * 100]
        for name, res in self.rules.items():
            note = f"{res.first} ({res.failures})" if res.failures else RULES[name]
            lines.append(f"{name:<{width}}  {res.verdict:<11}  {note}")
        return "\n".join(lines)


def rule_of(exc: ProtocolError, kind: str) -> str:
    """The rule a parser's error belongs to: the file itself, lengths and sums, session, else `kind`."""
    text = str(exc)
    if any(s in text for s in _FILE_ERRORS):
        return "files"
    m = re.search(r"field '(\w+)", text)
    name = m.group(1) if m else ""
    if "the sum of" in text or (name in _LIST_FIELDS and "entries" in text):
        return "lengths"
    return "session" if name == "session" else kind


def reason(exc: Exception, path: Path) -> str:
    """A parser message without the path it starts with (the report names the file)."""
    return str(exc).removeprefix(f"{path}: ")


class Checker:
    """The scripted agent: reads every file the encoder writes, checks it, answers requests."""

    def __init__(self, rl_dir: Path, session: str, timeout_s: float, report: Report) -> None:
        self.rl_dir = rl_dir
        self.session = session  # what every file must carry
        self.timeout_s = timeout_s
        self.report = report
        self.requests: dict[int, Request] = {}
        self.qps: dict[int, int] = {}
        self.feedback: dict[int, Feedback] = {}
        self.pending: list[int] = []  # requested, no feedback yet
        self.early: set[int] = set()  # feedback seen before the previous one's
        self.broken: set[int] = set()  # feedback that did not parse (its failure recorded)
        self.seen: set[str] = set()  # names of the files read, broken ones included
        self.propagation: bool | None = None  # whether the first request with first_pass had propagation

    # --- reading

    def read(self, path: Path, parse: Callable[[str, Path], Any], kind: str) -> Any:
        """The message in `path`; None if absent; False if broken (the failure recorded).

        A file that parses only when read again was seen half-written: a "files" failure (it must be
        written under a temporary name and renamed), and its message is used.
        """
        t0, first_error = time.monotonic(), None
        while True:
            try:
                got = protocol.read_bytes(path)
                if got is None:
                    return None
                self.seen.add(path.name)
                msg = parse(protocol.decode(got[0], path), path)
                break
            except ProtocolError as exc:
                self.seen.add(path.name)
                if first_error is None:
                    first_error = exc
                if time.monotonic() - t0 > 0.5 or rule_of(exc, kind) != "files":
                    self.report.check(rule_of(exc, kind), False, path.name, reason(exc, path))
                    return False
                time.sleep(0.02)
        if first_error is not None:
            self.report.check("files", False, path.name, f"seen half-written ({reason(first_error, path)}): "
                              "write it under a temporary name, then rename it")  # fmt: skip
        else:
            self.report.check("files", True)
        self.report.check(kind, True)
        if kind != "end":  # the parsers check lengths and sums too
            self.report.check("lengths", True)
        ok = msg.session == self.session
        self.report.check("session", ok, path.name, f"field 'session' is {msg.session!r}, the encoder was given "
                          f"{self.session!r}")  # fmt: skip
        return msg

    # --- messages

    def on_request(self, n: int, req: Request, path: Path) -> None:
        rep = self.report
        why = f"field 'mg_index' is {req.mg_index}, the file's N is {n}"
        rep.check("request_index", req.mg_index == n, path.name, why)
        try:
            protocol.check_request_follows(req, self.requests.get(n - 1), path)
            rep.check("gop_sequence", True)
        except ProtocolError as exc:
            rep.check("gop_sequence", False, path.name, reason(exc, path))
        self.requests[n] = req
        self.check_propagation(req, path)

    def check_propagation(self, req: Request, path: Path) -> None:
        """§4.1.1's two checkable facts: sent in all requests or none; 0 where nothing in the GOP comes after.

        An encoder that sends no first_pass, or never sends propagation, passes (the field is optional).
        """
        fp = req.first_pass
        sent = fp is not None and fp.propagation is not None
        if fp is not None and self.propagation is None:
            self.propagation = sent
        if fp is not None and sent != self.propagation:
            why = (f"field 'first_pass.propagation' is {'sent' if sent else 'left out'}, unlike in the first "
                   "request with first_pass")
            self.report.check("propagation", False, path.name, why)
            return
        if sent and req.mg_in_gop == req.mgs_in_gop - 1:
            i = req.frame_count - 1  # the GOP's last frame: nothing after it in the GOP to propagate to
            v = fp.propagation[i]
            why = f"field 'first_pass.propagation[{i}]' is {v}, not 0 on the GOP's last frame"
            self.report.check("propagation", abs(v) <= PROPAGATION_TOL, path.name, why)
            return
        self.report.check("propagation", True)

    def answer(self, n: int, req: Request) -> None:
        """Writes the scripted reply (echoing only the session the encoder sent, as the agent does)."""
        name, qp_of = SCRIPT[n % len(SCRIPT)]
        qp = qp_of(req)
        reply = protocol.Reply(qp=qp, mg_index=n, session=req.session or None)
        protocol.write_message(protocol.reply_path(self.rl_dir, n), reply)
        self.qps[n] = qp
        self.report.replies.append(qp)

    def on_feedback(self, n: int, fb: Feedback, path: Path) -> None:
        failed = ""
        try:
            protocol.check_feedback_matches(fb, self.requests[n], path, self.qps[n])
        except ProtocolError as exc:
            m = re.search(r"field '(\w+)'", str(exc))
            failed = _MATCH_RULES.get(m.group(1) if m else "", "matches_request")
            self.report.check(failed, False, path.name, reason(exc, path))
        for rule in set(_MATCH_RULES.values()) - {failed}:
            self.report.check(rule, True)
        self.feedback[n] = fb
        self.report.feedback += 1

    def on_end(self, end: End, path: Path) -> None:
        rep = self.report
        rep.end_status = end.status
        reqs = [self.requests[k] for k in sorted(self.requests)]
        fbs = [self.feedback[k] for k in sorted(self.feedback)]
        total = reqs[0].total_frames if reqs else 0
        coded = sum(r.frame_count for r in reqs if r.mg_index in self.feedback or r.mg_index in self.broken)
        if end.status != "ok":
            rep.check("end", False, path.name, f"status {end.status!r}: {end.message[:200]}")
        elif self.pending:
            rep.check("end", False, path.name, f"written before the feedback of mini-GOP {self.pending[0]}")
        elif (end.mini_gops, end.frames) != (len(reqs), total) or coded != total:
            rep.check("end", False, path.name, f"fields 'mini_gops' {end.mini_gops}, 'frames' {end.frames}: "
                      f"{len(reqs)} mini-GOPs were requested, {coded} of {total} frames coded")  # fmt: skip
        elif not self.broken:  # the bits of a broken feedback are unknown
            bits = sum(fb.bits for fb in fbs)
            why = f"field 'bits' is {end.bits}, the feedback's bits sum to {bits}"
            rep.check("end", end.bits == bits, path.name, why)
        gops: dict[int, list[Request]] = {}
        for r in reqs:
            gops.setdefault(r.gop_index, []).append(r)
        for g, rs in gops.items():
            if rs[-1].mg_in_gop != rs[-1].mgs_in_gop - 1:
                continue  # a GOP the encode did not finish: the "end" rule's business
            frames = sum(r.frame_count for r in rs)
            why = f"field 'gop_frames' is {rs[-1].gop_frames}, GOP {g}'s mini-GOPs hold {frames} frames"
            rep.check("gop_sequence", frames == rs[-1].gop_frames, protocol.REQUEST_FMT.format(rs[-1].mg_index), why)

    # --- the loop

    def run(self, proc: encoder_proc.EncoderProcess) -> End | None:
        """Answers and checks until end.json, the encoder's death, a broken request or a stall."""
        rep = self.report
        next_rq = 0
        dead_since: float | None = None
        last = time.monotonic()
        with protocol.DirWatcher(self.rl_dir) as watcher:
            while True:
                fb_paths = [protocol.feedback_path(self.rl_dir, k) for k in self.pending[:2]]
                # Feedback N+1 already there while N is not (looked at in this order): out of order.
                ahead = len(fb_paths) == 2 and fb_paths[1].exists()
                if fb_paths:
                    fb = self.read(fb_paths[0], protocol.parse_feedback, "feedback")
                    if fb is None and ahead and self.pending[1] not in self.early:
                        self.early.add(self.pending[1])
                        rep.check("feedback_index", False, fb_paths[1].name, f"written before {fb_paths[0].name}")
                    if fb is not None:
                        n = self.pending.pop(0)
                        if fb:
                            self.on_feedback(n, fb, fb_paths[0])
                        else:
                            self.broken.add(n)
                        last = time.monotonic()
                        continue
                rq_path = protocol.request_path(self.rl_dir, next_rq)
                req = self.read(rq_path, protocol.parse_request, "request")
                if req is False:
                    return None  # no answer is possible: the run ends here
                if req is not None:
                    self.on_request(next_rq, req, rq_path)
                    self.answer(next_rq, req)
                    self.pending.append(next_rq)
                    next_rq += 1
                    last = time.monotonic()
                    continue
                end_file = protocol.end_path(self.rl_dir)
                end = self.read(end_file, protocol.parse_end, "end")
                if end is not None:
                    if self.pending and protocol.feedback_path(self.rl_dir, self.pending[0]).exists():
                        continue  # the last feedback came just before end.json
                    if end:
                        self.on_end(end, end_file)
                    return end or None
                now = time.monotonic()
                if not proc.alive():
                    dead_since = dead_since or now
                    if now - dead_since > 0.2:
                        rep.check("end", False, "end.json", f"the encoder exited (code {proc.returncode()}) "
                                  "without writing it")  # fmt: skip
                        return None
                if now - last > self.timeout_s:
                    waiting = [p.name for p in fb_paths[:1]] + [rq_path.name, "end.json"]
                    rep.check("progress", False, "", f"nothing for {self.timeout_s:g} s (waiting for "
                              f"{' or '.join(waiting)})")  # fmt: skip
                    return None
                watcher.wait(0.05 if dead_since else 0.2)

    def stray_files(self) -> None:
        """Protocol names in rl_io beyond this encode's files: leftover temporaries, unrequested indices."""
        formats = (protocol.REQUEST_FMT, protocol.REPLY_FMT, protocol.FEEDBACK_FMT)
        expected = self.seen | {fmt.format(k) for k in self.requests for fmt in formats}
        for p in sorted(self.rl_dir.iterdir()):
            if protocol.is_protocol_name(p.name):
                self.report.check("no_stray", p.name in expected, p.name, "left in rl_io: not a file of this encode")


def check_encoder(command_prefix: list[str], video_args: list[str], rl_args_template: str, rl_dir: Path,
                  timeout_s: float = 30.0, log_path: Path | None = None) -> Report:  # fmt: skip
    """Runs one encode of `video_args` with the encoder `command_prefix` and checks it; never raises for its faults."""
    rl_dir = protocol.prepare_rl_dir(rl_dir)
    protocol.clear_protocol_files(rl_dir)
    session = f"check{int(time.time() * 1000) % 10**9}"
    rl_args = encoder_proc.rl_args(rl_args_template, rl_dir, session)
    given = session if "{session}" in rl_args_template else ""
    command = command_prefix + video_args + rl_args
    report = Report(command)
    log_path = log_path or rl_dir.parent / "protocol_check.log"
    proc = encoder_proc.EncoderProcess(command, log_path, "check")
    checker = Checker(rl_dir, given, timeout_s, report)
    try:
        proc.start()
        end = checker.run(proc)
        if end is not None:
            code = proc.wait(EXIT_WAIT_S)
            report.exit_code = code
            ok = code == 0 if end.status == "ok" else code not in (0, None)
            report.check("exit", ok, "", f"exit code {code} after end.json status {end.status!r}"
                         if code is not None else f"still running {EXIT_WAIT_S:g} s after end.json")  # fmt: skip
        else:
            report.exit_code = proc.returncode()
        if end is not None or report.rules["progress"].failures == 0:
            report.check("progress", True)
    finally:
        proc.stop()
    checker.stray_files()
    if report.rules["no_stray"].checked == 0 and report.rules["end"].checked:
        report.check("no_stray", True)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m protocol_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--encoder", default="",
                   help="encoder command, split like a shell, as main.py --encoder (default: built-in)")  # fmt: skip
    p.add_argument("--videos", metavar="ARGS", default="",
                   help="the encoder's video arguments, '|'-separated as main.py --videos (default: built from "
                   "--input, --frames, --bitrate)")  # fmt: skip
    p.add_argument("--input", default="", help="clip (default: the bundled carphone_pristine.mp4)")
    p.add_argument("--frames", type=int, default=24, help="frames to code")
    p.add_argument("--bitrate", type=float, default=150.0, help="target, kbit/s")
    p.add_argument("--encoder-rl-args", metavar="T", default=encoder_proc.DEFAULT_RL_ARGS,
                   help="'|'-separated protocol arguments, {rl_dir} and {session} filled (as main.py)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each file of the encoder")
    p.add_argument("--keep", metavar="DIR", default="", help="work in DIR and keep its files (default: a temporary)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(encoder_proc.glue_dash_values(argv, ("--videos", "--encoder-rl-args")))
    try:
        if ns.videos:
            spec = encoder_proc.parse_videos_arg(ns.videos)
        else:
            from builtin_encoder.source import bundled_clip

            clip = ns.input or str(bundled_clip("carphone_pristine.mp4"))
            spec = encoder_proc.VideoSpec(Path(clip).stem, ["--input", clip, "--frames", str(ns.frames),
                                                            "--bitrate", f"{ns.bitrate:g}"])  # fmt: skip
        prefix = encoder_proc.encoder_command(ns.encoder)
    except (ValueError, encoder_proc.VideoSpecError) as exc:
        print(f"protocol_check: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="protocol_check.") as tmp:
        work = Path(ns.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        pass1 = encoder_proc.pass1_args(spec)
        if pass1 is not None:  # as main.py: pass 1 first when the pass-2 stat file is missing
            try:
                encoder_proc.run_to_completion(prefix + pass1, work / "pass1.log", spec.name, timeout_s=ns.timeout * 20)
            except RuntimeError as exc:
                print(f"protocol_check: pass 1 failed: {exc}", file=sys.stderr)
                return 1
        try:
            report = check_encoder(prefix, spec.args, ns.encoder_rl_args, work / "rl_io", ns.timeout,
                                   work / "encoder.log")  # fmt: skip
        except (protocol.RlDirError, RuntimeError) as exc:  # e.g. the program cannot be started
            print(f"protocol_check: error: {exc}", file=sys.stderr)
            return 2
        print(f"encoder: {' '.join(report.command)}")
        print(f"{len(report.replies)} requests answered (QPs {' '.join(map(str, report.replies[:12]))}"
              f"{' ...' if len(report.replies) > 12 else ''}), {report.feedback} feedback, end.json "
              f"{report.end_status}, exit code {report.exit_code}\n")  # fmt: skip
        print(report.table())
        verdict = "conforms" if report.clean else "does NOT conform"
        print(f"\n{verdict} to PROTOCOL.md (encoder output: {work / 'encoder.log' if ns.keep else 'use --keep DIR'})")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
