"""Training: decoupled distillation of a small image encoder from a big one, and evaluation.

Nothing on the inference path imports this package. Modules, each with one job:

- `data`: image folders (recursive jpg/png) and the SA-1B layout, seeded train/val split,
  image reading with content hashes, the cached-embedding dataset.
- `models`: config <-> dict, loading a model from a name or any checkpoint (with or without
  its own config), building a student that carries the teacher's prompt encoder and decoder.
- `teacher_cache`: precomputing the teacher's embeddings into fp16 shards with a manifest.
- `distill`: the training loop (AdamW, warm-up + cosine, accumulation, DDP, resume).
- `prompt_loss`: the optional prompt-in-the-loop mask loss (EdgeSAM-style).
- `evaluate`: student-vs-teacher mIoU with point, two-point and box prompts.
- `dist`, `plot`: torch.distributed helpers; a loss-curve PNG drawn with Pillow.
"""
