"""The command line's help: every command renders it, and a docstring wrapped over several source
lines reads as one paragraph (not broken where the source line ended)."""

import inspect
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from regressor import cli


def _commands() -> list[tuple[list[str], list[str]]]:
    """(argv, the paragraphs of the command's docstring) for every command and subcommand."""
    found = []
    root = get_command(cli.app)
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", {})
        for sub_name, sub in subcommands.items():
            found.append(([name, sub_name], inspect.getdoc(sub.callback)))
        if not subcommands:
            found.append(([name], inspect.getdoc(command.callback)))
    return [(argv, doc.split("\n\n")) for argv, doc in found]


def _one_line(text: str) -> str:
    """A paragraph as the help shows it: on one line, code spans without their backticks."""
    return " ".join(text.replace("`", "").split())


@pytest.mark.parametrize(
    ("argv", "paragraphs"), _commands(), ids=[" ".join(argv) for argv, _ in _commands()]
)
def test_help_shows_each_paragraph_on_one_line(argv: list[str], paragraphs: list[str]) -> None:
    result = CliRunner().invoke(cli.app, [*argv, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = [_one_line(re.sub(r"[│╭╮╰╯─]", " ", line)) for line in result.output.splitlines()]
    for paragraph in paragraphs:
        assert _one_line(paragraph) in lines, result.output


def test_the_command_list_names_each_command() -> None:
    result = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    listed = [_one_line(re.sub(r"[│╭╮╰╯─]", " ", line)) for line in result.output.splitlines()]
    for argv, paragraphs in _commands():
        if len(argv) == 1:  # the models subcommands are listed by `textperf models --help`
            assert f"{argv[0]} {_one_line(paragraphs[0])}" in listed, result.output


def test_the_version_is_one_line_that_bug_reports_can_quote() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"textperf {version('textperf')}\n"
