"""GGUF export checked against the real llama.cpp runtime (llama-cpp-python loads our file and
must tokenize, write and score exactly as we do), plus what the file holds and what it refuses.

llama.cpp runs in a child process (`isolation.in_child`): a crash in it fails one test, named."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from isolation import in_child
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
                                reason="the gguf package is not installed: pip install -e '.[gguf]'")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama_cpp is not importable: python scripts/install_llama_cpp.py "
                                     "(llama.cpp for this CPU, without its AMX matmul; docs/llama-cpp.md)")
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


# What the tests ask of llama.cpp, each run in a child process by `in_child`.
def llama_tokenize(path: Path, stories: list[str]) -> list[list[int]]:
    llm = llama(path, vocab_only=True)
    return [llm.tokenize(s.encode(), add_bos=True, special=False) for s in stories]


def llama_greedy(path: Path, prompt: str, eos: int, n: int) -> tuple[list[int], list[int], str]:
    """The prompt's ids (llama.cpp puts <|endoftext|> in front itself), up to `n` tokens of
    llama.cpp's greedy sampler, and the text of its greedy completion."""
    llm = llama(path, exact=True)
    ids = llm.tokenize(prompt.encode())
    theirs: list[int] = []
    for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
        if token == eos or len(theirs) == n:
            break
        theirs.append(token)
    text = llm.create_completion(prompt, max_tokens=n, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    return ids, theirs, text


def llama_scores(path: Path, rows: list[list[int]], exact: bool) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each row, each row evaluated from an empty cache."""
    llm = llama(path, exact=exact, logits_all=True)
    out = []
    for ids in rows:
        llm.reset()
        llm.eval(ids)
        out.append(np.asarray(llm.scores[:len(ids)], dtype=np.float64))
    return out


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
    assert (value("general.sampling.min_p"), value("general.sampling.penalty_repeat"),
            value("general.sampling.penalty_last_n")) == (pytest.approx(api.min_p), api.repetition_penalty, 256)
    assert f"PARAMETER temperature {api.temperature:g}\nPARAMETER top_k {api.top_k}\n" in modelfile


@needs_gguf
@pytest.mark.parametrize("flags,dtype,warned", [({"avx2", "amx_int8", "amx_tile"}, "q8_0", True),
                                                ({"avx2", "amx_int8", "amx_tile"}, "f16", False),
                                                ({"avx2", "avx512f"}, "q8_0", False)])
def test_q8_0_on_an_amx_cpu_is_warned_of(trained: Path, tmp_path: Path, flags: set[str], dtype: str, warned: bool,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tinystories.cli import models

    monkeypatch.setattr(models, "cpu_model_and_flags", lambda: ("a CPU", flags))
    assert main(["export-gguf", str(trained), str(tmp_path / "m.gguf"), "--dtype", dtype]) == 0
    err = capsys.readouterr().err
    assert ("AMX" in err) == warned
    if warned:
        assert err.count("\n") == 1 and "install_llama_cpp.py" in err and "--dtype f16" in err


# ---------------------------------------------------------------- the real runtime
@needs_llama_cpp
@pytest.mark.slow  # (a child process each, which imports torch and llama.cpp)
def test_llama_cpp_tokenizes_our_stories_to_our_ids(trained: Path, tokenizer: Tokenizer,
                                                    valid_stories: list[str]) -> None:
    assert any(not s.isascii() for s in valid_stories)  # curly quotes and dashes are among them
    ours = tokenizer.encode_stories(valid_stories)
    assert in_child(llama_tokenize, export(trained, "f32"), valid_stories) == ours


@needs_llama_cpp
@pytest.mark.slow  # (a child process each, which imports torch and llama.cpp)
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
    prompt, theirs, text = in_child(llama_greedy, export(folder, "f32"), PROMPT, eos, 60)
    assert prompt == tokenizer.encode_story(PROMPT)
    assert theirs == ids
    assert tied or len(set(ids)) >= 20  # the trained model's greedy story may loop on two tokens
    assert text == tokenizer.decode(ids).replace("\ufffd", "")  # llama-cpp-python drops broken UTF-8


@needs_llama_cpp
@pytest.mark.slow  # (a child process each, which imports torch and llama.cpp)
def test_llama_cpp_logits_match_ours_at_f32(trained: Path, tokenizer: Tokenizer, valid_stories: list[str]) -> None:
    ids = tokenizer.encode_story(valid_stories[0])[:256]
    with torch.no_grad():
        ours = load_any(trained).model(torch.tensor([ids]))[0][0].numpy()
    theirs = in_child(llama_scores, export(trained, "f32"), [ids], True)[0]
    assert np.abs(theirs - ours).max() < 1e-4 * np.abs(ours).max()


@needs_llama_cpp
@pytest.mark.slow  # (a child process each, which imports torch and llama.cpp)
def test_llama_cpp_q8_0_scores_within_one_percent(trained: Path, tokenizer: Tokenizer,
                                                  valid_stories: list[str]) -> None:
    """Bits per byte through llama.cpp's own logits at q8_0, against ours (float32) on the same
    stories; whole stories in one batch each (llama.cpp's AMX int8 matmul segfaulted right there)."""
    model = load_any(trained).model
    stories = [s for s in valid_stories if len(tokenizer.encode(s)) + 2 <= 256][:24]
    ours = evaluate_bpb(model, tokenizer, stories, progress=False)
    rows = tokenizer.encode_stories(stories, end=True)
    nll = 0.0
    for ids, logits in zip(rows, in_child(llama_scores, export(trained, "q8_0"), [r[:-1] for r in rows], False)):
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
    theirs = nll / ours.bytes / math.log(2)
    assert abs(theirs - ours.bpb) < 0.01 * ours.bpb, (theirs, ours.bpb)
