"""The training engine every entry point runs on, one module per concern:

- `device`: the device and thread count of a hardware profile, seeding, precision (autocast and
  the fp16 loss scaler), and what a record says of the environment;
- `step`: the model being trained (`Trainee`) and one optimisation step over micro-batches;
- `evaluation`: predictions over a split and the metrics a record reports of them;
- `objectives`: cross-entropy, or distillation from a finished run's model;
- `resume`: the resumable state of a run, its last and best checkpoints;
- `loop`: the training loop (validation, checkpoints, TensorBoard) from a state to max_steps;
- `training`: a whole lra-train run: build, train, test, and its record;
- `finished`: a finished lra-train run read back (record, config, the model it tested);
- `inputs`: random batches and models built for a length, for measuring speed and memory;
- `benchmark`: one speed and memory measurement at a length and mode (lra-bench);
- `compression`: int8 quantization and magnitude pruning of a trained model, and their figures.
"""
