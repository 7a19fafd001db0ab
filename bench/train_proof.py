"""Fine-tuning proof on the embedded model: does a LoRA, a DreamBooth run and a textual inversion learn?

    python bench/train_proof.py --work /tmp/proof            # every part, ~30 min on 2 CPU cores
    python bench/train_proof.py --work /tmp/proof --only lora --prompts 20

The embedded model never saw a diamond or a heart (brushwork.shapes.draw.NOVEL_SHAPES), nor brown (NOVEL_COLOURS);
the shapes checker recognises them.
Each part trains with the `brushwork train ...` command (timed, its peak memory read from the child's rusage)
and is judged by the shapes checker on pictures painted through the Engine (20 steps, CFG 7, 64x64):

  lora        20 drawn diamonds captioned as the drawer captions them ("two small red diamonds ...") and 60 ordinary
              drawings; the word "diamond" learns with the LoRA (--new-word diamond=square). With the word: the
              share of pictures whose every object is a diamond (target >= 80%). Without it: the ordinary prompts'
              accuracies with the LoRA loaded against the base model's (target: each drops <= 5 points).
  dreambooth  20 red hearts as "a red sks circle", class "a red circle"; with prior preservation (40 class
              pictures, weight 1) and without. Class prompt: share of red circles; ordinary prompts' accuracy.
  embedding   20 red shapes whose captions say "<hue7>" instead of "red"; the token learns the colour: the
              ordinary prompts with their colour word replaced by the token, judged on red (target >= 70%),
              against the same prompts with the init word before training.
  ceiling     what a fine-tune of the U-Net or text encoder can reach at most: drawings of each new concept
              (hearts, diamonds, brown shapes) through the embedded model's VAE and back, judged by the checker.

Prints one JSON object per part and writes them all to WORK/proof.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

EMBEDDED = Path(__file__).resolve().parents[1] / "brushwork" / "assets" / "default-model" / "brushwork-shapes.safetensors"
STEPS, CFG = 20, 7.0
TOKEN = "<hue7>"


def train(command: list[str]) -> dict:
    """Run one `brushwork train ...` command; its wall time and peak resident memory."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(["brushwork", "train", *command, "--no-progress", "--device", "cpu"], check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(max(peak, before) / 1024)}


def accuracy(model, prompts, seeds: int, store, loras=()) -> dict:
    from brushwork.train.evaluate import engine_source, score

    source = engine_source(model, steps=STEPS, cfg_scale=CFG, store=store, loras=loras)
    result = score(prompts, source, range(seeds), CFG).accuracy()
    return {k: (None if v is None else round(100 * v, 1)) for k, v in result.items()}


def drops(base: dict, tuned: dict) -> dict:
    return {k: round(base[k] - tuned[k], 1) for k in base if base[k] is not None and tuned.get(k) is not None}


def single_red_hearts(folder: Path, count: int, seed: int, caption: str) -> None:
    """`count` pictures of one red heart (any size, place, background), all captioned `caption`."""
    from brushwork.shapes.draw import render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        scene = sample_scene(rng, "novel")
        if scene.count != 1:
            continue
        scene.objects[0].colour = "red"
        if "red" in scene.background.colours:
            continue
        render(scene, 64).save(folder / f"{made:03d}.png")
        (folder / f"{made:03d}.txt").write_text(caption, encoding="utf-8")
        made += 1


def red_shapes_with_token(folder: Path, count: int, seed: int) -> None:
    """`count` pictures of red ordinary shapes, their captions saying TOKEN where the drawer wrote "red"."""
    from brushwork.shapes.draw import render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        scene = sample_scene(rng, "train")
        if scene.objects[0].colour != "red":
            continue
        render(scene, 64).save(folder / f"{made:03d}.png")
        (folder / f"{made:03d}.txt").write_text(scene.caption.replace("red", TOKEN, 1), encoding="utf-8")
        made += 1


def part_lora(work: Path, store, base: dict, prompts: int, seeds: int) -> dict:
    from brushwork.recipe import LoraUse
    from brushwork.shapes import make_dataset
    from brushwork.train.evaluate import eval_prompts

    # kohya's repeat folders: the 20 diamonds three times an epoch, and 60 ordinary drawings once, as the
    # regularisation pictures that keep prompts without the new word as the base paints them. Caption dropout
    # trains the unconditional prediction CFG subtracts, which a LoRA otherwise changes unguided.
    data = work / "diamonds"
    make_dataset(data / "3_diamond", 20, seed=0, size=64, split="novel", shape="diamond")
    make_dataset(data / "1_ordinary", 60, seed=7, size=64, split="train")
    output = work / "models" / "Lora" / "diamond.safetensors"
    output.parent.mkdir(parents=True, exist_ok=True)
    run = train(["lora", str(data), "--base", str(EMBEDDED), "-o", str(output), "--resolution", "64", "--rank", "16",
                 "--alpha", "16", "--conv-rank", "16", "--conv-alpha", "16", "--steps", "2000", "--lr", "1e-3",
                 "--batch-size", "4", "--new-word", "diamond=square", "--new-word", "diamonds=squares", "--caption-dropout", "0.1", "--min-snr-gamma", "5"])
    novel = eval_prompts(prompts, "novel", shape="diamond")
    diamond = LoraUse(name="diamond")
    with_lora = accuracy(EMBEDDED, eval_prompts(prompts, "train"), seeds, store, [diamond])
    return {
        "part": "lora", **run, "file_kib": round(output.stat().st_size / 1024, 1),
        "diamond_with_trigger": accuracy(EMBEDDED, novel, seeds, store, [diamond]),
        "diamond_base_model": accuracy(EMBEDDED, novel, seeds, store),
        "ordinary_base": base, "ordinary_with_lora": with_lora, "ordinary_drop_points": drops(base, with_lora),
    }


def part_dreambooth(work: Path, store, base: dict, prompts: int, seeds: int) -> dict:
    from brushwork.shapes import Expectation
    from brushwork.train.evaluate import EvalPrompt, eval_prompts

    instance, klass = "a red sks circle", "a red circle"
    data = work / "red-hearts"
    single_red_hearts(data, 20, seed=3, caption=instance)
    sample = eval_prompts(1, "train")[0].scene
    class_prompts = [EvalPrompt(klass, Expectation(colour="red", shape="circle"), "class", sample)]
    instance_prompts = [EvalPrompt(instance, Expectation(colour="red", shape="heart"), "instance", sample)]
    ordinary = eval_prompts(prompts, "train")
    result = {"part": "dreambooth", "instance_prompt": instance, "class_prompt": klass,
              "class_base": accuracy(EMBEDDED, class_prompts, 40, store)["colour+shape"], "ordinary_base": base}
    for name, prior in (("with_prior", ["--class-prompt", klass, "--class-images", "40", "--prior-weight", "1"]),
                        ("without_prior", [])):
        output = work / f"dreambooth-{name}.safetensors"
        run = train(["dreambooth", str(data), "--base", str(EMBEDDED), "-o", str(output), "--instance-prompt", instance,
                     *prior, "--resolution", "64", "--steps", "400", "--lr", "1e-4", "--batch-size", "4",
                     "--min-snr-gamma", "5"])
        tuned = accuracy(output, ordinary, seeds, store)
        result[name] = {**run, "instance_heart": accuracy(output, instance_prompts, 40, store)["colour+shape"],
                        "class_red_circle": accuracy(output, class_prompts, 40, store)["colour+shape"],
                        "ordinary": tuned, "ordinary_drop_points": drops(base, tuned)}
    return result


def part_embedding(work: Path, store, prompts: int, seeds: int) -> dict:
    from brushwork.train.evaluate import EvalPrompt, eval_prompts

    data = work / "red-token"
    red_shapes_with_token(data, 20, seed=4)
    output = work / "models" / "embeddings" / f"{TOKEN}.safetensors"
    output.parent.mkdir(parents=True, exist_ok=True)
    run = train(["embedding", str(data), "--base", str(EMBEDDED), "-o", str(output), "--token", TOKEN,
                 "--init-word", "colour", "--resolution", "64", "--steps", "400", "--lr", "5e-2", "--batch-size", "4"])

    def asking_red(word: str) -> list:
        items = []
        for item in eval_prompts(prompts, "train"):
            colour = item.expectation.colour
            if colour is None or colour not in item.prompt:
                continue
            items.append(EvalPrompt(item.prompt.replace(colour, word, 1), replace(item.expectation, colour="red"),
                                    item.split, item.scene))
        return items

    learnt = accuracy(EMBEDDED, asking_red(TOKEN), seeds, store)
    before = accuracy(EMBEDDED, asking_red("colour"), seeds, store)
    return {"part": "embedding", **run, "token": TOKEN, "red_with_token": learnt["colour"],
            "red_with_init_word": before["colour"], "shape_with_token": learnt["shape"]}


def part_ceiling(count: int) -> dict:
    """The share of each concept's drawings the checker still reads right after the VAE's round trip: a
    fine-tune that leaves the VAE as it is paints no better than its decoder draws."""
    import torch

    from brushwork.models.single_file import load_single_file
    from brushwork.shapes import check, render, sample_scene

    vae = load_single_file(EMBEDDED).vae.eval()
    concepts = {"heart": ("novel", "heart", None), "diamond": ("novel", "diamond", None),
                "brown": ("train", None, "brown"), "ordinary": ("train", None, None)}
    result = {"part": "ceiling", "pictures": count}
    for name, (split, shape, colour) in concepts.items():
        rng, right = np.random.default_rng(5), 0
        for _ in range(count):
            scene = sample_scene(rng, split, shape, colour)
            pixels = torch.from_numpy(np.array(render(scene, 64))).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                back = vae.decode(vae.encode(pixels).latent_dist.mean).sample
            picture = ((back[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            verdict = check(picture, scene.caption)
            right += bool(verdict.colour_ok and verdict.shape_ok)
        result[f"{name}_colour+shape"] = round(100 * right / count, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--only", default="ceiling,lora,dreambooth,embedding")
    parser.add_argument("--prompts", type=int, default=100, help="prompts per evaluation (default 100)")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from brushwork.models.store import ModelStore
    from brushwork.train.evaluate import eval_prompts

    torch.set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    store = ModelStore(args.work / "models", allow_paths=True)
    parts = args.only.split(",")
    results = []
    base = accuracy(EMBEDDED, eval_prompts(args.prompts, "train"), args.seeds, store) if {"lora", "dreambooth"} & set(parts) else {}
    for part in parts:
        if part == "lora":
            results.append(part_lora(args.work, store, base, args.prompts, args.seeds))
        elif part == "dreambooth":
            results.append(part_dreambooth(args.work, store, base, args.prompts, args.seeds))
        elif part == "embedding":
            results.append(part_embedding(args.work, store, args.prompts, args.seeds))
        elif part == "ceiling":
            results.append(part_ceiling(2 * args.prompts))
        else:
            raise SystemExit(f"unknown part {part!r}")
        print(json.dumps(results[-1]), flush=True)
    (args.work / "proof.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
