"""One module per pipeline stage. Each has `NAME`, `DISTRIBUTED` (built by every process under
`accelerate launch`, or by the main one alone), `inputs(ctx)` (what invalidates it: its cache key, or
None when the recipe skips it) and `build(ctx, out_dir) -> info`; `context.RunContext` holds what the
stages of one run share. `prune.pipeline` runs them in order."""
