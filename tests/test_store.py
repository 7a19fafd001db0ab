"""ModelStore: names inside the models folder only, caching, switching without leaks, VAE override."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch

from brushwork.errors import ModelLoadError
from brushwork.models.store import ModelStore
from tiny_models import tiny_components, write_tiny_checkpoint


@pytest.fixture()
def models_dir(tmp_path):
    root = tmp_path / "models"
    (root / "Stable-diffusion" / "sub").mkdir(parents=True)
    (root / "VAE").mkdir()
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "a.safetensors", seed=1)
    write_tiny_checkpoint("sd1", root / "Stable-diffusion" / "sub" / "b.safetensors", seed=2)
    return root


def test_names_resolve_inside_the_models_folder_only(models_dir, tmp_path):
    store = ModelStore(models_dir)
    assert store.resolve("checkpoint", "a").name == "a.safetensors"
    assert store.resolve("checkpoint", "sub/b.safetensors").name == "b.safetensors"
    assert store.resolve("checkpoint", "a.safetensors [0123456789]").name == "a.safetensors"  # A1111 title
    outside = tmp_path / "outside.safetensors"
    write_tiny_checkpoint("sd1", outside)
    for hostile in ("../../outside.safetensors", str(outside), "../Stable-diffusion/a"):
        with pytest.raises(ModelLoadError, match="not found"):
            store.resolve("checkpoint", hostile)
    # A symlink inside the folder that points out of it is refused too.
    (models_dir / "Stable-diffusion" / "link.safetensors").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="outside the models folder"):
        store.resolve("checkpoint", "link")


def test_cli_store_accepts_paths(models_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    write_tiny_checkpoint("sd1", outside)
    assert ModelStore(models_dir, allow_paths=True).resolve("checkpoint", str(outside)) == outside.resolve()


def test_default_is_first_checkpoint_and_loads_are_cached(models_dir):
    store = ModelStore(models_dir, max_loaded=2)
    first = store.load(None)
    assert first.name == "a" and len(first.short_hash) == 10
    assert store.load("a") is first
    assert store.load("sub/b").name == "sub/b"
    assert store.load("a") is first  # both fit in the budget


def test_twenty_switches_free_every_previous_model(models_dir):
    store = ModelStore(models_dir, max_loaded=1)
    refs = []
    for index in range(20):
        model = store.load("a" if index % 2 == 0 else "sub/b")
        refs.append(weakref.ref(model.components.unet))
        del model
    gc.collect()
    alive = [r for r in refs[:-1] if r() is not None]
    assert not alive, f"{len(alive)} of 19 replaced U-Nets are still in memory"
    assert refs[-1]() is not None


def test_vae_override_uses_new_weights_and_leaves_the_cached_vae_alone(models_dir):
    other = tiny_components("sd1", seed=9).vae
    # Community VAE files carry bare ldm keys ("encoder.down.0..."), without "first_stage_model.".
    from brushwork.models import ldm_layout
    from safetensors.torch import save_file

    weights = ldm_layout.vae_to_ldm(other.state_dict(), other.config)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in weights.items()},
              str(models_dir / "VAE" / "other.safetensors"))
    store = ModelStore(models_dir, max_loaded=2)
    plain = store.load("a")
    before = {k: v.clone() for k, v in plain.components.vae.state_dict().items()}
    with_vae = store.load("a", vae="other")
    assert with_vae.components.unet is plain.components.unet  # the rest is shared, not reloaded
    assert with_vae.vae_name == "other" and len(with_vae.vae_short_hash) == 10
    for key, value in other.state_dict().items():
        assert torch.equal(with_vae.components.vae.state_dict()[key], value), key
    for key, value in plain.components.vae.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_wrong_vae_is_a_clear_error(models_dir):
    from safetensors.torch import save_file

    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(models_dir / "VAE" / "notavae.safetensors"))
    with pytest.raises(ModelLoadError, match="not a VAE for this model"):
        ModelStore(models_dir).load("a", vae="notavae")


def test_loading_does_not_hold_two_copies_of_the_weights(tmp_path):
    """Peak anonymous memory while loading stays near one copy of the weights.

    Safetensors are memory-mapped, so the file's pages show in RSS as reclaimable page cache; what
    must not happen is a second private copy. RssAnon is sampled every 2 ms during the load.
    """
    path = tmp_path / "big.safetensors"
    script = textwrap.dedent(
        f"""
        import sys, threading, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from diffusers import UNet2DConditionModel
        from tiny_models import tiny_components
        from brushwork.models.single_file import load_single_file, save_single_file
        components = tiny_components("sd1")
        components.unet = UNet2DConditionModel(
            block_out_channels=(256, 512), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, layers_per_block=2,
            attention_head_dim=8, sample_size=32)
        save_single_file(components, {str(path)!r})
        del components
        import gc; gc.collect()

        def anonymous_kb():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon"):
                    return int(line.split()[1])

        peak, done = [0], threading.Event()
        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], anonymous_kb()); time.sleep(0.002)
        before = anonymous_kb()
        watcher = threading.Thread(target=watch); watcher.start()
        model = load_single_file({str(path)!r})
        done.set(); watcher.join()
        print(before, peak[0])
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    before_kb, peak_kb = (int(v) for v in output.split())
    size_kb = path.stat().st_size / 1024
    growth = (peak_kb - before_kb) / size_kb
    assert growth < 1.3, f"loading needed {growth:.2f}x the file size in private memory"
