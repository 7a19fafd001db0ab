"""A1111 prompt syntax: LoRA tags, prompt editing, emphasis, BREAK and long-prompt chunking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from brushwork.errors import RecipeError
from brushwork.prompts import (
    LoraRef,
    PromptChunk,
    build_chunks,
    extract_loras,
    get_schedule,
    parse_attention,
)

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "brushwork" / "assets" / "clip-tokenizer"

# ---- extract_loras -------------------------------------------------------------------------------


def test_extract_loras_removes_tags_and_keeps_order():
    text, refs = extract_loras("a cat <lora:detail:0.8>, <lyco:style> in <lycoris:ink:-0.5> a park")
    assert text == "a cat ,  in  a park"  # tags vanish, whitespace stays (as in A1111)
    assert refs == [LoraRef("detail", 0.8), LoraRef("style", 1.0), LoraRef("ink", -0.5)]


def test_extract_loras_reads_text_encoder_then_unet_multipliers():
    assert extract_loras("<lora:a:0.8:0.5>")[1] == [LoraRef("a", 0.8, 0.5)]
    assert extract_loras("<lora:a:unet=0.2:te=0.3>")[1] == [LoraRef("a", 0.3, 0.2)]
    assert extract_loras("<lora:a:0.6>")[1] == [LoraRef("a", 0.6, None)]  # the U-Net takes the first number
    assert extract_loras("<LoRA: spaced name : 0.7 >")[1] == [LoraRef("spaced name", 0.7)]


def test_extract_loras_leaves_other_tags_and_plain_prompts_alone():
    prompt = "a <hypernet:sketch:1> cat, (red:1.2) <not a tag>"
    assert extract_loras(prompt) == (prompt, [])


@pytest.mark.parametrize("tag", ["<lora:a:abc>", "<lora:a:>", "<lora:a:inf>", "<lora:a:1:x>", "<lora::0.5>"])
def test_extract_loras_rejects_malformed_tags(tag):
    with pytest.raises(RecipeError, match="LoRA tag"):
        extract_loras(f"a cat {tag}")


# ---- get_schedule --------------------------------------------------------------------------------

# A1111's own doctests for get_learned_conditioning_prompt_schedules (10 steps); the alternation cases are
# written out after merging runs of equal text.
A1111_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(1, "female"), (4, "male"), (5, "female"), (8, "male"), (9, "female"), (10, "male")]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULES)
def test_schedule_matches_a1111(prompt, expected):
    assert get_schedule(prompt, 10) == expected


def test_schedule_from_to_add_and_remove():
    prompt = "a [dog:cat:0.25] [in snow:5] [blurry::0.75]"
    assert get_schedule(prompt, 20) == [
        (5, "a dog  blurry"),
        (15, "a cat in snow blurry"),
        (20, "a cat in snow "),
    ]


def test_schedule_when_is_capped_and_below_one_step_means_from_the_start():
    assert get_schedule("[a:b:50]", 20) == [(20, "a")]
    assert get_schedule("[a:b:0.01]", 20) == [(20, "b")]  # int(0.01 * 20) == 0
    assert get_schedule("[a:b:-3]", 20) == [(20, "b")]


def test_schedule_merges_consecutive_equal_texts():
    assert get_schedule("[cat|cat]", 30) == [(30, "cat")]
    assert get_schedule("x [a:a:4]", 8) == [(8, "x a")]


def test_schedule_nesting_inside_emphasis_and_alternation():
    assert get_schedule("(a [b:c:2] d:1.2)", 4) == [(2, "(a b d:1.2)"), (4, "(a c d:1.2)")]
    assert get_schedule("[x|[y:z:2]]", 4) == [(1, "x"), (2, "y"), (3, "x"), (4, "z")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a (red:1.2) [blurry] ((cat)) dog",  # emphasis is not editing
        r"a \[b:c:3\] \(d\) e\:f",  # escaped brackets are literal
        "cat | dog [a:b:3]",  # top-level `|` is a syntax error in A1111's grammar: prompt used as written
        "[a:b:c:3] [x:y] (z:w:1.2",  # invalid constructs at top level are plain text
        "",
    ],
)
def test_schedule_passes_non_editing_prompts_through(prompt):
    assert get_schedule(prompt, 12) == [(12, prompt)]


def test_schedule_invariants_and_bad_steps():
    schedule = get_schedule("[a|b|c] [x:y:0.3] [[p:q:7]::0.9] tail", 25)
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends)) and ends[-1] == 25
    assert all(left[1] != right[1] for left, right in zip(schedule, schedule[1:]))
    assert schedule[0] == (1, "a x p tail")
    with pytest.raises(RecipeError):
        get_schedule("a", 0)


def test_schedule_survives_pathological_nesting():
    prompt = "[" * 3000 + "a"
    assert get_schedule(prompt, 5) == [(5, prompt)]


# ---- parse_attention -----------------------------------------------------------------------------

# A1111's documented examples for parse_prompt_attention.
A1111_ATTENTION = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_ATTENTION)
def test_attention_matches_a1111(text, expected):
    assert parse_attention(text) == expected  # exact floats: multiplication order follows A1111


def test_attention_square_brackets_escapes_and_stray_characters():
    assert parse_attention("[faded] photo") == [("faded", 1 / 1.1), (" photo", 1.0)]
    assert parse_attention("a) b] c:d \\\\ e") == [("a) b] c:d \\ e", 1.0)]
    assert parse_attention("(a:0.5") == [("a:0.5", 1.1)]  # no closing bracket, so no explicit weight
    assert parse_attention("( a [ b ) c ]") == [(" a ", 1.1), (" b ", 1.0), (" c ", 1 / 1.1)]


def test_attention_break_and_empty():
    assert parse_attention("") == [("", 1.0)]
    assert parse_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_attention("a BREAKFAST, break") == [("a BREAKFAST, break", 1.0)]
    # As in A1111, brackets scale a BREAK inside them like any text, so it is no longer the -1 marker.
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert parse_attention("(a BREAK b:1.2)") == [("a", 1.2), ("BREAK", -1.2), ("b", 1.2)]
    assert parse_attention("[a BREAK b]") == [("a", 1 / 1.1), ("BREAK", -1 / 1.1), ("b", 1 / 1.1)]
    # Runs of equal weight merge, a marker included (0.0 == -0.0), as in A1111.
    assert parse_attention("(a BREAK b:0)") == [("aBREAKb", 0.0)]


def test_attention_rejects_malformed_weight():
    with pytest.raises(RecipeError, match="1.2.3"):
        parse_attention("(cat:1.2.3)")


# ---- build_chunks with a word-level fake tokenizer -------------------------------------------------

BOS, EOS, PAD, COMMA = 1, 2, 0, 5


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    """`w7` -> 107, `,` -> COMMA; everything else is ignored."""
    return [[COMMA if word == "," else 100 + int(word[1:]) for word in re.findall(r"w\d+|,", t)] for t in texts]


def chunks_of(text: str, chunk_length: int = 6, comma_backtrack: int = 3, tokenize=fake_tokenize):
    return build_chunks(
        text,
        tokenize,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        comma_id=COMMA,
        chunk_length=chunk_length,
        comma_backtrack=comma_backtrack,
    )


def content(chunk: PromptChunk) -> list[int]:
    """The tokens between BOS and the first EOS."""
    return chunk.tokens[1 : chunk.tokens.index(EOS)]


def test_chunk_layout_is_bos_tokens_eos_then_padding():
    [chunk] = chunks_of("w1 (w2:1.5) [w3]")
    assert chunk.tokens == [BOS, 101, 102, 103, EOS, PAD, PAD, PAD]
    assert chunk.weights == [1.0, 1.0, 1.5, 1 / 1.1, 1.0, 1.0, 1.0, 1.0]
    assert chunks_of("")[0] == PromptChunk([BOS, EOS] + [PAD] * 6, [1.0] * 8)


def test_chunks_split_when_full_and_on_break():
    assert [content(c) for c in chunks_of("w1 w2 w3 w4 w5 w6 w7")] == [[101, 102, 103, 104, 105, 106], [107]]
    assert [content(c) for c in chunks_of("w1 BREAK w2")] == [[101], [102]]
    assert [content(c) for c in chunks_of("BREAK w1")] == [[], [101]]
    assert [content(c) for c in chunks_of("w1 BREAK")] == [[101]]
    full = chunks_of("w1 w2 w3 w4 w5 w6")
    assert len(full) == 1 and full[0].tokens == [BOS, 101, 102, 103, 104, 105, 106, EOS]


def test_comma_backtrack_moves_the_tail_with_its_weights():
    first, second = chunks_of("w1 w2 w3 , (w4:1.5) w5 w6 w7")
    assert content(first) == [101, 102, 103, COMMA]
    assert first.tokens[-3:] == [EOS, PAD, PAD]
    assert content(second) == [104, 105, 106, 107]
    assert second.weights[1:5] == [1.5, 1.0, 1.0, 1.0]


def test_break_inside_brackets_is_a_weighted_word_not_a_chunk_break():
    # A1111 (sd_hijack_clip) ends a chunk only on ("BREAK", -1): "(w1 BREAK w2:1.2)" stays one chunk and the
    # text "BREAK" is tokenized with weight -1.2.
    calls = []

    def recording(texts):
        calls.append(texts)
        return [[99] if t == "BREAK" else ids for t, ids in zip(texts, fake_tokenize(texts))]

    [chunk] = chunks_of("(w1 BREAK w2:1.2)", tokenize=recording)
    assert calls == [["w1", "BREAK", "w2"]]
    assert content(chunk) == [101, 99, 102] and chunk.weights[1:4] == [1.2, -1.2, 1.2]
    assert [content(c) for c in chunks_of("(w1) BREAK (w2)", tokenize=recording)] == [[101], [102]]


def test_comma_opening_a_chunk_is_not_a_cut_point():
    # A1111 forgets a comma that arrives on a full chunk (it starts the next chunk but is not remembered), which
    # shows when the backtrack window covers the whole chunk.
    chunks = chunks_of("w1 w2 , w3 w4 w5 w6", chunk_length=2, comma_backtrack=2)
    assert [content(c) for c in chunks] == [[101, 102], [COMMA, 103], [104, 105], [106]]


def test_comma_backtrack_limits():
    too_far = [content(c) for c in chunks_of("w1 , w2 w3 w4 w5 w6")]
    assert too_far == [[101, COMMA, 102, 103, 104, 105], [106]]  # comma 5 tokens back, window is 3
    disabled = [content(c) for c in chunks_of("w1 w2 w3 , w4 w5 w6", comma_backtrack=0)]
    assert disabled == [[101, 102, 103, COMMA, 104, 105], [106]]
    comma_next = [content(c) for c in chunks_of("w1 w2 w3 , w4 w5 , w6")]
    assert comma_next == [[101, 102, 103, COMMA, 104, 105], [COMMA, 106]]  # the comma itself is a clean cut


def test_tokenizer_gets_every_fragment_in_one_call():
    calls = []

    def recording(texts):
        calls.append(texts)
        return fake_tokenize(texts)

    chunks_of("w1 (w2) BREAK [w3]", tokenize=recording)
    assert calls == [["w1 ", "w2", "w3"]]
    chunks_of("", tokenize=recording)
    assert len(calls) == 1  # nothing to tokenize, no call


# ---- build_chunks with the real CLIP tokenizer -----------------------------------------------------


@pytest.fixture(scope="module", params=["clip", "openclip"])
def tokenizer(request):
    transformers = pytest.importorskip("transformers")
    if request.param == "clip":  # SD 1.x: pad with EOS
        return transformers.CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return transformers.CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")  # OpenCLIP: pad id 0


def clip_chunks(tokenizer, text: str) -> list[PromptChunk]:
    return build_chunks(
        text,
        lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"],
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        comma_id=tokenizer.convert_tokens_to_ids(",</w>"),
    )


@pytest.mark.parametrize("prompt", ["a photo of an astronaut riding a horse on mars, highly detailed", ""])
def test_short_prompt_equals_max_length_encoding(tokenizer, prompt):
    [chunk] = clip_chunks(tokenizer, prompt)
    assert chunk.tokens == tokenizer(prompt, padding="max_length", max_length=77)["input_ids"]
    assert chunk.weights == [1.0] * 77


def test_emphasis_keeps_tokens_and_weights_the_words(tokenizer):
    [chunk] = clip_chunks(tokenizer, "a (red:1.5) [cat]")
    assert chunk.tokens == tokenizer("a red cat", padding="max_length", max_length=77)["input_ids"]
    assert chunk.weights[:5] == [1.0, 1.0, 1.5, 1 / 1.1, 1.0]


def test_long_prompt_and_break_give_more_chunks(tokenizer):
    words = " ".join(f"{colour} {thing}" for colour, thing in zip(["red", "blue"] * 25, ["cat", "dog"] * 25))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    assert len(ids) == 100
    first, second = clip_chunks(tokenizer, words)
    assert first.tokens == [tokenizer.bos_token_id, *ids[:75], tokenizer.eos_token_id]
    assert second.tokens == [tokenizer.bos_token_id, *ids[75:], tokenizer.eos_token_id] + [tokenizer.pad_token_id] * 50

    before, after = clip_chunks(tokenizer, "a red cat BREAK a blue dog")
    assert after.tokens == tokenizer("a blue dog", padding="max_length", max_length=77)["input_ids"]
    assert before.tokens == tokenizer("a red cat", padding="max_length", max_length=77)["input_ids"]


def test_break_in_brackets_with_clip(tokenizer):
    [chunk] = clip_chunks(tokenizer, "(a BREAK b:1.2)")
    assert chunk.tokens == tokenizer("a break b", padding="max_length", max_length=77)["input_ids"]
    assert chunk.weights[:5] == [1.0, 1.2, -1.2, 1.2, 1.0]


def test_comma_backtrack_with_clip(tokenizer):
    prompt = "cat " * 70 + ", dog dog dog dog dog dog"
    first, second = clip_chunks(tokenizer, prompt)
    cat, dog, comma = (tokenizer.convert_tokens_to_ids(t) for t in ("cat</w>", "dog</w>", ",</w>"))
    assert first.tokens[1:73] == [cat] * 70 + [comma, tokenizer.eos_token_id]  # cut after the comma
    assert first.tokens[73:] == [tokenizer.pad_token_id] * 4
    assert second.tokens[1:8] == [dog] * 6 + [tokenizer.eos_token_id]
