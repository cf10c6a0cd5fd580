"""Export a trained TAP-PER workdir for PyTorch: the merged backbone (transformers), the bridge
LoRA (peft) and the TAP-PER modules (safetensors + JSON).

  python -m tapper_jax.export --workdir=DIR --out=OUT [--overwrite]

Rebuild in PyTorch with `tapper_jax.serving.torch_tapper.TorchTapper.from_export(OUT)`.
"""

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained TAP-PER workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "The export folder (refused if it exists).",
                           required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing OUT (moved aside).")


def main(argv):
  del argv
  from tapper_jax.serving.export import export
  print(export(_WORKDIR.value, _OUT.value, overwrite=_OVERWRITE.value))


if __name__ == "__main__":
  app.run(main)
