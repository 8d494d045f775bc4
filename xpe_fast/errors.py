"""The package's errors, in a leaf that every module may import.

Every mistake in what a user gives (a flag, a data or config file, a backbone, a tokenizer,
an adapter, a busy run folder) raises an XpeFastError; the commands print it as one line on
stderr with exit code 2 (cli_common.run_cli), so no module needs another's error classes.
Each is a ValueError, as before this module existed.
"""


class XpeFastError(ValueError):
    """A mistake in the user's input, said in one line."""


class UserError(XpeFastError):
    """A mistake in what the user asked a command for (a flag or its value)."""


class DataError(XpeFastError):
    """Missing folders or splits, malformed rows, unknown labels, empty texts."""


class TextFileError(XpeFastError):
    """A file that is not UTF-8 text."""


class UnknownLanguageError(XpeFastError):
    """A language code or group name that is not known."""


class BackboneError(XpeFastError):
    """A backbone or tokenizer that cannot be loaded, or a tokenizer that does not fit."""


class BackboneFileError(XpeFastError):
    """The packed model file is missing, truncated or not in the expected format."""


class UnsupportedBackboneError(XpeFastError):
    """An encoder whose fused route does not reproduce the Hugging Face route."""


class AdapterMismatchError(XpeFastError):
    """An adapter that cannot be used: unreadable, incomplete, or saved for another backbone,
    hidden size or prompt shape."""


class FolderInUseError(XpeFastError):
    """Another process holds the run folder."""
