"""The recipe on object storage names object-storage URLs, never its deleted scratch copies."""

from __future__ import annotations

from pathlib import Path

import pytest

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
