"""Export parity: TAP-PER rebuilt in PyTorch (transformers + peft) from `tapper_jax.export`
gives our prefix, our logits (fixed tolerance) and our greedy answers."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
TOL = 1e-4  # fp32 max abs logit difference, as the backbone parity; fixed, never loosened


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_cache):
  import synthetic
  from tapper_jax.serving.export import export
  from tapper_jax.training.loop import train_and_evaluate
  c = synthetic.get_config("tiny")
  c.progress = False
  c.stage2.steps = 6  # enough that the bridge LoRA and the table leave their init
  root = tmp_path_factory.mktemp("export")
  wd = str(root / "run")
  train_and_evaluate(c, wd)
  out = export(wd, str(root / "out"))
  return wd, out


def test_export_layout_and_no_overwrite(exported):
  from tapper_jax.serving.export import export
  wd, out = exported
  for f in ("backbone/config.json", "backbone/model.safetensors", "backbone/tokenizer.json",
            "bridge_lora/adapter_config.json", "bridge_lora/adapter_model.safetensors",
            "tapper/tapper.safetensors", "tapper/tapper.json"):
    assert os.path.isfile(os.path.join(out, f)), f
  with pytest.raises(FileExistsError):
    export(wd, out)


def test_pytorch_rebuild_matches_prefix_logits_and_greedy_answers(exported):
  from tapper_jax.serving import trained as trained_lib
  from tapper_jax.serving.torch_tapper import TorchTapper
  from tapper_jax.training import evaluation
  from tapper_jax.training.loop import plan
  wd, out = exported
  t = trained_lib.load(wd, progress=False)
  p = plan(t.config, wd)
  ev = p.evaluate
  fields = t.method.fields(ev, p, t.tokenizer, t.llm, t.id_map)
  tt = TorchTapper.from_export(out)
  assert tt.meta["users"] == sorted(t.id_map, key=t.id_map.get)
  for i in range(2):
    e, q = ev[i], p.eval_qs[i]
    f = fields.fields(i)
    np.testing.assert_allclose(tt.embed_texts([e.query])[0].numpy(), f["query_z"], atol=1e-6)
    ours_prefix = np.asarray(t.model.tapper({k: jnp.asarray(v)[None] for k, v in f.items()}))
    args = [torch.tensor(np.asarray(f[k]))[None] for k in
            ("user_row", "query_z", "hist_z", "hist_age", "hist_valid")]
    theirs_prefix = tt.prefix(*args).numpy()
    np.testing.assert_allclose(theirs_prefix, ours_prefix, atol=1e-5)
    ids = t.prompts.encode(e.input, e.keep)[0]
    assert tt.prompt_ids(e.input) == ids  # same chat template, same tokenizer
    batch = {"input_ids": jnp.asarray([ids]), "attention_mask": jnp.ones((1, len(ids)), jnp.int32),
             **{k: jnp.asarray(v)[None] for k, v in f.items()}}
    emb, mask = t.model.inputs(batch)
    hidden, _ = t.model.llm.hidden_states(inputs_embeds=emb, attention_mask=mask)
    ours = np.asarray(t.model.llm.logits(hidden))
    with torch.no_grad():
      temb = torch.cat([torch.tensor(theirs_prefix),
                        tt.input_embeddings()(torch.tensor([ids]))], dim=1)
      theirs = tt.llm(inputs_embeds=temb).logits.numpy()
    assert np.abs(theirs - ours).max() <= TOL
    # Greedy answers, from the user id, the prompt and the raw history alone.
    history = [(t.spec.record_text(r.fields), r.day) for r in q.profile]
    answer = tt.generate(e.user, e.input, history=history, query_day=e.day, query_text=e.query)
    assert answer == evaluation.predict(t.model, [e], t.prompts, t.config, fields=lambda _: f)[0]
