"""The `interp` extra: our models in TransformerLens (equal logits, equal activations at twin hook
points), SAEs trained by SAELens in its own format (it loads them; resume; quality figures), the
feature report, and steering along an SAE feature. One module, so TransformerLens and SAELens
(several seconds to import) are imported once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tinystories.cli import main
from tinystories.infer.params import PRESETS
from tinystories.interpret.hooks import run_with_cache
from tinystories.model.checkpoint import LoadedModel, load_model, save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.hf import export_hf
from tinystories.model.loader import load_any
from tinystories.tokenizer import Tokenizer

pytest.importorskip("transformer_lens", reason="needs the interp extra: pip install -e '.[interp]'")
sae_lens = pytest.importorskip("sae_lens", reason="needs the interp extra: pip install -e '.[interp]'")
pytestmark = pytest.mark.slow  # (TransformerLens and SAELens take seconds to import, SAEs to train)

from tinystories.interpret.steering import steered, steering_direction
from tinystories.interpret.transformer_lens import SAME_TENSOR, tl_hook_name, to_transformer_lens

SEQ = 40  # longer than the local window below, so local attention really bites


def _loaded(tmp: Path, tokenizer: Tokenizer, **kw: object) -> LoadedModel:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=2, n_head=4, d_model=64, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # move norms and biases off their init values, so a missed one shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return load_model(save_model(tmp / "ours", model, tokenizer))


@pytest.mark.parametrize("kw", [{"arch": "neo", "local_window": 8}, {"arch": "modern"},
                                {"arch": "modern", "qk_norm": True, "mlp": "relu2", "tie_embeddings": False,
                                 "rope_theta": 500.0, "norm_eps": 1e-6}])
def test_transformer_lens_twin_has_our_logits_and_activations(tmp_path: Path, tokenizer: Tokenizer,
                                                              kw: dict) -> None:
    loaded = _loaded(tmp_path, tokenizer, **kw)
    tl = to_transformer_lens(loaded)
    idx = torch.randint(0, tokenizer.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    logits, cache = run_with_cache(loaded.model, idx)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(idx)
    torch.testing.assert_close(tl_logits, logits, atol=1e-4, rtol=0)
    # The documented table of twin hook points holds the same tensors.
    names = [n.replace(".L.", f".{layer}.") for n in SAME_TENSOR for layer in range(2)] + ["hook_embed"]
    for name in names:
        torch.testing.assert_close(tl_cache[tl_hook_name(name)], cache.store[name], atol=1e-4, rtol=0, msg=name)
    # TransformerLens's tokenizer reads a story as ours does (EOS first).
    text = "Once upon a time, Lily saw a dog."
    assert tl.to_tokens(text)[0].tolist() == tokenizer.encode_story(text)


def test_hugging_face_folder_converts(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """A transformers Llama folder, loaded by load_any, reaches TransformerLens with the same logits."""
    folder = export_hf(_loaded(tmp_path, tokenizer, arch="modern"), tmp_path / "hf", PRESETS["story"])
    loaded = load_any(folder)
    idx = torch.randint(0, tokenizer.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(to_transformer_lens(loaded)(idx), loaded.model(idx)[0], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def sae_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sae") / "sae"
    assert main(_sae_args(tiny_model_dir, out)) == 0
    return out


def _sae_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["interpret", "sae", str(model), "--hook", "blocks.1.resid_post", "--out", str(out), "--expansion", "4",
            "--k", "8", "--tokens", "6144", "--batch-size", "512", "--context", "64", "--buffer", "2048",
            "--eval-tokens", "1024", "--checkpoints", "2", *extra]


def test_sae_is_saved_in_sae_lens_format(sae_dir: Path, tiny_model_dir: Path) -> None:
    sae = sae_lens.SAE.load_from_disk(str(sae_dir))
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 8 and (cfg["d_in"], cfg["d_sae"]) == (32, 128)
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["tinystories_hook"] == "blocks.1.hook_resid_post"
    # What SAELens computes from the file is a TopK SAE of these weights: pin its semantics.
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(8, dim=-1)
        feats = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        torch.testing.assert_close(sae.encode(x), feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(feats), feats @ sae.W_dec + sae.b_dec, atol=1e-5, rtol=1e-5)
    report = json.loads((sae_dir / "sae_report.json").read_text())
    for key in ("l0", "explained_variance", "dead_fraction", "dense_features", "ce_loss_score",
                "ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablated"):
        assert key in report
    assert 0 < report["l0"] <= 8 and report["training_tokens"] == 6144 and report["eval_tokens"] > 0
    assert report["ce_loss_score"] == pytest.approx(
        (report["ce_loss_zero_ablated"] - report["ce_loss_with_sae"])
        / (report["ce_loss_zero_ablated"] - report["ce_loss_clean"]), rel=1e-2)
    assert json.loads((sae_dir / "sae_config.json").read_text())["model"] == str(tiny_model_dir)


def test_sae_resumes_and_refuses_other_settings(sae_dir: Path, tiny_model_dir: Path, capsys) -> None:
    latest = json.loads((sae_dir / "checkpoints" / "latest.json").read_text())
    assert 0 < latest["training_samples"] < 6144 and latest["windows"] > 0
    assert main(_sae_args(tiny_model_dir, sae_dir)) == 0  # the same command again: resumes
    report = json.loads((sae_dir / "sae_report.json").read_text())
    assert report["resumed_at_tokens"] == latest["training_samples"] and report["training_tokens"] == 6144
    assert main(_sae_args(tiny_model_dir, sae_dir, "--k", "4")) == 2
    assert "trained with other settings (k)" in capsys.readouterr().err


def test_feature_report(sae_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"
    assert main(["interpret", "features", str(sae_dir), "--out", str(out), "--max-stories", "40",
                 "--top-features", "2", "--random-features", "2", "--top-k", "3", "--logit-tokens", "4"]) == 0
    page = (out / "report.html").read_text()
    data = json.loads((out / "features.json").read_text())
    shown = data["features"]
    assert [f["kind"] for f in shown] == ["most active"] * 2 + ["random"] * 2
    assert shown[0]["frequency"] >= shown[1]["frequency"] >= max(f["frequency"] for f in shown[2:])
    assert page.count("<h3>Feature ") == 4 and len(re.findall(r'<span class="focus"', page)) == 4 * 3
    assert page.count('src="data:image/png;base64,') == 4
    for f in shown:
        assert len(f["promoted"]) == len(f["suppressed"]) == 4
        assert f["promoted"][0][1] > 0 > f["suppressed"][0][1]
        top = f["top_examples"][0]
        assert top["acts"][top["focus"]] == pytest.approx(top["value"], rel=1e-4) and top["value"] > 0


def test_steering_along_a_feature_moves_the_next_token(sae_dir: Path, tiny_model_dir: Path) -> None:
    from tinystories.interpret.features import load_sae, logit_effects

    sae, _ = load_sae(sae_dir)
    hook, vector = steering_direction(f"{sae_dir}:3")
    assert hook == "blocks.1.hook_resid_post" and vector.norm() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(vector, sae.W_dec[3].detach() / sae.W_dec[3].detach().norm())
    model = load_model(tiny_model_dir).model
    promoted = int(logit_effects(model, hook, vector[None])[0].argmax())
    idx = torch.tensor([[0, 5, 9, 17, 33, 2]])

    def logp(alpha: float) -> float:
        with torch.no_grad(), steered(model, [(hook, vector, alpha)]):
            return float(torch.log_softmax(model(idx)[0][0], -1)[:, promoted].mean())

    assert logp(-20.0) < logp(0.0) < logp(20.0)


def test_the_docs_transformer_lens_example_runs(tiny_model_dir: Path, capsys) -> None:
    """docs/interpretability.md's Python example, as written, on a model folder (here the fixture's)."""
    doc = (Path(__file__).parents[1] / "docs" / "interpretability.md").read_text()
    code = re.search(r"```python\n(import torch\nfrom tinystories.interpret import to_transformer_lens.*?)```",
                     doc, re.DOTALL)
    assert code is not None
    exec(code.group(1).replace('"runs/tiny"', repr(str(tiny_model_dir))), {})  # noqa: S102 (the docs example itself)
    assert "torch.Size([1, " in capsys.readouterr().out
