"""Write the CLIP BPE tokenizer folder that ships inside the package.

The vocabulary is OpenAI's CLIP BPE table as distributed in the `open-clip-torch` wheel
(`bpe_simple_vocab_16e6.txt.gz`). Run once: `python tools/build_clip_tokenizer.py`.
It pads with <|endoftext|> as SD 1.x and SDXL's first encoder were trained; the OpenCLIP encoders
(SD 2.x, SDXL's second) pad with "!" (id 0), which the loader sets with `pad_token="!"`.
"""

import gzip
import json
from pathlib import Path

import open_clip

OUT = Path(__file__).resolve().parents[1] / "brushwork" / "assets" / "clip-tokenizer"
MERGE_COUNT = 49152 - 256 - 2


def byte_alphabet() -> list[str]:
    """The printable stand-ins GPT-2/CLIP BPE uses for the 256 byte values, in id order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main() -> None:
    source = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(source).read().decode("utf-8").split("\n")[1 : MERGE_COUNT + 1]
    alphabet = byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    folder = OUT
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    print("wrote", folder)


if __name__ == "__main__":
    main()
