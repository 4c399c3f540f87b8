"""The web playground in real headless Chromium: type, generate, watch tokens stream, inspect attention."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tinystories.infer.offline import run
from tinystories.infer.params import STEER_ALPHA, preset
from tinystories.infer.server import create_app, load_models, running
from tinystories.interpret import attention_api

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")]
WIDTH, HEIGHT = 1280, 900


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_playground_streams_story_and_shows_attention(browser: object, tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    models = load_models([str(tiny_model_dir)])
    (name, loaded), = models.items()
    direction = ("blocks.1.hook_resid_post", torch.eye(loaded.model.cfg.d_model)[3])
    app = create_app(models, extensions=[attention_api.install], directions={name: {"three": direction}})
    with running(app) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value"))
        assert "2 layers × 4 heads" in browser.find_element(By.ID, "model-info").text
        story_preset = preset("story")  # the sliders start where `sample` does (the server's model card)
        for field, value in [("temperature", story_preset.temperature), ("top_p", story_preset.top_p),
                             ("top_k", story_preset.top_k), ("min_p", story_preset.min_p),
                             ("repetition_penalty", story_preset.repetition_penalty), ("steer_alpha", STEER_ALPHA)]:
            assert float(browser.find_element(By.ID, field).get_attribute("value")) == value, field
        wait.until(lambda d: "new ones fit" in d.find_element(By.ID, "room").text)
        room = int(browser.find_element(By.ID, "room").text.split("up to ")[1].split()[0])
        assert int(browser.find_element(By.ID, "max_tokens").get_attribute("value")) == min(
            story_preset.max_new_tokens, room)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Once upon a time, Tom found a shiny ")
        # ChromeDriver types only the Basic Multilingual Plane: the emoji goes in through the page.
        browser.execute_script("arguments[0].value += '\\u{1F41A}'", prompt)
        browser.execute_script("const m = document.getElementById('max_tokens'); m.value = 60;"
                               "m.dispatchEvent(new Event('input'))")
        browser.find_element(By.ID, "seed").send_keys("3")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: "tokens in" in d.find_element(By.ID, "stats").text)

        out = browser.find_element(By.ID, "output")
        assert out.find_element(By.CLASS_NAME, "prompt-text").text.startswith("Once upon a time, Tom")
        tokens = out.find_elements(By.CLASS_NAME, "tok")
        assert 10 <= len(tokens) <= 60
        probs = [float(t.get_attribute("data-prob")) for t in tokens]
        assert all(0 < p <= 1 for p in probs)
        assert "60 tokens" in browser.find_element(By.ID, "stats").text
        # The story `tinystories sample` writes with the same seed: the sliders start at its preset.
        text = "Once upon a time, Tom found a shiny \U0001F41A"
        tok = loaded.tokenizer

        def offline(add: torch.Tensor | None = None, **settings: float) -> list[int]:
            params = preset("story", max_new_tokens=60, seed=3, **settings)
            return run(loaded.model, tok, tok.encode_stories([text]), params,
                       adds={direction[0]: add} if add is not None else None)[0].ids
        assert browser.execute_script("return state.ids") == offline()

        tokens[5].click()  # the attention of a generated token
        wait.until(lambda d: d.find_elements(By.CLASS_NAME, "att-tok"))
        cells = browser.find_elements(By.CLASS_NAME, "att-tok")
        weights = [float(c.get_attribute("data-weight")) for c in cells]
        assert abs(sum(weights) - 1) < 1e-3  # mean over heads of rows that each sum to 1
        Select(browser.find_element(By.ID, "layer")).select_by_visible_text("L1")
        Select(browser.find_element(By.ID, "head")).select_by_visible_text("H2")
        wait.until(ec.text_to_be_present_in_element((By.ID, "att-top"), "%"))
        assert browser.find_element(By.CSS_SELECTOR, ".att-tok.query")

        # Steering: a direction the server was started with, at the strength on the slider.
        Select(browser.find_element(By.ID, "steer")).select_by_value("three")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: "tokens in" in d.find_element(By.ID, "stats").text)
        steered = browser.execute_script("return state.ids")
        assert steered == offline(add=STEER_ALPHA * direction[1]) != offline()
        Select(browser.find_element(By.ID, "steer")).select_by_value("")

        # Top-k, top-k with top-p, and min-p with a repetition penalty, as the sliders set them:
        # again the story `sample` writes.
        for settings in ({"top_k": 20, "top_p": 1.0}, {"top_k": 50, "top_p": 0.8},
                         {"top_k": 0, "top_p": 1.0, "min_p": 0.1, "repetition_penalty": 1.3}):
            for field, value in settings.items():
                browser.execute_script(f"const s = document.getElementById('{field}'); s.value = {value};"
                                       "s.dispatchEvent(new Event('input'))")
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda d: "tokens in" in d.find_element(By.ID, "stats").text)
            assert browser.execute_script("return state.ids") == offline(**settings) != offline(), settings

        # Max tokens is capped by what the prompt leaves of the context (128 here).
        story = out.text
        prompt.clear()
        prompt.send_keys("word " * 100)
        wait.until(lambda d: "new ones fit" in d.find_element(By.ID, "room").text)
        room = int(browser.find_element(By.ID, "room").text.split("up to ")[1].split()[0])
        assert int(browser.find_element(By.ID, "max_tokens").get_attribute("max")) == room < 127
        assert int(browser.find_element(By.ID, "max_tokens").get_attribute("value")) <= room
        # An error (the prompt alone overflows the context) is shown prominently; the story stays.
        browser.execute_script("arguments[0].value = 'Once upon a time, ' + 'a big red dog and '.repeat(300)",
                               prompt)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "context" in browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "output").text == story
        header = browser.find_element(By.TAG_NAME, "h1").text
        assert all(ord(c) < 0x2000 for c in header), header  # nothing that needs an emoji font

        shot = tmp_path / "playground.png"
        browser.save_screenshot(str(shot))
        assert png_size(shot) == (WIDTH, browser.execute_script("return window.innerHeight"))
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
