"""Errors of the encoder program, each carrying the process exit code it ends with.

Exit codes (also in `--help`): 0 ok, 1 internal error (a bug), 2 bad arguments or input,
3 no reply from the agent in time, 4 malformed / out-of-range reply, 5 codec error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_REPLY_TIMEOUT = 3
EXIT_BAD_REPLY = 4
EXIT_CODEC = 5
EXIT_INTERRUPTED = 130


class EncoderError(Exception):
    """Base class; `exit_code` is what the process exits with when this error stops the encode."""

    exit_code = EXIT_INTERNAL


class BadInput(EncoderError, ValueError):
    """Bad command line or unusable input / stat file; the message names the flag or the file."""

    exit_code = EXIT_BAD_INPUT


class ReplyTimeout(EncoderError):
    """The agent's reply file did not appear within --rl-timeout seconds."""

    exit_code = EXIT_REPLY_TIMEOUT


class BadReply(EncoderError):
    """The agent's reply is malformed, out of range, or for another session / mini-GOP."""

    exit_code = EXIT_BAD_REPLY


class CodecFailure(EncoderError):
    """The codec backend failed (could not start, rejected a frame, wrote no stats...)."""

    exit_code = EXIT_CODEC


class CodecStalled(CodecFailure):
    """The codec library hung mid-encode (codec.CodecStall); running the pass again may succeed."""


class Interrupted(EncoderError):
    """SIGINT / SIGTERM arrived; the encode stops and still writes end.json."""

    exit_code = EXIT_INTERRUPTED
