"""How fine-tuning steps are taken (train/optimize.py): gradient accumulation is the mean of its micro-batches,
the EMA is the saved weights, bf16 autocasts, gradient checkpointing leaves the result unchanged, fp16 on the
CPU is refused with a message, a run with all of them on still resumes to the same weights, two processes
train what one does, and a stop that one process sees stops both after the same step."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from brushwork.cli import main
from brushwork.errors import BrushworkError
from brushwork.shapes import make_dataset
from brushwork.train.finetune import RunControls, run_fine_tune
from brushwork.train.loop import TrainingInterrupted
from brushwork.train.optimize import Optimization
from brushwork.train.settings import StepSettings
from tiny_models import tiny_components, write_tiny_checkpoint

FLAGS = ["--resolution", "64", "--rank", "4", "--alpha", "4", "--lr", "1e-3", "--no-progress", "--device", "cpu"]


def _linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def _micro_loss(layer: torch.nn.Linear):
    inputs = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))

    def loss_of(micro: int) -> torch.Tensor:
        return layer(inputs[micro::4]).pow(2).mean() * (micro + 1)

    return loss_of


def test_accumulated_micro_batches_step_as_their_mean():
    accumulated, whole = _linear(), _linear()
    steps = Optimization(accumulated.parameters(), lr=0.1, weight_decay=0.0, device="cpu",
                         settings=StepSettings(accumulation=2))
    reference = Optimization(whole.parameters(), lr=0.1, weight_decay=0.0, device="cpu", settings=StepSettings())
    assert steps.micro_batches(3) == [6, 7]
    loss_a, loss_b = _micro_loss(accumulated), _micro_loss(whole)
    for step in range(3):
        mean = steps.step(step, 0.1, loss_a)
        assert mean == pytest.approx(reference.step(step, 0.1, lambda _: (loss_b(2 * step) + loss_b(2 * step + 1)) / 2))
    for ours, theirs in zip(accumulated.parameters(), whole.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_the_ema_average_becomes_the_weights():
    layer = _linear()
    start = [p.detach().clone() for p in layer.parameters()]
    steps = Optimization(layer.parameters(), lr=0.1, weight_decay=0.0, device="cpu",
                         settings=StepSettings(ema_decay=0.5))
    loss_of = _micro_loss(layer)
    expected = [p.clone() for p in start]
    for step in range(4):
        steps.step(step, 0.1, loss_of)
        weight = 1 - min(0.5, (1 + step) / (10 + step))
        expected = [e + weight * (p.detach() - e) for e, p in zip(expected, layer.parameters())]
    live = [p.detach().clone() for p in layer.parameters()]
    steps.finish()
    for saved, average, trained in zip(layer.parameters(), expected, live):
        assert torch.allclose(saved, average, atol=1e-6) and not torch.allclose(saved, trained)


def test_bf16_autocasts_the_forward_and_fp16_needs_a_gpu():
    layer = _linear()
    steps = Optimization(layer.parameters(), lr=0.1, weight_decay=0.0, device="cpu",
                         settings=StepSettings(mixed_precision="bf16"))
    seen = []

    def loss_of(micro: int) -> torch.Tensor:
        out = layer(torch.ones(2, 3))
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    assert torch.isfinite(torch.tensor(steps.step(0, 0.1, loss_of)))
    assert seen == [torch.bfloat16] and layer.weight.dtype == torch.float32
    with pytest.raises(BrushworkError, match="fp16 needs a GPU"):
        Optimization(layer.parameters(), lr=0.1, weight_decay=0.0, device="cpu",
                     settings=StepSettings(mixed_precision="fp16"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-optimize")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint("sd1", models / "Stable-diffusion" / "tiny.safetensors")
    make_dataset(root / "shapes", 4, seed=5, size=64, split="all")
    return root, models


def train(setup, output, *extra) -> int:
    root, models = setup
    return main(["train", "lora", str(root / "shapes"), "--base", "tiny", "--models-dir", str(models),
                 "-o", str(output), *FLAGS, *extra])


def test_gradient_checkpointing_trains_the_same_lora(setup, tmp_path, monkeypatch):
    assert train(setup, tmp_path / "plain.safetensors", "--steps", "3") == 0
    import torch.utils.checkpoint as checkpointing

    real, calls = checkpointing.checkpoint, []
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert train(setup, tmp_path / "recomputed.safetensors", "--steps", "3", "--gradient-checkpointing") == 0
    assert calls  # the U-Net's blocks really were recomputed
    plain, recomputed = load_file(tmp_path / "plain.safetensors"), load_file(tmp_path / "recomputed.safetensors")
    assert plain.keys() == recomputed.keys()
    assert all(torch.allclose(plain[k], recomputed[k], atol=1e-5) for k in plain)


def test_a_run_with_accumulation_ema_and_bf16_resumes_exactly(setup, tmp_path, monkeypatch):
    options = ["--steps", "4", "--checkpoint-every", "2", "--gradient-accumulation", "2", "--ema-decay", "0.9",
               "--mixed-precision", "bf16"]
    whole = tmp_path / "whole.safetensors"
    assert train(setup, whole, *options) == 0

    import brushwork.train.lora as trainer

    real = trainer.train_lora
    monkeypatch.setattr(trainer, "train_lora", lambda *a, **k: real(*a, **k | {"should_stop": lambda: True}))
    halves = tmp_path / "halves.safetensors"
    assert train(setup, halves, *options) != 0  # stopped after step 1, its state saved
    monkeypatch.setattr(trainer, "train_lora", real)
    assert train(setup, halves, *options, "--resume") == 0
    first, second = load_file(whole), load_file(halves)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_fp16_on_the_cpu_is_a_clear_error(setup, tmp_path, capsys):
    assert train(setup, tmp_path / "x.safetensors", "--steps", "1", "--mixed-precision", "fp16") != 0
    assert "fp16 needs a GPU" in capsys.readouterr().err


def two_processes(program: list[str], port: int, timeout: float) -> subprocess.CompletedProcess:
    """`python PROGRAM` twice, as `accelerate launch` starts one process per GPU through torch's launcher: here
    two CPU processes (gloo) in network and process namespaces of their own, the network only loopback. A run
    past `timeout` is killed, and with it (the namespace's first process gone) every process it started, so a
    hang fails the test instead of stalling it or leaving processes behind."""
    launch = shlex.join([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_addr", "127.0.0.1", "--master_port", str(port), *program])
    return subprocess.run(["unshare", "-rn", "--pid", "--fork", "--kill-child", "sh", "-c",
                           f"ip link set lo up && {launch}"], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"GLOO_SOCKET_IFNAME": "lo"})


def test_two_processes_train_what_one_does_with_accumulation(setup, tmp_path):
    """Each of two launched processes trains half of every step's micro-batches and their gradients are
    averaged: the same LoRA as one process accumulating both micro-batches."""
    root, models = setup
    common = [str(root / "shapes"), "--base", "tiny", "--models-dir", str(models), *FLAGS, "--steps", "3"]
    one = tmp_path / "one.safetensors"
    assert main(["train", "lora", *common, "-o", str(one), "--gradient-accumulation", "2"]) == 0
    two = tmp_path / "two.safetensors"
    run = two_processes(["-m", "brushwork", "train", "lora", *common, "-o", str(two)], port=29541, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(str(two)) == 1  # only the main process reports (and writes)
    first, second = load_file(one), load_file(two)
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-5) for k in first)


def stop_seen_by_rank_one(stop_after: int, folder: Path) -> None:
    """One process of test_a_stop_seen_by_one_process_stops_them_all (run as this file's main): the fine-tuning
    step loop over a tiny layer, where only rank 1 asks to stop, after step `stop_after` of 10. Its checkpoint
    writes as the trainers' do (the main process only), into `folder`; it prints what it did as JSON."""
    layer = _linear()
    steps = Optimization(layer.parameters(), lr=0.1, weight_decay=0.0, device="cpu", settings=StepSettings())
    rank = steps.processes.process_index
    done, checkpoints = [], []

    def checkpoint(step: int) -> None:
        checkpoints.append(step)
        if steps.is_main:
            with (folder / f"checkpoint-{step}").open("a") as written:
                written.write(f"{rank}\n")

    controls = RunControls(progress=False, should_stop=lambda: rank == 1 and len(done) >= stop_after,
                           on_step=lambda stage, step, loss: done.append(step))
    settings = SimpleNamespace(steps=10, lr=0.1, checkpoint_every=0, sample_every=0, seed=0, resolution=64)
    try:
        run_fine_tune("stop", 0, settings, steps, _micro_loss(layer), checkpoint, [layer], controls,
                      samples=folder / "samples")
        stopped = None
    except TrainingInterrupted as interrupted:
        stopped = interrupted.step
    print(json.dumps({"rank": rank, "stopped": stopped, "steps": done, "checkpoints": checkpoints,
                      "weights": [p.detach().flatten().tolist() for p in layer.parameters()]}), flush=True)


def test_a_stop_seen_by_one_process_stops_them_all(tmp_path):
    """Under `accelerate launch` a Ctrl-C or a cancel may reach one process only. Both processes leave the loop
    after the same step (a process going on alone would wait forever in the next gradient all-reduce), with the
    same weights, and the stop's checkpoint is written once, by the main process, at that step."""
    run = two_processes([__file__, "3", str(tmp_path)], port=29542, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = sorted((json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")),
                     key=lambda report: report["rank"])
    assert [report["rank"] for report in reports] == [0, 1]
    for report in reports:
        assert report["stopped"] == 3 and report["steps"] == [1, 2, 3] and report["checkpoints"] == [3]
    assert reports[0]["weights"] == reports[1]["weights"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3"]
    assert (tmp_path / "checkpoint-3").read_text() == "0\n"


def test_one_process_asks_its_own_stop_request():
    """Not launched: the stop request is the caller's own callable (no collective, nothing added per step)."""
    steps = Optimization(_linear().parameters(), lr=0.1, weight_decay=0.0, device="cpu", settings=StepSettings())
    def ask() -> bool:
        return False

    assert steps.stop_together(ask) is ask and steps.stop_together(None) is None


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_each_pictures_loss(prediction):
    """diffusers' and kohya's Min-SNR: min(SNR, gamma) / SNR for noise prediction, / (SNR + 1) for v."""
    from types import SimpleNamespace

    from brushwork.train.finetune import Objective

    components = tiny_components("sd1")
    components.scheduler_config = {**components.scheduler_config, "prediction_type": prediction}
    objective = Objective(components, snr_gamma=5.0)
    plain = Objective(components)
    def unet(noisy, timesteps, encoder_hidden_states):  # predicts zeros: the error is the target squared
        return SimpleNamespace(sample=torch.zeros_like(noisy))

    unet.dtype = torch.float32
    target = torch.arange(1.0, 4.0).view(3, 1, 1, 1).expand(3, 4, 2, 2)
    timesteps = torch.tensor([10, 500, 990])
    context = torch.zeros(3, 77, 32)
    alphas = objective.scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    per_picture = torch.tensor([1.0, 4.0, 9.0])
    assert objective.loss(unet, target, timesteps, target, context) == pytest.approx(float((per_picture * weights).mean()))
    assert plain.loss(unet, target, timesteps, target, context) == pytest.approx(float(per_picture.mean()))


if __name__ == "__main__":  # one of the processes two_processes starts for the stop test
    stop_seen_by_rank_one(int(sys.argv[1]), Path(sys.argv[2]))
