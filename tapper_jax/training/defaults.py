"""The default experiment config; configs/*.py start from `base_config()` and change fields.

Learning rates and step counts follow the paper's recipe in shape (AdamW, linear warmup then
linear decay, grad-norm clip 0.3, a per-task learning rate); every value is a field.
"""

from __future__ import annotations

import ml_collections

# One logical-axis -> mesh-axis table for the whole run (model code names logical axes only).
# A mesh axis is used at most once per array; an axis that does not divide a dimension is
# dropped for that array (it stays replicated there) rather than failing.
RULES = (
    ("batch", ("data", "fsdp")),  # examples over data- and fsdp-parallel devices
    ("users", ("data", "fsdp")),  # the prefix table's rows: millions of users shard here
    ("vocab", "tensor"),
    ("embed", "fsdp"),  # FSDP: weights sharded on their model dimension, gathered per layer
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("tapper_hidden", "tensor"),
    ("tapper_out", "tensor"),
)


def base_config(task: str = "LaMP_2M") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task  # LaMP task: LaMP_1, LaMP_2M, LaMP_2N, LaMP_3, LaMP_4, LaMP_5, LaMP_7 (LaMP_2 = 2M)
  c.stage = "both"  # "1" (task LoRA, merged and saved), "2" (TAP-PER on a saved backbone), "both"
  c.seed = 0  # one seed for init, data order and dropout

  c.data = ml_collections.ConfigDict()
  c.data.source = "lamp"  # "lamp" (official {split}_questions/outputs.json), "oppu", "synthetic"
  c.data.folder = ""  # the task's folder of LaMP files (synthetic: written here if empty, in workdir)
  c.data.train_split = "train"  # split (file prefix) trained on
  c.data.eval_split = "dev"  # split evaluated at the end ("" to skip evaluation)
  c.data.eval_max_examples = 0  # evaluate on the first N questions only (0 = all)
  c.data.strict = False  # skipped bad records become errors
  c.data.synthetic = ml_collections.ConfigDict(dict(  # data.source == "synthetic" only
      num_users=24, items_per_user=24, drift=1.0, favour=0.9, topical=0.25, seed=0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "smollm2-135m-instruct"  # registry name, "tiny-random", or a local HF folder
  c.model.param_dtype = "float32"  # storage dtype of the frozen weights
  c.model.dtype = "float32"  # compute dtype
  c.model.remat = False  # recompute each layer in the backward pass (memory for time)

  c.max_len = 192  # prompt + target tokens per example (prompt cut from the left beyond it)
  c.max_target_tokens = 16  # target tokens that carry loss (logits are computed only there)
  c.max_new_tokens = 16  # generated tokens at evaluation

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.lora_rank = 8  # task LoRA on q/k/v/o, merged into the backbone after stage 1
  c.stage1.lora_alpha = 16.0
  c.stage1.lora_dropout = 0.05
  c.stage1.steps = 1000  # optimizer steps
  c.stage1.batch_size = 8  # global batch (divisible by mesh data * fsdp)
  c.stage1.learning_rate = 1e-4  # peak AdamW learning rate
  c.stage1.warmup_steps = 50  # linear warmup, then linear decay to 0 at `steps`
  c.stage1.weight_decay = 0.0
  c.stage1.grad_clip = 0.3  # global grad-norm clip

  c.stage2 = ml_collections.ConfigDict()
  c.stage2.examples = "questions"  # "questions": train questions with their older profile;
  #   "records": every profile record with a prompt, with that user's earlier records as history
  c.stage2.prefix_len = 8  # L soft tokens
  c.stage2.record_tokens = 128  # tokens of a record's / query's template averaged into z
  c.stage2.max_history = 32  # newest older records attended per example (H)
  c.stage2.lambda_init = 0.1  # initial lambda_t and lambda_o (learned)
  c.stage2.bridge_rank = 4  # bridge LoRA on q/k/v/o, shared by all users
  c.stage2.bridge_alpha = 8.0
  c.stage2.bridge_dropout = 0.05
  c.stage2.steps = 1000
  c.stage2.batch_size = 8
  c.stage2.learning_rate = 1e-4  # peak learning rate of the attention, projection and bridge LoRA
  c.stage2.table_learning_rate = 1e-3  # of the user prefix table (each row sees few examples)
  c.stage2.warmup_steps = 50
  c.stage2.weight_decay = 0.0
  c.stage2.grad_clip = 0.3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)  # devices on (data, fsdp, tensor); one -1 takes the remaining devices
  c.mesh.axes = ("data", "fsdp", "tensor")
  c.mesh.rules = RULES  # logical axis -> mesh axes

  c.checkpoint_every = 100  # steps between Orbax checkpoints (and one at the end)
  c.checkpoint_keep = 2  # newest checkpoints kept per stage
  c.log_every = 10  # steps between logged metrics (TensorBoard and console)
  c.eval_batch_size = 8  # questions generated per batch at evaluation
  c.progress = True  # tqdm progress bar
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU smoke variant: a tiny random LLM, a few synthetic users, a handful of steps."""
  c.model.name = "tiny-random"
  c.data.source = "synthetic"
  c.data.synthetic.update(num_users=6, items_per_user=8)
  c.data.eval_max_examples = 4
  c.max_len = 96
  c.max_target_tokens = 8
  c.max_new_tokens = 4
  for s in (c.stage1, c.stage2):
    s.steps, s.batch_size, s.warmup_steps = 2, 4, 1
  c.stage2.max_history = 8
  c.checkpoint_every = 1
  c.log_every = 1
  c.eval_batch_size = 4
  c.progress = False
  return c
