"""Plugin commands attached to ``cws`` at run time, from the daemon's specs.

``GET /api/v1/cli/commands`` lists every loaded plugin's commands; each becomes a click
command (a ``parent`` word becomes a group), with the plugin's flags, types, aliases and
help, so that ``cws analytics report --help`` and click's checks work as for built-in
commands. Running one posts its words to ``POST /api/v1/cli/execute`` and exits with the
plugin's exit code. The specs are fetched at most once per invocation, and only when a
name is not a built-in command (or for ``cws --help``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncclick as click
import attrs
from asyncclick.core import ParameterSource

from ._errors import CLIError, DaemonUnreachable, UsageProblem

if TYPE_CHECKING:  # httpx is imported only when a plugin command is looked up
    from ._client import Connection

_CATALOG = "cws.plugin_catalog"
_TYPES: Mapping[str, click.ParamType[Any]] = {
    "string": click.STRING,
    "int": click.INT,
    "float": click.FLOAT,
}


@attrs.frozen
class FlagSpec:
    name: str
    type: str = "string"
    default: Any = None
    help: str = ""
    required: bool = False


@attrs.frozen
class CommandSpec:
    """One entry of ``GET /api/v1/cli/commands``."""

    plugin: str
    name: str
    parent: str | None = None
    usage: str = ""
    short: str = ""
    long: str = ""
    aliases: tuple[str, ...] = ()
    flags: tuple[FlagSpec, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommandSpec:
        """Raises CLIError naming what is wrong with the daemon's answer."""
        try:
            flags = tuple(
                FlagSpec(**{key: flag[key] for key in flag if key in _FLAG_KEYS})
                for flag in data.get("flags") or ()
            )
            return cls(
                plugin=str(data["plugin"]),
                name=str(data["name"]),
                parent=data.get("parent") or None,
                usage=data.get("usage") or "",
                short=data.get("short") or "",
                long=data.get("long") or "",
                aliases=tuple(data.get("aliases") or ()),
                flags=flags,
            )
        except (KeyError, TypeError) as exc:
            raise CLIError(f"the daemon sent a malformed command spec {data!r}: {exc}") from None


_FLAG_KEYS = frozenset(attrs.fields_dict(FlagSpec))


@attrs.frozen
class Catalog:
    """The plugin commands of this invocation, or why there are none."""

    connection: Connection | None
    """None when there are no plugin commands (``problem`` says why)."""
    commands: Mapping[str, click.Command] = attrs.field(factory=dict)
    """By name and by alias."""
    names: tuple[str, ...] = ()
    """The primary names, for help."""
    problem: CLIError | None = None
    """Why there are none: the daemon is unreachable (DaemonUnreachable) or failed."""


class CwsGroup(click.Group):
    """The root group: its built-in commands first, then the daemon's plugin commands."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        return self.catalog(ctx).commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    async def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return await super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:
            problem = self.catalog(ctx).problem
            if problem is None:
                raise
            lead = f"no such command {exc.command_name!r} (plugin commands come from the daemon): "
            if isinstance(problem, DaemonUnreachable):
                raise DaemonUnreachable(problem.url, problem.reason, lead=lead) from None
            raise CLIError(f"{lead}{problem.format_message()}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        catalog = self.catalog(ctx)
        if catalog.problem is not None:
            why = (
                f"the daemon at {catalog.problem.url} is unreachable; start it with `cws daemon`"
                if isinstance(catalog.problem, DaemonUnreachable)
                else catalog.problem.format_message()
            )
            with formatter.section("Plugin commands"):
                formatter.write_text(f"(none: {why})")
            return
        rows = [(name, catalog.commands[name].get_short_help_str(60)) for name in catalog.names]
        if rows:
            with formatter.section("Plugin commands"):
                formatter.write_dl(rows)

    def catalog(self, ctx: click.Context) -> Catalog:
        """The plugin commands, fetched once per invocation."""
        root = ctx.find_root()
        if _CATALOG not in root.meta:
            from ._client import fetch_cli_specs, resolve_connection

            params = root.params
            try:
                connection = resolve_connection(
                    url=params.get("url"), token=params.get("token"), home=params.get("home")
                )
                specs = [CommandSpec.from_json(spec) for spec in fetch_cli_specs(connection)]
            except CLIError as exc:  # help and built-in commands work without plugins
                # (and without the token file, when it is refused: help says why)
                root.meta[_CATALOG] = Catalog(None, problem=exc)
            else:
                reserved = set(self.list_commands(ctx))
                root.meta[_CATALOG] = build_catalog(connection, specs, reserved=reserved)
        catalog: Catalog = root.meta[_CATALOG]
        return catalog


def build_catalog(
    connection: Connection, specs: list[CommandSpec], *, reserved: set[str]
) -> Catalog:
    """Click commands for ``specs``; names in ``reserved`` (built-ins) win over plugins'."""
    tops = {spec.name: spec for spec in specs if spec.parent is None}
    children: dict[str, list[CommandSpec]] = {}
    for spec in specs:
        if spec.parent is not None:
            children.setdefault(spec.parent, []).append(spec)
    commands: dict[str, click.Command] = {}
    names = []
    for name in sorted({*tops, *children} - reserved):
        top = tops.get(name)
        if name in children:
            command: click.Command = _group(connection, name, top, children[name])
        else:
            assert top is not None
            command = _command(connection, top, [name])
        names.append(name)
        for word in (name, *(top.aliases if top is not None else ())):
            if word not in reserved:
                commands.setdefault(word, command)
    return Catalog(connection, commands, tuple(names))


def _options(spec: CommandSpec, *, enforce_required: bool) -> list[click.Option]:
    options = []
    for flag in spec.flags:
        decls = [f"--{flag.name}"]
        if flag.type == "bool":
            options.append(
                click.Option(decls, is_flag=True, default=bool(flag.default), help=flag.help)
            )
            continue
        required = flag.required and enforce_required
        text = flag.help + (" [required]" if flag.required and not enforce_required else "")
        options.append(
            click.Option(
                decls,
                type=_TYPES.get(flag.type, click.STRING),
                default=flag.default,
                required=required,
                show_default=flag.default is not None,
                help=text.strip(),
            )
        )
    return options


def _help(spec: CommandSpec) -> tuple[str, str]:
    epilog = f"Provided by the plugin {spec.plugin!r}."
    if spec.usage:
        epilog = f"Usage: {spec.usage}\n\n{epilog}"
    return spec.long or spec.short, epilog


def _flag_words(ctx: click.Context, spec: CommandSpec, options: list[click.Option]) -> list[str]:
    """The flags given on the command line, as the daemon parses them (its defaults
    apply to the rest; a bool flag is its bare name)."""
    words: list[str] = []
    for flag, option in zip(spec.flags, options, strict=True):
        assert option.name is not None
        if ctx.get_parameter_source(option.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[option.name]
        if flag.type == "bool":
            if value:
                words.append(f"--{flag.name}")
        else:
            words += [f"--{flag.name}", str(value)]
    return words


def _command(connection: Connection, spec: CommandSpec, words: list[str]) -> click.Command:
    options = _options(spec, enforce_required=True)
    text, epilog = _help(spec)

    @click.pass_context
    async def run(ctx: click.Context, /, **values: Any) -> None:
        await execute(ctx, connection, [*words, *_flag_words(ctx, spec, options)])

    return click.Command(
        spec.name,
        callback=run,
        params=[*options],
        help=text,
        short_help=spec.short or None,
        epilog=epilog,
    )


class _PluginGroup(click.Group):
    """A parent word: its subcommands, found by name or alias."""

    def __init__(self, *args: Any, aliases: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = dict(aliases)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


def _group(
    connection: Connection, name: str, spec: CommandSpec | None, subcommands: list[CommandSpec]
) -> click.Group:
    commands = [_command(connection, child, [name, child.name]) for child in subcommands]
    aliases = {alias: child.name for child in subcommands for alias in child.aliases}
    if spec is None:
        return _PluginGroup(name, commands=commands, aliases=aliases, help=f"{name} commands.")
    # The parent word is a command too (``cws echo --text hi`` beside ``cws echo crash``):
    # its flags belong to it alone, so its required ones are checked when it runs.
    options = _options(spec, enforce_required=False)
    text, epilog = _help(spec)
    callback = functools.partial(_run_group, connection, spec, options)
    return _PluginGroup(
        name,
        commands=commands,
        aliases=aliases,
        callback=click.pass_context(callback),
        params=[*options],
        invoke_without_command=True,
        no_args_is_help=False,
        help=text,
        short_help=spec.short or None,
        epilog=epilog,
    )


async def _run_group(
    connection: Connection,
    spec: CommandSpec,
    options: list[click.Option],
    ctx: click.Context,
    **values: Any,
) -> None:
    given = _flag_words(ctx, spec, options)
    if ctx.invoked_subcommand is not None:
        if given:
            raise UsageProblem(
                f"the flags of `{spec.name}` cannot be combined with its subcommand"
                f" `{ctx.invoked_subcommand}`"
            )
        return
    for flag, option in zip(spec.flags, options, strict=True):
        if flag.required and flag.type != "bool" and values.get(option.name or "") is None:
            raise click.MissingParameter(ctx=ctx, param=option)
    await execute(ctx, connection, [spec.name, *given])


async def execute(ctx: click.Context, connection: Connection, argv: list[str]) -> None:
    """Run a plugin command on the daemon; print its output; exit with its code."""
    from ._client import open_client

    async with open_client(connection) as client:
        result = await client.post("/api/v1/cli/execute", {"args": argv})
    if not isinstance(result, dict) or not isinstance(result.get("exit_code"), int):
        raise CLIError(f"the daemon answered the command with {result!r}")
    output, code = str(result.get("output") or ""), result["exit_code"]
    if output:
        click.echo(output, err=code != 0)
    await ctx.aexit(code)
