"""Mixed-user batched greedy serving: our JAX path against transformers + peft, same run.

Same model and same users on both sides: our side builds a TAP-PER model (the backbone of
`--model`, a bridge LoRA r4/alpha8 on q/k/v/o with non-zero B, random TAP-PER weights, a table of
`--users` rows) and writes it in the export layout (PEFT adapter folder, tapper.safetensors); the
PyTorch side loads exactly those files (`serving.torch_tapper.TorchTapper` on transformers +
peft). Every batch mixes users: each row has its own user, P_u row and history of `--history`
records. Timed per batch: the prefix (P_u + P_q) and greedy generation of `--new_tokens` tokens
(forced: no early stop) from left-padded prompts of `--prompt_len` tokens:
  ours:  PersonalizedLM.inputs + models.generate.greedy_generate (one jit: prefill + decode loop
         with a KV cache; the bridge LoRA applied unmerged, as in training)
  torch: TorchTapper.prefix + PeftModel.generate(inputs_embeds=...) (HF's KV cache, peft LoRA)
Each side runs in its own process on its framework's default device (the GPU on a GPU machine).

  python benchmarks/serving.py --model=random:smollm2-135m --batches=1,8,32 --dtype=bfloat16
"""

import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import app, flags

from _common import median_time, resolve_model

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct",
                             "Registry name, HF folder, or random:SHAPE (models.registry.SHAPES).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "32"], "Batch sizes.")
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (left-padded to this).")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Generated tokens per row.")
_PREFIX = flags.DEFINE_integer("prefix", 8, "L soft prefix tokens.")
_USERS = flags.DEFINE_integer("users", 1000, "Rows of the user table.")
_HISTORY = flags.DEFINE_integer("history", 32, "History records per row.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Both sides.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per batch (median) after a warm-up.")
_SIDE = flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Internal: one side per process.")
_SHARED = flags.DEFINE_string("shared", "", "Internal: the folder the sides share.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for serving.json.")



def _inputs(b, vocab, d, seed):
  """One batch: left-padded prompts of mixed lengths, one user per row, its history."""
  import numpy as np
  rng = np.random.default_rng(seed)
  p, h = _PROMPT.value, _HISTORY.value
  ids = rng.integers(100, vocab - 100, (b, p)).astype(np.int32)
  mask = np.ones((b, p), np.int32)
  for i in range(b):
    mask[i, : 9 * (i % 4)] = 0  # some rows shorter: left padding
  ids[mask == 0] = 0
  lengths = rng.integers(1, h + 1, b)  # histories of different lengths
  return {
      "input_ids": ids, "attention_mask": mask,
      "user_row": rng.choice(_USERS.value, b, replace=b > _USERS.value).astype(np.int32),
      "query_z": rng.normal(0, 0.02, (b, d)).astype(np.float32),
      "hist_z": rng.normal(0, 0.02, (b, h, d)).astype(np.float32),
      "hist_age": (rng.integers(0, 400, (b, h))).astype(np.float32),
      "hist_valid": np.arange(h)[None, :] >= (h - lengths)[:, None],
  }


def side_jax(folder, shared):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from safetensors.numpy import save_file
  from tapper_jax.models import load_pretrained
  from tapper_jax.models.generate import greedy_generate
  from tapper_jax.models.lora import _lora_modules, save_peft_adapter
  from tapper_jax.serving.export import tapper_tensors
  from tapper_jax.training import defaults, evaluation, setup
  from tapper_jax.training.loop import StageRun
  llm = load_pretrained(folder, param_dtype=_DTYPE.value, dtype=_DTYPE.value)
  c = defaults.base_config("LaMP_2M")
  c.stage2.prefix_len = _PREFIX.value
  mesh = setup.make_mesh(c)
  run = StageRun(2, llm, c, mesh, _USERS.value, 1)
  model = run.model(run.fresh_state())
  for i, (_, mod) in enumerate(_lora_modules(model.llm)):  # B = 0 at init: make the LoRA count
    b = mod.lora_b.get_value()
    mod.lora_b.set_value((0.02 * jax.random.normal(jax.random.PRNGKey(i), b.shape)).astype(b.dtype))
  save_peft_adapter(model.llm, os.path.join(shared, "bridge_lora"), base_model=folder)
  save_file(tapper_tensors(model, _USERS.value), os.path.join(shared, "tapper.safetensors"))
  t = model.tapper
  meta = {"users": [str(i) for i in range(_USERS.value)], "prefix_len": _PREFIX.value,
          "hidden_size": llm.config.hidden_size, "user_prefix": True, "query_prefix": True,
          "time_decay": bool(t.attention.time_decay), "order_decay": bool(t.attention.order_decay),
          "gelu": "exact"}
  with open(os.path.join(shared, "tapper.json"), "w") as f:
    json.dump(meta, f)
  graphdef, state = nnx.split(model)
  res = {}
  with run.rules(), jax.set_mesh(mesh):
    for b in map(int, _BATCHES.value):
      batch = _inputs(b, llm.config.vocab_size, llm.config.hidden_size, seed=b)
      np.savez(os.path.join(shared, f"batch{b}.npz"), **batch)
      dev = jax.tree.map(jnp.asarray, batch)
      out = {}

      def serve():
        emb, mask = evaluation._inputs(graphdef, state, dev)
        out["tokens"] = greedy_generate(model.llm, inputs_embeds=emb, attention_mask=mask,
                                        max_new_tokens=_NEW.value, eos_ids=(-1,), pad_id=0)

      sec = median_time(serve, _REPEATS.value, lambda: jax.block_until_ready(out["tokens"]))
      np.save(os.path.join(shared, f"tokens_jax{b}.npy"), np.asarray(out["tokens"]))
      res[b] = {"seconds": sec, "tokens_per_s": b * _NEW.value / sec}
  return {"rows": res, "device": str(jax.devices()[0].device_kind),
          "backend": jax.default_backend(), "jax": jax.__version__}


def side_torch(folder, shared):
  import numpy as np
  import torch
  from peft import PeftModel
  from safetensors.torch import load_file
  from transformers import LlamaForCausalLM
  from tapper_jax.serving.torch_tapper import TorchTapper
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if dev == "cpu":
    torch.set_num_threads(os.cpu_count())
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[_DTYPE.value]
  llm = LlamaForCausalLM.from_pretrained(folder, dtype=dtype)
  llm = PeftModel.from_pretrained(llm, os.path.join(shared, "bridge_lora")).eval()
  with open(os.path.join(shared, "tapper.json")) as f:
    meta = json.load(f)
  model = TorchTapper(llm, None, meta, load_file(os.path.join(shared, "tapper.safetensors")))
  model = model.to(dev).eval()
  embed = llm.get_input_embeddings()
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  res = {}
  for b in map(int, _BATCHES.value):
    nb = {k: torch.from_numpy(v).to(dev) for k, v in np.load(os.path.join(shared, f"batch{b}.npz")).items()}
    out = {}

    @torch.no_grad()
    def serve():
      prefix = model.prefix(nb["user_row"], nb["query_z"], nb["hist_z"], nb["hist_age"],
                            nb["hist_valid"])
      emb = torch.cat([prefix.to(dtype), embed(nb["input_ids"].long())], 1)
      mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=dev),
                        nb["attention_mask"].long()], 1)
      out["tokens"] = llm.generate(inputs_embeds=emb, attention_mask=mask, do_sample=False,
                                   max_new_tokens=_NEW.value, min_new_tokens=_NEW.value,
                                   pad_token_id=0)

    sec = median_time(serve, _REPEATS.value, sync)
    ours = np.load(os.path.join(shared, f"tokens_jax{b}.npy"))
    theirs = out["tokens"][:, -_NEW.value:].cpu().numpy()
    res[b] = {"seconds": sec, "tokens_per_s": b * _NEW.value / sec,
              "rows_identical": int((ours == theirs).all(1).sum()),
              "first_token_agrees": float((ours[:, 0] == theirs[:, 0]).mean())}
  return {"rows": res, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
          "torch": torch.__version__}


def run(folder: str, shared: str) -> dict:
  """Both sides, each in its own process; the comparison as a dict (also serving.json)."""
  results = {}
  for side in ("jax", "torch"):
    args = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--shared={shared}",
            f"--model={folder}"] + [a for a in sys.argv[1:] if not a.startswith(
                ("--side", "--shared", "--model"))]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode:
      raise SystemExit(f"{side} side failed:\n{p.stderr[-4000:]}")
    results[side] = json.loads([l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
  rows = []
  for b in map(int, _BATCHES.value):
    j, t = results["jax"]["rows"][str(b)], results["torch"]["rows"][str(b)]
    rows.append({"batch": b, "jax_tokens_per_s": j["tokens_per_s"],
                 "torch_tokens_per_s": t["tokens_per_s"],
                 "ratio": j["tokens_per_s"] / t["tokens_per_s"],
                 "rows_identical": t["rows_identical"], "first_token_agrees": t["first_token_agrees"]})
  return {"benchmark": "serving", "model": _MODEL.value, "dtype": _DTYPE.value,
          "prompt_len": _PROMPT.value, "new_tokens": _NEW.value, "prefix": _PREFIX.value,
          "users": _USERS.value, "history": _HISTORY.value,
          "machine": f"{platform.machine()} {os.cpu_count()} cpus",
          "jax_device": results["jax"]["device"], "torch_device": results["torch"]["device"],
          "versions": {"jax": results["jax"]["jax"], "torch": results["torch"]["torch"]},
          "rows": rows}


def main(argv):
  del argv
  if _SIDE.value != "both":
    folder = _MODEL.value  # the parent resolved it

    fn = side_jax if _SIDE.value == "jax" else side_torch
    print("RESULT " + json.dumps(fn(folder, _SHARED.value)))
    return
  folder = resolve_model(_MODEL.value)
  with tempfile.TemporaryDirectory() as shared:
    result = run(folder, shared)
  print(f"\nMixed-user batched greedy serving, {result['model']}, {result['dtype']}, prompt "
        f"{result['prompt_len']} + prefix {result['prefix']}, {result['new_tokens']} new tokens, "
        f"{result['history']} history, {result['users']} users")
  print(f"ours: {result['jax_device']} (jax {result['versions']['jax']}); transformers + peft: "
        f"{result['torch_device']} (torch {result['versions']['torch']}); {result['machine']}")
  print("| batch | ours tokens/s | transformers + peft tokens/s | ratio | rows token-identical |")
  print("|---|---|---|---|---|")
  for r in result["rows"]:
    print(f"| {r['batch']} | {r['jax_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} | "
          f"**{r['ratio']:.2f}x** | {r['rows_identical']}/{r['batch']} |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous
  stem = os.path.join(_OUT.value, "serving")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
