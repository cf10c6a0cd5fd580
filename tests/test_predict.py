"""python -m tapper_jax.predict: predictions for any questions file from a trained workdir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache):
  import synthetic
  from tapper_jax.training.loop import train_and_evaluate
  c = synthetic.get_config("tiny")
  c.progress = False
  wd = str(tmp_path_factory.mktemp("trained"))
  summary = train_and_evaluate(c, wd)
  return wd, summary


def _golds(path):
  with open(path) as f:
    return {g["id"]: g["output"] for g in json.load(f)["golds"]}


def test_predict_reproduces_the_runs_evaluation_and_mixes_users_freely(trained, tmp_path):
  from tapper_jax.serving.predict import predict_file
  wd, summary = trained
  folder = os.path.join(wd, "data", "synthetic_drift")
  questions = os.path.join(folder, "test_questions.json")
  # The run evaluated the first eval_max_examples questions: predict those.
  with open(questions) as f:
    rows = json.load(f)[: summary["config"]["data"]["eval_max_examples"]]
  assert len({r["user_id"] for r in rows}) > 1  # several users in one batch
  sub = tmp_path / "sub"
  sub.mkdir()
  with open(sub / "test_questions.json", "w") as f:
    json.dump(rows, f)
  shutil.copy(os.path.join(folder, "test_outputs.json"), sub / "test_outputs.json")
  res = predict_file(wd, str(sub / "test_questions.json"), str(tmp_path / "a.json"),
                     progress=False)
  assert res["cold_users"] == 0 and res["questions"] == len(rows)
  assert _golds(tmp_path / "a.json") == _golds(summary["predictions"]["TAP-PER"])
  assert res["scores"] == summary["eval"]["TAP-PER"]
  # One question per batch (each user alone) gives the same tokens as mixed batches.
  res1 = predict_file(wd, str(sub / "test_questions.json"), str(tmp_path / "b.json"),
                      batch_size=1, progress=False)
  assert _golds(tmp_path / "b.json") == _golds(tmp_path / "a.json") and res1["scores"]
  with pytest.raises(FileExistsError):
    predict_file(wd, str(sub / "test_questions.json"), str(tmp_path / "a.json"))
  # Beam search with one beam is greedy; three beams run through the same prefix path.
  predict_file(wd, str(sub / "test_questions.json"), str(tmp_path / "k1.json"), num_beams=1,
               progress=False)
  assert _golds(tmp_path / "k1.json") == _golds(tmp_path / "a.json")
  res3 = predict_file(wd, str(sub / "test_questions.json"), str(tmp_path / "k3.json"),
                      num_beams=3, progress=False)
  assert res3["questions"] == len(rows) and sorted(_golds(tmp_path / "k3.json")) == sorted(
      _golds(tmp_path / "a.json"))


def test_predict_without_golds_counts_cold_users_on_the_command_line(trained, tmp_path):
  wd, summary = trained
  folder = os.path.join(wd, "data", "synthetic_drift")
  with open(os.path.join(folder, "test_questions.json")) as f:
    rows = json.load(f)[:4]
  rows[0]["user_id"] = "someone-new"  # never trained: runs cold
  with open(tmp_path / "test_questions.json", "w") as f:
    json.dump(rows, f)
  out = tmp_path / "p.json"
  r = subprocess.run([sys.executable, "-m", "tapper_jax.predict", f"--workdir={wd}",
                      f"--questions={tmp_path / 'test_questions.json'}", f"--out={out}",
                      "--quiet"], capture_output=True, text=True, timeout=600,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads(r.stdout[r.stdout.index("{"):])
  assert res["cold_users"] == 1 and "scores" not in res
  assert sorted(_golds(out)) == sorted(str(x["id"]) for x in rows)


def test_inspect_a_user_weights_norm_neighbours_and_plot(trained, tmp_path):
  from tapper_jax.serving.inspect_user import format_report, inspect_user
  from tapper_jax.serving import trained as trained_lib
  wd, summary = trained
  t = trained_lib.load(wd, progress=False)
  user = sorted(t.id_map)[0]
  r = inspect_user(wd, user)
  assert r["trained_row"] and r["records"]
  w = np.array([x["weight"] for x in r["records"]])
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  assert [x["date"] for x in r["records"]] == sorted(x["date"] for x in r["records"])
  row = np.asarray(t.model.tapper.users.table[...])[t.id_map[user]]
  np.testing.assert_allclose(r["p_u_norm"], np.linalg.norm(row), rtol=1e-5)
  cos = [n["cosine"] for n in r["nearest"]]
  assert cos == sorted(cos, reverse=True) and user not in [n["user"] for n in r["nearest"]]
  assert os.path.isfile(r["plot"])
  other = inspect_user(wd, user, query="Which tag? description: a space opera about robots")
  assert other["query"].startswith("a space opera") and other["records"]
  assert [x["weight"] for x in other["records"]] != [x["weight"] for x in r["records"]]
  assert user in format_report(r)
  with pytest.raises(ValueError, match="asks no question"):
    inspect_user(wd, "nobody")


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_personalizer_online_update_fits_one_row_and_versions_the_table(trained, tmp_path):
  import shutil as _shutil
  from tapper_jax.data.lamp import Record
  from tapper_jax.serving.personalizer import Personalizer
  wd_src, _ = trained
  wd = str(tmp_path / "wd")
  _shutil.copytree(wd_src, wd)  # the module's workdir stays as it was
  p = Personalizer.load(wd)
  assert p.version == 0 and p.table.shape[0] == len(p.users)
  before = p.table.copy()
  user = p.users[1]
  hist = p.histories[user]
  day = hist[-1].day + 1
  q = "Which tag does this movie relate to? description: a robot crosses the desert"
  answer = p.generate(user, q, day=day)
  assert isinstance(answer, str)
  w = p.attention(user, q, day=day)
  assert [r for r, _ in w] == [r.id for r in hist] and abs(sum(x for _, x in w) - 1) < 1e-5
  tag = hist[0].fields["tag"]
  new = [Record("fresh1", "", day, {"description": "a robot in the desert", "tag": tag}),
         Record("fresh2", "", day + 1, {"description": "sand and robots", "tag": tag})]
  r = p.update_user(user, new, steps=6, learning_rate=0.05)
  assert r["row"] == 1 and r["final_loss"] < r["losses"][0]  # it fits the user's records
  changed = np.any(p.table != before, axis=(1, 2))
  assert changed.tolist() == [i == 1 for i in range(len(p.users))]  # only that row moved
  v1 = p.save()
  # A new user: cold (no row) until updated; then one row appended, older rows untouched.
  p.add_user("newcomer", [Record("n0", "", day, {"description": "space opera", "tag": "space"})])
  assert p._row("newcomer") == -1 and isinstance(p.generate("newcomer", q, day=day + 2), str)
  grown = p.table.copy()
  p.update_user("newcomer", [Record("n1", "", day + 1, {"description": "stars", "tag": "space"})],
                steps=2)
  assert p.table.shape[0] == grown.shape[0] + 1 and np.array_equal(p.table[:-1], grown)
  v2 = p.save()
  assert (v1, v2) == (1, 2)
  # Bad input: a user never added, and a record without a usable day, are named.
  with pytest.raises(KeyError, match="unknown user 'ghost'.*add_user"):
    p.update_user("ghost", [], steps=1)
  with pytest.raises(ValueError, match=r"record 1 \(id 'b2'\), field 'day'"):
    p.add_user("bad", [Record("b1", "", day, {"description": "x", "tag": "space"}),
                       Record("b2", "", float("nan"), {"description": "y", "tag": "space"})])
  with pytest.raises(ValueError, match=r"record 0 \(id 'b3'\), field 'day'"):
    p.update_user(user, [Record("b3", "", None, {"description": "z", "tag": "space"})])
  old = Personalizer.load(wd, version=1)
  assert "newcomer" not in old.users and np.array_equal(old.table, grown)
  latest = Personalizer.load(wd)
  assert latest.version == 2 and latest.users[-1] == "newcomer"
  np.testing.assert_array_equal(latest.table, p.table)


def test_a_workdir_saved_before_a_config_field_existed_still_loads(trained):
  from tapper_jax.serving.trained import run_config
  wd, summary = trained
  saved = json.loads(json.dumps(summary["config"]))
  del saved["method"], saved["stage2"]["lambda_learning_rate"]  # fields added later
  c = run_config(saved)
  assert c.method == "tapper" and c.stage2.lambda_learning_rate == 0.0
  assert c.stage2.steps == summary["config"]["stage2"]["steps"]  # the run's own values win
  assert c.mesh.rules == tuple(tuple(x if not isinstance(x, list) else tuple(x) for x in r)
                               for r in summary["config"]["mesh"]["rules"])


def test_serving_restores_params_and_table_alone_whatever_the_optimizer_layout(trained, monkeypatch):
  """Serving reads a checkpoint's trained values, not its optimizer state: a checkpoint written
  under another optimizer layout (an optimizer group added since) still loads, with the same
  params and table as a full restore."""
  import jax
  import optax
  from tapper_jax.models import load_pretrained
  from tapper_jax.serving.trained import load, run_config
  from tapper_jax.training import setup, steps
  from tapper_jax.training.checkpoint import Checkpoints
  from tapper_jax.training.loop import StageRun
  wd, summary = trained
  config = run_config(summary["config"])
  llm = load_pretrained(os.path.join(wd, "backbone"))
  mesh = setup.make_mesh(config)
  ckpt = Checkpoints(os.path.join(wd, "stage2", "checkpoints"), keep=3)
  step = ckpt.latest_step()
  t = load(wd, progress=False)
  rows = len(t.id_map)
  run = StageRun(2, llm, config, mesh, setup.table_rows(rows, mesh, config), 1)
  full, id_map, _ = ckpt.restore(step, run.abstract, run.state_sh)
  monkeypatch.setattr(steps, "optimizer", lambda cfg, n: (optax.sgd(0.1), optax.constant_schedule(0.1)))
  other = StageRun(2, llm, config, mesh, setup.table_rows(rows, mesh, config), 1)
  with pytest.raises(Exception):
    ckpt.restore(step, other.abstract, other.state_sh)  # the optimizer trees differ
  params, table, id_map2 = ckpt.restore_params(step, other.abstract, other.state_sh)
  ckpt.close()
  assert id_map2 == id_map
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(table)[0]),
                                np.asarray(jax.tree.leaves(full["table"])[0]))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_length_buckets_give_the_same_answers_as_one_padded_shape(trained, monkeypatch):
  """Bucketed evaluation (sorted by prompt length, each batch padded to the next power of two)
  answers exactly as padding every prompt to the full budget, in mixed-user batches and alone,
  and runs more than one bucket on these questions."""
  import dataclasses
  from tapper_jax.data import lamp
  from tapper_jax.serving import trained as trained_lib
  from tapper_jax.training import evaluation
  from tapper_jax.training import examples as ex
  from tapper_jax.models import tokenizer as tok_lib
  wd, summary = trained
  t = trained_lib.load(wd, progress=False)
  folder = os.path.join(wd, "data", "synthetic_drift")
  qs = lamp.read_questions(os.path.join(folder, "test_questions.json"), t.spec)[:24]
  plan = trained_lib.Plan(t.spec, [], qs)
  examples = t.method.prompts(ex.question_examples(t.spec, qs), plan, t.tokenizer, t.prompts)
  # Prompts of many lengths: every third question keeps only its first words.
  examples = [dataclasses.replace(e, input=" ".join(e.input.split()[: 4 + i % 20]), keep=0)
              if i % 3 == 0 else e for i, e in enumerate(examples)]
  fields = t.method.fields(examples, plan, t.tokenizer, t.llm, t.id_map).fields
  lengths = []
  real = tok_lib.bucket_length
  monkeypatch.setattr(evaluation, "bucket_length",
                      lambda n, **kw: lengths.append(real(n, **kw)) or real(n, **kw))
  answers = {}
  for buckets, bsz in ((False, 8), (True, 8), (True, 1)):
    c = t.config.copy_and_resolve_references()
    c.eval_buckets, c.eval_batch_size = buckets, bsz
    with t.rules():
      answers[(buckets, bsz)] = evaluation.predict(t.model, examples, t.prompts, c, fields)
  assert answers[(True, 8)] == answers[(False, 8)] == answers[(True, 1)]
  assert len(set(lengths)) > 1 and max(lengths) <= t.prompts.max_prompt_tokens, set(lengths)
