"""Benchmarks of kisstore against the field's methods, run side by side in one process.

``python -m benchmarks`` measures, on the embedded SmolLM2-135M (30 layers, d_ff 1536):

1. the all-layer covariance: kisstore's one corpus pass vs a re-implementation of ROME's
   ``layer_stats`` method (one pass per layer, float32 ``addmm``);
2. P matrices: kisstore (keys once, Cholesky) vs the paper's method (keys recomputed for
   every pair, ``C⁻¹`` applied per pair);
3. the overhead of the accumulators over a bare forward pass;
4. the useful FLOP/s of the corpus pass against a large float32 GEMM;
5. ``kisstore analyze`` time and the peak memory of extraction and analysis;
6. a scale plan for the paper's eleven models on one H100.

Every figure is a ratio of two runs made in the same process (see docs/benchmarks.md).
"""
