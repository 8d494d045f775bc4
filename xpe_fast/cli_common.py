"""What the command-line tools share: a user's mistake (any errors.XpeFastError) or an I/O
failure as one clean line and exit code 2."""

from __future__ import annotations

import sys

from .errors import UserError, XpeFastError

__all__ = ["UserError", "note_length_cap", "run_cli"]


def note_length_cap(asked: int, cap: int, positions: int, virtual_tokens: int) -> None:
    """One line on stderr, before any work: --max-length is more than the backbone holds."""
    print(
        f"note: --max-length {asked} is more than the backbone's {positions} positions hold "
        f"beside {virtual_tokens} virtual tokens: inputs are cut at {cap} tokens",
        file=sys.stderr,
    )


def _one_line(msg) -> str:
    return " ".join(str(msg).split())


def _os_error_line(e: OSError) -> str:
    where = e.filename or "a file"
    what = e.strerror or e.__class__.__name__
    return _one_line(
        f"{where}: {what} (I/O error; what was written before is intact: fix the cause and "
        "rerun, with --resume for a training run)"
    )


def run_cli(run, parser, argv=None) -> int:
    def error(message):  # argparse's own errors: one line too, not the usage block
        print(f"error: {_one_line(message)} (see {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a parse error reported above
        return int(e.code or 0)
    try:
        return int(run(args) or 0)
    except XpeFastError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, a read-only folder, a file gone mid-run
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: what was written so far is kept; rerun with --resume to continue",
            file=sys.stderr,
        )
        return 130
