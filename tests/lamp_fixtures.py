"""Small official-format LaMP files for every task (profiles deliberately out of date order)."""

import json
import os

INPUTS = {
    "LaMP_1": 'For an author who has written the paper with the title "Deep Nets", which reference is '
              'related? Just answer with [1] or [2] without explanation. [1]: "Convolutional Kernels" '
              '[2]: "Medieval Trade Routes"',
    "LaMP_2M": "Which tag does this movie relate to among the following tags? Just answer with the tag "
               "name without further explanation. tags: [sci-fi, comedy] description: A robot learns to love.",
    "LaMP_2N": "Which category does this article relate to among the following categories? Just answer "
               "with the category name without further explanation. categories: [sports, politics] "
               "article: The senate passed the bill.",
    "LaMP_3": "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
              "4, or 5 without further explanation. review: Great blender, loud though.",
    "LaMP_4": "Generate a headline for the following article: Rain floods the city centre.",
    "LaMP_5": "Generate a title for the following abstract of a paper: We study attention.",
    "LaMP_6": "Generate a subject for the following email: Lunch is moved to noon.",
    "LaMP_7": "Paraphrase the following tweet without any explanation before or after it: so tired today",
}
QUERIES = {
    "LaMP_1": "Convolutional Kernels Medieval Trade Routes",
    "LaMP_2M": "A robot learns to love.", "LaMP_2N": "The senate passed the bill.",
    "LaMP_3": "Great blender, loud though.", "LaMP_4": "Rain floods the city centre.",
    "LaMP_5": "We study attention.", "LaMP_6": "Lunch is moved to noon.", "LaMP_7": "so tired today",
}
FIELDS = {
    "LaMP_1": {"title": "t", "abstract": "a"}, "LaMP_2M": {"description": "d", "tag": "comedy"},
    "LaMP_2N": {"text": "x", "title": "t", "category": "sports"}, "LaMP_3": {"text": "x", "score": "4"},
    "LaMP_4": {"text": "x", "title": "t"}, "LaMP_5": {"title": "t", "abstract": "a"},
    "LaMP_6": {"text": "x", "title": "t"}, "LaMP_7": {"text": "x"},
}
GOLDS = {"LaMP_1": "[1]", "LaMP_2M": "sci-fi", "LaMP_2N": "politics", "LaMP_3": "5",
         "LaMP_4": "City centre flooded", "LaMP_5": "Attention", "LaMP_6": "Lunch at noon",
         "LaMP_7": "very tired today"}
# Out of order on purpose; two records share a date (stable order must keep file order).
DATES = ["2019-03-01", "2017-01-15", "2018-06-30", "2017-01-15", "2020-12-31"]


def profile(task, dates=DATES):
  return [{"id": f"r{i}", "date": d, **{k: f"{v}{i}" if k not in ("tag", "category", "score") else v
                                         for k, v in FIELDS[task].items()}}
          for i, d in enumerate(dates)]


def write_task(folder, task, split="dev", questions=None, golds=None, time_based=False):
  os.makedirs(folder, exist_ok=True)
  if questions is None:
    questions = [{"id": f"{task}-q{i}", "input": INPUTS[task], "profile": profile(task)}
                 for i in range(2)]
    if time_based:
      for q in questions:
        q["user_id"] = "u7"
  if golds is None:
    golds = {"task": task, "golds": [{"id": q["id"], "output": GOLDS[task]} for q in questions]}
  with open(os.path.join(folder, f"{split}_questions.json"), "w", encoding="utf-8") as f:
    json.dump(questions, f)
  with open(os.path.join(folder, f"{split}_outputs.json"), "w", encoding="utf-8") as f:
    json.dump(golds, f)
  return folder


def _question_input(task, fields):
  from tapper_jax.data.tasks import get_task
  spec = get_task(task)
  if spec.input_template is not None:
    return spec.input_template.format(**fields)
  if task == "LaMP_1":
    return (f'For an author who has written the paper with the title "{fields["title"]}", which '
            'reference is related? Just answer with [1] or [2] without explanation. '
            '[1]: "Alpha" [2]: "Beta"')
  return f"Paraphrase the following tweet without any explanation before or after it: {fields['text']}"


def _gold(task, fields):
  from tapper_jax.data.tasks import get_task
  spec = get_task(task)
  if spec.target_field is not None:
    return str(fields[spec.target_field])
  return "[1]" if task == "LaMP_1" else fields["text"] + " indeed"


def user_items(task, user, n=8):
  """n dated items of one user, every field distinct (labels cycle through the task's)."""
  from tapper_jax.data.tasks import get_task
  labels = get_task(task).labels or ("x",)
  items = []
  for i in range(n):
    f = {k: f"{v} {user} item {i} words here" for k, v in FIELDS[task].items()}
    for k in ("tag", "category", "score"):
      if k in f:
        f[k] = labels[i % len(labels)]
    items.append({"id": f"{user}-{i}", "date": f"2020-01-{i + 1:02d}", **f})
  return items


def _question(task, user, items, k, with_user=True):
  q = {"id": items[k]["id"], "input": _question_input(task, items[k]),
       "profile": list(reversed(items[:k]))}  # out of date order, as LaMP's are
  if with_user:
    q["user_id"] = user
  return q, {"id": items[k]["id"], "output": _gold(task, items[k])}


def _write(folder, split, task, pairs):
  with open(os.path.join(folder, f"{split}_questions.json"), "w", encoding="utf-8") as f:
    json.dump([q for q, _ in pairs], f)
  with open(os.path.join(folder, f"{split}_outputs.json"), "w", encoding="utf-8") as f:
    json.dump({"task": task, "golds": [g for _, g in pairs]}, f)


def write_setting(folder, task, setting):
  """A small LaMP folder of one setting in which a careless trainer would leak golds:
  - "time": per user, train questions on items 2-3, dev on 4-5, test on 6-7; a later
    question's profile holds the earlier evaluated items (with their golds), as in LaMP.
  - "user": train users and dev/test users are disjoint; one question each.
  - "oppu": user_others.json and user_top_100_history.json (+ _label.json), OPPU's layout:
    per user a profile and several queries."""
  os.makedirs(folder, exist_ok=True)
  users = ["u0", "u1", "u2"]
  if setting == "time":
    for split, ks in (("train", (2, 3)), ("dev", (4, 5)), ("test", (6, 7))):
      _write(folder, split, task,
             [_question(task, u, user_items(task, u), k) for u in users for k in ks])
  elif setting == "user":
    for split, group in (("train", ["a0", "a1", "a2"]), ("dev", users), ("test", ["t0", "t1"])):
      _write(folder, split, task,
             [_question(task, u, user_items(task, u), 7, with_user=False) for u in group])
  elif setting == "oppu":
    for name, group in (("user_others", ["a0", "a1"]), ("user_top_100_history", users)):
      rows, golds = [], []
      for u in group:
        items = user_items(task, u)
        qs = [_question(task, u, items, k) for k in (6, 7)]
        rows.append({"user_id": u, "profile": items[:6],
                     "query": [{"id": q["id"], "input": q["input"]} for q, _ in qs]})
        golds += [g for _, g in qs]
      with open(os.path.join(folder, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f)
      with open(os.path.join(folder, f"{name}_label.json"), "w", encoding="utf-8") as f:
        json.dump({"task": task, "golds": golds}, f)
  else:
    raise ValueError(setting)
  return folder
