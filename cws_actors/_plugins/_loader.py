"""Importing a plugin's class from its folder or from an installed module."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
import types
from pathlib import Path

from ._model import Plugin, check_handlers

_generation = itertools.count(1)


class PluginImportError(Exception):
    """The plugin's code could not be imported, or its entry is not a Plugin class."""


def load_plugin_class(entry: str, folder: Path | None) -> type[Plugin]:
    """Import ``module:Class``. With ``folder``, the module is the folder's own (a
    ``module.py`` file or ``module/`` package), imported under a fresh name so that two
    plugins, or two versions of one (hot reload), never share modules.

    Raises:
        PluginImportError: saying what failed.
    """
    module_name, _, attribute = entry.partition(":")
    try:
        if folder is None:
            module = importlib.import_module(module_name)
        else:
            module = _import_from_folder(module_name, folder)
    except PluginImportError:
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() at import is broken code too
        raise PluginImportError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        target: object = module
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise PluginImportError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not (isinstance(target, type) and issubclass(target, Plugin)):
        raise PluginImportError(f"{entry!r} is not a subclass of cws_actors.Plugin")
    try:
        check_handlers(target)
    except TypeError as exc:
        raise PluginImportError(str(exc)) from None
    return target


def _import_from_folder(module_name: str, folder: Path) -> types.ModuleType:
    top, _, rest = module_name.partition(".")
    package_dir = folder / top
    unique = f"cws_plugin_{next(_generation)}_{top}"
    if (package_dir / "__init__.py").is_file():
        location, search = package_dir / "__init__.py", [str(package_dir)]
    elif (folder / f"{top}.py").is_file():
        location, search = folder / f"{top}.py", None
    else:
        raise PluginImportError(f"no module {top!r} ({top}.py or {top}/) in {folder}")
    spec = importlib.util.spec_from_file_location(
        unique, location, submodule_search_locations=search
    )
    if spec is None or spec.loader is None:
        raise PluginImportError(f"cannot import {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    if rest:
        return importlib.import_module(f"{unique}.{rest}")
    return module
