"""Leaderboard predictions for any LaMP questions file from a trained workdir.

The run's config comes from WORKDIR/summary.json, the backbone from WORKDIR/backbone (or the
config's stage-2 backbone), the trained state from the newest stage-2 checkpoint. Users are
mixed freely inside each batch: every row carries its own prefix inputs (its P_u row, its own
history). A user without a trained row runs cold (P_u = 0, history alone) and is counted.
The questions need no golds (the official test split has none); where an outputs file sits
beside them ({split}_outputs.json), the predictions are also scored.
"""

from __future__ import annotations

import os

from absl import logging

from tapper_jax import metrics


def predict_file(workdir: str, questions: str, out: str, *, batch_size: int = 0,
                 num_beams: int = 0, progress: bool = True) -> dict:
  """Writes `out` (leaderboard format) for every question in `questions`; returns a summary:
  questions, users, cold users, the output path and, where golds exist, the scores."""
  from tapper_jax.data import lamp
  from tapper_jax.fileio import write_json
  from tapper_jax.serving import trained as trained_lib
  from tapper_jax.training import evaluation
  from tapper_jax.training import examples as ex

  if os.path.exists(out):
    raise FileExistsError(f"{out}: exists; refusing to overwrite it")
  t = trained_lib.load(workdir, progress=progress)
  config, spec = t.config, t.spec
  if batch_size:
    config.eval_batch_size = batch_size
  if num_beams:
    config.num_beams = num_beams
  report = lamp.Report(questions)
  qs = lamp.read_questions(questions, spec, report=report)
  golds_path = questions.replace("_questions.json", "_outputs.json")
  if golds_path != questions and os.path.isfile(golds_path):
    golds = lamp.read_outputs(golds_path)[1]
    for q in qs:
      q.gold = golds.get(q.id)
  plan = trained_lib.Plan(spec, [], qs)
  examples = t.method.prompts(ex.question_examples(spec, qs), plan, t.tokenizer, t.prompts)
  fields = t.method.fields(examples, plan, t.tokenizer, t.llm, t.id_map)
  with t.rules():
    preds = evaluation.predict(t.model, examples, t.prompts, config,
                               None if fields is None else fields.fields)
  write_json(out, metrics.leaderboard(spec.name, {e.id: p for e, p in zip(examples, preds)}))
  id_map = t.id_map
  users = sorted({q.user_id for q in qs})
  cold = [u for u in users if u not in id_map] if id_map else []
  result = {"questions": len(qs), "users": len(users), "cold_users": len(cold), "out": out,
            "skipped": dict(report.counts)}
  if id_map and cold:
    logging.warning("%d of %d users have no trained row: they run cold (P_u = 0, history alone)",
                    len(cold), len(users))
  scored = [(e, p) for e, p in zip(examples, preds) if e.target]
  if scored:
    result["scores"] = evaluation.score(spec, [e for e, _ in scored], [p for _, p in scored])
  return result
