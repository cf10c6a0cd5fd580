"""A TFDS builder for LaMP-format task folders, ArrayRecord format (works without TensorFlow).

  builder = LampBuilder(lamp_folder="data/offline/huffpost_2N", data_dir="data/tfds")
  builder.download_and_prepare()
  source = builder.as_data_source(split="train")   # random access, feeds grain

One example per question: ids, user, date, raw input, extracted query, target, and the
date-sorted profile as JSON (profiles vary in length and fields across tasks).
"""

from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

from tapper_jax.data.lamp import load_split, task_of_folder


class LampBuilder(tfds.core.GeneratorBasedBuilder):
  """Builds from one task folder ({split}_questions.json, {split}_outputs.json, meta.json)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, lamp_folder: str, task: str | None = None, **kwargs):
    self._lamp_folder = os.path.abspath(lamp_folder)
    self._task = task_of_folder(self._lamp_folder, task)
    kwargs.setdefault("file_format", "array_record")
    # One builder name per folder, so several tasks can share a data_dir.
    self.name = "lamp_" + "".join(c if c.isalnum() else "_" for c in
                                  os.path.basename(self._lamp_folder)).lower()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    # Built directly: dataset_info_from_configs() needs the builder to live in a package.
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"LaMP-format task {self._task.name} from {self._lamp_folder}",
        features=tfds.features.FeaturesDict({
            "id": text, "user_id": text, "date": text, "input": text, "query": text,
            "target": text, "profile_json": text}),
        supervised_keys=None)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in ("train", "dev", "test")
            if os.path.isfile(os.path.join(self._lamp_folder, f"{s}_questions.json"))}

  def _generate_examples(self, split):
    questions, report = load_split(self._lamp_folder, self._task, split)
    print(report.summary())
    for q in questions:
      yield q.id, {
          "id": q.id, "user_id": q.user_id, "date": q.date or "", "input": q.input,
          "query": self._task.query(q.input), "target": q.gold or "",
          "profile_json": json.dumps([r.fields for r in q.profile], ensure_ascii=False)}
