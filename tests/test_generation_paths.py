"""One generation loop: the same seed and settings give the same story from `tinystories sample`,
`eval`'s completions and the server (the playground is checked in test_playground.py), and one
client's steering changes only its own stories."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import torch

from tinystories.cli import main
from tinystories.eval.sample import sample_completions
from tinystories.infer.offline import complete
from tinystories.infer.params import PRESETS, STEER_ALPHA, SamplingParams, preset
from tinystories.infer.server import create_app, load_models, running
from tinystories.model.checkpoint import LoadedModel

PROMPT = "Once upon a time, Tom"
SETTINGS = {"top-p": {"top_p": 0.8}, "top-k": {"top_k": 20}, "both": {"top_p": 0.8, "top_k": 50},
            "min-p and penalty": {"min_p": 0.05, "repetition_penalty": 1.3}}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> tuple[str, LoadedModel, dict[str, tuple[str, torch.Tensor]]]:
    models = load_models([str(tiny_model_dir)])
    (name, loaded), = models.items()
    up = torch.zeros(loaded.model.cfg.d_model)
    up[3] = 1.0
    directions = {"three": ("blocks.1.hook_resid_post", up)}
    app = create_app(models, directions={name: directions})
    with running(app) as url:
        yield url, name, loaded, directions  # type: ignore[misc]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("kind", SETTINGS)
def test_the_same_story_from_every_path(served: tuple, tiny_model_dir: Path, kind: str, seed: int,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, name, loaded, _ = served
    settings = {"top_p": 1.0, "top_k": 0, **SETTINGS[kind]}
    params = SamplingParams(max_new_tokens=40, temperature=0.9, seed=seed, **settings)  # type: ignore[arg-type]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    assert main(["sample", str(tiny_model_dir), "--prompt", PROMPT, "--seed", str(seed), "--temperature", "0.9",
                 "--max-new-tokens", "40", *flags]) == 0
    from_sample = capsys.readouterr().out.rstrip("\n")
    from_eval = sample_completions(loaded, [PROMPT], 1, params, progress=False)[0][0]
    r = httpx.post(url + "/v1/completions", timeout=60, json={
        "model": name, "prompt": PROMPT, "max_tokens": 40, "temperature": 0.9, "seed": seed, **settings})
    from_server = r.json()["choices"][0]["text"]
    assert from_sample == PROMPT + from_eval == PROMPT + from_server
    assert len(from_server) > 20


def test_commands_start_from_one_set_of_defaults(served: tuple) -> None:
    url, name, *_ = served
    card = httpx.get(url + "/v1/models").json()["data"][0]
    story = PRESETS["story"]
    assert card["sampling"] == {"temperature": story.temperature, "top_p": story.top_p, "top_k": story.top_k,
                                "min_p": story.min_p, "repetition_penalty": story.repetition_penalty,
                                "max_tokens": story.max_new_tokens, "steer_alpha": STEER_ALPHA}
    assert card["directions"] == {"three": "blocks.1.hook_resid_post"}
    from tinystories.cli.sample import SampleConfig
    from tinystories.eval.config import SuiteConfig

    assert SampleConfig().sampling == preset("story", seed=0) and SampleConfig().alpha == STEER_ALPHA
    # A steer entry without alpha adds STEER_ALPHA times the direction, as `sample --steer` does.
    direction = {"model": name, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 1}
    said = [httpx.post(url + "/v1/completions", timeout=60, json={**direction, "steer": [steer]}).json()
            ["choices"][0]["logprobs"]["token_logprobs"]
            for steer in ({"direction": "three"}, {"direction": "three", "alpha": STEER_ALPHA},
                          {"direction": "three", "alpha": 1.0})]
    assert said[0] == said[1] != said[2]
    assert SuiteConfig().sampling.temperature == PRESETS["api"].temperature == 1.0


def test_steering_is_per_request(served: tuple) -> None:
    """A steered request and a plain one in the same batch: the plain one writes what it writes alone."""
    url, name, loaded, directions = served
    body = {"model": name, "prompt": PROMPT, "max_tokens": 60, "temperature": 0}
    alone = httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    hook, vector = directions["three"]
    steered_local = complete(loaded.model, loaded.tokenizer, [PROMPT], SamplingParams(max_new_tokens=60, temperature=0),
                             adds={hook: 8.0 * vector})[0]
    assert steered_local != alone
    results: dict[str, list[str]] = {}

    def ask(key: str, extra: dict) -> None:
        r = httpx.post(url + "/v1/completions", json={**body, "n": 4, **extra}, timeout=60)
        assert r.status_code == 200, r.text
        results[key] = [c["text"] for c in r.json()["choices"]]

    threads = [threading.Thread(target=ask, args=("plain", {})),
               threading.Thread(target=ask, args=("named", {"steer": [{"direction": "three", "alpha": 8}]})),
               threading.Thread(target=ask, args=("vector", {"steer": [{"hook": hook, "vector": vector.tolist(),
                                                                         "alpha": 4}] * 2}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["plain"] == [alone] * 4
    assert results["named"] == results["vector"] == [steered_local] * 4


@pytest.mark.parametrize("steer,needle", [
    ([{"direction": "nope"}], "no direction named 'nope'"),
    ([{"hook": "blocks.9.hook_resid_post", "vector": [1.0] * 32}], "no hook point named"),
    ([{"hook": "blocks.0.attn.hook_z", "vector": [1.0] * 32}], "cannot add a vector"),
    ([{"hook": "blocks.0.hook_resid_post", "vector": [1.0] * 5}], "needs [32]"),
    ([{"direction": "three", "alpha": "big"}], "'alpha' must be"),
    ("three", "must be a list"),
])
def test_bad_steering_is_a_clear_400(served: tuple, steer: object, needle: str) -> None:
    url, name, *_ = served
    r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "Tom", "max_tokens": 5, "steer": steer})
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == ("alpha" if "alpha" in needle else "steer")


def test_sample_steers_with_a_saved_direction(served: tuple, tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tinystories.interpret.steering import save_direction

    _, _, loaded, directions = served
    hook, vector = directions["three"]
    save_direction(tmp_path / "three.pt", hook, vector)
    args = ["sample", str(tiny_model_dir), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "30"]
    assert main([*args, "--steer", str(tmp_path / "three.pt"), "--alpha", "8"]) == 0
    steered = capsys.readouterr().out.rstrip("\n")
    expected = complete(loaded.model, loaded.tokenizer, [PROMPT], SamplingParams(max_new_tokens=30, temperature=0),
                        adds={hook: 8.0 * vector})[0]
    assert steered == PROMPT + expected
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") != steered
    assert main([*args, "--steer", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    save_direction(tmp_path / "narrow.pt", hook, vector[:5])  # the engine refuses it: one line, nothing echoed
    assert main([*args, "--steer", str(tmp_path / "narrow.pt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--steer: the vector for" in err and "it needs [32]" in err and "Traceback" not in err
