"""User-facing errors. Each one is a single paragraph that says where and how to fix; the CLI
prints it without a traceback and exits with code 2."""

from __future__ import annotations


class MmalignError(Exception):
    """Base class: bad input from the user (config, data, CLI). Exit code 2."""

    exit_code = 2


class ConfigError(MmalignError):
    """A config file, key or value is wrong."""


class DataError(MmalignError):
    """A data file or record is wrong."""


class RegistryError(MmalignError):
    """A name (loss, reward, dataset format, evaluator, ...) is not registered."""


class SkipRecord(Exception):
    """Raised by a plugin's ``prepare`` for a record that is valid but unusable (counted, not fatal)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EnvironmentProblem(MmalignError):
    """The machine refuses what the run needs (disk full, a read-only or unwritable path, memory):
    caused by the setup, not by a bug. Exit code 2."""


# errno -> (what happened, the fix); the OSErrors a user's setup causes
_OS_ERRORS = {
    "ENOSPC": ("the disk is full", "free space there or choose another output_dir"),
    "EDQUOT": ("the disk quota is exceeded", "free space there or choose another output_dir"),
    "EROFS": ("the file system is read-only", "choose a writable output_dir"),
    "EACCES": ("permission denied", "fix the permissions or choose another path"),
    "EPERM": ("operation not permitted", "fix the permissions or choose another path"),
    "ENOTDIR": ("a part of the path is a file, not a directory", "choose another path"),
    "EISDIR": ("it is a directory where a file was expected", "pass the path of a file"),
    "EEXIST": ("a file is in the way", "remove it or choose another path"),
    "ENAMETOOLONG": ("the path is too long", "choose a shorter path"),
}


def user_error(exc: BaseException) -> MmalignError | None:
    """The MmalignError for an exception from another library that the user's input or machine
    caused (so the CLI prints a paragraph and exits 2), or None for one that is a bug."""
    import errno

    if isinstance(exc, MmalignError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, "")
        if name in _OS_ERRORS:
            what, fix = _OS_ERRORS[name]
            path = exc.filename or "a file"
            other = f" -> '{exc.filename2}'" if exc.filename2 else ""
            return EnvironmentProblem(f"Cannot write or read '{path}'{other}: {what} ({exc.strerror}). "
                                      f"To fix: {fix}.")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"An input file is not UTF-8 text ({exc.reason} at byte {exc.start}). Save "
                         f"config and data files as UTF-8.")
    if isinstance(exc, RecursionError):
        return DataError("An input is nested too deeply to read (Python's recursion limit): a JSON or "
                         "YAML value nested hundreds of levels deep. Check the data files.")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EnvironmentProblem(f"Out of memory ({type(exc).__name__}). Lower train.batch_size (and "
                                  f"raise train.gradient_accumulation_steps to keep the same batch), "
                                  f"lower data.max_*_length, or set model.gradient_checkpointing: true.")
    return None
