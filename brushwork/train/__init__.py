"""Training brushwork's embedded model from scratch: a tiny SD 1.x-architecture text-to-image model.

    brushwork data shapes DATA --count 20000                    # the pictures (brushwork.shapes)
    brushwork train base --data DATA -o model.safetensors --preset full
    brushwork eval shapes --model model.safetensors --cfg-scale 1 7

`base.train_base` runs the recipe; the other modules are its parts:

    spec / models   the widths (ModelSpec) and the empty SD 1.x-layout model (Components)
    settings        hyper-parameters and the presets (quick, full, toy)
    data            the picture folder in memory, tokenization as the engine does it, batch order
    vae             stage 1: the VAE (an autoencoder on 32x32 crops), then the data set encoded once
    diffusion       stage 2: text encoder + U-Net, v prediction, Min-SNR weights, caption dropout, EMA
    layout          what teaches position: object masks, positioned captions at high noise, the text probe
    loop            the step loop: learning-rate schedule, tqdm bar (loss, it/s, ETA), checkpoints, Ctrl-C
    state           the state folder beside the output (model.train/) that --resume continues from
    export          the fp16 single-file checkpoint + sibling yaml; sample grids through the Engine
    evaluate        `brushwork eval shapes`: prompts from the drawer, pictures from the Engine, the checker's verdicts

The model (DEFAULT_SPEC), SD 1.x classes and key layout at small widths:

    VAE            AutoencoderKL, 3 levels (64, 64, 64), 1 ResNet per level: 64x64 px <-> 4x16x16 latents   1.16M
    text encoder   CLIPTextModel, real 49,408-token vocabulary, width 128, 4 layers, MLP 256, 2 heads          6.86M
    U-Net          UNet2DConditionModel (64, 128, 128), 1 ResNet per level, cross-attention at 8x8 and 4x4
                   and in the middle block, 8 heads (SD 1.x convention)                                         6.72M
    file           fp16 .safetensors, 29.5 MB, + model.yaml (scale_factor) + model.json (training record)

Why these widths (measured on the 2-core AMD EPYC Zen 5 this was built on, torch 2.14 CPU, fp32):

* Every width is a multiple of 32 and no first level is 32 wide: the single-file layout fixes GroupNorm at
  32 groups, and one channel per group is instance norm, which erases flat colours (a (32, 64, 64) VAE
  needed ~3x the steps of a (64, 64, 64) one to reconstruct the same pictures).
* Attention at the U-Net's 16x16 level (256 tokens, 8-channel heads) cost ~45% of a training step
  (45 vs 82 pictures/s at batch 64); the 8x8 and 4x4 levels already see the whole picture.
* The text encoder's token embedding (49,408 x 128) is most of the file; 192 wide would not fit in 30 MB.
* bf16 autocast gave ~10% more steps/s for this U-Net at batch 64 but less for others; off by default.
* A 20-step picture at CFG 7 takes ~0.36 s through the Engine (batch 1).

Throughput on 2 idle cores (contention from other processes slows the 2-thread OpenMP loops 2-10x):

    stage 1  VAE, batch 32 of 32x32 crops                ~2.5 steps/s
    encode   the data set, once                           ~130 pictures/s
    stage 2  text encoder + U-Net, batch 64 (32 is ~1.9)  ~1.27 steps/s (81 pictures/s)
"""
