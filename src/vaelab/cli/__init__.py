"""The ``vaelab`` command line: thin commands over library functions.

The group ``cli`` is complete on import: every command module is listed here. Errors a
user can cause end in one line ``vaelab: error: ...`` and exit code 2; set VAELAB_DEBUG=1
to see the traceback instead.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

import click

from vaelab.cli import data, explore, generate, parts, report, run, steer, sweep, tools
from vaelab.errors import Interrupted, VaelabError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaelab")
def cli() -> None:
    """Autoencoders and VAEs on images: train, evaluate, reconstruct, sample."""


COMMANDS = [
    run.train, run.eval_cmd, run.reconstruct, run.presets, run.info, run.download,
    generate.judge, generate.sample, generate.plot, generate.eval_samples, generate.fit_prior,
    generate.disentanglement,
    tools.inpaint, tools.detect, tools.anomaly_bench, tools.export,
    report.report, sweep.sweep, sweep.experiment, steer.steer, steer.steer_bench,
    data.data, explore.explore, parts.parts,
]
for _command in COMMANDS:
    cli.add_command(_command)


def repeated_option(args: list[str]) -> str | None:
    """The first option taking one value that ``args`` give twice (``--epochs 1 ... --epochs 2``),
    or None. click keeps the last of them without a word; vaelab refuses instead. Options meant
    to repeat (``--set``, ``--grid``) and flags are left alone."""
    cmd: click.Command = cli
    i = 0
    while isinstance(cmd, click.Group) and i < len(args) and not args[i].startswith("-"):
        cmd = cmd.commands.get(args[i])
        if cmd is None:
            return None  # click says what is wrong with the name
        i += 1
    takes: dict[str, click.Option] = {}  # option string -> the option, for those taking a value
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.is_flag and not p.count:
            takes.update(dict.fromkeys(p.opts + p.secondary_opts, p))
    seen: dict[str, str] = {}  # the option's name -> the string first used for it
    while i < len(args) and args[i] != "--":
        name, has_value = args[i].split("=", 1)[0], "=" in args[i]
        p = takes.get(name) if args[i].startswith("-") else None
        if p is not None:
            if not p.multiple and p.name in seen:
                also = "" if seen[p.name] == name else f" (also as {seen[p.name]})"
                return f"{name} is given twice{also}; give it once"
            seen.setdefault(p.name, name)
            i += 0 if has_value else 1  # its value is the next word
        i += 1
    return None


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("VAELAB_DEBUG"))
    twice = repeated_option(list(sys.argv[1:] if argv is None else argv))
    if twice is not None:
        click.echo(f"vaelab: error: {twice}", err=True)
        sys.exit(2)
    # At exit, keep the interpreter's last garbage collection off the million objects that
    # torch (and torch._dynamo, which torch.optim imports) leave behind: after `vaelab train`
    # that pass took longer than the data loading. atexit handlers still run, and objects are
    # still freed by reference count; only cyclic garbage is left to the OS.
    atexit.register(gc.freeze)
    try:
        cli.main(args=argv, prog_name="vaelab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vaelab: aborted", err=True)
        sys.exit(130)
    except Interrupted as e:  # Ctrl-C in a command that says what it kept (train: where to resume)
        click.echo(f"vaelab: interrupted; {e}", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option or argument: one line, and where to read more
        command = e.ctx.command_path if e.ctx is not None else "vaelab"
        click.echo(f"vaelab: error: {e.format_message()} (see `{command} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except VaelabError as e:
        if debug:
            raise
        click.echo(f"vaelab: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("vaelab: interrupted; completed epochs are checkpointed, continue with --resume RUN", err=True)
        sys.exit(130)
    except OSError as e:  # disk full, permission denied, ...: say which file
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        click.echo(f"vaelab: error: {e.strerror or e}{where}", err=True)
        sys.exit(2)


__all__ = ["COMMANDS", "cli", "main", "repeated_option"]
