"""The default experiment config; configs/*.py start from `base_config()` and change fields.

The paper's recipe as defaults, every value a field, as the official code sets it
(github.com/heng380/TAP-PER: task_LoRA.py, stage 1; task_LoRA_ragpag.py, stage 2; on 8 GPUs, so
its global batch is 8 x the per-device one). AdamW with a linear warmup fraction then linear
decay, grad-norm clip 0.3. Stage 1: 3 epochs at 3e-4, warmup 0.03, weight decay 0.1, batch 8.
Stage 2: 3 epochs, warmup 0.1, weight decay 0.01, one learning rate for every trainable part
(the table included), per task with its batch (`OFFICIAL_STAGE2`); as the Hugging Face Trainer
it runs under, no weight decay on biases or on the lambdas (their names hold "bias"). LoRA
initialised as peft does, lambdas at N(0, 0.02), attention over the whole visible history (the
code's default, `--k 0`; its README's runs pass `--k 10`, the newest 10 records:
`stage2.max_history = 10`). Deviations, each with its reason:
- Stage-2 batches are a uniform draw; the official Trainer groups them by length
  (`group_by_length=True`: `train_length_groups = 50`). On huffpost_2N dev, grouping cost
  macro-F1 in both seeds (benchmarks/results/quality_dev-batches.md).
- `stage2.table_learning_rate` and `stage2.lambda_learning_rate` (0 = the shared rate, as the
  official code) exist for the CPU budgets: a few hundred steps, where a row sees its user's
  examples about 14 times (benchmarks/recipes.py).
- The lambdas: in the 150-step CPU benchmark (lr 1e-3) they stayed at their N(0, 0.02) draw
  (-0.041, -0.044; moved by 3e-4 and 3e-3), and the time/order ablations tied with the full
  model (benchmarks/quality.py --budget=dev-rates).
- Kept as the paper has it, with a switch measured against it: `stage2.standardize_z` (z
  centred and scaled by the record bank, tapper/attention.py). On huffpost_2N dev (cpu budget,
  150 + 150 steps) it made P_q vary across users (47% of its norm, from 4%) and the attention
  peaked (top weight 0.43, from 0.057 ~ uniform), but accuracy/F1 did not rise: 0.667/0.231
  against 0.670/0.291, and the user's own history alone (no row) scored 0.649, below no
  personal input (0.664). So it stays off.
- Likewise `stage2.user_dropout` (a training example's row dropped, so P_q must stand alone):
  at 0.5 with standardized z, the user's own history alone scored 0.658 against 0.667 with no
  personal input, and the full model fell to 0.592 (each row took half the updates). Off.
"""

from __future__ import annotations

import ml_collections

from tapper_jax.metrics import canonical_task

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


# The official stage-2 learning rate and global batch per task (task_LoRA_ragpag.py
# TASK_TRAIN_OVERRIDES: per-device batch x 8 GPUs); other tasks: its default rate 2e-4, batch 8.
OFFICIAL_STAGE2 = {
    "LaMP_1": (2e-4, 32),  # citation
    "LaMP_2M": (1e-4, 8),  # movie_tagging
    "LaMP_2N": (1e-4, 16),  # news_categorize
    "LaMP_3": (2e-4, 32),  # product_rating
    "LaMP_4": (2e-4, 32),  # news_headline
    "LaMP_5": (1e-4, 16),  # scholarly_title
    "LaMP_7": (1e-5, 32),  # tweet_paraphrase
}


def base_config(task: str = "LaMP_2M") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task  # LaMP task: LaMP_1, LaMP_2M, LaMP_2N, LaMP_3, LaMP_4, LaMP_5, LaMP_7 (LaMP_2 = 2M)
  c.stage = "both"  # "1" (task LoRA, merged and saved), "2" (TAP-PER on a saved backbone), "both"
  c.seed = 0  # one seed for init, data order and dropout
  c.method = "tapper"  # the stage-2 method (tapper_jax.methods): its modules, inputs, examples
  c.name = "TAP-PER"  # the stage-2 row's name in summary.json and predictions/
  # The frozen sentence encoder (PPlug's embeddings): a registry name or a local HF folder.
  c.encoder = "all-minilm-l6-v2"
  c.rag = ml_collections.ConfigDict()  # method "rag" only
  c.rag.retriever = "bm25"  # "bm25", "recency" or "dense" (the encoder above)
  c.rag.k = 4  # records written into each prompt
  c.per_user = ml_collections.ConfigDict()  # method "per_user_lora" only
  c.per_user.steps = 10  # optimizer steps of each user's LoRA
  c.per_user.max_users = 0  # train and evaluate the first N evaluated users (sorted; 0 = all)

  c.data = ml_collections.ConfigDict()
  c.data.source = "lamp"  # "lamp" (official {split}_questions/outputs.json), "oppu", "synthetic"
  c.data.folder = ""  # the task's folder of LaMP files (synthetic: written here if empty, in workdir)
  # Stage 1 pools this split's question/gold pairs over its users (official: "train"; OPPU
  # re-split: "user_others").
  c.data.stage1_split = "train"
  # The split evaluated at the end; stage 2 trains on *its* users (OPPU: "user_top_100_history").
  c.data.eval_split = "dev"
  c.data.eval_max_examples = 0  # evaluate on the first N questions only (0 = all)
  c.data.strict = False  # skipped bad records become errors
  c.data.prefetch = 8  # training batches made ahead (host memory: a batch holds its histories)
  c.data.synthetic = ml_collections.ConfigDict(dict(  # data.source == "synthetic" only
      num_users=24, items_per_user=24, drift=1.0, favour=0.9, topical=0.25, seed=0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "smollm2-135m-instruct"  # registry name, "tiny-random", or a local HF folder
  c.model.param_dtype = "float32"  # storage dtype of the frozen weights
  c.model.dtype = "float32"  # compute dtype
  # Attention in training and scoring: "einsum" (any backend), "xla", or "cudnn" (fused flash
  # attention; NVIDIA GPUs, bf16). See benchmarks/results/gpu_h200 for what it buys.
  c.model.attention = "einsum"
  # What the backward pass recomputes (models.llama.remat_policy): "none", "full" (each layer:
  # memory for time) or "dots" (only the elementwise work). "dots" gives none's gradients
  # (tested) at 1.11x its speed on the 2-core CPU SmolLM2 step, and half the peak memory of
  # the scanned 1B step on an H200 (benchmarks/results/log_train_step_cpu_remat.txt, gpu_h200/).
  c.model.remat = "dots"
  # Layers per iteration of the layer scan (LlamaConfig.scan_unroll); 0 unrolls every layer.
  c.model.scan_unroll = 1

  # One prompt budget in training and generation: a longer input is shortened inside its
  # variable text (article, description), never in the instruction or the label list.
  c.max_prompt_tokens = 176
  c.max_target_tokens = 16  # target + EOS tokens with loss; a longer target is counted as cut
  c.max_new_tokens = 16  # generated tokens at evaluation
  c.num_beams = 1  # 1: greedy; > 1: beam search (Hugging Face's semantics, length penalty 1)
  c.chat_template = "auto"  # wrap prompts in the model's chat template: "auto" (if it has one),
  #   "on", "off"

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.lora_rank = 8  # task LoRA on q/k/v/o (peft init), merged into the backbone after stage 1
  c.stage1.lora_alpha = 16.0
  c.stage1.lora_dropout = 0.05
  c.stage1.epochs = 3.0  # passes over the stage-1 examples...
  c.stage1.steps = 0  # ...or this many optimizer steps (> 0 overrides epochs)
  c.stage1.batch_size = 8  # global batch (divisible by mesh data * fsdp)
  c.stage1.learning_rate = 3e-4  # peak AdamW learning rate
  c.stage1.warmup = 0.03  # warmup fraction of the steps (linear), then linear decay to 0
  c.stage1.weight_decay = 0.1  # AdamW (decoupled)
  c.stage1.grad_clip = 0.3  # global grad-norm clip

  c.stage2 = ml_collections.ConfigDict()
  # Stage-2 examples, any of: "records" (the evaluated users' own profile records, each with the
  # user's earlier records as history), "questions" (the stage-1 split's questions of the
  # evaluated users, where the setting has them: time-based), "pooled" (all stage-1 questions).
  c.stage2.examples = ("records",)
  c.stage2.backbone = ""  # the merged stage-1 backbone folder ("" = WORKDIR/backbone)
  # Evaluated users (the last N by id) left out of stage 2: cold at evaluation, for the
  # online-update experiment (benchmarks/online_update.py). 0 = none.
  c.stage2.holdout_users = 0
  c.stage2.prefix_len = 8  # L soft tokens
  c.stage2.record_tokens = 128  # tokens of a record's / query's template averaged into z
  # Standardize every z by the record bank's mean and mean spread (fixed at stage-2 start,
  # checkpointed and exported with the params); False = the paper's raw z. See the docstring.
  c.stage2.standardize_z = False
  # Probability that a training example's user row is dropped (P_u = 0, as for a cold start),
  # so that P_q must carry the history on its own; 0 = the paper (always the row).
  c.stage2.user_dropout = 0.0
  c.stage2.max_history = 0  # newest records attended per example (0 = the whole visible history)
  c.stage2.attention_chunk = 64  # history slots per streaming-softmax chunk
  # Switches of one code path, for ablations and controls. prefix=False is the step-matched
  # control (the bridge LoRA alone, no soft tokens).
  c.stage2.prefix = True
  c.stage2.user_prefix = True  # P_u (the table)
  c.stage2.query_prefix = True  # P_q (the temporal attention)
  c.stage2.time_decay = True  # -lambda_t log(1 + dt)
  c.stage2.order_decay = True  # -lambda_o log(1 + gap)
  c.stage2.bridge_lora = True  # the shared bridge LoRA
  c.stage2.bridge_rank = 4  # bridge LoRA on q/k/v/o, shared by all users
  c.stage2.bridge_alpha = 8.0
  c.stage2.bridge_dropout = 0.05
  c.stage2.bridge_targets = ("q_proj", "k_proj", "v_proj", "o_proj")  # projections it adapts
  c.stage2.epochs = 3.0
  c.stage2.steps = 0  # > 0 overrides epochs
  # Peak learning rate of every stage-2 part, and the global batch: the official per-task pair.
  c.stage2.learning_rate, c.stage2.batch_size = OFFICIAL_STAGE2.get(canonical_task(task),
                                                                     (2e-4, 8))
  # Of the user prefix table (0 = learning_rate, as the official code): a rate of its own for
  # runs so short that a row sees its user's examples only a few times.
  c.stage2.table_learning_rate = 0.0
  # Of lambda_t and lambda_o (0 = learning_rate). At the shared rate they did not move in the
  # 150-step CPU benchmark (see the module docstring).
  c.stage2.lambda_learning_rate = 0.0
  c.stage2.warmup = 0.1
  c.stage2.weight_decay = 0.01  # the table included; not biases or the lambdas
  # Row-wise (lazy) AdamW for the prefix table: a step touches only its batch's rows, so its
  # cost is flat in the number of users (training/sparse_table.py). Off: dense AdamW over the
  # whole table at every step, as the paper's PyTorch optimizer does.
  c.stage2.sparse_table = False
  # Where the table and its moments live: "device" (sharded over `users` on the mesh) or "host"
  # (numpy in host memory; a step gathers its batch's rows and writes them back, so device
  # memory does not grow with the users; implies the row-wise optimizer: training/host_table.py).
  c.stage2.table_memory = "device"
  c.stage2.grad_clip = 0.3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)  # devices on (data, fsdp, tensor); one -1 takes the remaining devices
  c.mesh.axes = ("data", "fsdp", "tensor")
  c.mesh.rules = RULES  # logical axis -> mesh axes

  c.checkpoint_every = 100  # steps between Orbax checkpoints (and one at the end)
  c.checkpoint_keep = 2  # newest checkpoints kept per stage
  c.log_every = 10  # steps between logged metrics (TensorBoard and console)
  c.eval_batch_size = 8  # questions generated per batch at evaluation
  # Training batches: the token axis trimmed to the batch's longest row, rounded up to a
  # multiple of this (0: the full prompt + target budget). Exact (only right padding goes), and
  # a few compiled shapes.
  c.train_bucket = 16
  # Sort each window of this many batches by length before cutting it into batches (0: off), so
  # a batch's rows have similar lengths and the trim removes most padding. It changes which
  # examples share a batch (not how often each is seen).
  c.train_length_groups = 0
  # Training batches: the LLM's per-token layers (norms, projections, MLP: most of the work) run
  # on the batch's real tokens alone, their count rounded up to a multiple of this (0: off);
  # attention still runs on the padded rows. Exact (the padded rows' loss and gradients), and
  # the examples in a batch are unchanged.
  c.train_unpad = 0
  # Run each training batch as this many micro-batches (1: off): its rows sorted by length, each
  # micro-batch cut to its own longest row (rounded up to train_bucket), their gradients
  # weighted by target tokens and summed. The same examples and the same update as the whole
  # batch (up to dropout draws and float rounding), with the padding of the short rows gone.
  # 0: auto (setup.micro_batches): 2 on a CPU, where a step costs in proportion to its tokens;
  # 1 on a GPU or TPU, where a small batch's step is bound by latency (not measured there).
  # Off by default: on huffpost_2N (batch 8, 93% real tokens against the trim's 89%) the CPU
  # loop's time per real token moved -7% to +3% across four runs (benchmarks/train_loop.py):
  # the half batches' lower throughput eats the padding saved.
  c.train_micro_batches = 1
  # Sort questions by prompt length and pad each batch to the next power of two (<= the prompt
  # budget) instead of the full budget: few compiled shapes, less padding; same answers.
  c.eval_buckets = True
  # Extra evaluation rows that ask whether the personal input matters: "no_personal" (P_u = 0,
  # no history), "other_user" (another evaluated user's row and history).
  c.eval_controls = ()
  # Also score each row's gold targets teacher-forced (`evaluation.gold_nll`: mean NLL per
  # target token, "gold_nll" in the scores, per question beside the predictions): it shows a
  # personal input the model reads even where greedy answers do not change. One forward pass
  # per question and row.
  c.eval_nll = False
  c.evaluate = True  # generate and score at the end (the eval split still picks stage 2's users)
  c.eval_backbone = True  # also evaluate the stage-1 backbone alone ("non-personalized")
  c.progress = True  # tqdm progress bars (False: quiet, for CI and logs)
  c.plots = True  # WORKDIR/plots/: curves, results, decay, attention timelines
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU smoke variant: a tiny random LLM, a few synthetic users, a handful of steps."""
  c.model.name = "tiny-random"
  c.data.source = "synthetic"
  c.data.synthetic.update(num_users=6, items_per_user=8)
  c.data.eval_max_examples = 4
  c.max_prompt_tokens = 88
  c.max_target_tokens = 8
  c.max_new_tokens = 4
  for s in (c.stage1, c.stage2):
    s.steps, s.batch_size, s.warmup = 2, 4, 0.5
  c.stage2.max_history = 8
  c.checkpoint_every = 1
  c.log_every = 1
  c.eval_batch_size = 4
  c.progress = False
  return c


def set_field(c: ml_collections.ConfigDict, name: str, value) -> None:
  """c.<dotted name> = value (e.g. "stage2.bridge_lora")."""
  node = c
  *parents, leaf = name.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


# A method's own defaults on top of a task config (`with_method(config, "pplug")`).
METHOD_DEFAULTS = {
    "tapper": {},
    # PPlug trains one shared projector on the stage-1 split's questions pooled over users, each
    # with its own profile as history (no per-user parameters, so nothing ties it to the
    # evaluated users), and adds no LoRA to the frozen stage-1 backbone.
    "pplug": {"name": "PPlug", "stage2.examples": ("pooled",), "stage2.bridge_lora": False},
    # RAG: no soft tokens; trained = the bridge LoRA on retrieval-augmented prompts of the pooled
    # stage-1 questions (set stage2.bridge_lora=False for zero-shot: nothing trains). The prompt
    # budget is the official LaMP max_length (256), so k records fit beside the input.
    # OPPU-style: one LoRA (r=8 on q and v) per evaluated user, trained on that user's own
    # records only, on the stage-1 backbone; `per_user.steps` steps each.
    "per_user_lora": {"name": "per-user LoRA", "stage2.prefix": False,
                      "stage2.examples": ("records",), "stage2.bridge_rank": 8,
                      "stage2.bridge_alpha": 16.0, "stage2.bridge_targets": ("q_proj", "v_proj")},
    "rag": {"name": "RAG", "stage2.prefix": False, "stage2.examples": ("pooled",),
            "max_prompt_tokens": 256},
}


def table_learning_rate(stage_cfg) -> float:
  """The prefix table's peak learning rate: its own, or (0, unset) the stage's."""
  return stage_cfg.get("table_learning_rate", 0.0) or stage_cfg.learning_rate


def with_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  if method not in METHOD_DEFAULTS:
    raise ValueError(f"method {method!r}: choose from {sorted(METHOD_DEFAULTS)}")
  c.method = method
  for name, value in METHOD_DEFAULTS[method].items():
    set_field(c, name, value)
  return c


def task_config(arg: str, configs_dir: str) -> ml_collections.ConfigDict:
  """The config a method config (configs/pplug.py, configs/rag.py) starts from: an offline
  variant ("huffpost_2N", "movielens_2M,tiny") or "MODULE[:ARG]" of configs_dir/MODULE.py
  ("lamp2:oppu", "synthetic:tiny")."""
  import importlib.util
  import os

  def module(name):
    path = os.path.join(configs_dir, name + ".py")
    if not os.path.isfile(path):
      raise ValueError(f"no task config {path} (argument {arg!r})")
    spec = importlib.util.spec_from_file_location(f"_tapper_config_{name}", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m

  name, _, variant = arg.partition(":")
  offline = module("offline")
  if name.partition(",")[0] in offline.TASKS:
    return offline.get_config(name)
  return module(name).get_config(variant)


def resolve_steps(stage_cfg, num_examples: int) -> int:
  """Optimizer steps of a stage: `steps` if set, else ceil(epochs * examples / batch)."""
  if stage_cfg.steps > 0:
    return int(stage_cfg.steps)
  return max(1, int(-(-stage_cfg.epochs * num_examples // stage_cfg.batch_size)))


# Where each LaMP setting keeps the users it evaluates (see data.lamp for the file formats).
SETTINGS = {
    # Time-based: every user has older train questions and a dev question. Stage 2 trains on
    # the evaluated users' profile records and their own train questions.
    "time": dict(source="lamp", stage1_split="train", eval_split="dev",
                 examples=("records", "questions")),
    # User-based: dev users never appear in train. Stage 2 trains on their profile records.
    "user": dict(source="lamp", stage1_split="train", eval_split="dev", examples=("records",)),
    # OPPU re-split: stage 1 on user_others, evaluation (and stage 2) on the top-100 users.
    "oppu": dict(source="oppu", stage1_split="user_others", eval_split="user_top_100_history",
                 examples=("records",)),
}


def lamp_config(task: str, variant: str, **fields) -> ml_collections.ConfigDict:
  """A configs/lamp*.py config. variant: "[time|user|oppu][,tiny]" (default time); `fields`:
  what differs per task (token budgets; the stage-2 rate and batch come from
  `OFFICIAL_STAGE2`), as dotted names."""
  setting, _, size = variant.partition(",")
  if setting == "tiny":
    setting, size = "", "tiny"
  setting = setting or "time"
  if setting not in SETTINGS:
    raise ValueError(f"LaMP setting {setting!r}: choose from {sorted(SETTINGS)}")
  c = base_config(task)
  s = SETTINGS[setting]
  c.data.source, c.data.stage1_split, c.data.eval_split = (s["source"], s["stage1_split"],
                                                           s["eval_split"])
  c.stage2.examples = s["examples"]
  for name, value in fields.items():
    set_field(c, name, value)
  if size == "tiny":  # synthetic files in the official time-based layout
    c = tiny(c)
    c.data.stage1_split, c.data.eval_split = "train", "dev"
  return c
