"""GGUF export checked against the real llama.cpp runtime (llama-cpp-python loads our file and
must tokenize, write and score exactly as we do), plus what the file holds and what it refuses."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinystories.cli import main
from tinystories.errors import TinyStoriesError
from tinystories.eval.bpb import evaluate_bpb
from tinystories.infer.offline import generate
from tinystories.infer.params import PRESETS, SamplingParams
from tinystories.model.checkpoint import LoadedModel, save_model
from tinystories.model.gguf import export_gguf
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.loader import load_any
from tinystories.tokenizer import Tokenizer

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="the gguf package is not installed (pip install -e '.[gguf]')")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama_cpp is not importable (pip install -e '.[gguf]' builds it)")
PROMPT = "Once upon a time"


def tiny(tokenizer: Tokenizer, **kw: object) -> GPT:
    cfg = {"vocab_size": tokenizer.vocab_size, "context_length": 256, "n_layer": 2, "n_head": 4, "d_model": 64,
           "arch": "modern", "norm_eps": 1e-6, "rope_theta": 5000.0, **kw}
    return GPT(GPTConfig(**cfg))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tokenizer: Tokenizer, stories: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny modern model after 30 AdamW steps on real stories (a random one predicts nearly
    uniformly, which would make the q8_0 comparison easy), saved as a model folder. Non-default
    eps and RoPE base check that they travel too."""
    torch.manual_seed(0)
    model = tiny(tokenizer)
    ids = np.concatenate([np.array(s) for s in tokenizer.encode_stories(stories[:100])])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    windows = torch.from_numpy(ids[:len(ids) // 65 * 65].reshape(-1, 65)).long()
    for _ in range(30):
        batch = windows[torch.randint(len(windows), (8,))]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        assert loss is not None
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(tmp_path_factory.mktemp("gguf") / "model", model.eval(), tokenizer)


def export(folder: Path, dtype: str) -> Path:
    out = folder.parent / f"model-{dtype}.gguf"
    if not out.exists():
        assert main(["export-gguf", str(folder), str(out), "--dtype", dtype]) == 0
    return out


def llama(path: Path, exact: bool = False, **kw: object) -> Any:  # a llama_cpp.Llama (optional package)
    """llama.cpp on one thread; `exact`: with a float32 KV cache (its default stores keys and values
    in f16, which moves logits by ~1e-3 and could flip a near-tie in a greedy story)."""
    import llama_cpp

    if exact:
        kw.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, **kw)


# ---------------------------------------------------------------- the file, without llama.cpp
def test_refuses_what_llama_cpp_cannot_hold(tokenizer: Tokenizer, tmp_path: Path) -> None:
    cases = [({"arch": "neo"}, "GPT-Neo"), ({"qk_norm": True}, "QK-norm"), ({"mlp": "relu2"}, "relu2 MLP")]
    for kw, what in cases:
        loaded = LoadedModel(tiny(tokenizer, **kw), tokenizer, {}, tmp_path)
        with pytest.raises(TinyStoriesError, match=what) as err:
            export_gguf(loaded, tmp_path / "m.gguf", "f32", PRESETS["api"])
        assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.gguf*"))


@needs_gguf
def test_metadata_and_modelfile(trained: Path) -> None:
    from gguf import GGUFReader

    out = export(trained, "q8_0")
    reader = GGUFReader(out)

    def value(key: str) -> object:
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.rope.freq_base") == pytest.approx(5000.0)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("llama.context_length") == 256 and value("llama.rope.dimension_count") == 16
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.bos_token_id") == value("tokenizer.ggml.eos_token_id") == 0
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert names["blk.0.attn_q.weight"] == "Q8_0" and names["output_norm.weight"] == "F32"
    modelfile = out.with_suffix(".Modelfile").read_text()
    assert f"FROM ./{out.name}" in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    api = PRESETS["api"]  # the file and the Modelfile sample as our API does
    assert (value("general.sampling.temp"), value("general.sampling.top_k"), value("general.sampling.top_p")) == (
        pytest.approx(api.temperature), api.top_k, pytest.approx(api.top_p))
    assert f"PARAMETER temperature {api.temperature:g}\nPARAMETER top_k {api.top_k}\n" in modelfile


# ---------------------------------------------------------------- the real runtime
@needs_llama_cpp
def test_llama_cpp_tokenizes_our_stories_to_our_ids(trained: Path, tokenizer: Tokenizer,
                                                    valid_stories: list[str]) -> None:
    llm = llama(export(trained, "f32"), vocab_only=True)
    assert any(not s.isascii() for s in valid_stories)  # curly quotes and dashes are among them
    ours = tokenizer.encode_stories(valid_stories)
    theirs = [llm.tokenize(s.encode(), add_bos=True, special=False) for s in valid_stories]
    assert theirs == ours


@needs_llama_cpp
@pytest.mark.parametrize("tied", [True, False])
def test_llama_cpp_writes_our_greedy_story(trained: Path, tokenizer: Tokenizer, tmp_path: Path,
                                           tied: bool) -> None:
    if tied:  # the trained model
        folder = trained
    else:  # an untied output layer and a vocabulary padded past the tokenizer's
        torch.manual_seed(1)
        model = tiny(tokenizer, tie_embeddings=False, vocab_size=tokenizer.vocab_size + 32).eval()
        with torch.no_grad():  # sharper than the init: greedy text wanders over the vocabulary
            for p in model.parameters():
                p.mul_(3)
        folder = save_model(tmp_path / "untied", model, tokenizer)
    eos = tokenizer.eos_id
    ids = generate(load_any(folder).model, tokenizer, [tokenizer.encode_story(PROMPT)],
                   SamplingParams(max_new_tokens=60, temperature=0))[0]
    llm = llama(export(folder, "f32"), exact=True)
    prompt = llm.tokenize(PROMPT.encode())  # llama.cpp puts <|endoftext|> in front itself
    assert prompt == tokenizer.encode_story(PROMPT)
    theirs: list[int] = []
    for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):  # llama.cpp's greedy sampler
        if token == eos or len(theirs) == 60:
            break
        theirs.append(token)
    assert theirs == ids
    assert tied or len(set(ids)) >= 20  # the trained model's greedy story may loop on two tokens
    text = llm.create_completion(PROMPT, max_tokens=60, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    assert text == tokenizer.decode(ids).replace("\ufffd", "")  # llama-cpp-python drops broken UTF-8


@needs_llama_cpp
def test_llama_cpp_logits_match_ours_at_f32(trained: Path, tokenizer: Tokenizer, valid_stories: list[str]) -> None:
    ids = tokenizer.encode_story(valid_stories[0])[:256]
    with torch.no_grad():
        ours = load_any(trained).model(torch.tensor([ids]))[0][0].numpy()
    llm = llama(export(trained, "f32"), exact=True, logits_all=True)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[:len(ids)])
    assert np.abs(theirs - ours).max() < 1e-4 * np.abs(ours).max()


@needs_llama_cpp
def test_llama_cpp_q8_0_scores_within_one_percent(trained: Path, tokenizer: Tokenizer,
                                                  valid_stories: list[str]) -> None:
    """Bits per byte through llama.cpp's own logits at q8_0, against ours (float32) on the same stories."""
    model = load_any(trained).model
    stories = [s for s in valid_stories if len(tokenizer.encode(s)) + 2 <= 256][:24]
    ours = evaluate_bpb(model, tokenizer, stories, progress=False)
    llm = llama(export(trained, "q8_0"), logits_all=True)
    nll = 0.0
    for ids in tokenizer.encode_stories(stories, end=True):
        llm.reset()
        llm.eval(ids[:-1])
        logits = np.asarray(llm.scores[:len(ids) - 1], dtype=np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
    theirs = nll / ours.bytes / math.log(2)
    assert abs(theirs - ours.bpb) < 0.01 * ours.bpb, (theirs, ours.bpb)
