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
