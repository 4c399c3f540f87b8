"""Each quality filter catches its kind of bad story and lets good stories through."""

from __future__ import annotations

import yaml

from tinystories.data.filters import FilterConfig, StoryFilter, normalise, reason_kind
from tinystories.data.vocabulary import load_vocabulary
from tinystories.utils import resource_path

WORDS = {"verb": "hang", "noun": "foot", "adjective": "cute"}
GOOD = (
    "Once upon a time, there was a cute little cat named Tom. Tom liked to hang on the old tree "
    "in the garden. One day, he hurt his foot when he jumped down from a high branch. He was "
    "sad and he cried. His friend Lily saw him and said, \"Do not worry, Tom. I will help you.\" "
    "She gave him a big hug and put a soft cloth on his foot. Soon Tom felt better. He smiled "
    "and thanked Lily. From that day on, Tom and Lily played together every day in the sun, and "
    "they were the best of friends."
)


def make_filter(**kw) -> StoryFilter:
    return StoryFilter(FilterConfig(min_words=40, max_words=300, **kw), load_vocabulary())


def check(f: StoryFilter, story: str, key: str = "k", words=WORDS) -> str | None:
    return f.check(normalise(story), words, key)


def test_good_story_passes_and_inflections_count():
    f = make_filter()
    assert check(f, GOOD) is None
    # Irregular and regular forms of the required words are accepted.
    inflected = GOOD.replace("liked to hang on", "was hanging on").replace("his foot", "his feet")
    assert check(make_filter(), inflected.replace("a cute", "the cutest")) is None
    hung = GOOD.replace("liked to hang on", "hung on").replace("a cute", "a cuter")
    assert check(make_filter(), hung) is None


def test_missing_word_is_rejected_with_the_word():
    reason = check(make_filter(), GOOD.replace("cute ", "small "))
    assert reason == "missing_words (cute)"
    assert reason_kind(reason) == "missing_words"


def test_refusals():
    f = make_filter()
    for text in ["I'm sorry, but I can't write stories about that. " + GOOD,
                 "As an AI language model, I cannot do that. " + GOOD,
                 "I am sorry. " + GOOD]:
        assert check(f, text) == "refusal", text


def test_curly_quotes_are_normalised_but_other_non_ascii_is_junk():
    f = make_filter()
    curly = GOOD.replace('"Do not worry, Tom. I will help you."', "\u201cDon\u2019t worry, Tom\u2026 I will help you.\u201d")
    assert normalise(curly).isascii()
    assert check(f, curly) is None
    assert check(make_filter(), GOOD + " 他很高兴。") == "non_ascii"
    assert check(make_filter(), GOOD.replace("garden", "jardín")) == "non_ascii"


def test_non_english_ascii_text():
    spanish = ("Habia una vez un gato cute que se llamaba Tom. Tom queria hang en el arbol del jardin. "
               "Un dia se lastimo su foot cuando salto desde una rama muy alta. Estaba triste y lloro. "
               "Su amiga Lily lo vio y dijo: no te preocupes, yo te ayudo. Le dio un abrazo grande y "
               "pusieron una tela suave sobre su pie. Pronto Tom se sintio mejor y sonrio mucho.")
    assert check(make_filter(), spanish) == "non_english"


def test_length_bounds():
    assert check(make_filter(), "Tom was cute. He hurt his foot. He had to hang on.").startswith("length (")
    assert check(make_filter(), GOOD + (" They played and played." * 80)).startswith("length (")


def test_eval_prompt_contamination():
    beginning = yaml.safe_load(resource_path("evaluation_prompts.yaml").read_text())[1]
    story = beginning + " a cute foot came out and they had to hang it up. " + GOOD
    assert check(make_filter(), story) == "eval_contamination"
    # A few shared words are not contamination.
    assert check(make_filter(), "One day a girl walked into the park. " + GOOD) is None


def test_near_duplicates_of_accepted_stories():
    f = make_filter()
    assert check(f, GOOD, "a") is None
    assert check(f, GOOD.replace("Lily", "Anna"), "b") == "near_duplicate"
    assert check(f, GOOD.replace("the best of friends", "very good friends"), "c") == "near_duplicate"
    other = ("The cute dog Max liked to hang his red ball on a hook near the door of the house. One "
             "morning the ball fell on his foot and rolled away down the hill. Max ran after it as "
             "fast as he could. He looked under the bushes and behind the big rocks, but the ball "
             "was gone. Then a little bird sang from a tree and showed him where it was. Max was "
             "so happy that he barked and wagged his tail all the way home.")
    assert check(f, other, "d") is None
    # Stories accepted in an earlier session are remembered after a restart.
    g = make_filter()
    g.remember(normalise(GOOD), "a")
    assert check(g, GOOD.replace("Tom", "Sam"), "e") == "near_duplicate"


def test_filters_can_be_switched_off_for_other_languages():
    f = StoryFilter(FilterConfig(min_words=5, ascii_only=False, min_stopword_ratio=0, require_words=False),
                    load_vocabulary())
    assert check(f, "Il était une fois un petit chat très mignon qui aimait sauter.") is None


def test_decontamination_reads_a_text_file_of_beginnings(tmp_path):
    from tinystories.data.filters import FilterConfig, StoryFilter
    from tinystories.data.vocabulary import load_vocabulary

    beginnings = tmp_path / "beginnings.txt"
    beginnings.write_text("Once upon a time, there lived a bunny in a field. Her name was Lucy.\n\n"
                          "One day a girl walked into the living room and noticed something very strange.\n")
    filt = StoryFilter(FilterConfig(eval_prompts=str(beginnings), min_words=5, require_words=False,
                                    near_duplicate_threshold=1), load_vocabulary())
    ordinary = "Tom had a red ball. He threw the ball to his dog and the dog ran fast. They played all day."
    assert filt.check(ordinary, {}, "a") is None
    copied = ("One day a girl walked into the living room and noticed something very strange. "
              "It was a big box. She opened it and smiled.")
    assert filt.check(copied, {}, "b") == "eval_contamination"
