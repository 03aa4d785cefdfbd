"""Training: decoupled distillation of a small image encoder from a big one, fine-tuning on
ground-truth masks, and evaluation.

Nothing on the inference path imports this package. Modules, each with one job:

- `data`: image folders (recursive jpg/png) and the SA-1B layout, seeded train/val split,
  image reading with content hashes, the cached-embedding dataset.
- `coco`: COCO-format annotations (polygons, RLE, crowd skipped) as ground-truth objects.
- `models`: config <-> dict, loading a model from a name or any checkpoint (with or without
  its own config), building a student that carries the teacher's prompt encoder and decoder.
- `teacher_cache`: precomputing the teacher's embeddings into fp16 shards with a manifest.
- `distill`: the training loop (AdamW, warm-up + cosine, accumulation, DDP, resume,
  checkpoint on SIGTERM/SIGUSR1 or by time).
- `prompting`, `losses`: prompts on the low-res mask grid; mask losses (KL / MSE to a
  teacher's logits, dice + BCE to ground truth).
- `prompt_loss`: the optional prompt-in-the-loop distillation loss (EdgeSAM-style).
- `finetune`: training the mask decoder (and optionally the encoder) on COCO masks.
- `evaluate`: mIoU against a teacher (point, two-point, box) and against ground truth
  (box, center point).
- `dist`, `sync_bn`, `plot`: torch.distributed helpers (torchrun or srun), BatchNorm over all
  processes, a loss-curve PNG drawn with Pillow.
"""
