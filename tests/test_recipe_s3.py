"""The recipe on object storage names object-storage URLs, never its deleted scratch copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from cytoprofile import io
from cytoprofile.config import config_template
from cytoprofile.errors import InputError
from cytoprofile.pipeline import run
from cytoprofile.synth import synth

from .loopback import make_bucket, upload_tree


def test_missing_backend_on_s3_names_the_url(s3_endpoint: str, tmp_path: Path) -> None:
    make_bucket(s3_endpoint, "recipe")
    local = tmp_path / "ws"
    synth(local, batch="B1", plates=["P1"], wells=96, well_subset=2, sites=1, cells=3, features=4)
    url = "s3://recipe/ws"
    upload_tree(local, url, skip="analysis")
    config = tmp_path / "config.yml"
    config.write_text(config_template(workspace=url, batch="B1", plates=["P1"]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(InputError) as info:
        run(config, tmp_dir=str(scratch))
    message = str(info.value)
    assert f"{url}/backend/B1/P1/P1.sqlite" in message, message
    assert str(scratch) not in message and "cytoprofile-run-" not in message


def test_processing_chain_on_s3_resumes_from_its_intermediates(s3_endpoint: str, tmp_path: Path) -> None:
    from cytoprofile.collate import collate

    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    fs, _ = io.filesystem("s3://chain")
    fs.mkdir("chain")
    local = tmp_path / "ws"
    synth(local, batch="B1", plates=["P1"], wells=96, well_subset=32, sites=1, cells=10, features=12)
    assert all(r.status == "done" for r in collate(local, "B1", ["P1"], backend=("sqlite",)))
    url = "s3://chain/ws"
    for path in (p for p in local.rglob("*") if p.is_file() and "analysis" not in p.parts):
        io.upload(path, io.join(url, str(path.relative_to(local))))
    text = config_template(workspace=url, batch="B1", plates=["P1"])
    assert "processing: null " in text
    config = tmp_path / "config.yml"
    config.write_text(text.replace("processing: null ", "processing: profiles_var_mad ", 1))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    first = run(config, tmp_dir=str(scratch))
    assert [r.split(":")[0] for r in first.ran if r.startswith("processing")] == ["processing var", "processing mad"]
    made = {name: fs.cat_file(io.join(url, "profiles", "processing", name))
            for name in ("profiles_var.parquet", "profiles_var_mad.parquet")}
    again = run(config, tmp_dir=str(scratch))
    assert not [r for r in again.ran if r.startswith("processing")], again.ran
    assert sum(r.startswith("processing") for r in again.skipped) == 2, again.skipped
    # a run that stopped after var: only mad is made again, from the var output on S3
    fs.rm(io.join(url, "profiles", "processing", "profiles_var_mad.parquet"))
    resumed = run(config, tmp_dir=str(scratch))
    assert [r.split(":")[0] for r in resumed.ran if r.startswith("processing")] == ["processing mad"]
    assert fs.cat_file(io.join(url, "profiles", "processing", "profiles_var.parquet")) == made["profiles_var.parquet"]
    assert io.exists(io.join(url, "profiles", "processing", "profiles_var_mad.parquet"))
    assert not any(scratch.iterdir())
