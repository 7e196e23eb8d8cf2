"""Command line: ``selfsup demo | pretrain | eval | methods | stream | sequence | finetune | attack | corrupt | embed |
export | compare | neighbours | select``; each capability's commands live in its ``*_commands`` module, which parses
the options, calls the workflow and prints what it returns.

Every user error (bad config, missing data, corrupt file, unreadable checkpoint) ends in one line on stderr and exit
code 2, never a traceback.
"""
from __future__ import annotations

import sys

import typer

from ..errors import SelfsupError
from . import collection_commands as collection, compare_command as compare_cmd, embed_commands as embed_cmd
from . import finetune_commands, robustness_commands, stream_commands, training_commands as training

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-supervised representation learning on images.")

app.command()(training.pretrain)
app.command("eval")(training.evaluate)
app.command()(training.methods)
app.command()(stream_commands.stream)
app.command()(stream_commands.sequence)
app.command()(finetune_commands.finetune)
app.command()(robustness_commands.attack)
app.command()(robustness_commands.corrupt)
app.command()(training.demo)
app.command()(embed_cmd.embed)
app.command()(embed_cmd.export)
app.command()(compare_cmd.compare)
app.command()(collection.neighbours)
app.command()(collection.select)


def main() -> None:
    try:
        app()
    except SelfsupError as e:  # pragma: no cover - commands catch their own
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
