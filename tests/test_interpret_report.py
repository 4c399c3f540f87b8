"""`tinystories interpret` writes a self-contained HTML report with its images, data and config."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tinystories.cli import main


@pytest.mark.slow
def test_cli_writes_report_with_images(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    rc = main(["interpret", str(tiny_model_dir), "--out", str(out), "--corpus", "bundled:valid",
               "--layer", "1", "--max-stories", "24", "--head-stories", "4", "--units", "2", "--top-k", "3",
               "--random-directions", "4", "--head", "0.2", "--text", "Tom had a red ball. He threw it to Sue."])
    assert rc == 0
    progress = capsys.readouterr().err
    assert "24/24" in progress and "48/48" not in progress  # one bar per pass, counting stories
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3  # grid, scatter, >= 1 head heatmap (neuron lists are HTML, not images too)
    # Each section interprets its figure against its baseline, in words.
    assert re.search(r"heads are (diffuse|specialised)|are specialised", page)
    assert re.search(r"Neurons are (more|less|no more) token-selective than random directions", page)
    assert page.count("<h2>") == 3 and "<style>" in page
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "layer 0 head 2" in page and "Tom had a red ball" in page
    assert len(re.findall(r'<span class="focus"', page)) == 2 * 2 * 3  # (neurons + directions) x units x k
    for png in ("heads_grid.png", "heads_scatter.png", "head_L0H2.png", "neurons_layer1.png", "random_layer1.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    config = json.loads((out / "interpret_config.json").read_text())
    assert config["layer"] == 1 and config["seed"] == 0 and config["model"] == str(tiny_model_dir)
    heads = json.loads((out / "heads.json").read_text())
    assert len(heads["heads"]) == 2 * 4 and heads["thresholds"]["sink"] == 0.5
    neurons = json.loads((out / "neurons.json").read_text())
    assert len(neurons["shown_neurons"]) == 2 and neurons["stories"] == 24


def test_bad_layer_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    rc = main(["interpret", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--layer", "5"])
    assert rc == 2
    assert "--layer 5 does not exist" in capsys.readouterr().err
    rc = main(["interpret", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--head", "3"])
    assert rc == 2 and "LAYER.HEAD" in capsys.readouterr().err
