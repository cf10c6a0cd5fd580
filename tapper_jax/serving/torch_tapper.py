"""TAP-PER rebuilt in PyTorch from an export folder (`python -m tapper_jax.export`), on
transformers + peft: for serving where PyTorch is the runtime. Needs the `torch` extra.

  model = TorchTapper.from_export("OUT")
  model.generate("user42", "Which tag ...? description: ...", history=[(text, day), ...],
                 query_day=19500.0)

The computation is ours, line for line (tapper/attention.py, tapper/prefix.py): z is the mean
of the backbone's input embeddings over a text's first `record_tokens` tokens, standardized as
(z - z_center) * z_scale; scores
MLP([z_q; z_j; z_q - z_j; z_q * z_j]) - lambda_t log(1 + dt) - lambda_o log(1 + gap) with dt
floored at 0 and gap counting the real records from j to the end (newest = 1); a softmax over
the whole history; P_q = proj(sum a_j z_j); P_u = the user's row (0 for an unknown user).

Einsum letters: B batch, H history slots, D hidden, L prefix length.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn


class TorchTapper(nn.Module):
  def __init__(self, llm, tokenizer, meta: dict, tensors: dict):
    super().__init__()
    self.llm, self.tokenizer, self.meta = llm, tokenizer, meta
    self.user_rows = {u: i for i, u in enumerate(meta["users"])}
    d, length = meta["hidden_size"], meta["prefix_len"]
    self.table = nn.Parameter(tensors["table"], requires_grad=False) if "table" in tensors else None
    self.score_in = nn.Linear(4 * d, d)
    self.score_out = nn.Linear(d, 1)
    self.proj = nn.Linear(d, length * d)
    if meta["query_prefix"]:
      for name in ("score_in", "score_out", "proj"):
        getattr(self, name).load_state_dict({"weight": tensors[f"{name}.weight"],
                                             "bias": tensors[f"{name}.bias"]})
      self.lambda_t = float(tensors["lambda_t"][0])
      self.lambda_o = float(tensors["lambda_o"][0])
      # Every z is standardized first; an export from before the statistics existed is (0, 1).
      self.register_buffer("z_center", tensors.get("z_center", torch.zeros(d)).float())
      self.z_scale = float(tensors["z_scale"][0]) if "z_scale" in tensors else 1.0
    self.gelu = nn.GELU(approximate="none" if meta.get("gelu") == "exact" else "tanh")

  @classmethod
  def from_export(cls, folder: str, *, dtype=torch.float32) -> "TorchTapper":
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM
    llm = LlamaForCausalLM.from_pretrained(os.path.join(folder, "backbone"), dtype=dtype)
    lora = os.path.join(folder, "bridge_lora")
    if os.path.isdir(lora):
      from peft import PeftModel
      llm = PeftModel.from_pretrained(llm, lora)
    llm.eval()
    tok = AutoTokenizer.from_pretrained(os.path.join(folder, "backbone"))
    with open(os.path.join(folder, "tapper", "tapper.json"), encoding="utf-8") as f:
      meta = json.load(f)
    tensors = load_file(os.path.join(folder, "tapper", "tapper.safetensors"))
    return cls(llm, tok, meta, tensors).eval()

  def input_embeddings(self) -> nn.Embedding:
    return self.llm.get_input_embeddings()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer(text, add_special_tokens=False)["input_ids"]

  @torch.no_grad()
  def embed_texts(self, texts) -> torch.Tensor:
    """[N, D]: mean input embedding of each text's first record_tokens tokens (0 if empty)."""
    table = self.input_embeddings().weight
    out = torch.zeros(len(texts), table.shape[1], dtype=torch.float32)
    for i, t in enumerate(texts):
      ids = self.encode(t)[: self.meta["record_tokens"]]
      if ids:
        out[i] = table[torch.tensor(ids)].float().mean(0)
    return out

  @torch.no_grad()
  def prefix(self, user_row, query_z, hist_z, hist_age, hist_valid) -> torch.Tensor:
    """[B,L,D] = P_u + P_q (each where the export has it)."""
    b = query_z.shape[0]
    length, d = self.meta["prefix_len"], self.meta["hidden_size"]
    p = torch.zeros(b, length, d, device=query_z.device)
    if self.meta["query_prefix"]:
      valid = hist_valid.bool()
      query_z = (query_z - self.z_center) * self.z_scale
      hist_z = (hist_z - self.z_center) * self.z_scale
      zq = query_z[:, None, :].expand_as(hist_z)
      feats = torch.cat([zq, hist_z, zq - hist_z, zq * hist_z], dim=-1)
      s = self.score_out(self.gelu(self.score_in(feats)))[..., 0]
      if self.meta["time_decay"]:
        dt = torch.where(valid, hist_age.clamp(min=0), torch.zeros_like(hist_age))
        s = s - self.lambda_t * torch.log1p(dt)
      if self.meta["order_decay"]:
        v = valid.float()
        gap = torch.flip(torch.cumsum(torch.flip(v, [1]), 1), [1]) * v
        s = s - self.lambda_o * torch.log1p(gap)
      s = torch.where(valid, s, torch.full_like(s, -1e30))
      a = torch.softmax(s, dim=-1) * valid * valid.any(-1, keepdim=True)
      ctx = torch.einsum("bh,bhd->bd", a, hist_z)
      p = p + self.proj(ctx).view(b, length, d)
    if self.table is not None:
      rows = user_row.long()
      known = (rows >= 0)[:, None, None]
      p = p + torch.where(known, self.table[rows.clamp(min=0)], torch.zeros_like(p))
    return p

  def prompt_ids(self, text: str) -> list[int]:
    """The prompt as training saw it: the chat template (or the plain suffix), no shortening."""
    if self.meta["chat"]:
      text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)
    else:
      text = text + self.meta["plain_suffix"]
    return self.encode(text)

  def personal_inputs(self, user_id: str, query_text: str, history, query_day: float):
    """Batch-of-one prefix inputs: history is [(record text, day)], any order."""
    hist = sorted(history, key=lambda r: r[1])
    z = self.embed_texts([t for t, _ in hist] + [query_text])
    h = max(len(hist), 1)
    hz = torch.zeros(1, h, z.shape[1])
    age = torch.zeros(1, h)
    valid = torch.zeros(1, h, dtype=torch.bool)
    if hist:
      hz[0] = z[:-1]
      age[0] = torch.tensor([query_day - day for _, day in hist], dtype=torch.float32)
      valid[0] = True
    row = torch.tensor([self.user_rows.get(user_id, -1)])
    return row, z[-1:], hz, age, valid

  @torch.no_grad()
  def generate(self, user_id: str, prompt: str, *, history, query_day: float,
               query_text: str | None = None, max_new_tokens: int | None = None) -> str:
    """Greedy answer for one user (unknown users run cold: P_u = 0, history alone)."""
    prefix = self.prefix(*self.personal_inputs(user_id, query_text or prompt, history, query_day))
    ids = torch.tensor([self.prompt_ids(prompt)])
    emb = torch.cat([prefix.to(self.input_embeddings().weight.dtype),
                     self.input_embeddings()(ids)], dim=1)
    mask = torch.ones(emb.shape[:2], dtype=torch.long)
    out = self.llm.generate(inputs_embeds=emb, attention_mask=mask, do_sample=False,
                            max_new_tokens=max_new_tokens or self.meta["max_new_tokens"],
                            pad_token_id=self.tokenizer.pad_token_id or 0)
    text = self.tokenizer.decode(out[0], skip_special_tokens=True)
    return text.strip().split("\n")[0].strip()
