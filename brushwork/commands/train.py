"""`brushwork train base --data DIR -o model.safetensors`: train the embedded model from scratch.

Ctrl-C saves the training state after the current step (a second Ctrl-C stops at once, losing the
steps since the last checkpoint); the same command with --resume continues where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from brushwork.commands.common import add_model_options
from brushwork.errors import EXIT_INTERRUPTED, BrushworkError
from brushwork.train.settings import PRECISIONS

# Flags that override the preset, by TrainSettings field.
OVERRIDES = ("seed", "vae_steps", "steps", "batch_size", "lr", "max_images", "sample_every", "checkpoint_every", "arch",
             "layout_fraction", "foreground_weight", "position_loss_weight")


def add_parser(subparsers) -> None:
    from brushwork.train.settings import ARCHITECTURES, PRESETS

    train = subparsers.add_parser("train", help="train models")
    kinds = train.add_subparsers(dest="train_kind", required=True)
    base = kinds.add_parser(
        "base", help="train the embedded shapes model from scratch (VAE, then text encoder + U-Net)",
        description="Stage 1 trains the VAE, stage 2 the text encoder and U-Net; the state folder beside the "
                    "output (model.train/) keeps checkpoints and sample grids, for --resume.",
    )
    base.add_argument("--data", type=Path, required=True, help="a folder written by `brushwork data shapes`")
    base.add_argument("-o", "--output", type=Path, required=True, help="the model file to write (.safetensors)")
    base.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="quick: under 30 minutes on 2 cores; full: the shipped model's recipe (default: quick)")
    base.add_argument("--resume", action="store_true", help="continue the run saved in the state folder")
    base.add_argument("--vae-from", dest="vae_from", type=Path, default=None, metavar="MODEL",
                      help="skip stage 1: take the VAE of this model file (same architecture), e.g. the shipped model's")
    base.add_argument("--init-from", dest="init_from", type=Path, default=None, metavar="MODEL",
                      help="fine-tune this model file (same architecture): keep its VAE, start stage 2 from its "
                           "U-Net and text encoder")
    base.add_argument("--seed", type=int, default=None)
    base.add_argument("--vae-steps", dest="vae_steps", type=int, default=None, help="stage 1 steps")
    base.add_argument("--steps", type=int, default=None, help="stage 2 (diffusion) steps")
    base.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="stage 2 batch size")
    base.add_argument("--lr", type=float, default=None, help="stage 2 peak learning rate")
    base.add_argument("--max-images", dest="max_images", type=int, default=None, help="use only the first N pictures")
    base.add_argument("--layout-fraction", dest="layout_fraction", type=float, default=None, metavar="F",
                      help="share of each batch drawn from captions that name a position, at high noise")
    base.add_argument("--foreground-weight", dest="foreground_weight", type=float, default=None, metavar="W",
                      help="extra loss weight on the pixels under objects (needs the data's metadata.jsonl)")
    base.add_argument("--position-loss", dest="position_loss_weight", type=float, default=None, metavar="W",
                      help="weight of the text encoder's position probe")
    base.add_argument("--sample-every", dest="sample_every", type=int, default=None,
                      help="steps between sample grids (0: none)")
    base.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=None)
    base.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None, help=argparse.SUPPRESS)  # toy: for tests
    base.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    base.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    base.set_defaults(run=run_base)

    lora = _fine_tune_parser(
        kinds, "lora", "train a LoRA for an SD 1.x, 2.x or SDXL checkpoint on a folder of captioned pictures",
        "Curates the pictures (report beside the output), buckets them by aspect ratio and trains peft adapters on "
        "the U-Net's transformer blocks, as kohya does (and the text encoder with --train-text-encoder). Writes a "
        "kohya-layout .safetensors that brushwork, A1111 and ComfyUI load.",
        "pictures with same-named .txt captions (kohya folders too)", "the LoRA file (default: DATA.safetensors)",
        (("--rank", int, 8, "adapter rank"), ("--alpha", float, 8.0, "LoRA alpha"),
         ("--conv-rank", int, 0, "rank of adapters on the ResNet convolutions too (kohya's conv_dim, LoCon; 0: none)"),
         ("--conv-alpha", float, 1.0, "their alpha"), ("--steps", int, 500, "training steps"),
         ("--lr", float, 1e-4, "learning rate"), ("--caption-dropout", float, 0.0, "share of steps trained with no caption"),
         ("--keep-tokens", int, 0, "with --shuffle-tags: how many leading tags stay in place")))
    lora.add_argument("--train-text-encoder", dest="train_text_encoder", action="store_true")
    lora.add_argument("--new-word", dest="new_words", action="append", default=[], metavar="WORD[=INIT]",
                      help="a caption word the base does not know: its token vectors learn with the LoRA (pivotal "
                           "tuning), starting from INIT's, and are saved in the LoRA file as an embedding that comes "
                           "with it (A1111's bundle_emb; diffusers' load_lora_weights refuses such files); "
                           "repeatable, e.g. --new-word hexagon=shape")
    lora.add_argument("--word-lr", dest="word_lr", type=float, default=None, metavar="LR",
                      help="the new words' learning rate (default: --lr); textual inversion's rates (1e-3 to 5e-2) "
                           "move a word's vectors far enough to mean something new")
    lora.add_argument("--shuffle-tags", dest="shuffle_tags", action="store_true",
                      help="shuffle the comma-separated caption tags every step (kohya's shuffle_caption)")
    lora.set_defaults(run=run_lora)

    embedding = _fine_tune_parser(
        kinds, "embedding", "textual inversion: new token vectors for an SD 1.x, 2.x or SDXL checkpoint",
        "Learns --vectors token vectors (starting from --init-word) on a folder of captioned pictures; the model is "
        "not changed. A caption without the token gets it in front. The file (emb_params; on SDXL clip_l and clip_g, "
        "one set per text encoder) loads in brushwork, A1111, ComfyUI and diffusers; its name is the word that calls "
        "it in a prompt (default: TOKEN.safetensors).",
        "pictures with same-named .txt captions (kohya folders too)", "the embedding file (default: TOKEN.safetensors)",
        (("--vectors", int, 1, "vectors per token"), ("--steps", int, 500, "training steps"),
         ("--lr", float, 5e-3, "learning rate")))
    embedding.add_argument("--token", required=True, help="the new word, as captions (and later prompts) write it")
    embedding.add_argument("--init-word", dest="init_word", required=True, help="a word to start the vectors from")
    embedding.set_defaults(run=run_embedding)

    dreambooth = _fine_tune_parser(
        kinds, "dreambooth", "fine-tune a whole SD 1.x, 2.x or SDXL checkpoint on pictures of one subject (prior preservation)",
        "Trains the U-Net (and the text encoder with --train-text-encoder) on the pictures with the instance prompt. "
        "With --class-images N the base model first paints N pictures of the class prompt (kept in the state folder) "
        "and their loss, weighted by --prior-weight, keeps the class as it was. Writes a single-file checkpoint.",
        "pictures of the subject (captions are not needed)", "the checkpoint (default: DATA.safetensors)",
        (("--class-images", int, 0, "class pictures for prior preservation (0: none)"),
         ("--prior-weight", float, 1.0, "weight of the class pictures' loss"), ("--steps", int, 400, "training steps"),
         ("--lr", float, 5e-6, "learning rate"), ("--class-steps", int, 20, "sampling steps for the class pictures")))
    dreambooth.add_argument("--instance-prompt", dest="instance_prompt", required=True, help='e.g. "a photo of sks dog"')
    dreambooth.add_argument("--class-prompt", dest="class_prompt", default="", help='e.g. "a photo of a dog"')
    dreambooth.add_argument("--train-text-encoder", dest="train_text_encoder", action="store_true")
    dreambooth.set_defaults(run=run_dreambooth)

    controlnet = _fine_tune_parser(
        kinds, "controlnet", "a ControlNet for an SD 1.x, 2.x or SDXL checkpoint from pairs of pictures",
        "Trains a ControlNet, copied from the base's U-Net encoder with zero convolutions, on captioned target "
        "pictures and their control pictures (same names, in the data folder's conditioning/ subfolder; "
        "`brushwork data shapes --condition canny` draws such pairs). The base stays frozen. Writes a "
        "diffusers-named .safetensors for --models-dir's ControlNet/.",
        "captioned target pictures, with conditioning/ beside them", "the ControlNet (default: DATA.safetensors)",
        (("--steps", int, 1000, "training steps"), ("--lr", float, 1e-5, "learning rate"),
         ("--caption-dropout", float, 0.0, "share of steps trained with no caption (learns the control alone)")))
    controlnet.add_argument("--conditioning", default="conditioning", metavar="FOLDER",
                            help="the data folder's subfolder of control pictures (default conditioning)")
    controlnet.set_defaults(run=run_controlnet)


# The numeric flags every fine-tuning run takes: (flag, type, default, help).
_FINE_TUNE_NUMBERS = (
    ("--resolution", int, 512, "training resolution (buckets of about its area)"),
    ("--batch-size", int, 1, "pictures per step"), ("--seed", int, 0, "seed"),
    ("--checkpoint-every", int, 100, "steps between saved states (for --resume)"),
    ("--sample-every", int, 0, "paint a sample picture every N steps into the state folder's samples/ (0: none)"),
)


def _fine_tune_parser(kinds, name: str, summary: str, description: str, data_help: str, output_help: str,
                      numbers: tuple) -> argparse.ArgumentParser:
    """A `train NAME DATA --base MODEL` sub-command with the flags every fine-tuning run shares."""
    parser = kinds.add_parser(name, help=summary, description=description)
    parser.add_argument("data", type=Path, help=data_help)
    parser.add_argument("--base", required=True, help="the checkpoint to train for: a name in --models-dir or a path")
    parser.add_argument("-o", "--output", type=Path, default=None, help=output_help)
    for flag, kind, default, text in (*numbers, *_FINE_TUNE_NUMBERS):
        parser.add_argument(flag, dest=flag[2:].replace("-", "_"), type=kind, default=default,
                            help=f"{text} (default {default})")
    parser.add_argument("--sample-prompt", dest="sample_prompt", default="",
                        help="the samples' prompt (default: the first caption, or the instance prompt)")
    parser.add_argument("--gradient-accumulation", dest="accumulation", type=int, default=1, metavar="N",
                        help="micro-batches per optimizer step: N x --batch-size pictures per step (default 1)")
    parser.add_argument("--mixed-precision", dest="mixed_precision", choices=PRECISIONS, default="no",
                        help="autocast the forward pass: fp16 (GPU) or bf16; weights stay float32 (default no)")
    parser.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true",
                        help="recompute activations in the backward pass: less memory, slower steps")
    parser.add_argument("--ema-decay", dest="ema_decay", type=float, default=0.0, metavar="D",
                        help="save an exponential moving average of the trained weights, e.g. 0.999 (default 0: off)")
    parser.add_argument("--min-snr-gamma", dest="min_snr_gamma", type=float, default=0.0, metavar="G",
                        help="weight each picture's loss by Min-SNR with this gamma, e.g. 5 (default 0: plain MSE)")
    parser.add_argument("--min-aesthetic", dest="min_aesthetic", type=float, default=5.0, metavar="S",
                        help="with LAION's aesthetic predictor in --models-dir's aesthetic/: leave out pictures "
                             "scoring under S (1-10; default 5)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the state folder")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda ... (default: cuda when present; under accelerate launch, each process's GPU)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_options(parser)
    return parser


def run_base(args: argparse.Namespace) -> int:
    import torch

    from brushwork.train.base import train_base
    from brushwork.train.loop import TrainingInterrupted

    if args.threads is not None:
        if args.threads < 1:
            raise BrushworkError(f"--threads must be at least 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(stop))
    command = shlex.join(["brushwork", *sys.argv[1:]]) if sys.argv and "brushwork" in sys.argv[0] else ""
    try:
        train_base(
            args.data, args.output, preset=args.preset, resume=args.resume, vae_from=args.vae_from,
            init_from=args.init_from, command=command,
            overrides={name: getattr(args, name) for name in OVERRIDES},
            should_stop=stop.is_set, progress=args.progress, say=lambda text: print(text, file=sys.stderr),
        )
    except TrainingInterrupted as stopped:
        print(f"\nstopped: the {stopped.stage} stage is saved after step {stopped.step}; run the same command with "
              "--resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def run_lora(args: argparse.Namespace) -> int:
    return _fine_tune(args, "lora", args.output or Path(args.data.name + ".safetensors"), (
        "rank", "alpha", "conv_rank", "conv_alpha", "caption_dropout", "train_text_encoder", "shuffle_tags",
        "keep_tokens", "new_words", "word_lr"))


def run_embedding(args: argparse.Namespace) -> int:
    return _fine_tune(args, "embedding", args.output or Path(args.token + ".safetensors"),
                      ("token", "init_word", "vectors"))


def run_controlnet(args: argparse.Namespace) -> int:
    return _fine_tune(args, "controlnet", args.output or Path(args.data.name + ".safetensors"),
                      ("caption_dropout", "conditioning"))


def run_dreambooth(args: argparse.Namespace) -> int:
    return _fine_tune(args, "dreambooth", args.output or Path(args.data.name + ".safetensors"), (
        "instance_prompt", "class_prompt", "class_images", "prior_weight", "train_text_encoder", "class_steps"))


def _fine_tune(args: argparse.Namespace, kind: str, output: Path, own_flags: tuple[str, ...]) -> int:
    """Build the TrainRequest, load the base, train with Ctrl-C saving the state, and say where the file is."""
    import torch
    from pydantic import ValidationError

    from brushwork.models.store import ModelStore
    from brushwork.recipe import describe_validation_error
    from brushwork.train.jobs import TrainRequest, fine_tune
    from brushwork.train.loop import TrainingInterrupted

    if output.suffix.lower() != ".safetensors":
        raise BrushworkError(f"-o/--output: write a .safetensors file, got {output}")
    shared = ("steps", "lr", "resolution", "batch_size", "seed", "checkpoint_every", "sample_every", "sample_prompt",
              "mixed_precision", "gradient_checkpointing", "ema_decay", "min_snr_gamma", "min_aesthetic")
    try:
        request = TrainRequest(kind=kind, output=output.stem, base=args.base,
                               gradient_accumulation=args.accumulation,
                               **{name: getattr(args, name) for name in (*shared, *own_flags)})
    except ValidationError as error:
        raise BrushworkError(f"train {kind}: {describe_validation_error(error)}") from None
    device = args.device or _default_device()
    store = ModelStore(args.models_dir, device=device, dtype=torch.float32, allow_pickle=args.allow_pickle,
                       allow_paths=True)
    model = store.load(args.base)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(stop))
    try:
        result = fine_tune(request, model, store, args.data, output, resume=args.resume, progress=args.progress,
                           should_stop=stop.is_set)
    except TrainingInterrupted as stopped:
        print(f"\nstopped: saved after step {stopped.step}; run the same command with --resume to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    from brushwork.train.optimize import processes

    if processes().is_main_process:  # under accelerate launch, one report for all the processes
        print(f"{result.output}: {result.pictures} pictures, {result.steps} steps in {result.seconds:.1f} s",
              file=sys.stderr)
        print(result.output)
    return 0


def _default_device() -> str:
    """This process's GPU under `accelerate launch` (one per process), else cuda when present, else the CPU."""
    import torch

    from brushwork.train.optimize import processes

    launched = processes()
    if launched.num_processes > 1 and torch.cuda.is_available():
        return str(launched.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _request_stop(stop: threading.Event) -> None:
    """First Ctrl-C: save and stop after the current step. A second one interrupts at once."""
    if stop.is_set():
        raise KeyboardInterrupt
    print("\nstopping after this step (Ctrl-C again to stop at once)...", file=sys.stderr)
    stop.set()
