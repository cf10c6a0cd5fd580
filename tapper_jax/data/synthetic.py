"""SYNTHETIC LaMP-format data with controllable per-user preference drift (tests and the demo).

Not real data: every folder it writes says `"synthetic": true` in meta.json and its task name
starts with `synthetic_`. A LaMP-2M-style tagging task: each item's description mixes words of
its tag with filler (`topical` = the share of tag words; 0 makes the text no cue at all); each user favours one tag early and
another late, moving from one to the other over their timeline (`drift` = how far it moves).
A model that reads the user's recent history should beat one that does not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import tempfile

from tapper_jax.data.convert import SourceSpec, convert

TAGS = {
    "space": "rocket orbit planet astronaut galaxy comet launch star",
    "ocean": "wave reef whale sailor tide harbor coral storm",
    "forest": "pine trail owl cabin moss hunter river bear",
    "city": "subway tower traffic neon cafe crowd alley siren",
    "desert": "dune cactus oasis caravan mirage heat canyon nomad",
    "mountain": "summit glacier climber ridge avalanche peak rope snow",
}
FILLER = ("story about a person who finds an old friend and a secret during one long year of "
          "change with family and trouble at home").split()


def _row(rng, user, k, tag, day0, topical):
  words = TAGS[tag].split()
  n_top = round(topical * 8)  # 0: the text says nothing of the tag; only history does
  text = rng.sample(words, n_top) + rng.sample(FILLER, 8 - n_top)
  rng.shuffle(text)
  date = (day0 + dt.timedelta(days=3 * k + rng.randint(0, 2))).isoformat()
  return {"user": user, "item": f"{user}-{k}", "date": date, "text": " ".join(text), "tag": tag}


def generate(out_dir: str, *, num_users: int = 24, items_per_user: int = 24, drift: float = 1.0,
             favour: float = 0.8, topical: float = 0.25, seed: int = 0) -> dict:
  """Writes a LaMP-format (time-based) synthetic task at `out_dir`; returns its meta."""
  rng = random.Random(seed)
  tags = sorted(TAGS)
  rows = []
  for u in range(num_users):
    early, late = rng.sample(tags, 2)
    day0 = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 200))
    for k in range(items_per_user):
      s = drift * k / max(1, items_per_user - 1)  # how far along the drift this item is
      if rng.random() < favour:
        tag = late if rng.random() < s else early
      else:
        tag = rng.choice(tags)
      rows.append(_row(rng, f"user{u:04d}", k, tag, day0, topical))
  spec = SourceSpec(
      name=os.path.basename(os.path.normpath(out_dir)) or "synthetic_drift", task="LaMP_2M",
      path="synthetic.jsonl", format="jsonl", user_field="user", date_field="date",
      id_field="item", fields={"description": "{text}", "tag": "{tag}"},
      min_items_per_user=4, seed=seed)
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "synthetic.jsonl"), "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
    meta = convert(tmp, spec, out_dir, synthetic=True)
  return meta
