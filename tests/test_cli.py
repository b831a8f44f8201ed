"""The command line: help for every command, exit codes, progress and summary."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from cytoprofile.cli import app, main

from . import faults


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


def _small(ws: Path, plates: str = "P1,P2") -> None:
    assert main(["synth", str(ws), "--plate", plates, "--well-subset", "2", "--sites", "1", "--cells", "4",
                 "--features", "4", "-q"]) == 0


def test_wrong_batch_or_plate_says_what_is_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    _small(ws)
    capsys.readouterr()
    assert main(["collate", str(ws), "BATCH2", "P1", "P2", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"batch 'BATCH2' not found under {ws / 'analysis'}; batches there: BATCH1" in err
    assert "0 of 2 plate(s) done, 2 failed (P1, P2); first: P1:" in err  # --quiet: the one line names every plate
    assert not (ws / "backend").exists()
    assert main(["collate", str(ws), "BATCH1", "P9", "P1"]) == 1
    err = capsys.readouterr().err
    assert f"plate 'P9' not found under {ws / 'analysis' / 'BATCH1'}; plates there: P1, P2" in err.replace("\n", "")
    assert "1 of 2 plate(s) done, 1 failed" in err and "collate of" not in err
    assert not (ws / "backend/BATCH1/P9").exists() and (ws / "backend/BATCH1/P1/P1.report.json").exists()
    assert main(["collate", str(ws), "BATCH1", "P1", "P2"]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 plate(s) done (1 already complete)" in err


@pytest.mark.parametrize("plate", ["../../x", "a/b", "", ".", "..", ".hidden"])
def test_names_that_are_not_plain_are_refused(tmp_path: Path, plate: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    _small(ws, "P1")
    (ws / "analysis/BATCH1/a/b/analysis").mkdir(parents=True)  # a nested folder is still no plate name
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["collate", str(ws), "BATCH1", plate, "-q"]) == 1
    assert main(["collate", str(ws), plate or "..", "P1", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("is not a plain name") == 2 and "internal error" not in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no folder made, inside or outside backend/


def test_plate_without_a_readable_site_fails_and_is_not_skipped_later(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    _small(ws, "P1")
    # the scan reads headers only: a bad number in every site is found while reading
    for site in (ws / "analysis/BATCH1/P1/analysis").iterdir():
        lines = (site / "Cytoplasm.csv").read_text().splitlines()
        fields = lines[1].split(",")
        fields[2] = "12..5e"
        lines[1] = ",".join(fields)
        (site / "Cytoplasm.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    for _ in range(2):
        assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 1
        err = capsys.readouterr().err
        assert "0 of 2 site(s) could be read" in err and "0 of 1 plate(s) done, 1 failed" in err
        assert not (ws / "backend/BATCH1/P1").exists()


def test_quiet_collate_keeps_a_data_loss_warning_and_drops_the_plate_lines(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=2)
    site = sorted(plate_dir.iterdir())[0]
    faults.set_object_value(site, "Cytoplasm", faults.read_rows(site / "Cytoplasm.csv")[0][-1], "12..5e")
    args = ["collate", str(tmp_path), faults.BATCH, faults.PLATE, "--overwrite"]
    capsys.readouterr()
    assert main([*args, "-q"]) == 0
    quiet = capsys.readouterr().err
    assert main(args) == 0
    loud = capsys.readouterr().err
    assert "quarantined" in quiet and f"{faults.PLATE} done (" not in quiet and "plate(s) done" not in quiet
    assert "quarantined" in loud and f"{faults.PLATE} done (" in loud and "1 of 1 plate(s) done" in loud


def _inject(monkeypatch: pytest.MonkeyPatch, where: str, code: int) -> None:
    """Make one kind of write under the workspace fail as a full or read-only disk would."""
    import os

    from cytoprofile import backend, io

    error = OSError(code, os.strerror(code))
    if where == "table":
        def write_table(*_: object, **__: object) -> str:
            raise error
        monkeypatch.setattr(io, "write_table", write_table)
    elif where == "report":
        def write_json(*_: object, **__: object) -> str:
            raise error
        monkeypatch.setattr(io, "write_json", write_json)
    elif where == "sqlite":
        faults.fail_sqlite_writes(monkeypatch, code)
    elif where == "mkdir":
        real = Path.mkdir

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            if "backend" in self.parts:
                raise OSError(code, os.strerror(code), str(self))
            real(self, *args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        import pyarrow.parquet as pq

        class Writer(pq.ParquetWriter):
            def write_table(self, *_: object, **__: object) -> None:
                raise OSError(f"[Errno {code}] Error writing bytes to file. Detail: [errno {code}] {os.strerror(code)}")
        monkeypatch.setattr(backend.pq, "ParquetWriter", Writer)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", ["sqlite", "parquet", "table", "report", "mkdir"])
def test_full_or_read_only_disk_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], where: str, code: int) -> None:
    ws = tmp_path / "ws"
    _small(ws, "P1")
    out = ws / "backend/BATCH1/P1"
    args = ["collate", str(ws), "BATCH1", "P1", "--backend", "sqlite", "--backend", "parquet", "-q"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    _inject(monkeypatch, where, code)
    assert main([*args, "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err and "Traceback" not in err
    assert f"cannot write to {ws / 'backend'}" in err
    assert ("no space left" if code == errno.ENOSPC else "read-only") in err and "re-run" in err
    # nothing partial under a final name; the earlier build is untouched (or, if its report went, not trusted)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert not [n for n in after if n.startswith(".")]
    assert after == before or "P1.report.json" not in after
    monkeypatch.undo()
    assert main([*args, "--overwrite"]) == 0


def test_tmpfs_that_fills_up_is_one_line_exit_1(tmp_path: Path) -> None:
    """A real full file system (a 300 kB tmpfs in a private mount namespace)."""
    import shutil
    import subprocess
    import sys

    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=8, sites=2, cells=40, features=20)  # about 1 MB of backend
    backend_dir = ws / "backend"
    backend_dir.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: cannot mount a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=300k", "none", str(backend_dir)],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"mounting a private tmpfs is not allowed here: {probe.stderr.decode().strip()}")
    script = (f"mount -t tmpfs -o size=300k none {backend_dir} && {sys.executable} -m cytoprofile collate {ws} BATCH1 P1 -q; "
              f"echo status=$?; ls -a {backend_dir}/BATCH1/P1 2>/dev/null")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert "status=1" in done.stdout, done.stdout + done.stderr
    assert "no space left" in done.stderr and "internal error" not in done.stderr
    assert len([line for line in done.stderr.strip().splitlines() if line.strip()]) == 1
    listing = done.stdout.split("status=1", 1)[1].split()
    assert not [n for n in listing if n not in (".", "..")], listing


def test_eof_error_inside_a_command_is_a_bug_not_an_interrupt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cytoprofile.synth

    def _broken(*args: object, **kwargs: object) -> None:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(cytoprofile.synth, "synth", _broken)
    assert main(["synth", str(tmp_path / "ws"), "-q"]) == 3


@pytest.mark.parametrize(("output_format", "suffix"), [("csv", ".csv.gz"), ("parquet", ".parquet")])
def test_qc_on_s3_reads_the_profiles_in_their_format(output_format: str, suffix: str, s3_endpoint: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``cytoprofile qc`` on a bucket stages the profiles whichever format the recipe wrote
    them in, and writes the same summary as QC of the local copy."""
    from cytoprofile import io
    from cytoprofile.collate import collate
    from cytoprofile.config import config_template
    from cytoprofile.pipeline import run
    from cytoprofile.synth import synth

    from .loopback import make_bucket, upload_tree

    local = tmp_path / "ws"
    synth(local, batch="B1", plates=["P1", "P2"], wells=96, well_subset=24, sites=1, cells=8, features=6)
    assert all(r.status == "done" for r in collate(local, "B1", ["P1", "P2"]))
    config = tmp_path / "config.yml"
    text = config_template(workspace=str(local), batch="B1", plates=["P1", "P2"])
    text = re.sub(r"(\nquality_control:[^\n]*\n  perform: )true", r"\1false", text)  # QC below, by command
    config.write_text(text.replace("output_format: csv ", f"output_format: {output_format} ", 1))
    run(config)
    assert any(p.name.endswith(f"_normalized_feature_select_negcon_batch{suffix}")
               for p in (local / "profiles" / "B1" / "P1").iterdir())
    make_bucket(s3_endpoint, f"qc-{output_format}")
    url = f"s3://qc-{output_format}/ws"
    upload_tree(local, url, skip="analysis")
    assert main(["qc", str(local), "B1", "P1", "P2", "-q"]) == 0
    assert main(["qc", url, "B1", "P1", "P2", "--endpoint-url", s3_endpoint, "--tmp-dir", str(tmp_path / "scratch"),
                 "-q"]) == 0
    assert capsys.readouterr().out.split()[-1] == f"{url}/quality_control/report/B1.html"
    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    fs, _ = io.filesystem(url)
    summary = (local / "quality_control" / "summary" / "summary.tsv").read_bytes()
    assert fs.cat_file(f"{url}/quality_control/summary/summary.tsv") == summary
    for plate in ("P1", "P2"):
        assert fs.exists(f"{url}/quality_control/heatmap/B1/{plate}/{plate}_correlation.png")
    assert not any((tmp_path / "scratch").iterdir())
def test_write_gct_help_names_no_reader_that_fails() -> None:
    """cmapPy 4.0.1 cannot parse GCT under pandas 3: the help must not offer it as a reader."""
    text = typer.main.get_command(app).commands["write-gct"].help or ""  # type: ignore[attr-defined]
    assert "Morpheus" in text
    assert "cmapPy" not in text or "cannot read" in text


@pytest.mark.parametrize(("argv", "step", "said"), [
    (["normalize", "--method", "mad_robustize"], "normalize", r"wrote 96 rows × \d+ columns to "),
    (["feature-select", "--operations", "variance_threshold,correlation_threshold"], "feature_select", r"kept \d+ columns; wrote "),
    (["consensus", "--replicate-columns", "Metadata_Well"], "consensus", r"wrote 96 consensus profiles to "),
])
def test_profile_step_commands_write_the_table_its_record_and_a_line(
        argv: list[str], step: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The profile-step commands: the function's table, a provenance record of the step, one line said."""
    import json

    import pandas as pd

    from cytoprofile import consensus, feature_select, normalize

    from .profiles import plate_profiles

    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table = plate_profiles()
    table.to_csv(src, index=False)
    assert main([argv[0], str(src), str(out), *argv[1:]]) == 0
    got = pd.read_csv(out)
    function = {"normalize": lambda t: normalize.normalize(t, method="mad_robustize"),
                "feature_select": lambda t: feature_select.feature_select(
                    t, operations=["variance_threshold", "correlation_threshold"]),
                "consensus": lambda t: consensus.consensus(t, replicate_columns=["Metadata_Well"])}[step]
    expected = function(pd.read_csv(src))
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    record = json.loads((tmp_path / "out.csv.provenance.json").read_text())
    assert record["step"] == step and record["inputs"] == [str(src)] and record["output"] == "out.csv"
    assert record["features"]["out"] == sum(c.startswith(("Cells", "Cytoplasm", "Nuclei")) for c in got.columns)
    assert re.search(said + re.escape(str(out)), " ".join(capsys.readouterr().err.split()))


@pytest.mark.parametrize(("flags", "said"), [
    (["--backend", "sqlite,duckdb"], "--backend duckdb: choose sqlite or parquet"),
    (["--output-format", "tsv"], "--output-format tsv: choose csv, csv.gz or parquet"),
    (["--count-check", "maybe"], "--count-check maybe: choose error, warn or off"),
])
def test_collate_refuses_an_unknown_choice_naming_the_choices(flags: list[str], said: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collate", str(tmp_path), "B", "P", *flags, "-q"]) == 1
    assert f"error: {said}" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("command", ["aggregate", "collate"])
def test_aggregate_method_is_the_config_name_for_the_operation(command: str, tmp_path: Path) -> None:
    """The recipe's ``aggregate.method`` is accepted as ``--method`` beside ``--operation``, with the same effect."""
    import pandas as pd

    ws = tmp_path / "ws"
    _small(ws, "P1")
    backend = ws / "backend" / "BATCH1" / "P1"
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    tables = {"median": pd.read_csv(backend / "P1.csv")}
    for flag in ("--operation", "--method"):
        if command == "aggregate":
            out = tmp_path / f"{flag[2:]}.csv"
            assert main(["aggregate", str(backend / "P1.sqlite"), str(out), flag, "mean", "-q"]) == 0
        else:
            assert main(["collate", str(ws), "BATCH1", "P1", flag, "mean", "--overwrite", "-q"]) == 0
            out = backend / "P1.csv"
        tables[flag] = pd.read_csv(out)
    pd.testing.assert_frame_equal(tables["--operation"], tables["--method"])
    if command == "collate":  # the flag had its effect: means, not collate's medians
        assert not tables["--method"].equals(tables["median"])


def test_collate_outcome_is_one_unboxed_line_per_plate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """A plate's outcome is one record (wrapped at words on a terminal, like every record): no box to cut a path."""
    monkeypatch.setenv("COLUMNS", "50")
    ws = tmp_path / "ws"
    _small(ws)
    capfd.readouterr()
    assert main(["collate", str(ws), "BATCH1", "P1", "P2"]) == 0
    text = capfd.readouterr()
    screen = text.out + text.err
    lines = [line for line in screen.splitlines() if "sites ingested" in line]
    assert [line.split()[1] for line in lines] == ["P1", "P2"], screen
    assert all(" done (" in line and line.rstrip().endswith("rows") for line in lines), lines
    assert not set("│┃┏┗━┡") & set("".join(lines))
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    assert "sites ingested" not in capfd.readouterr().err  # --quiet: no outcome lines (nothing was dropped)


def test_a_plate_named_twice_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two tasks of one plate would meet at its lock (one failing against the other): refused, nothing run."""
    ws = tmp_path / "ws"
    _small(ws, "P1")
    capsys.readouterr()
    assert main(["collate", str(ws), "BATCH1", "P1", "P1", "--jobs", "2", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: plate P1 given more than once; name each plate once"
    assert not (ws / "backend").exists()


@pytest.mark.parametrize("argv", [["run", "{tmp}/absent.yml"], ["collate", "{tmp}/nowhere", "B1", "P1"]])
def test_an_early_error_is_one_line_with_no_blank_line_before_it(tmp_path: Path, argv: list[str]) -> None:
    """A command failing before any progress is drawn prints its error and nothing else (no empty display)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run([sys.executable, "-m", "cytoprofile", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines and lines[0].strip(), f"the error output starts with a blank line: {result.stderr!r}"
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], result.stderr
    assert all(line.strip() for line in lines), result.stderr


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """Commands made from their functions' signatures import those functions' modules at start-up; none of them
    may import scipy.stats, matplotlib or the like at module level (scipy.stats alone doubled the start-up of
    every command, `collate --help` included: 0.57 s → 1.2 s, +60 MB)."""
    heavy = ("scipy.stats", "scipy", "matplotlib", "harmonypy", "copairs", "polars", "duckdb", "anndata", "sklearn")
    code = f"import sys, cytoprofile.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("step", ["aggregate", "collate", "normalize", "consensus"])
def test_a_column_named_twice_in_a_list_is_one_line(tmp_path: Path, step: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--strata Metadata_Plate,Metadata_Plate`` or ``--features X,X`` wrote the column twice into the output,
    exit 0; a name given twice is refused, naming it, before anything is written."""
    ws = tmp_path / "ws"
    plate_dir = faults.small_plate(ws, wells=2, sites=1)
    assert plate_dir.exists()
    assert main(["collate", str(ws), faults.BATCH, faults.PLATE, "-q"]) == 0
    backend = ws / "backend" / faults.BATCH / faults.PLATE
    profiles = backend / f"{faults.PLATE}.csv"
    feature = next(c for c in profiles.read_text().splitlines()[0].split(",") if c.startswith("Cells_"))
    out = tmp_path / "out.csv"
    argv = {"aggregate": ["aggregate", str(backend / f"{faults.PLATE}.sqlite"), str(out), "--strata", "Metadata_Plate,Metadata_Plate"],
            "collate": ["collate", str(ws), faults.BATCH, faults.PLATE, "--overwrite", "--strata", "Metadata_Well,Metadata_Well"],
            "normalize": ["normalize", str(profiles), str(out), "--features", f"{feature},{feature}"],
            "consensus": ["consensus", str(profiles), str(out), "--features", f"{feature},{feature}"]}[step]
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    assert "more than once" in err and "Traceback" not in err, err
    assert not out.exists()
