"""Errors that the command line turns into one clear line and a non-zero exit."""


class SelfsupError(Exception):
    """Base class: a problem with the user's input or run, explained in the message."""


class DataError(SelfsupError):
    pass


class ConfigError(SelfsupError):
    pass


class TrainingError(SelfsupError):
    pass


class CheckpointError(SelfsupError):
    pass
