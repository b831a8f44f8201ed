"""The command line: help for every command, exit codes, progress and summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from cytoprofile.cli import app, main


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands()
    assert {"synth", "collate", "aggregate", "annotate", "normalize", "feature-select", "consensus",
            "write-gct", "csv2gz", "validate-metadata", "config-template", "init", "run", "qc"} <= set(commands)
    group = typer.main.get_command(app)
    for name in commands:
        command = group.commands[name]  # type: ignore[attr-defined]
        assert command.help and len(command.help.strip()) > 10, name
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Usage" in out and "--help" in out, name
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{name} --{param.name} has no help"


def test_user_error_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregate", str(tmp_path / "missing.sqlite"), str(tmp_path / "out.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.sqlite" in err and len(err.splitlines()) == 1


def test_bug_is_exit_3_with_traceback_log(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import cytoprofile.config as config

    def boom(**_: object) -> str:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(config, "config_template", boom)
    assert main(["config-template"]) == 3
    err = capsys.readouterr().err
    log = err.split("traceback written to ")[1].split()[0]
    assert "ZeroDivisionError: planted" in Path(log).read_text()


def test_synth_collate_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    assert main(["synth", str(ws), "--plate", "P1,P2", "--well-subset", "3", "--sites", "2", "--cells", "5", "--features", "6", "-q"]) == 0
    assert main(["collate", str(ws), "BATCH1", "P1", "P2", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "P1" in err and "done" in err and "sites/s" in err
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["collate", str(ws), "BATCH1", "P1", "--backend", "oracle"]) == 1


def test_config_template_and_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-template", "-o", str(tmp_path / "c.yml"), "--batch", "B", "--plate", "X,Y"]) == 0
    from cytoprofile.config import load_config

    assert load_config(tmp_path / "c.yml").selected_plates() == {"B": ["X", "Y"]}
    assert main(["init", str(tmp_path / "proj")]) == 0
    assert (tmp_path / "proj" / "quality_control").is_dir()


@pytest.mark.parametrize(("argv", "code"), [([], 0), (["--version"], 0), (["collate"], 2), (["collate", "--bogus"], 2),
                                             (["collate", "ws", "B", "P", "--jobs", "abc"], 2), (["nosuchcommand"], 2)])
def test_usage_errors_exit_2_not_3(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    out = capsys.readouterr()
    assert "internal error" not in out.err
    if argv == ["--version"]:
        from cytoprofile import __version__

        assert out.out.strip() == __version__
