"""The offline real-data suite (from ../shared/data) and the synthetic drift generator."""

import collections

import pytest

from tapper_jax.data import build_offline, lamp, synthetic


@pytest.fixture(scope="module")
def offline(shared_data, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("offline"))
  return out, build_offline.build(shared_data, out)


def test_offline_suite_counts(offline):
  _, metas = offline
  assert set(metas) == {"huffpost_2N", "huffpost_4", "movielens_3", "movielens_2M"}
  for name, m in metas.items():
    c = m["counts"]
    assert m["synthetic"] is False and m["setting"] == "time-based"
    # n_test questions per user (several where the data allows: enough to separate methods).
    n_test = build_offline.SPECS[name].n_test
    assert c["users"] > 0 and c["test"]["questions"] == n_test * c["users"], name
    assert c["train"]["questions"] > c["test"]["questions"], name
  assert metas["movielens_3"]["labels"] == ["1", "2", "3", "4", "5"]
  assert len(metas["huffpost_2N"]["labels"]) == 15
  assert metas["huffpost_2N"]["counts"]["test"]["questions"] >= 300
  assert "in netflix queue" not in metas["movielens_2M"]["labels"]
  table = build_offline.format_counts(metas)
  for name, m in metas.items():
    row = next(l for l in table.splitlines() if l.startswith(name))
    assert row.split()[1] == str(m["counts"]["users"])


@pytest.mark.parametrize("name", [  # the huffpost folders take over a minute each: slow
    pytest.param("huffpost_2N", marks=pytest.mark.slow),
    pytest.param("huffpost_4", marks=pytest.mark.slow), "movielens_3", "movielens_2M"])
def test_offline_no_profile_item_newer_than_its_question(offline, name):
  out, metas = offline
  folder = f"{out}/{name}"
  task = lamp.task_of_folder(folder)
  newest_train = collections.defaultdict(float)
  for split in ("train", "dev", "test"):
    qs, report = lamp.load_split(folder, task, split, strict=True)
    assert len(qs) == metas[name]["counts"][split]["questions"]
    for q in qs:
      t = lamp.parse_day(q.date)
      assert q.profile and all(r.day < t for r in q.profile), q.id
      assert [r.day for r in q.profile] == sorted(r.day for r in q.profile)
      if split == "train":
        newest_train[q.user_id] = max(newest_train[q.user_id], t)
      elif split == "test":  # time-based: the test question is the user's newest item
        assert t >= newest_train[q.user_id]
      if task.kind == "classification":
        assert q.gold in task.labels


def test_offline_build_never_overwrites(offline, shared_data):
  out, metas = offline
  from tapper_jax.data.convert import convert
  with pytest.raises(FileExistsError):
    convert(shared_data, build_offline.SPECS["movielens_2M"], f"{out}/movielens_2M")


def test_synthetic_is_labelled_and_drifts(tmp_path):
  meta = synthetic.generate(str(tmp_path / "synthetic_drift"), num_users=12, items_per_user=30,
                            drift=1.0, favour=1.0, seed=3)
  assert meta["synthetic"] is True
  folder = str(tmp_path / "synthetic_drift")
  task = lamp.task_of_folder(folder)
  qs, _ = lamp.load_split(folder, task, "test")
  # With full drift and favour, each user's newest items carry the "late" tag: the test gold
  # equals the majority tag of the user's last 5 records far more often than of the first 5.
  late = early = 0
  for q in qs:
    tags = [r.fields["tag"] for r in q.profile]
    late += collections.Counter(tags[-5:]).most_common(1)[0][0] == q.gold
    early += collections.Counter(tags[:5]).most_common(1)[0][0] == q.gold
  assert late >= 0.75 * len(qs) and early <= 0.5 * len(qs)
  no_drift = synthetic.generate(str(tmp_path / "synthetic_flat"), num_users=12, items_per_user=30,
                                drift=0.0, favour=1.0, seed=3)
  qs, _ = lamp.load_split(str(tmp_path / "synthetic_flat"), lamp.task_of_folder(
      str(tmp_path / "synthetic_flat")), "test")
  assert all(collections.Counter(r.fields["tag"] for r in q.profile).most_common(1)[0][0] == q.gold
             for q in qs)  # no drift: the user's one favourite tag throughout
  assert no_drift["synthetic"] is True
