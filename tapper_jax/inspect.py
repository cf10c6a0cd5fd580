"""Inspect one user of a trained workdir: history with attention weights, |P_u|, nearest users.

  python -m tapper_jax.inspect --workdir=DIR --user=U [--query="..."] [--questions=FILE]

The query defaults to the user's newest question in the run's evaluated split (or --questions);
the timeline plot lands in DIR/plots/user_<U>.png. Thin absl entry point; the logic is
`tapper_jax.serving.inspect_user`.
"""

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_USER = flags.DEFINE_string("user", None, "The user id.", required=True)
_QUERY = flags.DEFINE_string("query", None, "A query text (default: the user's newest question).")
_QUESTIONS = flags.DEFINE_string("questions", None, "A LaMP questions file holding the user "
                                 "(default: the run's evaluated split).")


def main(argv):
  del argv
  from tapper_jax.serving.inspect_user import format_report, inspect_user
  print(format_report(inspect_user(_WORKDIR.value, _USER.value, query=_QUERY.value,
                                   questions=_QUESTIONS.value)))


if __name__ == "__main__":
  app.run(main)
