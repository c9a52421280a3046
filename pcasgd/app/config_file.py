"""``--config FILE``: every ``pcasgd train`` flag from a YAML mapping.

Keys are the flag names without the dashes (``batch-size`` or ``batch_size``); values are what
the flag takes (``true`` for a switch). The file's settings go first on the command line, so a
flag given there wins, and every value goes through the same checks as a typed flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pcasgd.errors import ConfigError

MAX_BYTES = 64 * 1024  # a settings file is a few lines; /dev/zero or a wrong file is not read whole
SCALARS = (str, int, float, bool)


def _shown(value: object) -> str:
    """``value`` for an error line, never longer than a line (an alias bomb expands to gigabytes)."""
    text = repr(value) if isinstance(value, SCALARS) or value is None else f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def config_argv(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line arguments that ``path`` stands for, checked against ``parser``'s flags."""
    try:
        import yaml
    except ImportError as error:
        raise ConfigError(f"--config needs PyYAML ({error}); pip install 'pcasgd[config]'") from None
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_BYTES // 1024} KiB: not a settings file")
        settings = yaml.safe_load(data.decode("utf-8"))
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if settings is None:
        return []
    if not isinstance(settings, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values")
    flags = {
        option.removeprefix("--"): action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config")
    }
    argv: list[str] = []
    for key, value in settings.items():
        action = flags.get(str(key).replace("_", "-")) if isinstance(key, str) else None
        if action is None:
            known = ", ".join(sorted(flags))
            raise ConfigError(f"config file {path}: unknown key {_shown(key)} (known: {known})")
        name = key.replace("_", "-")
        if not isinstance(value, SCALARS) and value is not None:  # never a list's str() as a flag value
            raise ConfigError(f"config file {path}: {key} takes one value, got {_shown(value)}")
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise ConfigError(f"config file {path}: {key} is a switch: true or false, got {_shown(value)}")
            argv += [f"--{name}"] if value else []
        elif value is not None:
            argv += [f"--{name}", str(value)]
    return argv
