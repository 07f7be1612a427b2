"""User-facing errors: the CLI prints their message as one line and exits non-zero, no traceback."""


class PruneError(Exception):
    """An error caused by the user's input; `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(PruneError):
    """Bad arguments, recipe keys or values: nothing has been run or written."""

    exit_code = 2


class UnsupportedModelError(ConfigError):
    """The model is not a ViT of the shape `prune` understands."""


class DataError(PruneError):
    """A problem found while reading data (missing path, undecodable image, bad label)."""


class BadInputError(DataError):
    """An input file or dataset row that is not what it claims to be, or is hostile (an image that does not
    decode or is a decompression bomb, a label outside the model's classes): refused with the file or the
    split and row named."""

    exit_code = 2


class DiskFullError(PruneError):
    """The disk filled up while writing; completed outputs are kept and a rerun resumes."""

    exit_code = 2
