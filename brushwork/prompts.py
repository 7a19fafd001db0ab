"""A1111 WebUI prompt syntax: LoRA tags, prompt editing, alternation, emphasis, BREAK and long prompts.

The engine runs the stages in order: `extract_loras` first (A1111 applies a LoRA for the whole run even when its
tag sits inside a `[from:to:when]` edit), then `get_schedule` turns editing and alternation into one plain prompt
per span of steps, then `build_chunks` applies `parse_attention` to each and packs the weighted tokens into
CLIP-sized chunks.
Pure Python, so all of it can be tested without a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Union

from brushwork.errors import RecipeError

# ---- LoRA tags -----------------------------------------------------------------------------------

# A1111's extra-network tag `<kind:arg:arg...>`. LyCORIS tags are LoRAs under another name (A1111 aliases them).
_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = frozenset({"lora", "lyco", "lycoris"})


@dataclass(frozen=True)
class LoraRef:
    """A LoRA named in the prompt and its multipliers: for the text encoders (`weight`, the tag's first
    number) and for the U-Net (the second; the first when absent), as A1111's `<lora:name:te:unet>`."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None


def _lora_number(tag: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise RecipeError(f"LoRA tag {tag} has a malformed weight {value!r}; write a number, e.g. <lora:name:0.8>")
    return number


def _lora_ref(tag: str, args: str) -> LoraRef:
    name, *fields = (field.strip() for field in args.split(":"))
    if not name:
        raise RecipeError(f"LoRA tag {tag} has no name; write it as <lora:name> or <lora:name:0.8>")
    # As in A1111, `key=value` fields are named and the rest positional: `<lora:name:te:unet>` or `te=`/`unet=`.
    named = {key.strip(): value.strip() for key, _, value in (f.partition("=") for f in fields if "=" in f)}
    positional = [field for field in fields if "=" not in field]
    te = _lora_number(tag, named.get("te", positional[0] if positional else "1"))
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    return LoraRef(name, te, None if unet is None else _lora_number(tag, unet))


def extract_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """Remove `<lora:...>`, `<lyco:...>` and `<lycoris:...>` tags; return the remaining text and the refs in order.

    Other extra-network tags (`<hypernet:...>` etc.) stay in the text untouched. A removed tag is replaced by
    nothing, as in A1111; the whitespace around it is left alone (the tokenizer ignores it).
    """
    refs: list[LoraRef] = []

    def take(match: re.Match[str]) -> str:
        if match[1].lower() not in _LORA_KINDS:
            return match[0]
        refs.append(_lora_ref(match[0], match[2]))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), refs


# ---- Prompt editing and alternation --------------------------------------------------------------

# The `when]` that ends an edit: a signed int or decimal (exponent allowed), whitespace allowed around it.
_WHEN = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


@dataclass
class _Edit:  # `[before:after:when]`: `before` up to and including step `when`, then `after`
    before: list[_Node]
    after: list[_Node]
    when: float


@dataclass
class _Alternation:  # `[a|b|c]`: option (step - 1) % n on each step
    options: list[list[_Node]]


_Node = Union[str, _Edit, _Alternation]
_Parsed = Union[tuple[list[_Node], int], None]  # nodes and the position after them, or None on failure


class _SyntaxError(Exception):
    pass


class _ScheduleParser:
    """Recursive-descent parser for A1111's prompt-editing grammar.

    Emphasis brackets are parsed (an edit may sit inside `(...)`) but kept as literal text: weights are
    `parse_attention`'s job. Inside a construct everything must be well formed. At the top level a bracket or
    colon that opens nothing valid is plain text, since A1111's grammar allows stray `[ ] ( ) :` there; a
    top-level `|` or a trailing lone backslash is a syntax error, as in A1111.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        # After a failed bracket the top level resumes one character later and meets the same inner brackets
        # again; remembering their outcome keeps pathological prompts (many unclosed `[`) linear.
        self._memo: dict[int, _Parsed] = {}

    def parse(self) -> list[_Node]:
        nodes, pos = self._sequence(0)
        while pos < len(self.text):
            if self.text[pos] not in "[]():":
                raise _SyntaxError(pos)
            more, after = self._sequence(pos + 1)
            nodes += [self.text[pos], *more]
            pos = after
        return nodes

    def _peek(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _sequence(self, pos: int) -> tuple[list[_Node], int]:
        """Text and constructs from `pos` up to `: | ] )`, the end, or a bracket that opens nothing valid."""
        nodes: list[_Node] = []
        start = pos
        while pos < len(self.text):
            char = self.text[pos]
            if char == "\\" and pos + 1 < len(self.text):
                pos += 2  # an escaped character is text; the backslash stays for `parse_attention`
            elif char in "([" and (parsed := self._bracket(pos)):
                nodes += [self.text[start:pos], *parsed[0]]
                pos = start = parsed[1]
            elif char in "\\:|])([":
                break
            else:
                pos += 1
        return [*nodes, self.text[start:pos]], pos

    def _bracket(self, pos: int) -> _Parsed:
        if pos not in self._memo:
            self._memo[pos] = self._round(pos) if self.text[pos] == "(" else self._square(pos)
        return self._memo[pos]

    def _round(self, pos: int) -> _Parsed:  # `(text)` or `(text:weight)`, kept verbatim
        inner, pos = self._sequence(pos + 1)
        if self._peek(pos) == ":":
            weight, pos = self._sequence(pos + 1)
            inner += [":", *weight]
        return (["(", *inner, ")"], pos + 1) if self._peek(pos) == ")" else None

    def _square(self, pos: int) -> _Parsed:
        first, pos = self._sequence(pos + 1)
        if self._peek(pos) == "]":  # `[text]`, kept verbatim
            return ["[", *first, "]"], pos + 1
        if self._peek(pos) == "|":
            options = [first]
            while self._peek(pos) == "|":
                option, pos = self._sequence(pos + 1)
                options.append(option)
            return ([_Alternation(options)], pos + 1) if self._peek(pos) == "]" else None
        if self._peek(pos) == ":":
            if when := _WHEN.match(self.text, pos + 1):  # `[to:when]`: nothing before `when`
                return [_Edit([], first, float(when[1]))], when.end()
            second, pos = self._sequence(pos + 1)
            if self._peek(pos) == ":" and (when := _WHEN.match(self.text, pos + 1)):
                return [_Edit(first, second, float(when[1]))], when.end()
        return None


def _when_step(when: float, steps: int) -> int:
    # Below 1 `when` is a fraction of the steps, otherwise a step number: A1111's documented rule (its "old
    # prompt editing timelines" behaviour; since v1.6 it also reads a decimal >= 1 such as `1.0` as a fraction).
    # Truncated and capped at the last step; under 1 means "switched before step 1", returned as 0.
    value = when * steps if when < 1 else when
    return 0 if value < 1 else steps if value >= steps else int(value)


def _walk(nodes: list[_Node]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        if not isinstance(node, str):
            for branch in [node.before, node.after] if isinstance(node, _Edit) else node.options:
                yield from _walk(branch)


def _render(nodes: list[_Node], step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, _Edit):
            node = node.before if step <= _when_step(node.when, steps) else node.after
        elif isinstance(node, _Alternation):
            node = node.options[(step - 1) % len(node.options)]
        parts.append(node if isinstance(node, str) else _render(node, step, steps))
    return "".join(parts)


def get_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """Resolve prompt editing and alternation into `[(end_step, text), ...]`.

    Each `text` is used from the step after the previous `end_step` up to and including its own (steps count
    from 1). The list is sorted, ends at `steps` and never has the same text twice in a row. A prompt that does
    not parse is used as written for every step, as in A1111.
    """
    if steps < 1:
        raise RecipeError(f"steps must be at least 1 to schedule a prompt (got {steps})")
    try:
        tree = _ScheduleParser(prompt).parse()
    except (_SyntaxError, RecursionError):  # absurdly deep nesting counts as a syntax error too
        return [(steps, prompt)]

    # Like A1111, every edit in the tree adds a boundary, even one inside an inactive branch; the merge below
    # removes the boundaries that change nothing.
    boundaries = {steps}
    for node in _walk(tree):
        if isinstance(node, _Edit):
            boundaries.add(_when_step(node.when, steps))
        elif isinstance(node, _Alternation):
            boundaries.update(range(1, steps + 1))
    boundaries.discard(0)

    schedule: list[tuple[int, str]] = []
    for end in sorted(boundaries):
        text = _render(tree, end, steps)
        if schedule and schedule[-1][1] == text:
            schedule.pop()
        schedule.append((end, text))
    return schedule


# ---- Emphasis and BREAK --------------------------------------------------------------------------

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1

_ATTENTION_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\]?)          # \( \) \[ \] \\ are literal; a backslash before anything else is dropped
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)    # `:1.3)` closes a round bracket with an explicit weight
    | (?P<bracket>[()\[\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into `(fragment, weight)` pairs following A1111's emphasis rules.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.3)` multiplies by 1.3, nesting multiplies. Brackets left
    open apply to the rest of the text; unmatched closers and stray colons are text. `BREAK` as a word gives the
    entry `("BREAK", -1.0)`, which brackets around it scale like any other: `(a BREAK b:1.2)` gives
    `("BREAK", -1.2)`. Adjacent entries of equal weight are merged. All of this is A1111's `parse_prompt_attention`.
    """
    return [(fragment, weight) for fragment, weight, _ in _attention_fragments(text)]


def _attention_fragments(text: str) -> list[tuple[str, float, bool]]:
    # `parse_attention` plus a flag telling BREAK markers from text. As in A1111 (sd_hijack_clip), only an entry
    # reading "BREAK" with weight exactly -1 ends a chunk: inside brackets the marker is scaled with the rest
    # ((a BREAK b) gives -1.1), so it stops being one and is encoded as the word "break" with that (negative)
    # weight. Entries are [text, weight]; a closing bracket scales everything since its opener in place, in
    # A1111's order, so the floats come out bit-identical.
    fragments: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        bracket, weight = match["bracket"], match["weight"]
        if match["escaped"] is not None:
            fragments.append([match["escaped"], 1.0])
        elif bracket in ("(", "["):
            (open_round if bracket == "(" else open_square).append(len(fragments))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise RecipeError(f"emphasis weight {weight!r} in {match[0]!r} is not a number") from None
            scale_from(open_round.pop(), factor)
        elif bracket == ")" and open_round:
            scale_from(open_round.pop(), ROUND_BRACKET_MULTIPLIER)
        elif bracket == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:  # text, including unmatched closers and colons
            for i, part in enumerate(_BREAK.split(match[0])):
                if i:
                    fragments.append(["BREAK", -1.0])
                fragments.append([part, 1.0])

    for start in open_round:  # unclosed brackets reach to the end, round ones first as in A1111
        scale_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_MULTIPLIER)

    # Runs of equal weight merge whatever their text, a marker included (A1111 does the same).
    merged: list[list] = []
    for fragment in fragments:
        if merged and merged[-1][1] == fragment[1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [(part, weight, part == "BREAK" and weight == -1.0) for part, weight in merged] or [("", 1.0, False)]


# ---- Long prompts --------------------------------------------------------------------------------


@dataclass
class PromptChunk:
    """One text-encoder pass: `chunk_length + 2` token ids and the emphasis multiplier of each; `fixes` are
    the textual-inversion embeddings in it: (position of its first vector, its name)."""

    tokens: list[int]
    weights: list[float]
    fixes: list[tuple[int, str]] = field(default_factory=list)


# Finds an embedding name at tokens[offset]: (tokens the name spans, vectors it stands for, its name) or None.
EmbeddingFinder = Callable[[list[int], int], Union[tuple[int, int, str], None]]
EMBEDDING_PLACEHOLDER = 0  # the id held where an embedding's vectors go; the vectors replace its encoding


def build_chunks(
    text: str,
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    comma_id: int | None,
    chunk_length: int = 75,
    comma_backtrack: int = 20,
    find_embedding: EmbeddingFinder | None = None,
) -> list[PromptChunk]:
    """Split a prompt of any length into weighted chunks of `chunk_length` tokens, as A1111 does.

    `tokenize` maps strings to token ids without BOS/EOS. A top-level `BREAK` ends the current chunk (one inside
    brackets is a word with the brackets' weight, negated, as in A1111). When a chunk is full and one of its
    last `comma_backtrack` tokens is a comma, the tokens after that comma move to the next chunk so a phrase is
    not cut in two (0 disables this). An empty prompt gives one chunk.

    A chunk is `[bos] + tokens + [eos] + [pad] * (chunk_length - len(tokens))`: exactly the tokenizer's
    `padding="max_length"` output, which is what diffusers feeds CLIP. A1111 pads with EOS before the final EOS
    and, when the pad id differs (OpenCLIP, pad 0), overwrites everything after the first EOS with it, so this
    layout matches A1111 too, for `pad_id == eos_id` (CLIP ViT-L) and otherwise. BOS, EOS and pads weigh 1.0.

    `find_embedding` spots textual-inversion names among the tokens: each one takes as many places as it has
    vectors, with its fragment's weight, and is never split between two chunks (it starts the next one when it
    does not fit), as in A1111.
    """
    if chunk_length < 1 or comma_backtrack < 0:
        raise ValueError(f"need chunk_length >= 1 and comma_backtrack >= 0, got {chunk_length}, {comma_backtrack}")
    fragments = [(part, weight, brk) for part, weight, brk in _attention_fragments(text) if part or brk]
    texts = [fragment for fragment, _, is_break in fragments if not is_break]
    token_lists = tokenize(texts) if texts else []
    if len(token_lists) != len(texts):
        raise ValueError(f"tokenize returned {len(token_lists)} token lists for {len(texts)} texts")
    next_tokens = iter(token_lists)

    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, str]] = []
    last_comma = -1  # index of the latest comma in the current chunk

    def finish_chunk() -> None:
        nonlocal tokens, weights, fixes, last_comma
        padding = [pad_id] * (chunk_length - len(tokens))
        chunks.append(PromptChunk([bos_id, *tokens, eos_id, *padding], [1.0, *weights, 1.0] + [1.0] * len(padding),
                                  [(position + 1, name) for position, name in fixes]))  # + 1: after BOS
        tokens, weights, fixes, last_comma = [], [], [], -1

    for _, weight, is_break in fragments:
        if is_break:
            finish_chunk()
            continue
        fragment_tokens = next(next_tokens)
        offset = 0
        while offset < len(fragment_tokens):
            found = find_embedding(fragment_tokens, offset) if find_embedding is not None else None
            token = fragment_tokens[offset]
            full = len(tokens) == chunk_length
            if full:
                # A comma arriving on a full chunk is itself a clean cut; otherwise cut after a recent comma (also
                # before an embedding, as A1111 cuts before it looks the embedding up).
                cut = chunk_length
                if token != comma_id and last_comma >= 0 and chunk_length - last_comma <= comma_backtrack:
                    cut = last_comma + 1
                carried = tokens[cut:], weights[cut:], [(position - cut, name) for position, name in fixes if position >= cut]
                del tokens[cut:], weights[cut:]
                fixes[:] = [(position, name) for position, name in fixes if position < cut]
                finish_chunk()
                tokens, weights, fixes = carried
            if found is not None:
                span, count, name = found
                if count > chunk_length:
                    raise RecipeError(f"embedding {name!r} has {count} vectors, more than the {chunk_length} a prompt "
                                      "chunk holds")
                if len(tokens) + count > chunk_length:
                    finish_chunk()
                fixes.append((len(tokens), name))
                tokens += [EMBEDDING_PLACEHOLDER] * count
                weights += [weight] * count
                offset += span
                continue
            offset += 1
            if token == comma_id and not full:
                # As in A1111, the comma that opens a new chunk is not remembered as a place to cut.
                last_comma = len(tokens)
            tokens.append(token)
            weights.append(weight)

    if tokens or not chunks:
        finish_chunk()
    return chunks
