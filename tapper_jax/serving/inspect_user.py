"""One user of a trained workdir, inspected: their history with the attention each record gets
for a query (their newest question by default), the norm of their P_u row, the users nearest to
them by P_u (cosine), and a timeline plot (WORKDIR/plots/user_<id>.png)."""

from __future__ import annotations

import dataclasses
import datetime
import os

import numpy as np


def _iso(day: float) -> str:
  return (datetime.date(1970, 1, 1) + datetime.timedelta(days=float(day))).isoformat()


def _questions(t, questions: str | None):
  from tapper_jax.data import lamp
  from tapper_jax.training import examples as ex
  c = t.config
  if questions:
    return lamp.read_questions(questions, t.spec), questions
  folder = t.summary.get("data") or c.data.folder  # where the run read its questions
  qs, _ = ex.load_questions(c, t.spec, folder, c.data.eval_split)
  return qs, f"{folder} ({c.data.eval_split})"


def inspect_user(workdir: str, user: str, *, query: str | None = None,
                 questions: str | None = None, nearest: int = 5) -> dict:
  from tapper_jax.serving import trained as trained_lib
  from tapper_jax.training import examples as ex
  from tapper_jax.training import plots
  from tapper_jax.training.per_user import user_dir
  t = trained_lib.load(workdir, progress=False)
  qs, source = _questions(t, questions)
  mine = [q for q in qs if q.user_id == user]
  if not mine:
    raise ValueError(f"user {user!r} asks no question in {source}")
  q = max(mine, key=lambda x: (x.day if x.day is not None else float("-inf")))
  e = ex.question_examples(t.spec, [q])[0]
  if query:
    e = dataclasses.replace(e, input=query, query=t.spec.query(query), keep=t.spec.keep(query))
  fields = t.method.fields([e], trained_lib.Plan(t.spec, [], mine), t.tokenizer, t.llm, t.id_map)
  out = {"user": user, "question": q.id, "query": e.query[:200], "query_date": _iso(e.day),
         "trained_row": user in t.id_map, "records": []}
  got = plots.history_weights(t.model, fields.fields(0)) if fields is not None else None
  if got is not None:
    ages, w = got
    by_id = {r.id: r for r in q.profile}
    for rid, age, weight in zip(e.history, ages, w):
      r = by_id[rid]
      out["records"].append({"id": rid, "date": _iso(e.day - age), "age_days": float(age),
                             "weight": float(weight), "text": t.spec.record_text(r.fields)[:120]})
    path = os.path.join(workdir, "plots", f"user_{user_dir(user)}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plots.attention_timeline(e.day - ages, w, e.day, f"user {user}: {e.query[:70]!r}", path,
                             labels=[r["text"] for r in out["records"]])
    out["plot"] = path
  users = getattr(getattr(t.model, "tapper", None), "users", None)
  if users is not None and user in t.id_map:
    table = np.asarray(users.table[...])[: len(t.id_map)].reshape(len(t.id_map), -1)
    row = table[t.id_map[user]]
    out["p_u_norm"] = float(np.linalg.norm(row))
    cos = table @ row / np.maximum(np.linalg.norm(table, axis=1) * np.linalg.norm(row), 1e-12)
    names = {i: u for u, i in t.id_map.items()}
    order = [i for i in np.argsort(-cos) if i != t.id_map[user]][:nearest]
    out["nearest"] = [{"user": names[i], "cosine": float(cos[i])} for i in order]
  return out


def format_report(r: dict) -> str:
  lines = [f"user {r['user']} (trained row: {'yes' if r['trained_row'] else 'no, cold'})",
           f"query ({r['question']}, {r['query_date']}): {r['query']}"]
  if "p_u_norm" in r:
    lines.append(f"|P_u| = {r['p_u_norm']:.4f}; nearest users by P_u: " + ", ".join(
        f"{n['user']} ({n['cosine']:+.3f})" for n in r["nearest"]))
  if r["records"]:
    lines += ["", f"{'date':<11} {'age (d)':>8} {'weight':>7}  record"]
    for x in r["records"]:
      lines.append(f"{x['date']:<11} {x['age_days']:>8.0f} {x['weight']:>7.4f}  {x['text'][:80]}")
  if "plot" in r:
    lines += ["", f"timeline: {r['plot']}"]
  return "\n".join(lines)
