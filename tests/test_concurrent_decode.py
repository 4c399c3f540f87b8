"""Two engines decoding one model object at once, each in its own thread (a web app, an
evaluation in a thread pool): each writes exactly the stories it writes alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from tinystories.infer import sampler
from tinystories.infer.offline import TokenIds, generate
from tinystories.infer.params import SamplingParams
from tinystories.model import native
from tinystories.model.decode import decode_step
from tinystories.model.gpt import GPT, GPTConfig

# Large enough that a decode step spends most of its time in the C step, which runs without the
# GIL: the two threads' steps then overlap many times in a run.
CFG = GPTConfig(vocab_size=1024, context_length=128, n_layer=4, n_head=4, d_model=128, arch="modern")
# Each thread's own prompts, settings and batch size (the C step's scratch depends on the batch).
JOBS = [
    ([[0, 5, 6, 7], [0, 9], [0, *range(1, 30)], [0, 3], [0, 8, 8], [0, 11, 12]],
     SamplingParams(max_new_tokens=60, temperature=0.9, top_p=0.95, seed=7, stop_at_eos=False)),
    ([[0, 40, 41], [0, *range(50, 70)], [0, 2]],
     SamplingParams(max_new_tokens=60, temperature=0, stop_at_eos=False)),
    ([[0, 30, 31, 32]], SamplingParams(max_new_tokens=60, temperature=0, stop_at_eos=False)),  # `DecodeStep.argmax`
]


@pytest.fixture(params=["C", "PyTorch"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The decode step and sampler in C, then `forward` and the sampler's PyTorch path (TINYSTORIES_NATIVE=0)."""
    if request.param == "PyTorch":
        monkeypatch.setenv("TINYSTORIES_NATIVE", "0")
    native.library.cache_clear()
    sampler.library.cache_clear()
    if request.param == "C" and native.library() is None:
        pytest.skip(f"the C step is unavailable here: {native.why_not()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads' torch operations on a shared pool of two cores or so crawl
    try:
        yield request.param
    finally:
        torch.set_num_threads(threads)
        native.library.cache_clear()
        sampler.library.cache_clear()


def together(model: GPT) -> list[object]:
    """Each job's stories, the jobs written at once, each by its own engine in its own thread."""
    got: list[object] = [None] * len(JOBS)
    start = threading.Barrier(len(JOBS))

    def write(i: int) -> None:
        start.wait()
        got[i] = generate(model, TokenIds(0), *JOBS[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_two_engines_in_two_threads_write_what_each_writes_alone(decode_path: str) -> None:
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    step = decode_step(model)
    assert (step is not None) == (decode_path == "C")
    alone = [generate(model, TokenIds(0), prompts, params) for prompts, params in JOBS]
    assert alone[0] != alone[1]
    for _ in range(3):  # rounds: the threads' steps meet at different places each time
        assert together(model) == alone
