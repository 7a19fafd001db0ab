"""Prompt text -> the U-Net's cross-attention context, with A1111's semantics.

Stage 2 of the engine: emphasis weights, 75-token chunks, BREAK, CLIP skip, prompt editing and
alternation (a schedule of contexts over the steps), and SDXL's two encoders with pooled embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from brushwork.engine.embeddings import Embedding, EmbeddingMatcher, vectors_hook
from brushwork.models.components import Components
from brushwork.prompts import PromptChunk, build_chunks, extract_loras, get_schedule


@dataclass
class Conditioning:
    """One prompt's encoding: `context` [1, 77*chunks, dim]; `pooled` [1, dim] for SDXL only."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class ScheduledConditioning:
    """Which Conditioning applies at each sampling step (1-based), as prompt editing asks."""

    schedule: list[tuple[int, Conditioning]]  # (last step it applies to, conditioning)

    def at(self, step: int) -> Conditioning:
        for end_step, conditioning in self.schedule:
            if step <= end_step:
                return conditioning
        return self.schedule[-1][1]


class PromptEncoder:
    """Encodes prompts for one model and one CLIP-skip setting; caches per prompt text within a job."""

    def __init__(self, components: Components, clip_skip: int, device: torch.device, dtype: torch.dtype,
                 embeddings: dict[str, Embedding] | None = None):
        self.components = components
        self.clip_skip = clip_skip
        self.device = device
        self.dtype = dtype
        self.embeddings = embeddings or {}  # textual inversions that fit this model, by name
        self._cache: dict[str, Conditioning] = {}
        self._matchers: dict[int, EmbeddingMatcher] = {}

    def encode_pair(self, positive: str, negative: str, steps: int) -> tuple[ScheduledConditioning, ScheduledConditioning]:
        """Both prompts' schedules, every entry padded to the same chunk count so they batch for CFG."""
        return self.encode_many([(positive, negative)], steps)[0]

    def encode_many(
        self, pairs: list[tuple[str, str]], steps: int
    ) -> list[tuple[ScheduledConditioning, ScheduledConditioning]]:
        """Several (positive, negative) pairs, all padded to one chunk count so they share a U-Net batch."""
        pairs = [(without_loras(p), without_loras(n)) for p, n in pairs]
        schedules = [(get_schedule(p, steps), get_schedule(n, steps)) for p, n in pairs]
        texts = list(dict.fromkeys(text for pos, neg in schedules for _, text in pos + neg))
        chunk_lists = {text: self._chunks(text) for text in texts}
        longest = max(len(chunks[0]) for chunks in chunk_lists.values())
        for text, per_tokenizer in chunk_lists.items():
            chunk_lists[text] = [self._pad_to(chunks, longest, index) for index, chunks in enumerate(per_tokenizer)]
        # SDXL was trained with zeros, not the encoding of "", as the unconditional input.
        zero_empty = self.components.model_family.zero_empty_prompt
        encoded = {text: self._encode(chunk_lists[text], zeroed=zero_empty and text == "") for text in texts}
        return [
            (
                ScheduledConditioning([(end, encoded[text]) for end, text in pos]),
                ScheduledConditioning([(end, encoded[text]) for end, text in neg]),
            )
            for pos, neg in schedules
        ]

    def chunk_count(self, positive: str, negative: str, steps: int) -> int:
        """How many 75-token chunks the longest scheduled text of this pair needs."""
        pairs = (without_loras(positive), without_loras(negative))
        texts = {text for prompt in pairs for _, text in get_schedule(prompt, steps)}
        return max(len(self._chunks(text)[0]) for text in texts)

    def embeddings_in(self, texts: list[str], steps: int) -> list[Embedding]:
        """The textual inversions these prompts use (any step of their schedules), in order of appearance."""
        if not self.embeddings:
            return []
        names = [name for text in texts for _, scheduled in get_schedule(without_loras(text), steps)
                 for chunk in self._chunks(scheduled)[0] for _, name in chunk.fixes]
        return [self.embeddings[name] for name in dict.fromkeys(names)]

    # -- chunking ---------------------------------------------------------------------------------

    def _chunks(self, text: str) -> list[list[PromptChunk]]:
        """The prompt's chunks for each tokenizer (SDXL's two differ only in their padding id)."""
        result = []
        for index, tokenizer in enumerate(self.components.tokenizers):
            # One lookup, not get_vocab(): copying the 49,408-entry vocabulary cost ~10 ms per prompt.
            comma_id = tokenizer.convert_tokens_to_ids(",</w>")

            def tokenize(pieces: list[str], tok=tokenizer) -> list[list[int]]:
                return tok(pieces, add_special_tokens=False, truncation=False).input_ids

            if self.embeddings and index not in self._matchers:
                self._matchers[index] = EmbeddingMatcher(self.embeddings, tokenize)
            result.append(
                build_chunks(
                    text,
                    tokenize,
                    bos_id=tokenizer.bos_token_id,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=tokenizer.pad_token_id,
                    comma_id=None if comma_id == tokenizer.unk_token_id else comma_id,
                    find_embedding=self._matchers.get(index),
                )
            )
        return result

    def _pad_to(self, chunks: list[PromptChunk], count: int, tokenizer_index: int) -> list[PromptChunk]:
        """A1111 pads the shorter prompt with encodings of the empty prompt."""
        empty = self._chunks("")[tokenizer_index][0]
        return chunks + [empty] * (count - len(chunks))

    # -- encoding ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, per_tokenizer: list[list[PromptChunk]], zeroed: bool) -> Conditioning:
        key = repr([[(c.tokens, c.weights, c.fixes) for c in chunks] for chunks in per_tokenizer]) + str(zeroed)
        if key in self._cache:
            return self._cache[key]
        contexts, pooled = [], None
        for index, (encoder, chunks) in enumerate(zip(self.components.text_encoders, per_tokenizer)):
            ids = torch.tensor([c.tokens for c in chunks], device=self.device)
            weights = torch.tensor([c.weights for c in chunks], device=self.device, dtype=torch.float32)
            output = self._run_encoder(encoder, index, ids, chunks)
            hidden = self._pick_layer(encoder, output)
            contexts.append(_apply_emphasis(hidden.float(), weights))
            if hasattr(output, "text_embeds"):
                # A1111 and diffusers take SDXL's pooled embedding from the first chunk only.
                pooled = output.text_embeds[:1]
        # Chunks lie end to end along the token axis; SDXL's encoders side by side along features.
        context = torch.cat(contexts, dim=-1).reshape(1, -1, sum(c.shape[-1] for c in contexts))
        conditioning = Conditioning(context.to(self.dtype), None if pooled is None else pooled.to(self.dtype))
        if zeroed:
            conditioning = Conditioning(torch.zeros_like(conditioning.context), torch.zeros_like(conditioning.pooled))
        self._cache[key] = conditioning
        return conditioning

    def _run_encoder(self, encoder, index: int, ids: torch.Tensor, chunks: list[PromptChunk]):
        """The text encoder on these chunks, with each embedding's vectors in the places the chunks keep for
        them (a hook for this one call: the encoder itself never changes)."""
        rows = {row: [(position, self.embeddings[name].vectors[index].to(self.device)) for position, name in c.fixes]
                for row, c in enumerate(chunks) if c.fixes}
        if not rows:
            return encoder(ids, output_hidden_states=True)
        layer = getattr(encoder, "text_model", encoder).embeddings.token_embedding
        handle = layer.register_forward_hook(vectors_hook(rows))
        try:
            return encoder(ids, output_hidden_states=True)
        finally:
            handle.remove()

    def _pick_layer(self, encoder, output) -> torch.Tensor:
        """A1111's CLIP skip: layer `-clip_skip` of the text model, through the final layer norm.

        SDXL always reads the penultimate layer without the final norm (as it was trained), and CLIP
        skip counts on from there.
        """
        if self.components.model_family.penultimate_layer:
            return output.hidden_states[-(self.clip_skip + 1)]
        if self.clip_skip == 1:
            return output.last_hidden_state
        hidden = output.hidden_states[-self.clip_skip]
        # transformers 5 flattened CLIPTextModel; the projection variant still nests `text_model`.
        return getattr(encoder, "text_model", encoder).final_layer_norm(hidden)


def without_loras(prompt: str) -> str:
    """The prompt with its `<lora:name:weight>` tags removed: LoRA is not applied yet (it comes with the
    model-patch seam; the engine notes each removed tag), and A1111 never lets such a tag reach CLIP."""
    return extract_loras(prompt)[0]


def _apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding by its weight, then restore each chunk's mean, as A1111 does.

    Restoring the mean keeps the overall magnitude the U-Net expects, so emphasis shifts attention
    between tokens instead of making the whole prompt louder.
    """
    if bool((weights == 1.0).all()):
        return hidden
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    hidden = hidden * weights.unsqueeze(-1)
    return hidden * (original_mean / hidden.mean(dim=(1, 2), keepdim=True))
