"""Drafter training: target feature caches, draft vocabularies, EAGLE-2/HASS losses, the
training loop with atomic checkpoints, and weight-space averaging.

Modules: examples (records -> token ids + loss masks), extract (batched teacher-forced target
passes), shards + features (the sharded on-disk cache and the online source), vocab (reduced
draft vocabulary), losses (pure loss functions), alignment (HASS context-alignment passes),
batching (pair batches, epoch order), checkpoint (atomic trainer state), trainlog (JSONL + PNG
curve), trainer (the loop), pipeline (from an ExperimentConfig), averaging (weighted mean of
drafters), bench_features (throughput script). Nothing is imported here, so
`import taps_ray.training` does no work.
"""
