"""Builds the offline real-data LaMP suite from ../shared/data/raw (time-based setting).

  python -m tapper_jax.data.build_offline --raw=../shared/data/raw --out=data/offline

Tasks (each one `SourceSpec`; the converter is generic):
  huffpost_2N   news categorization (LaMP-2N style): one user = one author
  huffpost_4    news headline generation (LaMP-4 style)
  movielens_3   rating prediction (LaMP-3 style): stars 0.5..5 -> integers 1..5, half stars up
  movielens_2M  movie tagging (LaMP-2M style) among the most frequent content tags
The raw data stays where it is: never copy it into the repository.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from tapper_jax.data.convert import Join, SourceSpec, convert

_HUFF = "huffpost_news_category_v3_subset.jsonl"
_ML = "movielens_ml_latest_small"
_MOVIE_TEXT = "{title} (genres: {genres})"

SPECS = {
    "huffpost_2N": SourceSpec(
        name="huffpost_2N", task="LaMP_2N", path=_HUFF, format="jsonl", user_field="authors",
        date_field="date", id_field="link",
        fields={"text": "{short_description}", "title": "{headline}", "category": "{category}"},
        target_transform="lower", label_min_count=100, max_labels=15, min_items_per_user=10,
        n_test=4, n_dev=4),
    "huffpost_4": SourceSpec(
        name="huffpost_4", task="LaMP_4", path=_HUFF, format="jsonl", user_field="authors",
        date_field="date", id_field="link",
        fields={"text": "{short_description}", "title": "{headline}"}, min_items_per_user=10,
        n_test=4, n_dev=4),
    "movielens_3": SourceSpec(
        name="movielens_3", task="LaMP_3", path=f"{_ML}/ratings.csv", format="csv",
        user_field="userId", date_field="timestamp",
        fields={"text": _MOVIE_TEXT, "score": "{rating}"},
        join=Join(f"{_ML}/movies.csv", "movieId", ("title", "genres")), target_transform="stars",
        min_items_per_user=20, max_profile=128, max_train_questions_per_user=6),
    "movielens_2M": SourceSpec(
        name="movielens_2M", task="LaMP_2M", path=f"{_ML}/tags.csv", format="csv",
        user_field="userId", date_field="timestamp",
        fields={"description": _MOVIE_TEXT, "tag": "{tag}"},
        join=Join(f"{_ML}/movies.csv", "movieId", ("title", "genres")), target_transform="lower",
        exclude_labels=("in netflix queue",), label_min_count=15, max_labels=15,
        min_items_per_user=12, n_test=5, n_dev=5),
}
# Several evaluation questions per user where the data allows: with one per user, huffpost_2N
# has 87 test questions, too few to separate methods. Each later question's profile holds the
# earlier ones (as in LaMP); stage 2 trains only on records older than a user's first one.

_RAW = flags.DEFINE_string("raw", os.path.join("..", "shared", "data", "raw"), "Raw data root.")
_OUT = flags.DEFINE_string("out", os.path.join("data", "offline"), "Output root (one folder per task).")
_TASKS = flags.DEFINE_list("tasks", sorted(SPECS), "Which tasks to build.")


def build(raw: str, out: str, names=None) -> dict:
  """Builds the named tasks under `out/`; returns {name: meta}. Existing folders are kept."""
  metas = {}
  for name in names or sorted(SPECS):
    folder = os.path.join(out, name)
    if os.path.isdir(folder):
      with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        metas[name] = json.load(f)
      continue
    metas[name] = convert(raw, SPECS[name], folder)
  return metas


def format_counts(metas: dict) -> str:
  lines = [f"{'task':14}{'users':>6}{'labels':>7}  " + "  ".join(
      f"{s + ' q (prof min/mean/max)':>30}" for s in ("train", "dev", "test"))]
  for name, m in metas.items():
    c = m["counts"]
    cells = [f"{c[s]['questions']:>8} ({c[s]['profile_min']}/{c[s]['profile_mean']}/"
             f"{c[s]['profile_max']})" for s in ("train", "dev", "test")]
    lines.append(f"{name:14}{c['users']:>6}{len(m['labels']):>7}  " + "  ".join(f"{x:>30}" for x in cells))
  for name, m in metas.items():
    if m["counts"]["report"]:
      lines.append(f"{name} skipped/noted: {m['counts']['report']}")
  return "\n".join(lines)


def main(argv):
  del argv
  metas = build(_RAW.value, _OUT.value, _TASKS.value)
  text = format_counts(metas)
  print(text)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "counts.json"), "w", encoding="utf-8") as f:
    json.dump({k: v["counts"] for k, v in metas.items()}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
