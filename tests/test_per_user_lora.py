"""OPPU-style per-user LoRA: PEFT adapter parity with peft, and per-user training that reads only
the user's own records and leaves every other user's output unchanged."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from hf_tiny import batch, make_hf  # noqa: E402
from tapper_jax.models import load_pretrained  # noqa: E402
from tapper_jax.models.lora import attach_lora, load_peft_adapter, save_peft_adapter  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
TOL = 1e-4  # fp32 max abs logit difference, as the backbone parity


def test_peft_loads_our_adapter_and_we_load_it_back(tmp_path):
  folder = str(tmp_path / "hf")
  hf = make_hf("llama_gqa_untied", folder)
  ours = load_pretrained(folder)
  attach_lora(ours, rank=8, alpha=16.0, targets=("q_proj", "v_proj"), key=jax.random.PRNGKey(1))
  for mod in (ours.model.layers.self_attn.q_proj, ours.model.layers.self_attn.v_proj):
    b = mod.lora_b.get_value()  # B = 0 at init: give it values so the adapter matters
    mod.lora_b.set_value(0.1 * jax.random.normal(jax.random.PRNGKey(2), b.shape))
  save_peft_adapter(ours, str(tmp_path / "adapter"), base_model=folder)
  with pytest.raises(FileExistsError):  # never overwritten
    save_peft_adapter(ours, str(tmp_path / "adapter"))
  ids, mask = batch(side="right")
  got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  with torch.no_grad():
    base = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  assert np.abs(ref - base)[mask > 0].max() > 100 * TOL  # the adapter changes the output
  assert np.abs(ref - got)[mask > 0].max() <= TOL
  again = load_pretrained(folder)
  load_peft_adapter(again, str(tmp_path / "adapter"))
  back = np.asarray(again(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  np.testing.assert_array_equal(back, got)


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_each_user_trains_on_own_records_and_leaves_others_unchanged(model_cache, tmp_path):
  import per_user_lora as cfg_module
  from tapper_jax import models
  from tapper_jax.training import evaluation
  from tapper_jax.training.loop import plan, prompt_format, train_and_evaluate
  from tapper_jax.training.per_user import user_dir
  from tapper_jax.tapper.model import PersonalizedLM
  c = cfg_module.get_config("synthetic:tiny")
  c.progress = False
  c.per_user.max_users = 3
  c.eval_nll = True
  wd = str(tmp_path / "run")
  summary = train_and_evaluate(c, wd)
  s2 = summary["stages"]["2"]
  assert s2["users"] == 3 and s2["steps_per_user"] == 2
  p = plan(c, wd)
  users = sorted({e.user for e in p.stage2})[:3]
  assert sorted(s2["examples_per_user"]) == users
  for u in users:
    with open(os.path.join(wd, "adapters", user_dir(u), "trained_on.json")) as f:
      trained = json.load(f)["examples"]
    own = [e.id for e in p.stage2 if e.user == u]
    assert trained == own and all(i.startswith(f"{u}/") for i in trained)  # u's records only
  # Each user's answers come from that user's adapter alone: reloading user 0's adapter onto the
  # frozen backbone after every user trained reproduces the run's predictions for user 0.
  with open(summary["predictions"]["per-user LoRA"]) as f:
    run_preds = {g["id"]: g["output"] for g in json.load(f)["golds"]}
  llm = models.load_pretrained(os.path.join(wd, "backbone"))
  load_peft_adapter(llm, os.path.join(wd, "adapters", user_dir(users[0])))
  tok = models.Tokenizer.from_pretrained(os.path.join(wd, "backbone"))
  asked = [e for e in p.evaluate if e.user == users[0]]
  assert asked
  again = evaluation.predict(PersonalizedLM(llm, None), asked, prompt_format(c, tok), c)
  assert again == [run_preds[e.id] for e in asked]
  # The gold's NLL too: under user 0's own adapter, not the backbone's nor user 1's.
  with open(evaluation.nll_path(summary["predictions"]["per-user LoRA"])) as f:
    run_nll = json.load(f)
  assert sorted(run_nll) == sorted(run_preds)
  own = evaluation.gold_nll(PersonalizedLM(llm, None), asked, prompt_format(c, tok), c)
  np.testing.assert_allclose([run_nll[e.id] for e in asked], own, rtol=1e-5)
  other = models.load_pretrained(os.path.join(wd, "backbone"))
  load_peft_adapter(other, os.path.join(wd, "adapters", user_dir(users[1])))
  theirs = evaluation.gold_nll(PersonalizedLM(other, None), asked, prompt_format(c, tok), c)
  assert np.abs(theirs - own).max() > 1e-4
  mean = np.mean(list(run_nll.values()))
  assert summary["eval"]["per-user LoRA"]["gold_nll"] == pytest.approx(mean)
  assert summary["eval"]["questions"] == len([e for e in p.evaluate if e.user in users])


def test_user_dirs_are_distinct_and_safe():
  from tapper_jax.training.per_user import user_dir
  names = ["u1", "a/b", "a_b", "..", "x y", "x_y"]
  dirs = [user_dir(n) for n in names]
  assert len(set(dirs)) == len(dirs) and all("/" not in d and d not in (".", "..") for d in dirs)
  assert user_dir("u1") == "u1"
