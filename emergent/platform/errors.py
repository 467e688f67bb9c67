"""Errors caused by what the user asked for. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: config, task or method name, checkpoint path or content."""


class ConfigError(UserError):
    pass


class CheckpointError(UserError):
    pass
